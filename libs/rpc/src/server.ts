import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import type { AddressInfo } from "node:net";
import { setImmediate as nextMacrotask } from "node:timers/promises";
import {
  Code,
  ConnectError,
  createConnectRouter,
  createContextValues,
  createServiceImplSpec,
  type ConnectRouter,
  type ConnectRouterOptions,
  type Interceptor,
} from "@connectrpc/connect";
import { createAsyncIterable, validateUniversalHandlerOptions } from "@connectrpc/connect/protocol";
import type { UniversalHandler, UniversalServerResponse } from "@connectrpc/connect/protocol";
import {
  compressionBrotli,
  compressionGzip,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";
import type { Logger } from "@ragtune/logger";
import type { Registry } from "prom-client";
import { type ConnectUnaryHandler, connectUnaryHandlers, PARSE_BINARY, type IncomingCall, unparsableBodyMessage } from "./connect-unary.js";
import { HealthRegistry, registerHealthService, ServingStatus } from "./health.js";
import {
  bearerAuthGate,
  clientSentDeadline,
  deadlineInterceptor,
  defaultDeadlineArmedKey,
  defaultDeadlineExceeded,
  errorMappingInterceptor,
  observeInterceptor,
} from "./interceptors.js";
import { createRpcMetrics } from "./metrics.js";
import { clusterMetricsOf } from "./processes.js";

export interface RpcServerOptions {
  /** Root (or service) logger; every call gets a child of it. */
  logger: Logger;
  /** Interface to bind; default 127.0.0.1. Use 0.0.0.0 in containers. */
  host?: string;
  /** TCP port; 0 picks a free one (read it back from `RpcServer.port`). */
  port: number;
  /** Registers the service implementations: `(router) => router.service(FooService, impl)`. */
  services: (router: ConnectRouter) => void;
  /** Largest accepted request message in bytes (default 4 MiB, as gRPC); larger → resource_exhausted. */
  readMaxBytes?: number;
  /** Largest response message in bytes (default: connect's ~4 GiB). */
  writeMaxBytes?: number;
  /** Prometheus registry for the per-RPC metrics; default a fresh one. Served at GET /metrics. */
  registry?: Registry;
  /** Also serve RPCs (Connect JSON/binary, gRPC-Web) over HTTP/1.1 on the same port. */
  allowHttp1?: boolean;
  /**
   * Answers requests that are not RPCs (no RPC at their path; GET /metrics excepted), e.g. the gateway's dashboard
   * files: returns true when it answered, false to leave the request to the server's 404.
   */
  httpHandler?: (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse) => boolean;
  /** Extra interceptors, run innermost (closest to the handler), in order. */
  interceptors?: Interceptor[];
  /** When set, every RPC except grpc.health.v1.Health needs `authorization: Bearer <authToken>`. */
  authToken?: string;
  /** Deadline for unary calls that arrive without one (ms). Default 60 000; 0 disables it. */
  defaultTimeoutMs?: number;
  /** How long close() waits for in-flight calls and connections before destroying them (ms). Default 10 000. */
  shutdownTimeoutMs?: number;
  /**
   * Serve Connect's unary calls (POST, JSON or binary) with connect-unary.ts instead of connect's universal handler
   * (same answers, a fraction of the work). Default true; false only to compare the two (tests, benchmarks).
   */
  connectUnaryFastPath?: boolean;
}

export interface RpcServer {
  /** Base URL for clients, e.g. http://127.0.0.1:50051 */
  readonly url: string;
  readonly port: number;
  /** grpc.health.v1 statuses; "" is the whole server. */
  readonly health: HealthRegistry;
  /** The registry behind GET /metrics. */
  readonly registry: Registry;
  /**
   * Graceful shutdown: health → NOT_SERVING (watchers are told), stop accepting, GOAWAY to
   * HTTP/2 sessions, abort in-flight handlers through connect's shutdown signal (they end with
   * Unavailable), wait up to shutdownTimeoutMs (or until `signal` aborts), then destroy what is left.
   * Idempotent.
   */
  close(signal?: AbortSignal): Promise<void>;
}

const HTTP2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const SNIFF_TIMEOUT_MS = 10_000;
const METRICS_PATH = "/metrics";

type NodeRequest = http.IncomingMessage | http2.Http2ServerRequest;
type NodeResponse = http.ServerResponse | http2.Http2ServerResponse;

/**
 * Start the one kind of RPC server every ragtune service runs: cleartext HTTP/2 (h2c) serving
 * gRPC (including @grpc/grpc-js clients), gRPC-Web and Connect, optionally HTTP/1.1 on the same
 * port, with grpc.health.v1, logging, error mapping, deadlines, optional bearer auth and
 * Prometheus metrics at GET /metrics.
 */
export async function startRpcServer(options: RpcServerOptions): Promise<RpcServer> {
  const logger = options.logger;
  const host = options.host ?? "127.0.0.1";
  const allowHttp1 = options.allowHttp1 ?? false;
  const shutdownTimeoutMs = options.shutdownTimeoutMs ?? 10_000;
  const defaultTimeoutMs = options.defaultTimeoutMs ?? 60_000;
  const metrics = createRpcMetrics(options.registry);
  // One of several processes behind this port: a scrape sees the sum over all of them.
  const renderMetrics = clusterMetricsOf(metrics.registry) ?? (() => metrics.registry.metrics());
  const health = new HealthRegistry();
  const shutdown = new AbortController();

  const routerOptions: ConnectRouterOptions = {
    acceptCompression: [compressionGzip, compressionBrotli],
    readMaxBytes: options.readMaxBytes ?? 4 * 1024 * 1024,
    ...(options.writeMaxBytes !== undefined ? { writeMaxBytes: options.writeMaxBytes } : {}),
    shutdownSignal: shutdown.signal,
    interceptors: [
      observeInterceptor({ logger, metrics, quietServices: ["grpc.health.v1.Health"] }),
      errorMappingInterceptor({ logger }),
      deadlineInterceptor({ defaultTimeoutMs }),
      ...(options.interceptors ?? []),
    ],
    ...(options.authToken !== undefined
      ? { requestGate: bearerAuthGate({ token: options.authToken, logger, metrics }) }
      : {}),
  };
  const router = createConnectRouter(routerOptions);
  // Connect's unary calls are served by connect-unary.ts with the router's own options: each service is registered
  // on the router as usual, and its unary methods there too (not a service registered with options of its own, nor
  // a single method: those stay with connect's handler).
  const handlerOptions = validateUniversalHandlerOptions(routerOptions);
  const fastUnary = new Map<string, ConnectUnaryHandler>();
  const recording: ConnectRouter = {
    handlers: router.handlers,
    service(service, implementation, serviceOptions) {
      router.service(service, implementation, serviceOptions);
      if (serviceOptions === undefined && options.connectUnaryFastPath !== false) {
        const spec = createServiceImplSpec(service, implementation);
        for (const [path, handler] of connectUnaryHandlers(service, spec.methods, handlerOptions)) fastUnary.set(path, handler);
      }
      return recording;
    },
    rpc(method, implementation, rpcOptions) {
      router.rpc(method, implementation, rpcOptions);
      return recording;
    },
  };
  registerHealthService(recording, health);
  options.services(recording);

  const handlers = new Map<string, UniversalHandler>();
  for (const handler of router.handlers) handlers.set(handler.requestPath, handler);
  health.set("", ServingStatus.SERVING);
  for (const handler of router.handlers) health.set(handler.service.typeName, ServingStatus.SERVING);

  // In-flight requests, so shutdown can wait for them.
  let inFlight = 0;
  const idleWaiters = new Set<() => void>();
  const checkIdle = () => {
    if (inFlight === 0 && sessions.size === 0) for (const wake of [...idleWaiters]) wake();
  };

  const onRequest = (req: NodeRequest, res: NodeResponse): void => {
    inFlight++;
    res.once("close", () => {
      inFlight--;
      checkIdle();
    });
    const path = (req.url ?? "").split("?", 1)[0] ?? "";
    if (path === METRICS_PATH && (req.method === "GET" || req.method === "HEAD")) {
      serveMetrics(metrics.registry, renderMetrics, res, logger);
      return;
    }
    if (req.httpVersionMajor === 1 && !allowHttp1) {
      sendPlain(res, 505, "this server speaks RPCs over HTTP/2 only (h2c); use an HTTP/2 client\n");
      return;
    }
    const handler = handlers.get(path);
    if (handler === undefined) {
      if (options.httpHandler?.(req, res) === true) return;
      sendPlain(res, 404, `no RPC at ${path}\n`);
      return;
    }
    const call = callOf(req, res, handler.method.methodKind === "unary" ? defaultTimeoutMs : 0);
    if (call === undefined) {
      sendPlain(res, 400, "the request names no host (send a Host header or :authority)\n");
      return;
    }
    const unary = fastUnary.get(path);
    if (unary?.accepts(req) === true) {
      unary.serve(req, res, call).catch((reason: unknown) => transportFailed(reason, path, res));
      return;
    }
    handler({ httpVersion: req.httpVersion, method: req.method ?? "", url: call.url, header: call.header, body: req, signal: call.controller.signal, contextValues: call.values })
      .then((uRes) => reclassifyParseError(uRes, handler))
      .then((uRes) => universalResponseToNodeResponse(uRes, res))
      .catch((reason: unknown) => transportFailed(reason, path, res));
  };

  /** A response that could not be written (not an RPC error: those are answers). */
  const transportFailed = (reason: unknown, path: string, res: NodeResponse): void => {
    if (ConnectError.from(reason).code === Code.Aborted) return; // the client went away
    logger.error({ err: reason, rpc: path }, "rpc transport failed");
    if (!res.headersSent) sendPlain(res, 500, "internal error\n");
    else res.destroy();
  };

  const h2Server = http2.createServer({}, onRequest);
  const h1Server = http.createServer(onRequest);
  const sessions = new Set<http2.ServerHttp2Session>();
  const sockets = new Set<net.Socket>();
  let closing = false;

  h2Server.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => {
      sessions.delete(session);
      checkIdle();
    });
    if (closing) session.close();
  });
  h2Server.on("sessionError", (err) => logger.debug({ err }, "http2 session error"));

  const tcpServer = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.on("error", (err) => logger.debug({ err }, "rpc connection error"));
    sniffProtocol(socket, (isHttp2) => {
      if (closing) {
        socket.destroy();
        return;
      }
      (isHttp2 ? h2Server : h1Server).emit("connection", socket);
    });
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => {
      reject(new Error(`rpc server cannot listen on ${host}:${options.port}: ${err.message}`, { cause: err }));
    };
    tcpServer.once("error", onError);
    tcpServer.listen(options.port, host, () => {
      tcpServer.off("error", onError);
      resolve();
    });
  });
  tcpServer.on("error", (err) => logger.error({ err }, "rpc server socket error"));
  const port = (tcpServer.address() as AddressInfo).port;
  const url = `http://${urlHost(host)}:${port}`;
  logger.info({ url, allowHttp1, auth: options.authToken !== undefined }, "rpc server listening");

  let closed: Promise<void> | undefined;
  const close = (signal?: AbortSignal): Promise<void> => {
    closed ??= (async () => {
      closing = true;
      health.shutdown();
      const listenerClosed = new Promise<void>((resolve) => tcpServer.close(() => resolve()));
      for (const session of sessions) session.close();
      // Let watchers write the final NOT_SERVING before their handlers are aborted.
      await nextMacrotask();
      shutdown.abort(new ConnectError("the server is shutting down; retry on another replica", Code.Unavailable));
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          idleWaiters.delete(done);
          signal?.removeEventListener("abort", done);
          resolve();
        };
        const timer = setTimeout(done, shutdownTimeoutMs);
        idleWaiters.add(done);
        signal?.addEventListener("abort", done, { once: true });
        if (signal?.aborted === true) done();
        checkIdle();
      });
      for (const session of sessions) session.destroy();
      for (const socket of sockets) socket.destroy();
      await listenerClosed;
      logger.info({ url }, "rpc server stopped");
    })();
    return closed;
  };

  return { url, port, health, registry: metrics.registry, close };
}

