import { createHash, randomUUID, timingSafeEqual } from "node:crypto";
import type { DescMethod } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextKey,
  type ContextValues,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";
import { createLogger, type Logger } from "@ragtune/logger";
import { codeName, deadlineExceeded, internalError, unauthenticated } from "./errors.js";
import type { MethodMetrics, RpcLabels, RpcMetrics, RpcType } from "./metrics.js";

/*
 * Server-side interceptors, outermost first, as startRpcServer stacks them:
 *   observe (log line + metrics per call) → error mapping → deadlines → caller's interceptors → handler
 * Authentication runs earlier, as connect's request gate, before the request body is read.
 */

/** Header a caller may set to tie its own logs to ours; otherwise the server makes an id. */
export const REQUEST_ID_HEADER = "x-request-id";

let silentLogger: Logger | undefined;
function fallbackLogger(): Logger {
  silentLogger ??= createLogger({ svc: "rpc", level: "silent" });
  return silentLogger;
}

/**
 * What the observe interceptor keeps per call: the request id and, made only when something asks
 * for it (a handler's rpcLogger(ctx), an unexpected error), the child logger with the call's fields.
 */
class CallLog {
  #logger: Logger | undefined;
  constructor(
    /** The logger of the call's method (field `rpc`), shared by all its calls. */
    readonly methodLogger: Logger,
    readonly requestId: string,
  ) {}

  /** The call's child logger (fields `rpc`, `requestId`), made on first use. */
  get logger(): Logger {
    this.#logger ??= this.methodLogger.child({ requestId: this.requestId });
    return this.#logger;
  }

