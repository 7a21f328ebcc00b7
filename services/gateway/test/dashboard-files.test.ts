/**
 * The dashboard's files on the gateway's port, through the RPC server's hook for non-RPC requests, over real sockets:
 * HTTP/1.1 and h2c, next to an RPC that keeps answering.
 */
import * as http from "node:http";
import * as http2 from "node:http2";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createLogger } from "@ragtune/logger";
import { Health, HealthCheckResponse_ServingStatus } from "@ragtune/proto";
import { createClient, startRpcServer, type RpcServer } from "@ragtune/rpc";
import { removeTempDir, tempDir } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dashboardFiles } from "../src/dashboard-files.js";

const logger = createLogger({ svc: "dashboard-files-test", level: "silent" });
let root: string;
let server: RpcServer;
let unbuilt: RpcServer;
let cleanup: () => Promise<void>;

beforeAll(async () => {
  const dir = await tempDir("dashboard-files");
  cleanup = () => removeTempDir(dir);
  root = join(dir, "dist");
  await mkdir(join(root, "assets"), { recursive: true });
  await writeFile(join(root, "index.html"), "<!doctype html><title>ragtune</title>");
  await writeFile(join(root, "assets", "index-abc123.js"), "console.log(1)");
  await writeFile(join(dir, "secret.txt"), "outside the dashboard");
  server = await startRpcServer({ logger, port: 0, allowHttp1: true, services: () => undefined, httpHandler: dashboardFiles({ root, logger }) });
  unbuilt = await startRpcServer({ logger, port: 0, allowHttp1: true, services: () => undefined, httpHandler: dashboardFiles({ root: join(dir, "missing"), logger }) });
});

afterAll(async () => {
  await server?.close();
  await unbuilt?.close();
  await cleanup?.();
});

describe("the dashboard's files", () => {
  it("are served at / and by path with their content type; hashed assets are cached for good, the page revalidates", async () => {
    const page = await fetch(`${server.url}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get("content-type")).toBe("text/html; charset=utf-8");
    expect(page.headers.get("cache-control")).toBe("no-cache");
    expect(page.headers.get("content-security-policy")).toContain("default-src 'self'");
    expect(await page.text()).toContain("<title>ragtune</title>");
    const asset = await fetch(`${server.url}/assets/index-abc123.js`);
    expect(asset.headers.get("content-type")).toBe("text/javascript; charset=utf-8");
    expect(asset.headers.get("cache-control")).toContain("immutable");
    expect(await asset.text()).toBe("console.log(1)");
  });

  it("answer a page path without a file with index.html (the page routes), and a missing asset with 404", async () => {
    const routed = await fetch(`${server.url}/jobs/job-123`);
    expect(routed.status).toBe(200);
    expect(await routed.text()).toContain("<title>ragtune</title>");
    expect((await fetch(`${server.url}/assets/missing.js`)).status).toBe(404);
  });

  it("never leave the dashboard's folder", async () => {
    // Raw request paths (fetch would normalize the dots away before sending).
    for (const path of ["/../secret.txt", "/%2e%2e/secret.txt", "/assets/..%2f..%2fsecret.txt", "/%2e%2e%2fsecret.txt", "/..\\secret.txt"]) {
      const res = await rawGet(server.port, path);
      expect(res.body, path).not.toContain("outside the dashboard");
      expect([200, 400, 404], path).toContain(res.status);
    }
  });

  it("leave RPCs and /metrics to the server, over HTTP/1.1 and h2c", async () => {
    for (const protocol of ["connect", "grpc"] as const) {
      const health = createClient(Health, { baseUrl: server.url, protocol });
      expect((await health.check({})).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    }
    expect(await (await fetch(`${server.url}/metrics`)).text()).toContain("grpc_server_handled_total");
    const post = await fetch(`${server.url}/no.Such/Method`, { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    expect(post.status).toBe(404);
    expect(await post.text()).toContain("no RPC at /no.Such/Method");
  });

  it("are served over h2c too", async () => {
    const session = http2.connect(server.url);
    try {
      const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = session.request({ ":path": "/", ":method": "GET" });
        let status = 0;
        let body = "";
        req.on("response", (h) => (status = Number(h[":status"])));
        req.on("data", (d: Buffer) => (body += d.toString()));
        req.on("end", () => resolve({ status, body }));
        req.on("error", reject);
        req.end();
      });
      expect(status).toBe(200);
      expect(body).toContain("<title>ragtune</title>");
    } finally {
      session.close();
    }
  });

  it("say how to build the dashboard when it is not built", async () => {
    const res = await fetch(`${unbuilt.url}/`);
    expect(res.status).toBe(503);
    expect(await res.text()).toContain("npm run build -w @ragtune/dashboard");
  });
});

function rawGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path, method: "GET" }, (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}