/** Decide HTTP/2 (prior knowledge preface) vs HTTP/1.x from the first bytes, then hand over the socket. */
function sniffProtocol(socket: net.Socket, handOver: (isHttp2: boolean) => void): void {
  let buffered: Buffer = Buffer.alloc(0);
  socket.setTimeout(SNIFF_TIMEOUT_MS, () => socket.destroy());
  const onData = (chunk: Buffer) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    const n = Math.min(buffered.length, HTTP2_PREFACE.length);
    const isHttp2 = buffered.subarray(0, n).equals(HTTP2_PREFACE.subarray(0, n));
    if (isHttp2 && n < HTTP2_PREFACE.length) return; // could still be the preface: read more
    socket.off("data", onData);
    socket.setTimeout(0);
    socket.pause();
    socket.unshift(buffered);
    handOver(isHttp2);
    // The HTTP/2 session reads the socket natively (it takes the unshifted bytes first);
    // the HTTP/1 parser reads through stream events, so that side must flow again.
    if (!isHttp2) socket.resume();
  };
  socket.on("data", onData);
}

/**
 * What connect's handlers (and connect-unary.ts) take of a request besides its body: the headers as fetch Headers,
 * fresh context values, the URL, and the signal, made as connect-node's universalRequestFromNodeRequest makes them
 * except for when the signal aborts. Here only when the call is cut short (the client reset the HTTP/2 stream, or
 * the connection closed or failed before the response was written to its end), with a ConnectError that says so,
 * or when `defaultDeadlineMs` (> 0: a unary call) passes and the client sent no deadline of its own (then the
 * deadline interceptor needs no signal and timer of its own). connect-node's also aborts on every call that
 * finished normally (on the response's "close"), without a reason, so Node makes a DOMException with a stack
 * trace per call for no one. Undefined when the request names no host (connect-node throws then).
 */
