import { afterEach, describe, expect, it } from "vitest";
import { z } from "zod";
import { createLlmClient, LlmError, type RetryEvent } from "../src/index.js";
import { chatResponse, FakeServer, sendJson, type FakeRequest } from "./fake-openai-server.js";

let server: FakeServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const messages = [{ role: "user" as const, content: "q" }];
const fast = { baseMs: 5, capMs: 20 };

/** A server that answers its n-th request with script[n] (the last entry for every later one). */
function scripted(script: ((request: FakeRequest) => void)[]) {
  return (request: FakeRequest) => script[Math.min(request.n, script.length - 1)]!(request);
}

const ok = (content = "ok") => (r: FakeRequest) => sendJson(r.res, 200, chatResponse(content));

describe("retries", () => {
  it("retries a 500 and reports the attempts and the retry", async () => {
    server = await FakeServer.start(scripted([(r) => sendJson(r.res, 500, { error: { message: "engine crashed" } }), ok()]));
    const retries: RetryEvent[] = [];
    const client = createLlmClient({ baseUrl: server.url, backoff: fast, onRetry: (e) => retries.push(e) });
    const result = await client.chat({ messages });
    expect(result.text).toBe("ok");
    expect(result.latency.attempts).toBe(2);
    expect(server.requests).toHaveLength(2);
    expect(retries).toHaveLength(1);
    expect(retries[0]!.error).toMatchObject({ kind: "server_error", status: 500, serverMessage: "engine crashed" });
    expect(client.stats()).toMatchObject({ calls: 1, succeeded: 1, retries: 1, attempts: 2, failed: 0 });
  });

  it("honours Retry-After (seconds) and retry-after-ms on 429", async () => {
    server = await FakeServer.start(
      scripted([
        (r) => sendJson(r.res, 429, { error: { message: "slow down" } }, { "retry-after": "1" }),
        (r) => sendJson(r.res, 429, { error: { message: "slow down" } }, { "retry-after-ms": "150", "retry-after": "9" }),
        ok(),
      ]),
    );
    const client = createLlmClient({ baseUrl: server.url, backoff: fast });
    const result = await client.chat({ messages });
    const [first, second, third] = server.requests;
    expect(second!.arrivedAt - first!.arrivedAt).toBeGreaterThanOrEqual(1000);
    expect(third!.arrivedAt - second!.arrivedAt).toBeGreaterThanOrEqual(150);
    expect(third!.arrivedAt - second!.arrivedAt).toBeLessThan(9000);
    expect(result.latency.attempts).toBe(3);
    expect(result.latency.backoffMs).toBeGreaterThanOrEqual(1150);
  });

  it("does not wait for a Retry-After beyond maxRetryAfterMs", async () => {
    server = await FakeServer.start((r) => sendJson(r.res, 429, { error: { message: "quota exhausted" } }, { "retry-after": "3600" }));
    const client = createLlmClient({ baseUrl: server.url, maxRetryAfterMs: 10_000 });
    const error = (await client.chat({ messages }).catch((e: unknown) => e)) as LlmError;
    expect(error).toMatchObject({ kind: "rate_limited", status: 429, retryAfterMs: 3_600_000, attempts: 1 });
    expect(error.message).toMatch(/429.*quota exhausted.*asked to wait 3600000 ms/);
    expect(server.requests).toHaveLength(1);
  });

  it("retries an attempt that times out; the abandoned request's connection is closed", async () => {
    server = await FakeServer.start(
      scripted([
        () => {
          // never answers
        },
        ok("late but fine"),
      ]),
    );
    const retries: RetryEvent[] = [];
    const client = createLlmClient({ baseUrl: server.url, timeoutMs: 400, backoff: fast, onRetry: (e) => retries.push(e) });
    const result = await client.chat({ messages });
    expect(result.text).toBe("late but fine");
    expect(retries[0]!.error.kind).toBe("timeout");
    expect(retries[0]!.error.message).toMatch(/no response within 400 ms/);
    await server.waitFor(() => server!.abandoned === 1);
  });

  it("retries dropped connections: before the headers and in the middle of the body", async () => {
    server = await FakeServer.start(
      scripted([
        (r) => r.res.socket!.destroy(),
        (r) => {
          r.res.writeHead(200, { "content-type": "application/json", "content-length": "500" });
          r.res.write('{"id":"chatcmpl-1","choices":[{"index":0,"message":{"role":"assistant","content":"Par');
          r.res.once("finish", () => {});
          setImmediate(() => r.res.socket!.destroy());
        },
        ok("Paris"),
      ]),
    );
    const retries: RetryEvent[] = [];
    const client = createLlmClient({ baseUrl: server.url, backoff: fast, onRetry: (e) => retries.push(e) });
    const result = await client.chat({ messages });
    expect(result.text).toBe("Paris");
    expect(retries.map((e) => e.error.kind)).toEqual(["connection", "connection"]);
    expect(retries[0]!.error.message).toMatch(/connection failed/);
  });

  it("retries malformed JSON: an unparseable body and guided output that does not parse", async () => {
    server = await FakeServer.start(
      scripted([
        (r) => sendJson(r.res, 200, '{"choices": [ {"message": '),
        (r) => sendJson(r.res, 200, chatResponse('{"answer": "Par')),
        (r) => sendJson(r.res, 200, chatResponse('{"answer":"Paris"}')),
      ]),
    );
    const retries: RetryEvent[] = [];
    const client = createLlmClient({ baseUrl: server.url, backoff: fast, onRetry: (e) => retries.push(e) });
    const result = await client.json({ messages, schema: z.object({ answer: z.string() }) });
    expect(result.value).toEqual({ answer: "Paris" });
    expect(result.latency.attempts).toBe(3);
    // The rejected generation's tokens were spent too: stats count both answers (10 + 5 each), the result its own.
    expect(result.usage).toEqual({ promptTokens: 10, completionTokens: 5, totalTokens: 15 });
    expect(client.stats()).toMatchObject({ promptTokens: 20, completionTokens: 10 });
    expect(retries.map((e) => e.error.kind)).toEqual(["malformed_json", "malformed_json"]);
  });

  it("retries a mix of 500, 429, a timeout and malformed JSON within one call, then succeeds", async () => {
    server = await FakeServer.start(
      scripted([
        (r) => sendJson(r.res, 502, "Bad Gateway", { "content-type": "text/plain" }),
        (r) => sendJson(r.res, 429, { error: { message: "busy" } }, { "retry-after-ms": "20" }),
        () => {},
        (r) => sendJson(r.res, 200, chatResponse("{not json")),
        (r) => sendJson(r.res, 200, chatResponse('{"answer":"ok"}')),
      ]),
    );
    const client = createLlmClient({ baseUrl: server.url, backoff: fast, timeoutMs: 400, maxRetries: 4 });
    const result = await client.json({ messages, schema: z.object({ answer: z.string() }) });
    expect(result.value.answer).toBe("ok");
    expect(result.latency.attempts).toBe(5);
    expect(client.stats()).toMatchObject({ retries: 4, attempts: 5, succeeded: 1 });
  });

  it("gives up after maxRetries with the last error, its status and the server's message", async () => {
    server = await FakeServer.start((r) => sendJson(r.res, 503, { object: "error", message: "model is loading", type: "ServiceUnavailable", code: 503 }));
    const client = createLlmClient({ baseUrl: server.url, backoff: fast, maxRetries: 2 });
    const error = (await client.chat({ messages }).catch((e: unknown) => e)) as LlmError;
    expect(error).toBeInstanceOf(LlmError);
    expect(error).toMatchObject({ kind: "server_error", retryable: true, status: 503, attempts: 3, serverMessage: "model is loading" });
    expect(error.message).toBe("POST /v1/chat/completions: 503 Service Unavailable: model is loading (gave up after 3 attempts)");
    expect(server.requests).toHaveLength(3);
    expect(client.stats()).toMatchObject({ calls: 1, failed: 1, succeeded: 0, retries: 2 });
  });
});

