import { setTimeout as delay } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport, type ConnectRouter } from "@connectrpc/connect";
import { createLogger, type Logger } from "@ragtune/logger";
import { Registry } from "prom-client";
import { expectCode } from "@ragtune/testing";
import {
  Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthListResponseSchema,
} from "@ragtune/proto";
import { describe, expect, it } from "vitest";
import { invalidArgument, notFound } from "./errors.js";
import {
  bearerAuthGate,
  deadlineInterceptor,
  errorMappingInterceptor,
  observeInterceptor,
  rpcLogger,
} from "./interceptors.js";
import { createRpcMetrics } from "./metrics.js";

function memoryLogger() {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger({
    svc: "unit",
    level: "debug",
    destination: { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) },
  });
  return { logger, lines };
}

/** Health's methods stand in for any service: `check` behaves by req.service, `watch` streams. */
function routes(router: ConnectRouter): void {
  router.service(Health, {
    async check(req, ctx) {
      switch (req.service) {
        case "raw":
          throw new TypeError("Cannot read properties of undefined (reading 'secretField')");
        case "not-found":
          throw notFound("collection", "c-1");
        case "bad":
          throw invalidArgument("collection_id", "must not be empty");
        case "respects-signal":
          // Gives up with the AbortError node's timers throw, not with a ConnectError.
          await delay(60_000, undefined, { signal: ctx.signal });
          break;
        case "log":
          rpcLogger(ctx).info({ inHandler: true }, "hello");
          break;
      }
      return create(HealthCheckResponseSchema, { status: ServingStatus.SERVING });
    },
    list() {
      return create(HealthListResponseSchema, {});
    },
    async *watch(req) {
      yield create(HealthCheckResponseSchema, { status: ServingStatus.SERVING });
      if (req.service === "raw") throw new Error("stream broke: secret-token-123");
    },
  });
}

function setup(options: { defaultTimeoutMs?: number } = {}) {
  const { logger, lines } = memoryLogger();
  const metrics = createRpcMetrics();
  const transport = createRouterTransport(routes, {
    router: {
      interceptors: [
        observeInterceptor({ logger, metrics }),
        errorMappingInterceptor({ logger }),
        deadlineInterceptor({ defaultTimeoutMs: options.defaultTimeoutMs ?? 0 }),
      ],
    },
  });
  return { client: createClient(Health, transport), lines, metrics };
}

describe("error mapping", () => {
  it("turns an unexpected exception into Internal with a correlation id, logging the real error", async () => {
    const { client, lines } = setup();
    const err = await expectCode(client.check({ service: "raw" }), Code.Internal);
    expect(err.message).not.toContain("secretField");
    const id = /correlation id (\S+) /.exec(err.rawMessage)?.[1];
    const logged = lines.find((l) => l.correlationId === id);
    expect((logged?.err as { message: string } | undefined)?.message).toContain("secretField");
    expect((logged?.err as { stack: string } | undefined)?.stack).toContain("TypeError");
  });

  it("passes ConnectErrors through unchanged", async () => {
    const { client } = setup();
    await expectCode(client.check({ service: "not-found" }), Code.NotFound, /^collection "c-1" not found$/);
    await expectCode(client.check({ service: "bad" }), Code.InvalidArgument, /^invalid collection_id: must not be empty$/);
  });

  it("maps errors thrown mid-stream too", async () => {
    const { client } = setup();
    const seen: ServingStatus[] = [];
    const err = await expectCode(async () => {
      for await (const res of client.watch({ service: "raw" })) seen.push(res.status);
    }, Code.Internal);
    expect(seen).toEqual([ServingStatus.SERVING]);
    expect(err.message).not.toContain("secret-token-123");
  });
});

describe("deadlines", () => {
  it("a handler that gives up on its aborted signal reports DeadlineExceeded, not Internal", async () => {
    const { client, lines } = setup({ defaultTimeoutMs: 50 });
    await expectCode(client.check({ service: "respects-signal" }), Code.DeadlineExceeded);
    expect(lines.some((l) => l.correlationId !== undefined)).toBe(false);
  });

  it("the client's own deadline wins over the default", async () => {
    const { client } = setup({ defaultTimeoutMs: 60_000 });
    await expectCode(client.check({ service: "respects-signal" }, { timeoutMs: 30 }), Code.DeadlineExceeded);
  });
});

describe("observe", () => {
  it("logs one line per call with code and duration, and counts it", async () => {
    const { client, lines, metrics } = setup();
    await client.check({ service: "log" });
    await expectCode(client.check({ service: "not-found" }), Code.NotFound);
    const fromHandler = lines.find((l) => l.inHandler === true);
    expect(fromHandler?.rpc).toBe("grpc.health.v1.Health/Check");
    expect(typeof fromHandler?.requestId).toBe("string");
    const done = lines.filter((l) => l.msg === "rpc finished" || l.msg === "rpc failed");
    expect(done.map((l) => [l.level, l.code])).toEqual([
      ["info", "OK"],
      ["warn", "NotFound"],
    ]);
    const text = await metrics.registry.metrics();
    expect(text).toContain('grpc_code="NotFound"} 1');
  });
});

