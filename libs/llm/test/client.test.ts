import { afterEach, describe, expect, it } from "vitest";
import { z } from "zod";
import { createLlmClient, LlmError, Secret } from "../src/index.js";
import { chatResponse, completionResponse, FakeServer, sendJson, usage } from "./fake-openai-server.js";

let server: FakeServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const answerSchema = z.object({ answer: z.string(), confidence: z.number().min(0).max(1) });

describe("LlmClient against an OpenAI-compatible server", () => {
  it("sends a chat request with the model, sampling options and key, and returns text, usage and latency", async () => {
    server = await FakeServer.start(({ res }) => sendJson(res, 200, chatResponse("Paris.", { usage: usage(21, 3), model: "adapter-7" })));
    const client = createLlmClient({ baseUrl: server.url, apiKey: new Secret("sk-test-123"), model: "base" });
    const result = await client.chat({
      model: "adapter-7",
      messages: [
        { role: "system", content: "Answer from the context." },
        { role: "user", content: "Capital of France?" },
      ],
      temperature: 0.2,
      topP: 0.9,
      seed: 42,
      maxTokens: 64,
      stop: ["\n\n"],
      extraBody: { top_k: 20, temperature: 1.5 },
    });

    const [request] = server.requests;
    expect(request!.method).toBe("POST");
    expect(request!.path).toBe("/v1/chat/completions");
    expect(request!.headers.authorization).toBe("Bearer sk-test-123");
    expect(request!.headers["content-type"]).toBe("application/json");
    expect(request!.body).toEqual({
      model: "adapter-7",
      messages: [
        { role: "system", content: "Answer from the context." },
        { role: "user", content: "Capital of France?" },
      ],
      temperature: 0.2,
      top_p: 0.9,
      seed: 42,
      max_tokens: 64,
      stop: ["\n\n"],
      top_k: 20,
      stream: false,
    });
    expect(result.text).toBe("Paris.");
    expect(result.finishReason).toBe("stop");
    expect(result.model).toBe("adapter-7");
    expect(result.usage).toEqual({ promptTokens: 21, completionTokens: 3, totalTokens: 24 });
    expect(result.latency.attempts).toBe(1);
    expect(result.latency.backoffMs).toBe(0);
    expect(result.latency.requestMs).toBeGreaterThan(0);
    expect(result.latency.totalMs).toBeGreaterThanOrEqual(result.latency.requestMs + result.latency.queueMs);
    expect(client.stats()).toMatchObject({ calls: 1, succeeded: 1, failed: 0, retries: 0, attempts: 1, promptTokens: 21, completionTokens: 3, inFlight: 0, queued: 0 });
  });

  it("uses the client's model when the request names none, and accepts a base URL without /v1", async () => {
    server = await FakeServer.start(({ res }) => sendJson(res, 200, completionResponse(" world")));
    const client = createLlmClient({ baseUrl: server.url.replace(/\/v1$/, "/"), model: "tiny" });
    const result = await client.complete({ prompt: "hello", maxTokens: 4 });
    expect(server.requests[0]!.path).toBe("/v1/completions");
    expect(server.requests[0]!.body).toEqual({ model: "tiny", prompt: "hello", max_tokens: 4, stream: false });
    expect(server.requests[0]!.headers.authorization).toBeUndefined();
    expect(result.text).toBe(" world");
  });

  it("lists models, adapters with their parent", async () => {
    server = await FakeServer.start(({ res }) =>
      sendJson(res, 200, {
        object: "list",
        data: [
          { id: "mistral-7b", object: "model", owned_by: "vllm", root: "/models/mistral", max_model_len: 8192 },
          { id: "job-42", object: "model", owned_by: "vllm", root: "/adapters/job-42", parent: "mistral-7b" },
        ],
      }),
    );
    const client = createLlmClient({ baseUrl: server.url });
    const { models } = await client.models();
    expect(server.requests[0]!.method).toBe("GET");
    expect(server.requests[0]!.path).toBe("/v1/models");
    expect(models).toEqual([
      { id: "mistral-7b", ownedBy: "vllm", root: "/models/mistral", maxModelLen: 8192 },
      { id: "job-42", ownedBy: "vllm", root: "/adapters/job-42", parent: "mistral-7b" },
    ]);
  });

  it("keeps the connection alive between calls", async () => {
    server = await FakeServer.start(({ res }) => sendJson(res, 200, chatResponse("ok")));
    const client = createLlmClient({ baseUrl: server.url, concurrency: 1 });
    for (let i = 0; i < 5; i++) await client.chat({ messages: [{ role: "user", content: `${i}` }] });
    expect(new Set(server.requests.map((r) => r.remotePort)).size).toBe(1);
    client.close();
  });

  it("reports zero usage when the server sends none", async () => {
    server = await FakeServer.start(({ res }) => sendJson(res, 200, chatResponse("ok", { usage: null })));
    const client = createLlmClient({ baseUrl: server.url });
    const result = await client.chat({ messages: [{ role: "user", content: "hi" }] });
    expect(result.usage).toEqual({ promptTokens: 0, completionTokens: 0, totalTokens: 0 });
  });
});

