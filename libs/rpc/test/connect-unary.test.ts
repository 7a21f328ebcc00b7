import * as http from "node:http";
import { gzipSync } from "node:zlib";
import { create, toBinary, toJsonString } from "@bufbuild/protobuf";
import { HealthCheckRequestSchema } from "@ragtune/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, startRpcServer, type RpcServer } from "../src/index.js";
import { captureLogger, h2Request, keptSignals, testRoutes } from "./fixtures.js";

/*
 * libs/rpc serves Connect's unary calls itself (src/connect-unary.ts). Every request here goes to two servers, one
 * with that path and one with connect-es's own handler (connectUnaryFastPath: false), over HTTP/1.1 and HTTP/2; the
 * answers must be the same: status, headers (but the date), body bytes.
 */

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

const IGNORED = new Set(["date", "connection", "keep-alive", ":status"]);

function normalize(status: number, headers: http.IncomingHttpHeaders, body: Buffer): Answer {
  const kept: Record<string, string> = {};
  for (const [k, v] of Object.entries(headers)) if (!IGNORED.has(k) && v !== undefined) kept[k] = String(v);
  return { status, headers: kept, body: body.toString("base64") };
}

function h1(url: string, path: string, headers: Record<string, string>, body: Uint8Array): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(new URL(path, url), { method: "POST", headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve(normalize(res.statusCode ?? 0, res.headers, Buffer.concat(chunks))));
    });
    req.on("error", reject);
    req.end(body);
  });
}

async function h2(url: string, path: string, headers: Record<string, string>, body: Uint8Array): Promise<Answer> {
  const res = await h2Request(url, path, headers, body);
  return normalize(res.status, res.headers, res.body);
}

const ECHO = "/ragtune.rpctest.v1.TestService/Echo";
const json = (service: string) => Buffer.from(toJsonString(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service })));
const binary = (service: string) => toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, { service }));
const JSON_TYPE = { "content-type": "application/json", "x-request-id": "req-1" };
const PROTO_TYPE = { "content-type": "application/proto", "x-request-id": "req-1" };

/** Name → request (headers and body) that both servers get. */
const CASES: Record<string, { headers: Record<string, string>; body: Uint8Array; path?: string }> = {
  "JSON answer": { headers: JSON_TYPE, body: json("ok") },
  "JSON with charset and unknown fields": { headers: { ...JSON_TYPE, "content-type": "application/json; charset=utf-8" }, body: Buffer.from('{"service":"ok","other":1}') },
  "binary answer": { headers: PROTO_TYPE, body: binary("ok") },
  "response header and trailer": { headers: JSON_TYPE, body: json("headers") },
  "handler's ConnectError with metadata": { headers: JSON_TYPE, body: json("denied") },
  "raw exception (internal, correlation id)": { headers: JSON_TYPE, body: json("boom") },
  "malformed JSON": { headers: JSON_TYPE, body: Buffer.from('{"service": ') },
  "JSON of the wrong shape": { headers: JSON_TYPE, body: Buffer.from('{"service": 7}') },
  "malformed protobuf": { headers: PROTO_TYPE, body: new Uint8Array([0x0a, 0x05, 0x61]) },
  "empty body": { headers: PROTO_TYPE, body: new Uint8Array() },
  "over readMaxBytes": { headers: JSON_TYPE, body: json("x".repeat(300)) },
  "client deadline passes": { headers: { ...JSON_TYPE, "connect-timeout-ms": "30" }, body: json("wait-abort") },
  "unparsable deadline": { headers: { ...JSON_TYPE, "connect-timeout-ms": "soon" }, body: json("ok") },
  "gzip request": { headers: { ...JSON_TYPE, "content-encoding": "gzip" }, body: gzipSync(json("ok")) },
  "gzip request that is not gzip": { headers: { ...JSON_TYPE, "content-encoding": "gzip" }, body: json("ok") },
  "unsupported request encoding": { headers: { ...JSON_TYPE, "content-encoding": "zstd" }, body: json("ok") },
  "gzip response (binary)": { headers: { ...PROTO_TYPE, "accept-encoding": "gzip" }, body: binary("big") },
  "brotli response (JSON error)": { headers: { ...JSON_TYPE, "accept-encoding": "br" }, body: json("big-error") },
  "small answer is not compressed": { headers: { ...JSON_TYPE, "accept-encoding": "gzip, br" }, body: json("ok") },
  "no bearer token": { headers: { "content-type": "application/json" }, body: json("ok"), path: "auth" },
  "wrong bearer token": { headers: { "content-type": "application/json", authorization: "Bearer nope" }, body: json("ok"), path: "auth" },
  "right bearer token": { headers: { "content-type": "application/json", authorization: "Bearer s3cret", "x-request-id": "r" }, body: json("ok"), path: "auth" },
  "unimplemented health Check over Connect": { headers: JSON_TYPE, body: Buffer.from('{"service":"nope"}'), path: "/grpc.health.v1.Health/Check" },
};

describe("Connect unary calls answer as connect-es answers them (HTTP/1.1 and HTTP/2)", () => {
  const servers: Record<"fast" | "connect" | "fastAuth" | "connectAuth", RpcServer> = {} as never;
  beforeAll(async () => {
    const start = (connectUnaryFastPath: boolean, authToken?: string) =>
      startRpcServer({
        logger: captureLogger().logger,
        port: 0,
        services: testRoutes,
        allowHttp1: true,
        readMaxBytes: 256,
        connectUnaryFastPath,
        ...(authToken !== undefined ? { authToken } : {}),
      });
    servers.fast = await start(true);
    servers.connect = await start(false);
    servers.fastAuth = await start(true, "s3cret");
    servers.connectAuth = await start(false, "s3cret");
  });
  afterAll(async () => {
    await Promise.all(Object.values(servers).map((s) => s?.close()));
  });

  for (const [name, c] of Object.entries(CASES)) {
    it(name, async () => {
      const auth = c.path === "auth";
      const path = c.path === undefined || auth ? ECHO : c.path;
      for (const send of [h1, h2]) {
        const fast = await send((auth ? servers.fastAuth : servers.fast).url, path, c.headers, c.body);
        const reference = await send((auth ? servers.connectAuth : servers.connect).url, path, c.headers, c.body);
        expect(fast, `${send.name}: ${name}`).toEqual(reference);
      }
    });
  }

  it("the cases above reached connect-unary.ts: it ends a completed call's signal with a reason instead of a DOMException", async () => {
    keptSignals.length = 0;
    for (const send of [h1, h2]) {
      await send(servers.fast.url, ECHO, JSON_TYPE, json("keep-signal"));
      await send(servers.connect.url, ECHO, JSON_TYPE, json("keep-signal"));
    }
    const [fast1, connect1, fast2, connect2] = keptSignals;
    for (const s of [fast1, connect1, fast2, connect2]) expect(s?.aborted).toBe(true);
    for (const s of [fast1, fast2]) expect(s?.reason).toMatchObject({ name: "ConnectError", code: Code.Canceled, rawMessage: "the call completed" });
    for (const s of [connect1, connect2]) expect(s?.reason).toMatchObject({ name: "AbortError" });
  });
});
