import * as http2 from "node:http2";
import { Writable } from "node:stream";
import { setTimeout as delay } from "node:timers/promises";
import { create, createFileRegistry, type DescService } from "@bufbuild/protobuf";
import type { GenService } from "@bufbuild/protobuf/codegenv2";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { createLogger, type Logger } from "@ragtune/logger";
import {
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  file_grpc_health_v1_health,
} from "@ragtune/proto";
import { rpcLogger } from "../src/index.js";

/**
 * A test-only service, ragtune.rpctest.v1.TestService, built at run time from a descriptor that
 * reuses the health messages: Echo(HealthCheckRequest) → HealthCheckResponse and
 * Ticks(HealthCheckRequest) → stream HealthCheckResponse. The request's `service` field picks the
 * behaviour.
 */
const registry = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "ragtune/rpctest/v1/test.proto",
    package: "ragtune.rpctest.v1",
    dependency: ["grpc/health/v1/health.proto"],
    syntax: "proto3",
    service: [
      {
        name: "TestService",
        method: [
          {
            name: "Echo",
            inputType: ".grpc.health.v1.HealthCheckRequest",
            outputType: ".grpc.health.v1.HealthCheckResponse",
          },
          {
            name: "Ticks",
            inputType: ".grpc.health.v1.HealthCheckRequest",
            outputType: ".grpc.health.v1.HealthCheckResponse",
            serverStreaming: true,
          },
        ],
      },
    ],
  }),
  (name) => (name === "grpc/health/v1/health.proto" ? file_grpc_health_v1_health : undefined),
);

export const TestService = registry.getService("ragtune.rpctest.v1.TestService") as DescService as GenService<{
  echo: { methodKind: "unary"; input: typeof HealthCheckRequestSchema; output: typeof HealthCheckResponseSchema };
  ticks: {
    methodKind: "server_streaming";
    input: typeof HealthCheckRequestSchema;
    output: typeof HealthCheckResponseSchema;
  };
}>;

export const SECRET = "db-password=hunter2";

/** Resolves when ctx.signal aborts; never on its own. */
function aborted(ctx: HandlerContext): Promise<void> {
  return new Promise((resolve) => ctx.signal.addEventListener("abort", () => resolve(), { once: true }));
}

/** The signals of the calls asked to keep theirs ("keep-signal"), to see how each call ended them. */
export const keptSignals: AbortSignal[] = [];

/**
 * Behaviour by request.service: "ok", "boom" (raw Error), "hang" (ignores its signal), "log", "wait-abort" (ends
 * when its signal aborts), "headers" (sets a response header and trailer), "denied" (a ConnectError with metadata),
 * "big" (an answer of over 2 kB in binary, for response compression), "big-error" (an error of over 2 kB), "keep-signal" (adds its signal to keptSignals).
 */
export const testServiceImpl: ServiceImpl<typeof TestService> = {
  async echo(req, ctx) {
    switch (req.service) {
      case "boom":
        throw new Error(`connection refused: ${SECRET}`);
      case "hang":
        // Ignores ctx.signal on purpose: the server must still end the call.
        rpcLogger(ctx).info("handler hangs");
        await new Promise(() => undefined);
        break;
      case "log":
        rpcLogger(ctx).info({ marker: "from-handler" }, "handler log line");
        break;
      case "headers":
        ctx.responseHeader.set("x-answer", "forty-two");
        ctx.responseTrailer.set("x-checked", "yes");
        break;
      case "denied":
        throw new ConnectError("no access to this collection", Code.PermissionDenied, { "x-denied-by": "policy" });
      case "keep-signal":
        keptSignals.push(ctx.signal);
        break;
      case "big-error":
        throw new ConnectError(`refused: ${"reason ".repeat(300)}`, Code.FailedPrecondition);
      case "big":
        return create(HealthCheckResponseSchema, { status: ServingStatus.SERVING, $unknown: [{ no: 99, wireType: 2, data: new Uint8Array(2_100).fill(0x61) }] });
      case "wait-abort": {
        const gone = aborted(ctx);
        rpcLogger(ctx).info("handler waits for its signal");
        await gone;
        throw ctx.signal.reason;
      }
    }
    return create(HealthCheckResponseSchema, { status: ServingStatus.SERVING });
  },
  async *ticks(req, ctx) {
    for (let i = 0; ; i++) {
      yield create(HealthCheckResponseSchema, { status: ServingStatus.SERVING });
      if (req.service === "three" && i === 2) return;
      await delay(5, undefined, { signal: ctx.signal }).catch(() => undefined);
      if (ctx.signal.aborted) return;
    }
  },
};

export function testRoutes(router: ConnectRouter): void {
  router.service(TestService, testServiceImpl);
}

type Line = Record<string, unknown>;

export interface CapturedLogger {
  logger: Logger;
  /** The stream behind `logger`: hand it to another logger (startService's logDestination) to capture its lines too. */
  destination: Writable;
  lines: Line[];
  /** Resolves with the first line (already written or still to come) that matches. */
  waitFor(match: (line: Line) => boolean): Promise<Line>;
}

/** A real pino logger whose JSON lines are kept for assertions. */
export function captureLogger(): CapturedLogger {
  const lines: Line[] = [];
  const waiters = new Set<(line: Line) => void>();
  let partial = "";
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      partial += chunk.toString("utf8");
      let nl: number;
      while ((nl = partial.indexOf("\n")) >= 0) {
        const line = JSON.parse(partial.slice(0, nl)) as Line;
        partial = partial.slice(nl + 1);
        lines.push(line);
        for (const waiter of [...waiters]) waiter(line);
      }
      done();
    },
  });
  const waitFor = (match: (line: Line) => boolean) =>
    new Promise<Line>((resolve) => {
      const found = lines.find(match);
      if (found !== undefined) return resolve(found);
      const waiter = (line: Line) => {
        if (!match(line)) return;
        waiters.delete(waiter);
        resolve(line);
      };
      waiters.add(waiter);
    });
  return { logger: createLogger({ svc: "rpc-test", level: "debug", destination }), destination, lines, waitFor };
}

export interface RawResponse {
  status: number;
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  body: Buffer;
}

/** One raw HTTP/2 request (h2c prior knowledge), to send bytes no well-behaved client would. */
export function h2Request(url: string, path: string, headers: Record<string, string>, body: Uint8Array): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url);
    session.on("error", reject);
    const stream = session.request({ ":method": "POST", ":path": path, ...headers });
    let status = 0;
    let responseHeaders: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    const chunks: Buffer[] = [];
    stream.on("response", (h) => {
      status = Number(h[":status"]);
      responseHeaders = h;
    });
    stream.on("trailers", (t) => {
      trailers = t;
    });
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("error", reject);
    stream.on("end", () => {
      session.close();
      resolve({ status, headers: responseHeaders, trailers, body: Buffer.concat(chunks) });
    });
    stream.end(body);
  });
}