function callOf(req: NodeRequest, res: NodeResponse, defaultDeadlineMs: number): IncomingCall | undefined {
  const authority = "authority" in req ? req.authority : req.headers.host;
  if (authority === undefined || authority === "") return undefined;
  const header = webHeaderOf(req.headers);
  const values = createContextValues();
  const controller = new AbortController();
  let deadline: NodeJS.Timeout | undefined;
  if (defaultDeadlineMs > 0 && !clientSentDeadline(header)) {
    deadline = setTimeout(abortAtDefaultDeadline, defaultDeadlineMs, controller, defaultDeadlineMs);
    values.set(defaultDeadlineArmedKey, true);
  }
  const abort = (reason: ConnectError) => {
    if (!controller.signal.aborted) controller.abort(reason);
  };
  if ("stream" in req) {
    req.once("close", () => {
      clearTimeout(deadline);
      if (res.writableEnded) return; // the response went out whole: the call is over
      abort(h2ResetError(req.stream.rstCode));
    });
  } else {
    const onError = (err: Error) => {
      abort(new ConnectError(`the connection failed: ${err.message}`, Code.Aborted, undefined, undefined, err));
    };
    // The response's close, not the request's: node closes the request as soon as its body is read.
    res.once("close", () => {
      req.off("error", onError);
      clearTimeout(deadline);
      if (res.writableEnded) return;
      const err = req.errored;
      abort(
        err === null
          ? new ConnectError("the client closed the connection before the response was written", Code.Canceled)
          : new ConnectError(`the connection failed: ${err.message}`, Code.Aborted, undefined, undefined, err),
      );
    });
    req.once("error", onError);
  }
  return { header, values, controller, url: new URL(req.url ?? "", `http://${authority}`).toString() };
}

