/**
 * The first retry of a failure answered at once (or of malformed output) comes within the quick base; a failure
 * after the server worked, a timeout and the retries after the first follow the usual schedule; a 429's Retry-After
 * is honoured as ever. The jitter is pinned (random → 0.999), so every delay is its ceiling minus one.
 */
import { afterEach, describe, expect, it } from "vitest";
import { z } from "zod";
import { createLlmClient, type RetryEvent } from "../src/index.js";
import { chatResponse, FakeServer, sendJson, type FakeRequest } from "./fake-openai-server.js";

let server: FakeServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const messages = [{ role: "user" as const, content: "q" }];
// Answered at once: within 150 ms (room for a loaded machine); "after the server worked": 300 ms.
const backoff = { baseMs: 400, capMs: 5_000, quickBaseMs: 20, quickFailureMs: 150 };

function scripted(script: ((request: FakeRequest) => void)[]) {
  return (request: FakeRequest) => script[Math.min(request.n, script.length - 1)]!(request);
}
const ok = (r: FakeRequest) => sendJson(r.res, 200, chatResponse('{"answer":"ok"}'));
const after = (ms: number, send: (r: FakeRequest) => void) => (r: FakeRequest) => void setTimeout(() => send(r), ms);

async function delaysFor(script: ((request: FakeRequest) => void)[], timeoutMs = 10_000): Promise<RetryEvent[]> {
  server = await FakeServer.start(scripted(script));
  const retries: RetryEvent[] = [];
  const client = createLlmClient({ baseUrl: server.url, backoff, timeoutMs, random: () => 0.999, onRetry: (e) => retries.push(e) });
  try {
    await client.json({ messages, schema: z.object({ answer: z.string() }) });
  } finally {
    client.close();
  }
  return retries;
}

describe("quick first retry", () => {
  it("a 500 and a dropped connection answered at once: the first retry within the quick base, the second on the usual schedule", async () => {
    const retries = await delaysFor([
      (r) => sendJson(r.res, 503, { error: { message: "overloaded" } }),
      (r) => r.res.socket!.destroy(),
      ok,
    ]);
    expect(retries.map((e) => [e.error.kind, e.delayMs])).toEqual([
      ["server_error", 19],
      ["connection", 799], // retry 2: base · 2, quick or not
    ]);
  });

  it("malformed output, even after the server worked, is retried within the quick base", async () => {
    const retries = await delaysFor([after(300, (r) => sendJson(r.res, 200, chatResponse('{"answer": "o'))), ok]);
    expect(retries.map((e) => [e.error.kind, e.delayMs])).toEqual([["malformed_json", 19]]);
  });

  it("a 500 after the server worked, a timeout and a 429 keep the usual first delay (the 429 its Retry-After)", async () => {
    expect((await delaysFor([after(300, (r) => sendJson(r.res, 500, { error: { message: "engine error" } })), ok])).map((e) => e.delayMs)).toEqual([399]);
    expect((await delaysFor([() => {}, ok], 100)).map((e) => [e.error.kind, e.delayMs])).toEqual([["timeout", 399]]);
    const limited = await delaysFor([(r) => sendJson(r.res, 429, { error: { message: "busy" } }, { "retry-after-ms": "600" }), ok]);
    expect(limited.map((e) => [e.error.kind, e.delayMs])).toEqual([["rate_limited", 600]]);
  });
});