  /** A line with the call's fields: through its child logger when one was made, else without making one. */
  write(level: "debug" | "info" | "warn" | "error", fields: Record<string, unknown>, msg: string): void {
    if (this.#logger !== undefined) this.#logger[level](fields, msg);
    else if (this.methodLogger.isLevelEnabled(level)) {
      this.methodLogger[level]({ requestId: this.requestId, ...fields }, msg);
    }
  }
}

const callLogKey = createContextKey<CallLog | undefined>(undefined, {
  description: "ragtune rpc call log",
});

/**
 * The per-request child logger (fields `rpc`, `requestId`) for use inside a handler:
 * `rpcLogger(ctx).info({ jobId }, "job queued")`. Silent when no logging interceptor ran
 * (e.g. a unit test calling the handler directly).
 */
export function rpcLogger(ctx: { values: ContextValues }): Logger {
  return ctx.values.get(callLogKey)?.logger ?? fallbackLogger();
}

/** The request id of the current call (also the correlation id of an internal error). */
export function rpcRequestId(ctx: { values: ContextValues }): string | undefined {
  return ctx.values.get(callLogKey)?.requestId;
}

function rpcType(method: DescMethod): RpcType {
  switch (method.methodKind) {
    case "unary":
      return "unary";
    case "server_streaming":
      return "server_stream";
    case "client_streaming":
      return "client_stream";
    case "bidi_streaming":
      return "bidi_stream";
  }
}

function labelsOf(method: DescMethod): RpcLabels {
  return { service: method.parent.typeName, method: method.name, type: rpcType(method) };
}

const SERVER_FAULTS = new Set([Code.Internal, Code.Unknown, Code.DataLoss]);

export interface ObserveOptions {
  logger: Logger;
  metrics?: RpcMetrics;
  /** Services whose successful calls log at debug instead of info (health probes). */
  quietServices?: readonly string[];
}

/** What the observe interceptor needs of a method, worked out on its first call. */
interface ObservedMethod {
  logger: Logger;
  metrics: MethodMetrics | undefined;
  quiet: boolean;
}

/**
 * One log line per call (rpc, requestId, code, durationMs) and the per-RPC Prometheus metrics;
 * handlers get the call's child logger through `rpcLogger(ctx)`. For streams, the line is written
 * when the stream ends. Per method (once): its logger with the `rpc` field and its metrics; per
 * call only the request id, the line and the counts (the call's child logger only when asked for).
 */
export function observeInterceptor(options: ObserveOptions): Interceptor {
  const quiet = new Set(options.quietServices ?? []);
  const methods = new Map<DescMethod, ObservedMethod>();
  const observed = (method: DescMethod): ObservedMethod => {
    let m = methods.get(method);
    if (m === undefined) {
      const labels = labelsOf(method);
      m = {
        logger: options.logger.child({ rpc: `${labels.service}/${labels.method}` }),
        metrics: options.metrics?.forMethod(labels),
        quiet: quiet.has(labels.service),
      };
      methods.set(method, m);
    }
    return m;
  };
  return (next) => async (req) => {
    const m = observed(req.method);
    const call = new CallLog(m.logger, req.header.get(REQUEST_ID_HEADER) ?? randomUUID());
    req.contextValues.set(callLogKey, call);
    const start = performance.now();
    m.metrics?.started();
    let res;
    try {
      res = await next(req);
    } catch (e) {
      finishCall(m, call, start, e);
      throw e;
    }
    if (!res.stream) {
      finishCall(m, call, start, undefined);
      return res;
    }
    return { ...res, message: observeStream(res.message, (error) => finishCall(m, call, start, error)) };
  };
}

function finishCall(m: ObservedMethod, call: CallLog, start: number, error: unknown): void {
  const seconds = (performance.now() - start) / 1000;
  const connectError = error === undefined ? undefined : ConnectError.from(error);
  const code = codeName(connectError?.code);
  m.metrics?.handled(code, seconds);
  const durationMs = Math.round(seconds * 10_000) / 10;
  if (connectError === undefined) {
    call.write(m.quiet ? "debug" : "info", { code, durationMs }, "rpc finished");
  } else if (SERVER_FAULTS.has(connectError.code)) {
    call.write("error", { code, durationMs, error: connectError.rawMessage }, "rpc failed");
  } else if (connectError.code === Code.Canceled) {
    call.write("info", { code, durationMs, error: connectError.rawMessage }, "rpc cancelled");
  } else {
    call.write("warn", { code, durationMs, error: connectError.rawMessage }, "rpc failed");
  }
}

async function* observeStream<T>(
  source: AsyncIterable<T>,
  finish: (error?: unknown) => void,
): AsyncGenerator<T> {
  let settled = false;
  try {
    yield* source;
    settled = true;
    finish();
  } catch (e) {
    settled = true;
    finish(e);
    throw e;
  } finally {
    if (!settled) finish(new ConnectError("the client stopped reading the stream", Code.Canceled));
  }
}

/** The ConnectError that explains why `signal` aborted (deadline, shutdown, client cancel). */
function abortReason(signal: AbortSignal): ConnectError {
  const reason: unknown = signal.reason;
  if (reason instanceof ConnectError) return reason;
  return new ConnectError("the call was cancelled", Code.Canceled, undefined, undefined, reason);
}

/**
 * Errors leave the handler as ConnectErrors: a ConnectError passes through untouched; anything
 * else is logged with its stack under a correlation id and replaced by a generic Code.Internal
 * that carries only that id. A handler that gave up because its signal aborted (deadline,
 * shutdown, cancel) reports the abort's reason instead of its own AbortError.
 */
export function errorMappingInterceptor(options: { logger: Logger }): Interceptor {
  return (next) => async (req) => {
    const map = (error: unknown): ConnectError => {
      if (error instanceof ConnectError) return error;
      if (req.signal.aborted) return abortReason(req.signal);
      const call = req.contextValues.get(callLogKey);
      const correlationId = call?.requestId ?? randomUUID();
      const log = call?.logger ?? options.logger;
      log.error({ err: error, correlationId }, "rpc handler threw an unexpected error");
      return internalError(correlationId);
    };
    let res;
    try {
      res = await next(req);
    } catch (e) {
      throw map(e);
    }
    if (!res.stream) return res;
    return { ...res, message: mapStreamErrors(res.message, map) };
  };
}

async function* mapStreamErrors<T>(
  source: AsyncIterable<T>,
  map: (error: unknown) => ConnectError,
): AsyncGenerator<T> {
  try {
    yield* source;
  } catch (e) {
    throw map(e);
  }
}

/** Whether the client sent a deadline (gRPC and gRPC-Web: grpc-timeout; Connect: connect-timeout-ms). */
export function clientSentDeadline(header: Headers): boolean {
  return header.has("grpc-timeout") || header.has("connect-timeout-ms");
}

function raceAbort<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) {
      promise.catch(() => undefined);
      reject(abortReason(signal));
      return;
    }
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

