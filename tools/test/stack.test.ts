import http from "node:http";
import { EvalRunStatus, EvalService, Health, HealthCheckResponse_ServingStatus } from "@ragtune/proto";
import { createClient } from "@ragtune/rpc";
import { grpcJsUnary } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SERVICE_NAMES, startStack, type Stack } from "../src/stack.js";

// The whole stack as a user runs it: a real nats-server and the five services started from their main.ts as
// child processes, each on a real h2c socket.
let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { LOG_LEVEL: "warn" } });
}, 180_000);
afterAll(async () => {
  await stack?.stop();
}, 60_000);

describe("the dev stack", () => {
  it.each(SERVICE_NAMES)("%s answers health Check to a @grpc/grpc-js client", async (name) => {
    const res = await grpcJsUnary(stack.services[name].url, Health.method.check, { service: "" });
    expect(res.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
  });

  it.each(SERVICE_NAMES)("%s answers health Check to Connect clients (gRPC and Connect protocols)", async (name) => {
    for (const protocol of ["grpc", "connect"] as const) {
      const health = createClient(Health, { baseUrl: stack.services[name].url, protocol });
      expect((await health.check({})).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    }
  });

  it("the gateway takes Connect JSON over HTTP/1.1 (curl-style)", async () => {
    const url = new URL("/grpc.health.v1.Health/Check", stack.services.gateway.url);
    const body = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = http.request(url, { method: "POST", headers: { "content-type": "application/json" } }, (res) => {
        let text = "";
        res.on("data", (d) => (text += d));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.on("error", reject);
      req.end("{}");
    });
    expect(body.status).toBe(200);
    expect(JSON.parse(body.text)).toEqual({ status: "SERVING" });
  });

  it("every service exposes Prometheus metrics", async () => {
    for (const name of SERVICE_NAMES) {
      const res = await new Promise<string>((resolve, reject) => {
        http.get(new URL("/metrics", stack.services[name].url), (r) => {
          let t = "";
          r.on("data", (d) => (t += d));
          r.on("end", () => resolve(t));
        }).on("error", reject);
      });
      expect(res).toContain("grpc_server_handled_total");
    }
  });

  it("wires eval to the dataset service: a run over an unknown dataset version fails saying so", async () => {
    const client = createClient(EvalService, { baseUrl: stack.services.eval.url, protocol: "grpc" });
    const { run } = await client.createEvalRun({ source: { case: "datasetVersionId", value: "dsv-missing" }, baseModel: "base" });
    for await (const res of client.watchEvalRun({ evalRunId: run!.id })) void res;
    const done = (await client.getEvalRun({ evalRunId: run!.id })).run!;
    expect(done.status).toBe(EvalRunStatus.FAILED);
    expect(done.failure).toMatchObject({ reason: "SOURCE_NOT_FOUND", message: "dataset version dsv-missing does not exist" });
  });

  it("stops every service cleanly on SIGTERM (exit code 0)", async () => {
    const exits = Object.values(stack.services).map(
      (s) => new Promise<number | null>((resolve) => s.process.once("exit", (code) => resolve(code))),
    );
    await stack.stop();
    expect(await Promise.all(exits)).toEqual(SERVICE_NAMES.map(() => 0));
  }, 60_000);
});