function abortAtDefaultDeadline(controller: AbortController, ms: number): void {
  if (!controller.signal.aborted) controller.abort(defaultDeadlineExceeded(ms));
}

/** Node's request headers as fetch Headers, without HTTP/2's pseudo-headers (as connect-node converts them). */
function webHeaderOf(headers: http.IncomingHttpHeaders | http2.IncomingHttpHeaders): Headers {
  const header = new Headers();
  for (const key in headers) {
    if (key.startsWith(":")) continue;
    const value: string | string[] | number | undefined = headers[key];
    if (value === undefined) continue;
    if (Array.isArray(value)) for (const v of value) header.append(key, v);
    else header.append(key, String(value));
  }
  return header;
}

/** Why an HTTP/2 stream closed before its response was complete, from its RST_STREAM code (as connect-node maps them). */
function h2ResetError(rstCode: number): ConnectError {
  const c = http2.constants;
  const what = `the HTTP/2 stream was reset by the client (code 0x${rstCode.toString(16)})`;
  switch (rstCode) {
    case c.NGHTTP2_REFUSED_STREAM:
      return new ConnectError(what, Code.Unavailable);
    case c.NGHTTP2_ENHANCE_YOUR_CALM:
      return new ConnectError(what, Code.ResourceExhausted);
    case c.NGHTTP2_INADEQUATE_SECURITY:
    case c.NGHTTP2_HTTP_1_1_REQUIRED:
      return new ConnectError(what, Code.PermissionDenied);
    case c.NGHTTP2_PROTOCOL_ERROR:
    case c.NGHTTP2_INTERNAL_ERROR:
    case c.NGHTTP2_FLOW_CONTROL_ERROR:
    case c.NGHTTP2_SETTINGS_TIMEOUT:
    case c.NGHTTP2_FRAME_SIZE_ERROR:
    case c.NGHTTP2_COMPRESSION_ERROR:
    case c.NGHTTP2_CONNECT_ERROR:
      return new ConnectError(what, Code.Internal);
    default:
      // CANCEL, and NO_ERROR / STREAM_CLOSED on a stream that closed before its response was complete.
      return new ConnectError("the client cancelled the call (it closed the HTTP/2 stream)", Code.Canceled);
  }
}

