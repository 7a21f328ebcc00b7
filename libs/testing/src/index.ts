export { freePort } from "./free-port.js";
export { startNatsServer } from "./nats-server.js";
export type { NatsServerHandle, NatsServerOptions } from "./nats-server.js";
export { removeTempDir, tempDir } from "./temp-dir.js";
export { grpcJsUnary } from "./grpc-js.js";
