import { setTimeout as delay } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { Code, createClient, createRouterTransport, type ConnectRouter } from "@connectrpc/connect";
import { createLogger } from "@ragtune/logger";
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
