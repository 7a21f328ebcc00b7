import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createLlmClient, isLlmError, type LlmClient } from "@ragtune/llm";
import { createLogger } from "@ragtune/logger";
import { afterAll, beforeAll, describe, expect, inject, it, vi } from "vitest";
import { z } from "zod";
import { type ModelServer, startModelServer } from "../src/index.js";

const { model, adapter, modelDir } = inject("tinyModels");
const logger = createLogger({ svc: "model-server-test", level: "silent" });
const PROMPT = "[INST] Context: The Musca service stores data in Postgres.\nQuestion: Where does Musca store data? [/INST]";

function client(server: ModelServer, options: Partial<Parameters<typeof createLlmClient>[0]> = {}): LlmClient {
  return createLlmClient({ baseUrl: server.baseUrl, model: "tiny", maxRetries: 0, timeoutMs: 60_000, ...options });
}

async function post(server: ModelServer, path: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${server.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** Resolves when `hold.release()` is called; `entered` resolves when something waits on it. */
function gate() {
  let release!: () => void;
  let entered!: () => void;
  const released = new Promise<void>((ok) => (release = ok));
  const reached = new Promise<void>((ok) => (entered = ok));
  return { release, reached, wait: () => (entered(), released) };
}

describe("model server on the tiny model (real node-llama-cpp, real HTTP on 127.0.0.1)", () => {
  let server: ModelServer;
  let llm: LlmClient;

  beforeAll(async () => {
    server = await startModelServer({ model, servedModelName: "tiny", loraModules: [{ name: "job", path: adapter }], port: 0, concurrency: 2, contextSize: 512, logger });
    llm = client(server);
  });
  afterAll(async () => {
    llm?.close();
    await server?.close();
  });

  it("lists the base model and the adapter as vLLM does (the adapter's parent is the base)", async () => {
    const { models } = await llm.models();
    expect(models).toEqual([
      { id: "tiny", ownedBy: "ragtune", root: model, maxModelLen: 512 },
      { id: "job", ownedBy: "ragtune", root: adapter, parent: "tiny" },
    ]);
  });

  it("completes greedily and repeatably; base and adapter answer the same prompt differently", async () => {
    const request = { prompt: PROMPT, maxTokens: 24, temperature: 0 };
    const base = await llm.complete({ ...request, model: "tiny" });
    const again = await llm.complete({ ...request, model: "tiny" });
    const tuned = await llm.complete({ ...request, model: "job" });
    expect(again.text).toBe(base.text);
    expect(tuned.text).not.toBe(base.text);
    expect(base.model).toBe("tiny");
    expect(tuned.model).toBe("job");
    expect(base.usage.promptTokens).toBeGreaterThan(10);
    expect(base.usage.completionTokens).toBeLessThanOrEqual(24);
    expect(base.usage.totalTokens).toBe(base.usage.promptTokens + base.usage.completionTokens);
    // The random base runs on to max_tokens; the adapter learned to stop.
    expect(base).toMatchObject({ finishReason: "length" });
    expect(base.usage.completionTokens).toBe(24);
    expect(tuned.finishReason).toBe("stop");
    // vLLM's ignore_eos: the adapter keeps going to max_tokens.
    const long = await llm.complete({ ...request, model: "job", extraBody: { ignore_eos: true } });
    expect(long).toMatchObject({ finishReason: "length", usage: { completionTokens: 24 } });
    expect(long.text.startsWith(tuned.text)).toBe(true);
  });

  it("defaults max_tokens to 16 on /v1/completions and to the rest of the context on chat", async () => {
    const completion = await post(server, "/v1/completions", { model: "tiny", prompt: "The quick brown fox", temperature: 0 });
    expect(completion.status).toBe(200);
    expect(completion.json.usage.completion_tokens).toBe(16);
    expect(completion.json.choices[0]).toMatchObject({ index: 0, finish_reason: "length", stop_reason: null, logprobs: null });
    expect(completion.json).toMatchObject({ object: "text_completion", model: "tiny" });
    expect(completion.json.id).toMatch(/^cmpl-/);
  });

  it("streams completions and chat over SSE, as libs/llm reads them, with the same text as without streaming", async () => {
    const completionRequest = { prompt: PROMPT, maxTokens: 20, temperature: 0, model: "tiny" };
    const whole = await llm.complete(completionRequest);
    const stream = llm.streamCompletion(completionRequest);
    const deltas: string[] = [];
    for await (const delta of stream) deltas.push(delta.text);
    expect(deltas.filter((d) => d !== "").length).toBeGreaterThan(1);
    expect(stream.text).toBe(whole.text);
    expect(stream.finishReason).toBe(whole.finishReason);
    expect(stream.usage).toEqual(whole.usage);

    const messages = [
      { role: "system" as const, content: "Answer from the context only." },
      { role: "user" as const, content: "Context: The Musca service stores data in Postgres.\nQuestion: Where does Musca store data?" },
    ];
    for (const name of ["tiny", "job"]) {
      const chat = await llm.chat({ messages, model: name, maxTokens: 20, temperature: 0 });
      const chatStream = await llm.streamChat({ messages, model: name, maxTokens: 20, temperature: 0 }).collect();
      expect(chatStream.text).toBe(chat.text);
      expect(chatStream.finishReason).toBe(chat.finishReason);
      expect(chatStream.usage).toEqual(chat.usage);
      expect(chatStream.model).toBe(name);
    }
    const raw = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", messages, max_tokens: 3, temperature: 0, stream: true }),
    });
    expect(raw.headers.get("content-type")).toMatch(/^text\/event-stream/);
    const events = (await raw.text()).split("\n\n").filter(Boolean);
    expect(events.at(-1)).toBe("data: [DONE]");
    const first = JSON.parse(events[0]!.slice("data: ".length));
    expect(first).toMatchObject({ object: "chat.completion.chunk", model: "tiny", choices: [{ index: 0, delta: { role: "assistant", content: "" } }] });
    // No usage chunk unless stream_options.include_usage asks for it.
    expect(events.some((e) => e.includes('"usage"'))).toBe(false);
  });

  it("serves more requests than sequences back to back (each waits for a sequence, none fails)", async () => {
    const request = { prompt: PROMPT, maxTokens: 6, temperature: 0, extraBody: { ignore_eos: true } };
    const answers = await Promise.all(Array.from({ length: 7 }, (_, i) => llm.complete({ ...request, model: i % 2 ? "job" : "tiny" })));
    // Every request was served in full by the model it named. (Not asserted: that equal greedy requests give equal
    // text. Sequences decoded together share a context's KV cache and batches whose make-up depends on timing, so the
    // float sums differ in their last bits, and the tiny random model's near-tied logits can then pick another token;
    // vLLM is not batch-invariant either. One CI run under load saw 3 different texts for the same request.)
    for (const [i, a] of answers.entries()) {
      expect(a.model).toBe(i % 2 ? "job" : "tiny");
      expect(a.finishReason).toBe("length");
      expect(a.usage?.completionTokens).toBe(6);
      expect(a.text.length).toBeGreaterThan(0);
    }
  });

  it("stops at a stop string, leaves it out of the text and names it in stop_reason", async () => {
    const free = await post(server, "/v1/completions", { model: "tiny", prompt: PROMPT, max_tokens: 24, temperature: 0 });
    const text: string = free.json.choices[0].text;
    const stop = text.slice(8, 12);
    expect(stop.trim()).not.toBe("");
    const cut = await post(server, "/v1/completions", { model: "tiny", prompt: PROMPT, max_tokens: 24, temperature: 0, stop: [stop, "never-appears-xyz"] });
    expect(cut.json.choices[0]).toMatchObject({ text: text.slice(0, text.indexOf(stop)), finish_reason: "stop", stop_reason: stop });
    const streamed = await llm.streamCompletion({ model: "tiny", prompt: PROMPT, maxTokens: 24, temperature: 0, stop }).collect();
    expect(streamed.text).toBe(text.slice(0, text.indexOf(stop)));
    expect(streamed.finishReason).toBe("stop");
  });

  it("samples with temperature reproducibly for a seed", async () => {
    const request = { model: "tiny", prompt: PROMPT, maxTokens: 24, temperature: 1, seed: 7 };
    const a = await llm.complete(request);
    const b = await llm.complete(request);
    expect(b.text).toBe(a.text);
    const greedy = await llm.complete({ ...request, temperature: 0 });
    expect(a.text).not.toBe(greedy.text);
  });

  it("constrains output to a JSON schema, from response_format, guided_json or structured_outputs", async () => {
    const schema = z.object({
      answer: z.string().max(24),
      answerable: z.boolean(),
      kind: z.enum(["fact", "refusal"]),
    });
    for (const fields of [["response_format"], ["guided_json"], ["structured_outputs"]] as const) {
      const guided = client(server, { guidedJsonFields: fields });
      for (const name of ["tiny", "job"]) {
        const chat = await guided.json({ model: name, messages: [{ role: "user", content: "Where does Musca store data?" }], schema, schemaName: "qa", temperature: 0, maxTokens: 120 });
        expect(schema.safeParse(chat.value).success).toBe(true);
        const completion = await guided.json({ model: name, prompt: PROMPT, schema, schemaName: "qa", temperature: 0.8, seed: 3, maxTokens: 120 });
        expect(schema.safeParse(completion.value).success).toBe(true);
      }
      guided.close();
    }
    const anyObject = await post(server, "/v1/chat/completions", { model: "tiny", messages: [{ role: "user", content: "hi" }], response_format: { type: "json_object" }, max_tokens: 150, temperature: 0 });
    expect(anyObject.status).toBe(200);
    if (anyObject.json.choices[0].finish_reason === "stop") expect(() => JSON.parse(anyObject.json.choices[0].message.content)).not.toThrow();
    const bad = await post(server, "/v1/chat/completions", { model: "tiny", messages: [{ role: "user", content: "hi" }], guided_json: { type: "no-such-type" } });
    expect(bad.status).toBe(400);
    expect(bad.json.error.message).toMatch(/^guided_json: /);
  });

  it("loads and unloads adapters at runtime", async () => {
    const loaded = await post(server, "/v1/load_lora_adapter", { lora_name: "job-2", lora_path: adapter });
    expect(loaded).toMatchObject({ status: 200, text: "Success: LoRA adapter 'job-2' added successfully." });
    expect((await llm.models()).models.map((m) => m.id)).toEqual(["tiny", "job", "job-2"]);
    const request = { prompt: PROMPT, maxTokens: 16, temperature: 0 };
    expect((await llm.complete({ ...request, model: "job-2" })).text).toBe((await llm.complete({ ...request, model: "job" })).text);

    const again = await post(server, "/v1/load_lora_adapter", { lora_name: "job-2", lora_path: adapter });
    expect(again.status).toBe(400);
    expect(again.json.error.message).toBe("The lora adapter 'job-2' has already been loaded.");

    const unloaded = await post(server, "/v1/unload_lora_adapter", { lora_name: "job-2" });
    expect(unloaded).toMatchObject({ status: 200, text: "Success: LoRA adapter 'job-2' removed successfully." });
    expect((await llm.models()).models.map((m) => m.id)).toEqual(["tiny", "job"]);
    const gone = await post(server, "/v1/completions", { model: "job-2", prompt: "hi" });
    expect(gone.status).toBe(404);
    expect(gone.json.error).toMatchObject({ message: "The model `job-2` does not exist.", type: "NotFoundError", param: "model", code: 404 });
    expect((await post(server, "/v1/unload_lora_adapter", { lora_name: "job-2" })).status).toBe(404);
    expect((await post(server, "/v1/unload_lora_adapter", { lora_name: "tiny" })).json.error.message).toMatch(/base model cannot be unloaded/);

    const missing = await post(server, "/v1/load_lora_adapter", { lora_name: "x", lora_path: join(modelDir, "no-such.gguf") });
    expect(missing.status).toBe(400);
    expect(missing.json.error).toMatchObject({ param: "lora_path" });
    expect(missing.json.error.message).toMatch(/no such file/);
    const notGguf = join(modelDir, "not-an-adapter.gguf");
    await writeFile(notGguf, "this is not a GGUF file\n");
    const broken = await post(server, "/v1/load_lora_adapter", { lora_name: "x", lora_path: notGguf });
    expect(broken.status).toBe(400);
    expect(broken.json.error.message).toMatch(/cannot load the lora adapter 'x'/);
    expect((await post(server, "/v1/load_lora_adapter", { lora_name: "x" })).json.error).toMatchObject({ param: "lora_path", code: 400 });
    // Still serving.
    expect((await llm.complete({ ...request, model: "job" })).text).not.toBe("");
  });

  it("answers bad requests with 400/404 in OpenAI's error shape, naming the field", async () => {
    const cases: [unknown, number, RegExp][] = [
      [{ model: "tiny", prompt: "hi", temperature: 5 }, 400, /^temperature: /],
      [{ model: "tiny", prompt: "hi", max_tokens: 0 }, 400, /^max_tokens: must be at least 1/],
      [{ model: "tiny", prompt: "hi", n: 2 }, 400, /^n: .*one choice/],
      [{ model: "tiny" }, 400, /^prompt: /],
      [{ model: "tiny", prompt: ["a", "b"] }, 400, /one prompt per request/],
      [{ model: "tiny", prompt: "hi", stop: [""] }, 400, /stop.*must not be empty/],
      [{ model: "tiny", prompt: "hi", max_tokens: 600 }, 400, /maximum context length is 512 tokens/],
      [{ model: "nope", prompt: "hi" }, 404, /^The model `nope` does not exist\.$/],
      [[1, 2], 400, /must be a JSON object/],
      ["{not json", 400, /not valid JSON/],
    ];
    for (const [body, status, message] of cases) {
      const res = await post(server, "/v1/completions", body);
      expect(res.status, JSON.stringify(body)).toBe(status);
      expect(res.json.error.message).toMatch(message);
      expect(res.json.error.code).toBe(status);
    }
    const chat = await post(server, "/v1/chat/completions", { model: "tiny", messages: [{ role: "robot", content: "hi" }] });
    expect(chat.status).toBe(400);
    expect(chat.json.error).toMatchObject({ param: "messages.0.role" });
    expect((await fetch(`${server.url}/v1/nothing`)).status).toBe(404);
    expect((await fetch(`${server.url}/v1/completions`)).status).toBe(405);

    // Through the project's client: not retried, the server's message in the error.
    const error = await llm.complete({ model: "nope", prompt: "hi" }).catch((e: unknown) => e);
    expect(isLlmError(error) && error.status === 404 && error.kind === "bad_request").toBe(true);
    expect((error as Error).message).toMatch(/The model `nope` does not exist/);
  });

  it("answers /health and /metrics while a generation runs (inference is off the event loop)", async () => {
    const stream = llm.streamCompletion({ model: "tiny", prompt: PROMPT, maxTokens: 480, temperature: 0 });
    const iterator = stream[Symbol.asyncIterator]();
    expect((await iterator.next()).done).toBe(false);
    const health = await fetch(`${server.url}/health`);
    expect(health.status).toBe(200);
    // Asked after /health answered: the generation is still running.
    expect(server.stats().running).toBe(1);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/^vllm:num_requests_running 1$/m);
    while (!(await iterator.next()).done) {
      // drain
    }
    expect(stream.finishReason).toBe("length");
    const after = await (await fetch(`${server.url}/metrics`)).text();
    expect(after).toMatch(/^vllm:num_requests_running 0$/m);
    expect(after).toMatch(/^vllm:generation_tokens_total\{model_name="tiny"\} \d+/m);
    expect(after).toMatch(/^vllm:request_success_total\{model_name="job",finished_reason="stop"\} \d+/m);
    expect(after).toMatch(/^vllm:time_to_first_token_seconds_count\{model_name="tiny"\} \d+/m);
  });
});

