export { startRpcServer } from "./server.js";
export type { RpcServer, RpcServerOptions } from "./server.js";
export { createClient, createRpcTransport } from "./client.js";
export type { RpcClientOptions, RpcProtocol } from "./client.js";
export { HealthRegistry, ServingStatus, createHealthService, registerHealthService } from "./health.js";
export {
  REQUEST_ID_HEADER,
  bearerAuthGate,
  deadlineInterceptor,
  errorMappingInterceptor,
  observeInterceptor,
  rpcLogger,
  rpcRequestId,
} from "./interceptors.js";
export type { BearerAuthOptions, DeadlineOptions, ObserveOptions } from "./interceptors.js";
export { createRpcMetrics } from "./metrics.js";
export type { RpcLabels, RpcMetrics, RpcType } from "./metrics.js";
export {
  CORRELATION_ID_HEADER,
  aborted,
  alreadyExists,
  codeName,
  deadlineExceeded,
  failedPrecondition,
  internalError,
  invalidArgument,
  notFound,
  permissionDenied,
  resourceExhausted,
  unauthenticated,
  unavailable,
  unimplemented,
} from "./errors.js";
export { Code, ConnectError } from "@connectrpc/connect";
export type { ConnectRouter, HandlerContext, Interceptor } from "@connectrpc/connect";
export { runService, startService } from "./service-main.js";
export type {
  RunningService,
  ServiceContext,
  ServiceDefinition,
  ServiceInstance,
  StartServiceOptions,
} from "./service-main.js";
export { startTestService } from "./test-service.js";
export type { TestService, TestServiceOptions } from "./test-service.js";
export { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, decodePageToken, encodePageToken, paginate } from "./paging.js";
export type { Page } from "./paging.js";
export { siblingEntry, startWorkerThread } from "./worker-thread.js";