describe("observe, per call", () => {
  it("makes a call's child logger only when the handler asks for one, with the same fields either way", async () => {
    const { logger, lines } = memoryLogger();
    // Count every child made below the root, at any depth (pino's children inherit from their parent).
    let children = 0;
    const originalChild = logger.child;
    logger.child = function (this: Logger, ...args: Parameters<Logger["child"]>) {
      children++;
      return originalChild.apply(this, args);
    } as Logger["child"];
    const metrics = createRpcMetrics();
    const client = createClient(
      Health,
      createRouterTransport(routes, { router: { interceptors: [observeInterceptor({ logger, metrics })] } }),
    );
    await client.check({ service: "plain" });
    await client.check({ service: "plain" });
    expect(children).toBe(1); // the method's logger (field rpc), made once
    await client.check({ service: "log" }, { headers: { "x-request-id": "req-7" } });
    expect(children).toBe(2); // the call that logged from its handler got its own child
    const done = lines.filter((l) => l.msg === "rpc finished");
    expect(done).toHaveLength(3);
    for (const line of done) {
      expect(Object.keys(line)).toEqual(["level", "time", "svc", "pid", "rpc", "requestId", "code", "durationMs", "msg"]);
      expect(line.rpc).toBe("grpc.health.v1.Health/Check");
    }
    expect(new Set(done.map((l) => l.requestId)).size).toBe(3);
    const fromHandler = lines.find((l) => l.inHandler === true);
    expect(fromHandler).toMatchObject({ rpc: "grpc.health.v1.Health/Check", requestId: "req-7" });
    expect(done[2]?.requestId).toBe("req-7");
  });

  it("counts every call once, whenever the metrics are read, also with two servers on one registry", async () => {
    const registry = new Registry();
    const clientOf = (metrics: ReturnType<typeof createRpcMetrics>) =>
      createClient(
        Health,
        createRouterTransport(routes, { router: { interceptors: [observeInterceptor({ logger: memoryLogger().logger, metrics })] } }),
      );
    const a = clientOf(createRpcMetrics(registry));
    const b = clientOf(createRpcMetrics(registry));
    const value = async (name: string, code?: string) => {
      const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
      return (metric?.values ?? [])
        .filter((v) => v.labels.grpc_method === "Check" && (code === undefined || v.labels.grpc_code === code))
        .filter((v) => !("metricName" in v) || v.metricName === `${name}_count`)
        .reduce((sum, v) => sum + v.value, 0);
    };
    await a.check({});
    await expectCode(b.check({ service: "not-found" }), Code.NotFound);
    expect(await value("grpc_server_started_total")).toBe(2);
    expect(await value("grpc_server_handled_total", "OK")).toBe(1);
    expect(await value("grpc_server_handled_total", "NotFound")).toBe(1);
    expect(await value("grpc_server_handling_seconds")).toBe(2);
    // Read again after more calls: the counts add up, nothing is added twice.
    await a.check({});
    await b.check({});
    expect(await value("grpc_server_started_total")).toBe(4);
    expect(await value("grpc_server_handled_total", "OK")).toBe(3);
    expect(await value("grpc_server_handled_total", "NotFound")).toBe(1);
    expect(await value("grpc_server_handling_seconds")).toBe(4);
    const text = await registry.metrics();
    expect(text).toContain('grpc_server_started_total{grpc_service="grpc.health.v1.Health",grpc_method="Check",grpc_type="unary"} 4');
  });
});

describe("default deadline, per call", () => {
  it("a handler that ignores its signal ends with the default deadline's DeadlineExceeded", async () => {
    const { logger } = memoryLogger();
    const client = createClient(
      Health,
      createRouterTransport(
        (router) =>
          router.service(Health, {
            check: () => new Promise(() => undefined),
          }),
        { router: { interceptors: [errorMappingInterceptor({ logger }), deadlineInterceptor({ defaultTimeoutMs: 40 })] } },
      ),
    );
    await expectCode(client.check({}), Code.DeadlineExceeded, /default deadline of 40 ms/);
  });

  it("the handler's signal aborts with the call's own reason when that comes first, and the call ends with it", async () => {
    const seen: unknown[] = [];
    const shutdown = new AbortController();
    const client = createClient(
      Health,
      createRouterTransport(
        (router) =>
          router.service(Health, {
            check: (_req, ctx) =>
              new Promise(() => {
                ctx.signal.addEventListener("abort", () => seen.push(ctx.signal.reason), { once: true });
                shutdown.abort(new ConnectError("the server is shutting down", Code.Unavailable));
              }),
          }),
        { router: { shutdownSignal: shutdown.signal, interceptors: [deadlineInterceptor({ defaultTimeoutMs: 60_000 })] } },
      ),
    );
    await expectCode(client.check({}), Code.Unavailable, /shutting down/);
    expect((seen[0] as ConnectError).code).toBe(Code.Unavailable);
  });
});

describe("bearer auth gate", () => {
  it("rejects missing and wrong tokens, accepts the right one, leaves public services open", async () => {
    const { logger } = memoryLogger();
    const transport = createRouterTransport(routes, {
      router: { requestGate: bearerAuthGate({ token: "t0ken", logger, publicServices: [] }) },
    });
    const client = createClient(Health, transport);
    await expectCode(client.check({}), Code.Unauthenticated);
    await expectCode(client.check({}, { headers: { authorization: "Bearer nope" } }), Code.Unauthenticated);
    const ok = await client.check({}, { headers: { authorization: "Bearer t0ken" } });
    expect(ok.status).toBe(ServingStatus.SERVING);

    const open = createClient(
      Health,
      createRouterTransport(routes, { router: { requestGate: bearerAuthGate({ token: "t0ken", logger }) } }),
    );
    expect((await open.check({})).status).toBe(ServingStatus.SERVING);
  });

  it("refuses an empty token at setup", () => {
    expect(() => bearerAuthGate({ token: "", logger: memoryLogger().logger })).toThrow(/token/);
  });
});