function urlHost(host: string): string {
  if (host === "0.0.0.0" || host === "") return "127.0.0.1";
  if (host === "::") return "[::1]";
  return host.includes(":") ? `[${host}]` : host;
}

function sendPlain(res: NodeResponse, status: number, text: string): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8" });
  res.end(text);
}

function serveMetrics(registry: Registry, render: () => Promise<string>, res: NodeResponse, logger: Logger): void {
  render()
    .then((body) => {
      res.writeHead(200, { "content-type": registry.contentType });
      res.end(body);
    })
    .catch((err: unknown) => {
      logger.error({ err }, "cannot render metrics");
      sendPlain(res, 500, "cannot render metrics\n");
    });
}

/**
 * connect-es reports a request body that is not valid protobuf as `internal` ("parse binary: ...").
 * It is the client's fault, so report it as `invalid_argument` naming the expected message type.
 * Handles gRPC (status in trailers) and Connect unary (JSON error body); JSON bodies already
 * come back as invalid_argument.
 */
async function reclassifyParseError(
  res: UniversalServerResponse,
  handler: UniversalHandler,
): Promise<UniversalServerResponse> {
  const explain = (raw: string) => unparsableBodyMessage(handler.method, raw);
  const trailer = res.trailer;
  if (trailer !== undefined && res.body !== undefined) {
    const fixTrailer = () => {
      if (trailer.get("grpc-status") !== String(Code.Internal)) return;
      const message = decodeURIComponent(trailer.get("grpc-message") ?? "");
      if (!message.startsWith(PARSE_BINARY)) return;
      trailer.set("grpc-status", String(Code.InvalidArgument));
      trailer.set("grpc-message", encodeURIComponent(explain(message)));
    };
    const body = res.body;
    return {
      ...res,
      body: (async function* () {
        yield* body;
        fixTrailer();
      })(),
    };
  }
  const header = res.header;
  if (
    res.status === 500 &&
    res.body !== undefined &&
    header?.get("content-type")?.startsWith("application/json") === true &&
    !header.has("content-encoding")
  ) {
    // A Connect unary error: one small JSON body, read whole before anything is written.
    const chunks: Uint8Array[] = [];
    for await (const chunk of res.body) chunks.push(chunk);
    const bytes = Buffer.concat(chunks);
    let parsed: { code?: unknown; message?: unknown } | undefined;
    try {
      parsed = JSON.parse(bytes.toString("utf8")) as { code?: unknown; message?: unknown };
    } catch {
      parsed = undefined;
    }
    if (
      parsed?.code !== "internal" ||
      typeof parsed.message !== "string" ||
      !parsed.message.startsWith(PARSE_BINARY)
    ) {
      return { ...res, body: createAsyncIterable([bytes]) };
    }
    const fixed = Buffer.from(JSON.stringify({ code: "invalid_argument", message: explain(parsed.message) }));
    const fixedHeader = new Headers(header);
    fixedHeader.set("content-length", String(fixed.byteLength));
    return { status: 400, header: fixedHeader, body: createAsyncIterable([fixed]) };
  }
  return res;
}