describe("no retry on other 4xx", () => {
  it("a 400 fails at once with the status and the server's message", async () => {
    server = await FakeServer.start((r) =>
      sendJson(r.res, 400, {
        error: { message: "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.", type: "BadRequestError", param: null, code: 400 },
      }),
    );
    const client = createLlmClient({ baseUrl: server.url, backoff: fast });
    const error = (await client.chat({ messages, maxTokens: 5000 }).catch((e: unknown) => e)) as LlmError;
    expect(error).toMatchObject({ kind: "bad_request", retryable: false, status: 400, attempts: 1 });
    expect(error.message).toBe(
      "POST /v1/chat/completions: 400 Bad Request: This model's maximum context length is 4096 tokens. However, you requested 5000 tokens.",
    );
    expect(server.requests).toHaveLength(1);
  });

  it("an unknown model (404) and a wrong key (401) are not retried either", async () => {
    server = await FakeServer.start((r) =>
      r.headers.authorization === "Bearer right"
        ? sendJson(r.res, 404, { error: { message: "The model `job-9` does not exist.", type: "NotFoundError", code: 404 } })
        : sendJson(r.res, 401, { error: "Unauthorized" }),
    );
    const wrongKey = createLlmClient({ baseUrl: server.url, apiKey: "wrong" });
    const unauthorized = (await wrongKey.chat({ messages }).catch((e: unknown) => e)) as LlmError;
    expect(unauthorized).toMatchObject({ kind: "unauthorized", retryable: false, status: 401 });
    expect(unauthorized.message).toMatch(/401 Unauthorized: Unauthorized \(check LLM_API_KEY\)/);

    const client = createLlmClient({ baseUrl: server.url, apiKey: "right" });
    const missing = (await client.chat({ messages, model: "job-9" }).catch((e: unknown) => e)) as LlmError;
    expect(missing).toMatchObject({ kind: "bad_request", status: 404 });
    expect(missing.message).toMatch(/404 Not Found: The model `job-9` does not exist\./);
    expect(server.requests).toHaveLength(2);
  });

  it("a refused connection is retried and then reported as a connection error", async () => {
    server = await FakeServer.start(ok());
    const url = server.url;
    await server.close();
    server = undefined;
    const client = createLlmClient({ baseUrl: url, backoff: fast, maxRetries: 1 });
    const error = (await client.chat({ messages }).catch((e: unknown) => e)) as LlmError;
    expect(error).toMatchObject({ kind: "connection", retryable: true, attempts: 2 });
    expect(error.message).toMatch(/ECONNREFUSED/);
  });
});
