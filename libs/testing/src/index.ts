export { freePort } from "./free-port.js";
export { startNatsServer } from "./nats-server.js";
export type { NatsServerHandle, NatsServerOptions } from "./nats-server.js";
export { removeTempDir, tempDir } from "./temp-dir.js";
export { grpcJsUnary } from "./grpc-js.js";
export { AWS_CORPUS_DIR, corpusMarkdownFiles } from "./corpus.js";
export { expectCode } from "./expect-code.js";
export { seededRandom } from "./seeded-random.js";