async function* abortableStream<T>(source: AsyncIterable<T>, signal: AbortSignal): AsyncGenerator<T> {
  const it = source[Symbol.asyncIterator]();
  let finished = false;
  try {
    for (;;) {
      const step = await raceAbort(it.next(), signal);
      if (step.done === true) {
        finished = true;
        return;
      }
      yield step.value;
    }
  } finally {
    if (!finished) it.return?.().catch(() => undefined);
  }
}

export interface DeadlineOptions {
  /**
   * Deadline for unary calls whose client sent none. Streams are exempt: a Watch runs until the
   * client cancels it or the server shuts down. 0 or undefined: no default.
   */
  defaultTimeoutMs?: number;
}

function defaultDeadlineMessage(ms: number): string {
  return (
    `the call did not finish within the server's default deadline of ${ms} ms; ` +
    "send a longer deadline (grpc-timeout / connect-timeout-ms) if it needs more time"
  );
}

/** The error a unary call without a client deadline ends with when the server's default one passes. */
export function defaultDeadlineExceeded(ms: number): ConnectError {
  return deadlineExceeded(defaultDeadlineMessage(ms));
}

/**
 * Set by a server that already aborts the request's signal (and so the handler's) at the default deadline, with
 * defaultDeadlineExceeded(): the deadline interceptor then only ends the call when the signal aborts.
 */
export const defaultDeadlineArmedKey = createContextKey<boolean>(false, {
  description: "ragtune rpc default deadline armed by the server",
});

/**
 * Calls end when their signal aborts, whether or not the handler looks at it: the client's
 * deadline (or the default one) gives a clean DeadlineExceeded, server shutdown gives
 * Unavailable, a client cancel gives Canceled. The handler sees the same signal in `ctx.signal`.
 */
export function deadlineInterceptor(options: DeadlineOptions = {}): Interceptor {
  const defaultMs = options.defaultTimeoutMs ?? 0;
  const message = defaultDeadlineMessage(defaultMs);
  return (next) => async (req) => {
    if (req.stream) {
      const res = await raceAbort(next(req), req.signal);
      if (!res.stream) return res;
      return { ...res, message: abortableStream(res.message, req.signal) };
    }
    if (defaultMs <= 0 || clientSentDeadline(req.header) || req.contextValues.get(defaultDeadlineArmedKey)) {
      return raceAbort(next(req), req.signal);
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(deadlineExceeded(message)), defaultMs);
    const onParentAbort = () => controller.abort(req.signal.reason);
    if (req.signal.aborted) onParentAbort();
    else req.signal.addEventListener("abort", onParentAbort, { once: true });
    try {
      return await raceAbort(next({ ...req, signal: controller.signal }), controller.signal);
    } finally {
      clearTimeout(timer);
      req.signal.removeEventListener("abort", onParentAbort);
    }
  };
}

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}

export interface BearerAuthOptions {
  /** The token callers must send as `authorization: Bearer <token>`. */
  token: string;
  /** Services reachable without a token; defaults to grpc.health.v1.Health. */
  publicServices?: readonly string[];
  logger: Logger;
  metrics?: RpcMetrics;
}

/**
 * A connect request gate (runs before the request body is read) that rejects calls without the
 * right bearer token with Code.Unauthenticated. Health checks stay open.
 */
export function bearerAuthGate(options: BearerAuthOptions): (ctx: HandlerContext) => void {
  if (options.token.length === 0) {
    throw new Error("bearerAuthGate: token must not be empty");
  }
  const expected = digest(options.token);
  const open = new Set(options.publicServices ?? ["grpc.health.v1.Health"]);
  return (ctx) => {
    if (open.has(ctx.service.typeName)) return;
    const header = ctx.requestHeader.get("authorization");
    const match = header === null ? null : /^Bearer\s+(.+)$/i.exec(header.trim());
    let problem: string | undefined;
    if (match === null) {
      problem = "this server requires a bearer token: send the header `authorization: Bearer <token>`";
    } else if (!timingSafeEqual(digest(match[1] ?? ""), expected)) {
      problem = "the bearer token is not valid for this server; check the configured RPC auth token";
    }
    if (problem === undefined) return;
    const labels = labelsOf(ctx.method);
    options.metrics?.started(labels);
    options.metrics?.handled(labels, codeName(Code.Unauthenticated), 0);
    options.logger.warn(
      {
        rpc: `${labels.service}/${labels.method}`,
        code: codeName(Code.Unauthenticated),
        tokenSent: match !== null,
      },
      "rpc rejected: authentication failed",
    );
    throw unauthenticated(problem);
  };
}