describe("guided JSON", () => {
  it("sends the schema as response_format and guided_json by default, and returns the validated value", async () => {
    server = await FakeServer.start(({ res }) => sendJson(res, 200, chatResponse('{"answer":"Paris","confidence":0.9}')));
    const client = createLlmClient({ baseUrl: server.url });
    const result = await client.json({ messages: [{ role: "user", content: "Capital of France?" }], schema: answerSchema, schemaName: "answer" });

    const expectedSchema = {
      type: "object",
      properties: { answer: { type: "string" }, confidence: { type: "number", minimum: 0, maximum: 1 } },
      required: ["answer", "confidence"],
      additionalProperties: false,
    };
    const body = server.requests[0]!.body!;
    expect(body["response_format"]).toEqual({ type: "json_schema", json_schema: { name: "answer", schema: expectedSchema, strict: true } });
    expect(body["guided_json"]).toEqual(expectedSchema);
    expect(body["structured_outputs"]).toBeUndefined();
    expect(result.value).toEqual({ answer: "Paris", confidence: 0.9 });
    expect(result.text).toBe('{"answer":"Paris","confidence":0.9}');
  });

  it("sends only the chosen fields: client default or per request, on chat and on completions", async () => {
    server = await FakeServer.start(({ res, path }) =>
      sendJson(res, 200, path === "/v1/completions" ? completionResponse('{"answer":"x","confidence":0}') : chatResponse('{"answer":"x","confidence":0}')),
    );
    const client = createLlmClient({ baseUrl: server.url, guidedJsonFields: ["structured_outputs"] });
    await client.json({ messages: [{ role: "user", content: "q" }], schema: answerSchema });
    await client.json({ prompt: "q", schema: answerSchema, guidedJsonFields: ["guided_json"], strict: false });
    await client.json({ prompt: "q", schema: answerSchema, guidedJsonFields: ["response_format"], strict: false });

    const [first, second, third] = server.requests.map((r) => r.body!);
    expect(Object.keys(first!).filter((k) => /response_format|guided_json|structured_outputs/.test(k))).toEqual(["structured_outputs"]);
    expect(first!["structured_outputs"]).toMatchObject({ json: { type: "object", required: ["answer", "confidence"] } });
    expect(server.requests[1]!.path).toBe("/v1/completions");
    expect(second!["prompt"]).toBe("q");
    expect(second!["guided_json"]).toMatchObject({ type: "object" });
    expect(second!["response_format"]).toBeUndefined();
    expect(third!["response_format"]).toMatchObject({ type: "json_schema", json_schema: { name: "response", strict: false } });
    expect(third!["guided_json"]).toBeUndefined();
  });

  it("sends a JSON schema given as-is on a plain chat call without validating", async () => {
    server = await FakeServer.start(({ res }) => sendJson(res, 200, chatResponse("not json at all")));
    const client = createLlmClient({ baseUrl: server.url });
    const schema = { type: "object", properties: { q: { type: "string" } }, required: ["q"] };
    const result = await client.chat({ messages: [{ role: "user", content: "x" }], guidedJson: { name: "qa", schema } });
    expect(server.requests[0]!.body!["guided_json"]).toEqual(schema);
    expect(result.text).toBe("not json at all");
  });

  it("a schema mismatch that persists fails as malformed_json naming the field", async () => {
    server = await FakeServer.start(({ res }) => sendJson(res, 200, chatResponse('{"answer":"Paris","confidence":7}')));
    const client = createLlmClient({ baseUrl: server.url, maxRetries: 1, backoff: { baseMs: 1 } });
    const error = await client.json({ messages: [{ role: "user", content: "q" }], schema: answerSchema, schemaName: "answer" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LlmError);
    expect(error).toMatchObject({ kind: "malformed_json", retryable: true, attempts: 2 });
    expect((error as LlmError).message).toMatch(/does not match schema "answer".*confidence/);
    expect(server.requests).toHaveLength(2);
  });

  it("output cut at max_tokens says so", async () => {
    server = await FakeServer.start(({ res }) => sendJson(res, 200, chatResponse('{"answer":"Par', { finishReason: "length" })));
    const client = createLlmClient({ baseUrl: server.url, maxRetries: 0 });
    const error = (await client.json({ messages: [{ role: "user", content: "q" }], schema: answerSchema }).catch((e: unknown) => e)) as LlmError;
    expect(error.kind).toBe("malformed_json");
    expect(error.message).toMatch(/not valid JSON.*max_tokens/);
  });
});

describe("hostile responses", () => {
  it("binary garbage, a body without choices and an oversized body are clear errors, and the client keeps working", async () => {
    const replies: ((res: import("node:http").ServerResponse) => void)[] = [
      (res) => {
        res.writeHead(200, { "content-type": "application/json" });
        res.end(Buffer.from([0xff, 0xfe, 0x00, 0x81, 0x7b, 0x22]));
      },
      (res) => sendJson(res, 200, { id: "x", object: "chat.completion", choices: [] }),
      (res) => sendJson(res, 200, chatResponse("x".repeat(200_000))),
      (res) => sendJson(res, 200, chatResponse("fine")),
    ];
    server = await FakeServer.start(({ res, n }) => replies[n]!(res));
    const client = createLlmClient({ baseUrl: server.url, maxRetries: 0, maxResponseBytes: 100_000 });
    const chat = () => client.chat({ messages: [{ role: "user", content: "q" }] }).catch((e: unknown) => e as LlmError);

    const binary = await chat();
    expect(binary).toMatchObject({ kind: "malformed_json", retryable: true });
    expect((binary as LlmError).message).toMatch(/not JSON/);
    const empty = await chat();
    expect(empty).toMatchObject({ kind: "malformed_json" });
    expect((empty as LlmError).message).toMatch(/has no choices/);
    const huge = await chat();
    expect(huge).toMatchObject({ kind: "server_error", retryable: false });
    expect((huge as LlmError).message).toMatch(/larger than 100000 bytes/);
    expect(await chat()).toMatchObject({ text: "fine" });
  });
});
