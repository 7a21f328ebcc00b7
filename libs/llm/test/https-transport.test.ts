/**
 * The transport over TLS against a real node:https server with a certificate made for the test (openssl): a server
 * whose certificate is not trusted is refused with the TLS error, and one the process is told to accept answers — the
 * same client code as plain HTTP.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLlmClient } from "../src/index.js";

let server: Server;
let dir: string;
let baseUrl: string;
let requests = 0;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "llm-tls-"));
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
  ], { stdio: "ignore" });
  server = createServer({ key: readFileSync(join(dir, "key.pem")), cert: readFileSync(join(dir, "cert.pem")) }, (req, res) => {
    requests++;
    let body = "";
    req.on("data", (d: Buffer) => (body += d.toString()));
    req.on("end", () => {
      const prompt = (JSON.parse(body) as { prompt: string }).prompt;
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ id: "c1", object: "text_completion", model: "m", choices: [{ index: 0, text: `echo: ${prompt}`, finish_reason: "stop" }], usage: { prompt_tokens: 1, completion_tokens: 2, total_tokens: 3 } }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  baseUrl = `https://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
});

afterAll(async () => {
  await new Promise<void>((resolve) => server.close(() => resolve()));
  rmSync(dir, { recursive: true, force: true });
});

describe("libs/llm over https", () => {
  it("refuses a server whose certificate is not trusted, saying why", async () => {
    const client = createLlmClient({ baseUrl, model: "m", maxRetries: 0 });
    await expect(client.complete({ prompt: "hi", maxTokens: 4 })).rejects.toThrow(/certificate/i);
    client.close();
  });

  it("answers through TLS when the certificate is accepted (two calls)", async () => {
    const before = process.env["NODE_TLS_REJECT_UNAUTHORIZED"];
    process.env["NODE_TLS_REJECT_UNAUTHORIZED"] = "0";
    try {
      const client = createLlmClient({ baseUrl, model: "m", maxRetries: 0 });
      const seen = requests;
      for (const prompt of ["one", "two"]) {
        const out = await client.complete({ prompt, maxTokens: 4 });
        expect(out.text).toBe(`echo: ${prompt}`);
      }
      expect(requests - seen).toBe(2);
      client.close();
    } finally {
      if (before === undefined) delete process.env["NODE_TLS_REJECT_UNAUTHORIZED"];
      else process.env["NODE_TLS_REJECT_UNAUTHORIZED"] = before;
    }
  });
});
