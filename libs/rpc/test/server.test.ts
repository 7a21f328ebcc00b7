import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckRequest,
  type HealthCheckResponse,
} from "@ragtune/proto";
import { Registry } from "prom-client";
import { expectCode, grpcJsUnary } from "@ragtune/testing";
import { afterEach, describe, expect, it } from "vitest";
import {
  Code,
  ConnectError,
  createClient,
  startRpcServer,
  type RpcProtocol,
  type RpcServer,
  type RpcServerOptions,
} from "../src/index.js";
import { SECRET, TestService, captureLogger, h2Request, testRoutes, type CapturedLogger } from "./fixtures.js";

const servers: RpcServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function start(
  overrides: Partial<RpcServerOptions> = {},
): Promise<{ server: RpcServer; log: CapturedLogger }> {
  const log = captureLogger();
  const server = await startRpcServer({ logger: log.logger, port: 0, services: testRoutes, ...overrides });
  servers.push(server);
  return { server, log };
}

function grpcJsCheck(address: string, service: string): Promise<HealthCheckResponse> {
  return grpcJsUnary(address, Health.method.check, { service });
}

/** One HTTP/1.1 request with node:http, as curl or a browser gateway client would send it. */
function h1Request(
  url: string,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: string | Uint8Array,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(new URL(path, url), { method, headers, agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (text += c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

function grpcEnvelope(payload: Uint8Array): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(payload.byteLength, 1);
  return Buffer.concat([head, payload]);
}

// Field 1 (string) announced with 5 bytes, only 1 present: not a valid protobuf message.
const MALFORMED = new Uint8Array([0x0a, 0x05, 0x61]);

describe("health over real h2c sockets", () => {
  it("answers Check to a @grpc/grpc-js client, NotFound for an unknown service", async () => {
    const { server } = await start();
    const address = `127.0.0.1:${server.port}`;
    expect((await grpcJsCheck(address, "")).status).toBe(ServingStatus.SERVING);
    expect((await grpcJsCheck(address, "ragtune.rpctest.v1.TestService")).status).toBe(ServingStatus.SERVING);
    const err = await grpcJsCheck(address, "no.such.Service").then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    expect(err?.code).toBe(grpc.status.NOT_FOUND);
    expect(err?.details).toContain("no.such.Service");
  });

  it.each<RpcProtocol>(["grpc", "connect", "grpc-web"])("answers Check and List to a Connect client over %s", async (protocol) => {
    const { server } = await start();
    const health = createClient(Health, { baseUrl: server.url, protocol });
    expect((await health.check({ service: "" })).status).toBe(ServingStatus.SERVING);
    const list = await health.list({});
    expect(Object.keys(list.statuses).sort()).toEqual(["", "grpc.health.v1.Health", "ragtune.rpctest.v1.TestService"]);
    server.health.set("ragtune.rpctest.v1.TestService", ServingStatus.NOT_SERVING);
    expect((await health.check({ service: "ragtune.rpctest.v1.TestService" })).status).toBe(ServingStatus.NOT_SERVING);
    await expectCode(health.check({ service: "no.such.Service" }), Code.NotFound);
  });

  it("Watch streams status changes and a NOT_SERVING when shutdown begins", async () => {
    const { server } = await start();
    const health = createClient(Health, { baseUrl: server.url, protocol: "grpc" });
    const seen: ServingStatus[] = [];
    const stream = health.watch({ service: "" })[Symbol.asyncIterator]();
    seen.push((await stream.next()).value.status);
    server.health.set("", ServingStatus.NOT_SERVING);
    seen.push((await stream.next()).value.status);
    server.health.set("", ServingStatus.SERVING);
    seen.push((await stream.next()).value.status);
    const closing = server.close();
    seen.push((await stream.next()).value.status);
    expect(seen).toEqual([
      ServingStatus.SERVING,
      ServingStatus.NOT_SERVING,
      ServingStatus.SERVING,
      ServingStatus.NOT_SERVING,
    ]);
    // The stream then ends (cleanly or as unavailable), and close() completes.
    await stream.next().then(
      (r) => expect(r.done).toBe(true),
      (e) => expect(ConnectError.from(e).code).toBe(Code.Unavailable),
    );
    await closing;
  });

  it("Watch of an unknown service reads SERVICE_UNKNOWN, then its status once set", async () => {
    const { server } = await start();
    const health = createClient(Health, { baseUrl: server.url, protocol: "connect" });
    const controller = new AbortController();
    const stream = health.watch({ service: "late.Service" }, { signal: controller.signal })[Symbol.asyncIterator]();
    expect((await stream.next()).value.status).toBe(ServingStatus.SERVICE_UNKNOWN);
    server.health.set("late.Service", ServingStatus.SERVING);
    expect((await stream.next()).value.status).toBe(ServingStatus.SERVING);
    controller.abort();
  });
});

describe("HTTP/1.1", () => {
  it("serves Connect JSON over HTTP/1.1 when allowHttp1 is set", async () => {
    const { server } = await start({ allowHttp1: true });
    const res = await h1Request(server.url, "POST", "/grpc.health.v1.Health/Check", { "content-type": "application/json" }, JSON.stringify({ service: "" }));
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ status: "SERVING" });
    // The Connect client over HTTP/1.1 works too, on the same port as h2c gRPC.
    const viaH1 = createClient(TestService, { baseUrl: server.url, protocol: "connect", httpVersion: "1.1" });
    expect((await viaH1.echo({ service: "ok" })).status).toBe(ServingStatus.SERVING);
    expect((await grpcJsCheck(`127.0.0.1:${server.port}`, "")).status).toBe(ServingStatus.SERVING);
  });

  it("refuses RPCs over HTTP/1.1 without allowHttp1, with a message saying why", async () => {
    const { server } = await start();
    const res = await h1Request(server.url, "POST", "/grpc.health.v1.Health/Check", { "content-type": "application/json" }, "{}");
    expect(res.status).toBe(505);
    expect(res.body).toContain("HTTP/2");
  });
});

describe("bad input", () => {
  it("a malformed protobuf body gets invalid_argument (Connect and gRPC), and the server keeps serving", async () => {
    const { server } = await start();
    const connect = await h2Request(server.url, "/grpc.health.v1.Health/Check", { "content-type": "application/proto" }, MALFORMED);
    expect(connect.status).toBe(400);
    const body = JSON.parse(connect.body.toString("utf8")) as { code: string; message: string };
    expect(body.code).toBe("invalid_argument");
    expect(body.message).toContain("grpc.health.v1.HealthCheckRequest");

    const viaGrpc = await h2Request(
      server.url,
      "/grpc.health.v1.Health/Check",
      { "content-type": "application/grpc", te: "trailers" },
      grpcEnvelope(MALFORMED),
    );
    expect(viaGrpc.status).toBe(200);
    expect(viaGrpc.trailers["grpc-status"] ?? viaGrpc.headers["grpc-status"]).toBe(String(Code.InvalidArgument));

    const health = createClient(Health, { baseUrl: server.url, protocol: "grpc" });
    expect((await health.check({ service: "" })).status).toBe(ServingStatus.SERVING);
  });

  it("a request over readMaxBytes gets resource_exhausted, and the server keeps serving", async () => {
    const { server } = await start({ readMaxBytes: 1024 });
    const big = "x".repeat(4096);
    for (const protocol of ["grpc", "connect"] as const) {
      const health = createClient(Health, { baseUrl: server.url, protocol });
      await expectCode(health.check({ service: big }), Code.ResourceExhausted);
      expect((await health.check({ service: "" })).status).toBe(ServingStatus.SERVING);
    }
    const err = await grpcJsCheck(`127.0.0.1:${server.port}`, big).then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    expect(err?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect((await grpcJsCheck(`127.0.0.1:${server.port}`, "")).status).toBe(ServingStatus.SERVING);
  });
});

describe("errors, deadlines, auth, metrics, shutdown", () => {
  it("an unexpected exception becomes Internal with a correlation id; the raw text is only logged", async () => {
    const { server, log } = await start();
    for (const protocol of ["grpc", "connect", "grpc-web"] as const) {
      const client = createClient(TestService, { baseUrl: server.url, protocol });
      const err = await expectCode(client.echo({ service: "boom" }), Code.Internal);
      expect(err.message).not.toContain("hunter2");
      expect(err.message).not.toContain("connection refused");
      const id = /correlation id ([0-9a-f-]{36})/.exec(err.rawMessage)?.[1];
      expect(id).toBeDefined();
      const line = log.lines.find((l) => l.correlationId === id);
      expect(line?.level).toBe("error");
      expect(line?.rpc).toBe("ragtune.rpctest.v1.TestService/Echo");
      const logged = line?.err as { message: string; stack: string } | undefined;
      expect(logged?.message).toContain(SECRET);
      expect(logged?.stack).toContain("fixtures.ts");
    }
    const finished = log.lines.find((l) => l.msg === "rpc failed" && l.code === "Internal");
    expect(finished?.durationMs).toEqual(expect.any(Number));
  });

  it("a handler that ignores its signal still ends with DeadlineExceeded (client deadline and server default)", async () => {
    const { server, log } = await start({ defaultTimeoutMs: 200 });
    const withDeadline = createClient(TestService, { baseUrl: server.url, protocol: "grpc", timeoutMs: 100 });
    await expectCode(withDeadline.echo({ service: "hang" }), Code.DeadlineExceeded);
    const noDeadline = createClient(TestService, { baseUrl: server.url, protocol: "connect" });
    await expectCode(noDeadline.echo({ service: "hang" }), Code.DeadlineExceeded, "default deadline of 200 ms");
    // A handler that waits for its signal sees the default deadline's own error (Connect and gRPC).
    await expectCode(noDeadline.echo({ service: "wait-abort" }), Code.DeadlineExceeded, "default deadline of 200 ms");
    const grpcNoDeadline = createClient(TestService, { baseUrl: server.url, protocol: "grpc" });
    await expectCode(grpcNoDeadline.echo({ service: "wait-abort" }), Code.DeadlineExceeded, "default deadline of 200 ms");
    expect(log.lines.some((l) => l.code === "DeadlineExceeded" && l.rpc === "ragtune.rpctest.v1.TestService/Echo")).toBe(true);
    // Streams are exempt from the default deadline.
    const ticks = [];
    for await (const t of noDeadline.ticks({ service: "three" })) ticks.push(t.status);
    expect(ticks).toHaveLength(3);
  });

  it("checks the bearer token on every service but health", async () => {
    const { server, log } = await start({ authToken: "s3cret" });
    const anonymous = createClient(TestService, { baseUrl: server.url, protocol: "grpc" });
    const wrong = createClient(TestService, { baseUrl: server.url, protocol: "connect", authToken: "guess" });
    const right = createClient(TestService, { baseUrl: server.url, protocol: "grpc", authToken: "s3cret" });
    await expectCode(anonymous.echo({ service: "ok" }), Code.Unauthenticated, "authorization: Bearer");
    await expectCode(wrong.echo({ service: "ok" }), Code.Unauthenticated, "not valid");
    expect((await right.echo({ service: "ok" })).status).toBe(ServingStatus.SERVING);
    expect((await grpcJsCheck(`127.0.0.1:${server.port}`, "")).status).toBe(ServingStatus.SERVING);
    expect(JSON.stringify(log.lines)).not.toContain("guess");
  });

  it("exposes per-RPC counters and durations at GET /metrics", async () => {
    const registry = new Registry();
    const { server } = await start({ registry });
    const client = createClient(TestService, { baseUrl: server.url, protocol: "grpc" });
    await client.echo({ service: "ok" });
    await client.echo({ service: "ok" });
    await expectCode(client.echo({ service: "boom" }), Code.Internal);
    const res = await h1Request(server.url, "GET", "/metrics", {});
    expect(res.status).toBe(200);
    expect(res.headers["content-type"]).toContain("text/plain");
    const rpc = 'grpc_service="ragtune.rpctest.v1.TestService",grpc_method="Echo",grpc_type="unary"';
    expect(res.body).toContain(`grpc_server_handled_total{${rpc},grpc_code="OK"} 2`);
    expect(res.body).toContain(`grpc_server_handled_total{${rpc},grpc_code="Internal"} 1`);
    expect(res.body).toContain(`grpc_server_handling_seconds_count{${rpc}} 3`);
    // The same numbers are in the registry the caller handed in.
    expect(await registry.metrics()).toContain(`grpc_server_started_total{${rpc}} 3`);
  });

  it("logs each call with a per-request child logger that handlers share", async () => {
    const { server, log } = await start();
    const client = createClient(TestService, { baseUrl: server.url, protocol: "connect" });
    await client.echo({ service: "log" }, { headers: { "x-request-id": "req-123" } });
    const fromHandler = log.lines.find((l) => l.marker === "from-handler");
    expect(fromHandler).toMatchObject({ requestId: "req-123", rpc: "ragtune.rpctest.v1.TestService/Echo" });
    const finished = log.lines.find((l) => l.msg === "rpc finished" && l.requestId === "req-123");
    expect(finished).toMatchObject({ code: "OK", level: "info" });
  });

  it("a client that goes away mid-call cancels it: the handler's signal aborts with Canceled (HTTP/2 reset, HTTP/1.1 close)", async () => {
    const { server, log } = await start({ allowHttp1: true });
    const path = "/ragtune.rpctest.v1.TestService/Echo";
    const body = JSON.stringify({ service: "wait-abort" });
    const headers = (id: string) => ({ "content-type": "application/json", "x-request-id": id });
    const waiting = (id: string) => log.waitFor((l) => l.msg === "handler waits for its signal" && l.requestId === id);
    const ended = (id: string) => log.waitFor((l) => l.requestId === id && l.durationMs !== undefined);

    const session = http2.connect(server.url);
    session.on("error", () => undefined);
    const stream = session.request({ ":method": "POST", ":path": path, ...headers("h2-call") });
    stream.on("error", () => undefined);
    stream.end(body);
    await waiting("h2-call");
    stream.close(http2.constants.NGHTTP2_CANCEL);
    expect(await ended("h2-call")).toMatchObject({ msg: "rpc cancelled", code: "Canceled" });
    session.close();

    const req = http.request(`${server.url}${path}`, { method: "POST", headers: headers("h1-call"), agent: false });
    req.on("error", () => undefined);
    req.end(body);
    await waiting("h1-call");
    req.destroy();
    expect(await ended("h1-call")).toMatchObject({ msg: "rpc cancelled", code: "Canceled" });

    // Calls that finish are not cancelled after the fact.
    const client = createClient(TestService, { baseUrl: server.url, protocol: "connect", httpVersion: "1.1" });
    await client.echo({ service: "ok" }, { headers: { "x-request-id": "h1-ok" } });
    expect(await ended("h1-ok")).toMatchObject({ msg: "rpc finished", code: "OK" });
  });

  it("an HTTP/1.0 RPC without a Host header gets 400 and the server keeps serving", async () => {
    const { server } = await start({ allowHttp1: true });
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(server.port, "127.0.0.1");
      let text = "";
      socket.on("data", (chunk: Buffer) => (text += chunk.toString("latin1")));
      socket.on("end", () => resolve(text));
      socket.on("error", reject);
      socket.end(
        "POST /ragtune.rpctest.v1.TestService/Echo HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
      );
    });
    expect(reply).toMatch(/^HTTP\/1\.1 400 /);
    expect(reply).toContain("names no host");
    const client = createClient(Health, { baseUrl: server.url, protocol: "grpc" });
    expect((await client.check({ service: "" })).status).toBe(ServingStatus.SERVING);
  });

  it("shutdown ends in-flight calls with Unavailable and stops accepting connections", async () => {
    const { server, log } = await start({ defaultTimeoutMs: 0 });
    const client = createClient(TestService, { baseUrl: server.url, protocol: "grpc" });
    const inFlight = client.echo({ service: "hang" });
    inFlight.catch(() => undefined); // asserted below, after close()
    await log.waitFor((l) => l.msg === "handler hangs");
    await server.close();
    await expectCode(inFlight, Code.Unavailable, "shutting down");
    const fresh = createClient(Health, { baseUrl: server.url, protocol: "grpc", timeoutMs: 2000 });
    await expectCode(fresh.check({ service: "" }), Code.Unavailable);
  });
});