describe("a client that goes away", () => {
  it("cancels its generation: the sequence is free again and nothing is counted as finished", async () => {
    const server = await startModelServer({ model, servedModelName: "tiny", port: 0, concurrency: 1, contextSize: 512, logger });
    const llm = client(server);
    try {
      const stream = llm.streamCompletion({ model: "tiny", prompt: PROMPT, maxTokens: 480, temperature: 0, extraBody: { ignore_eos: true } });
      for await (const delta of stream) if (delta.text !== "") break; // leaving the loop closes the connection
      await vi.waitFor(() => expect(server.stats().running).toBe(0), { timeout: 20_000, interval: 20 });
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      expect(metrics).not.toMatch(/^vllm:request_success_total\{/m);
      // and the server goes on answering
      expect((await llm.complete({ model: "tiny", prompt: "hi", maxTokens: 2, temperature: 0 })).usage.completionTokens).toBe(2);
    } finally {
      llm.close();
      await server.close();
    }
  });
});

describe("admission: concurrency, the bounded queue and 429", () => {
  it("runs `concurrency` generations, queues `maxQueue` more and refuses the next with 429", async () => {
    const hold = gate();
    const queued = gate();
    let first = true;
    const server = await startModelServer({
      model,
      servedModelName: "tiny",
      port: 0,
      concurrency: 1,
      maxQueue: 1,
      contextSize: 256,
      logger,
      hooks: {
        admitted: () => (first ? ((first = false), hold.wait()) : undefined),
        queued: () => void queued.wait(),
      },
    });
    try {
      const body = { model: "tiny", prompt: "The quick brown fox", max_tokens: 8, temperature: 0 };
      const a = post(server, "/v1/completions", body);
      await hold.reached; // A holds the only sequence
      const b = post(server, "/v1/completions", body);
      await queued.reached; // B waits in the queue
      expect(server.stats()).toEqual({ running: 1, waiting: 1 });
      const c = await post(server, "/v1/completions", body);
      expect(c.status).toBe(429);
      expect(c.headers.get("retry-after")).toBe("1");
      expect(c.json.error).toMatchObject({ type: "RateLimitError", code: 429 });
      expect(c.json.error.message).toMatch(/at capacity: 1 generations running and 1 waiting/);
      hold.release();
      const [ra, rb] = await Promise.all([a, b]);
      expect([ra.status, rb.status]).toEqual([200, 200]);
      expect(rb.json.choices[0].text).toBe(ra.json.choices[0].text);
      expect(server.stats()).toEqual({ running: 0, waiting: 0 });
      expect(await (await fetch(`${server.url}/metrics`)).text()).toMatch(/^model_server_requests_rejected_total 1$/m);
    } finally {
      hold.release();
      await server.close();
    }
  });
});

describe("API key", () => {
  it("requires the bearer key on /v1/* (401 otherwise) and leaves /health open", async () => {
    const server = await startModelServer({ model, servedModelName: "tiny", port: 0, concurrency: 1, contextSize: 256, apiKey: "s3cret-key", logger });
    try {
      expect((await fetch(`${server.url}/v1/models`)).status).toBe(401);
      const wrong = await fetch(`${server.url}/v1/models`, { headers: { authorization: "Bearer nope" } });
      expect(wrong.status).toBe(401);
      expect(((await wrong.json()) as any).error).toMatchObject({ type: "AuthenticationError", code: 401 });
      expect((await fetch(`${server.url}/health`)).status).toBe(200);
      const keyed = client(server, { apiKey: "s3cret-key" });
      expect((await keyed.complete({ prompt: "hi", maxTokens: 2, temperature: 0 })).usage.completionTokens).toBeGreaterThan(0);
      keyed.close();
      const unkeyed = client(server);
      const error = await unkeyed.models().catch((e: unknown) => e);
      expect(isLlmError(error) && error.kind === "unauthorized").toBe(true);
      unkeyed.close();
    } finally {
      await server.close();
    }
  });

  it("fails to start with a clear message for a missing model or adapter file", async () => {
    await expect(startModelServer({ model: join(modelDir, "missing.gguf"), port: 0, logger })).rejects.toThrow(/the model: no such file .*missing\.gguf/);
    await expect(startModelServer({ model, port: 0, logger, loraModules: [{ name: "a", path: join(modelDir, "missing.gguf") }] })).rejects.toThrow(
      /--lora-modules: lora_path of adapter 'a': no such file/,
    );
  });
});

describe("decoding steps", () => {
  /** Steps and tokens decoded so far, from the server's vllm:iteration_tokens_total histogram. */
  async function steps(server: ModelServer) {
    const text = await (await fetch(`${server.url}/metrics`)).text();
    const count = Number(/^vllm:iteration_tokens_total_count (\d+)$/m.exec(text)?.[1]);
    const tokens = Number(/^vllm:iteration_tokens_total_sum (\d+)$/m.exec(text)?.[1]);
    const atMost = (le: number) => Number(new RegExp(`^vllm:iteration_tokens_total_bucket\\{le="${le}"\\} (\\d+)$`, "m").exec(text)?.[1]);
    return { count, tokens, atMost };
  }

  it("decodes every running generation in every step (node-llama-cpp's own loop leaves the last one out)", async () => {
    const CONCURRENCY = 4;
    const MAX_TOKENS = 40;
    // The generations are held at admission until all have their sequence, then start in the same turn, so their
    // prompts are decoded together and every later step has one token of each: MAX_TOKENS steps in all.
    const hold = gate();
    let admitted = 0;
    const server = await startModelServer({
      model,
      servedModelName: "tiny",
      port: 0,
      concurrency: CONCURRENCY,
      contextSize: 512,
      logger,
      hooks: {
        admitted: () => {
          if (++admitted === CONCURRENCY) hold.release();
          return hold.wait();
        },
      },
    });
    const llm = client(server, { concurrency: CONCURRENCY });
    try {
      const streams = await Promise.all(
        Array.from({ length: CONCURRENCY }, () =>
          llm.streamCompletion({ model: "tiny", prompt: PROMPT, maxTokens: MAX_TOKENS, temperature: 0, extraBody: { ignore_eos: true } }).collect(),
        ),
      );
      for (const stream of streams) expect(stream.usage?.completionTokens).toBeGreaterThanOrEqual(MAX_TOKENS);
      const { count, tokens, atMost } = await steps(server);
      const generated = streams.reduce((n, s) => n + s.usage!.completionTokens, 0);
      // Every token but each generation's first (which comes from its prompt's step) is decoded in some step.
      expect(tokens).toBeGreaterThanOrEqual(generated - CONCURRENCY);
      // With node-llama-cpp's default strategy this is about MAX_TOKENS × 4/3 steps of 3 tokens.
      expect(count).toBeLessThanOrEqual(MAX_TOKENS + 1);
      expect(atMost(2)).toBeLessThanOrEqual(1); // a step of fewer: only a last token the others did not need
    } finally {
      llm.close();
      await server.close();
    }
  });
});
