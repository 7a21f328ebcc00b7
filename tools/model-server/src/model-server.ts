/**
 * The local model server: the subset of vLLM's OpenAI-compatible HTTP API the project uses, over the inference
 * engine. Routes: GET /health, GET /metrics, GET /v1/models, POST /v1/completions, POST /v1/chat/completions
 * (both optionally SSE-streamed), POST /v1/load_lora_adapter, POST /v1/unload_lora_adapter.
 *
 * Admission: at most `concurrency` generations run (one context sequence each); up to `maxQueue` more wait in FIFO
 * order; past that a request gets 429 at once. `/v1/*` needs `Authorization: Bearer <apiKey>` when an API key is set
 * (as vLLM's `--api-key`); /health and /metrics stay open.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { ConcurrencyLimiter, type Release, Secret } from "@ragtune/llm";
import { createLogger, type Logger } from "@ragtune/logger";
import type { LlamaGrammar } from "node-llama-cpp";
import { InferenceEngine, type GenerationResult, type PreparedPrompt, type ServedModel, unknownModel } from "./engine.js";
import { ModelServerError } from "./errors.js";
import { ModelServerMetrics } from "./metrics.js";
import {
  type ChatRequest,
  type CompletionRequest,
  parseChatRequest,
  parseCompletionRequest,
  parseLoadAdapterRequest,
  parseUnloadAdapterRequest,
  type SamplingRequest,
} from "./requests.js";

/** A LoRA adapter to serve from the start (`--lora-modules name=path`). */
export interface LoraModule {
  name: string;
  /** A GGUF LoRA adapter file (the trainer writes `adapter.gguf` next to the PEFT files). */
  path: string;
}

/** Test hooks: points where a test can observe or hold a request, to force an interleaving without sleeping. */
export interface ModelServerHooks {
  /** A generation request found every sequence busy and joined the queue. */
  queued?(info: { model: string }): void;
  /** A generation request got its sequence; generation starts once the returned promise settles. */
  admitted?(info: { model: string }): Promise<void> | void;
}

export interface ModelServerOptions {
  /** The base model: a GGUF file (the tiny model's `model.gguf`, or a real model's GGUF). */
  model: string;
  /** The name requests use for the base model (vLLM's `--served-model-name`); default: `model` as given. */
  servedModelName?: string;
  /** Adapters served from the start. */
  loraModules?: LoraModule[];
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 8000; 0 picks a free port (tests). */
  port?: number;
  /** Generations at once (context sequences per model). Default 4. */
  concurrency?: number;
  /** Requests that may wait for a sequence; one more gets 429. Default 64. */
  maxQueue?: number;
  /** Tokens per sequence, prompt + completion (vLLM's max_model_len). Default 2048. */
  contextSize?: number;
  /** CPU threads for llama.cpp. Default 1. */
  threads?: number;
  /**
   * Streams write their events to the socket at most this often (the first text at once, the last with `[DONE]`);
   * each token is still an event of its own. 0: every event-loop turn. Default 50.
   */
  streamIntervalMs?: number;
  /** Bearer token required on /v1/* (vLLM's `--api-key`). */
  apiKey?: string | Secret;
  /** Largest request body. Default 16 MiB. */
  maxBodyBytes?: number;
  /** Default: a pino root logger with svc "model-server". */
  logger?: Logger;
  hooks?: ModelServerHooks;
}

export interface ModelServer {
  /** `http://host:port` (no `/v1`). */
  readonly url: string;
  /** `http://host:port/v1`, what LLM_BASE_URL takes. */
  readonly baseUrl: string;
  readonly port: number;
  /** The base model's served name. */
  readonly baseModel: string;
  readonly metrics: ModelServerMetrics;
  /** Base model first, then adapters. */
  models(): ServedModel[];
  loadAdapter(name: string, path: string): Promise<ServedModel>;
  unloadAdapter(name: string): Promise<void>;
  /** Generations running and requests waiting right now. */
  stats(): { running: number; waiting: number };
  /** Stops accepting requests, ends open connections and frees the model. */
  close(): Promise<void>;
}

export const DEFAULTS = {
  host: "127.0.0.1",
  port: 8000,
  concurrency: 4,
  maxQueue: 64,
  contextSize: 2048,
  threads: 1,
  streamIntervalMs: 50,
  maxBodyBytes: 16 * 1024 * 1024,
  /** OpenAI's and vLLM's default max_tokens for /v1/completions. */
  completionMaxTokens: 16,
} as const;

export async function startModelServer(options: ModelServerOptions): Promise<ModelServer> {
  const logger = (options.logger ?? createLogger({ svc: "model-server" })).child({ subsystem: "model-server" });
  const concurrency = positiveInt(options.concurrency ?? DEFAULTS.concurrency, "concurrency");
  const maxQueue = options.maxQueue ?? DEFAULTS.maxQueue;
  if (!Number.isInteger(maxQueue) || maxQueue < 0) throw new RangeError(`maxQueue must be an integer ≥ 0, got ${maxQueue}`);
  const metrics = new ModelServerMetrics();
  const engine = await InferenceEngine.load({
    modelPath: options.model,
    ...(options.servedModelName === undefined ? {} : { servedModelName: options.servedModelName }),
    contextSize: positiveInt(options.contextSize ?? DEFAULTS.contextSize, "contextSize"),
    sequences: concurrency,
    threads: positiveInt(options.threads ?? DEFAULTS.threads, "threads"),
    logger,
    onBatch: (tokens) => metrics.iterationTokens.observe(tokens),
  });
  try {
    for (const module of options.loraModules ?? []) await engine.loadAdapter(module.name, module.path);
  } catch (error) {
    await engine.close();
    throw error instanceof ModelServerError ? new Error(`--lora-modules: ${error.message}`, { cause: error }) : error;
  }

  const apiKey = options.apiKey instanceof Secret ? options.apiKey.reveal() : options.apiKey;
  const keyDigest = apiKey === undefined ? undefined : digest(apiKey);
  const limiter = new ConcurrencyLimiter(concurrency);
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULTS.maxBodyBytes;
  const hooks = options.hooks ?? {};
  let closing = false;

  const streamIntervalMs = options.streamIntervalMs ?? DEFAULTS.streamIntervalMs;
  if (!Number.isFinite(streamIntervalMs) || streamIntervalMs < 0) throw new RangeError(`streamIntervalMs must be ≥ 0, got ${streamIntervalMs}`);
  const context: HandlerContext = { engine, metrics, logger, hooks, limiter, maxQueue, maxBodyBytes, streamIntervalMs };

  const server: Server = createServer((req, res) => {
    const route = routeOf(req);
    res.on("finish", () => metrics.http.inc({ route: route.name, status: String(res.statusCode) }));
    handle(req, res, route).catch((error: unknown) => {
      const known = error instanceof ModelServerError ? error : undefined;
      if (known === undefined) logger.error({ err: error, route: route.name }, "request failed");
      const failure = known ?? new ModelServerError(500, "internal error in the model server (see its log)");
      if (!res.headersSent) sendJson(res, failure.status, failure.toBody(), failure.status === 429 ? { "retry-after": "1" } : {});
      else if (!res.writableEnded) {
        // Mid-stream: say so in the stream (clients read `data: {"error": …}`), then end it.
        res.write(`data: ${JSON.stringify(failure.toBody())}\n\ndata: [DONE]\n\n`);
        res.end();
      }
    });
  });
  server.keepAliveTimeout = 65_000;

  async function handle(req: IncomingMessage, res: ServerResponse, route: Route): Promise<void> {
    if (route.name === "not_found") throw new ModelServerError(404, `no route ${req.method} ${route.path}`);
    if (route.method !== req.method) throw new ModelServerError(405, `${route.path} takes ${route.method}, not ${req.method}`);
    if (route.name === "health") {
      if (closing) throw new ModelServerError(503, "the model server is shutting down");
      res.writeHead(200, { "content-length": "0" }).end();
      return;
    }
    if (route.name === "metrics") {
      const text = await metrics.registry.metrics();
      res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text);
      return;
    }
    if (keyDigest !== undefined && !authorized(req, keyDigest)) {
      throw new ModelServerError(401, "Unauthorized: send the server's API key as `Authorization: Bearer <key>`");
    }
    if (closing) throw new ModelServerError(503, "the model server is shutting down");
    switch (route.name) {
      case "models":
        sendJson(res, 200, modelList(engine));
        return;
      case "completions":
        await generate(context, res, "completion", parseCompletionRequest(await readJson(req, maxBodyBytes)));
        return;
      case "chat":
        await generate(context, res, "chat", parseChatRequest(await readJson(req, maxBodyBytes)));
        return;
      case "load_lora": {
        const { name, path } = parseLoadAdapterRequest(await readJson(req, maxBodyBytes));
        await engine.loadAdapter(name, path);
        sendText(res, 200, `Success: LoRA adapter '${name}' added successfully.`);
        return;
      }
      case "unload_lora": {
        const { name } = parseUnloadAdapterRequest(await readJson(req, maxBodyBytes));
        await engine.unloadAdapter(name);
        sendText(res, 200, `Success: LoRA adapter '${name}' removed successfully.`);
        return;
      }
    }
  }

  const sockets = new Set<import("node:net").Socket>();
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  server.listen(options.port ?? DEFAULTS.port, options.host ?? DEFAULTS.host);
  try {
    await once(server, "listening");
  } catch (error) {
    await engine.close();
    throw error;
  }
  const address = server.address() as AddressInfo;
  const host = address.family === "IPv6" ? `[${address.address}]` : address.address;
  const url = `http://${host}:${address.port}`;
  logger.info(
    { url, model: engine.baseId, adapters: engine.models().slice(1).map((m) => m.id), concurrency, maxQueue, contextSize: engine.maxModelLen, apiKey: apiKey === undefined ? undefined : "[redacted]" },
    "model server listening",
  );

  let closed: Promise<void> | undefined;
  return {
    url,
    baseUrl: `${url}/v1`,
    port: address.port,
    baseModel: engine.baseId,
    metrics,
    models: () => engine.models(),
    loadAdapter: (name, path) => engine.loadAdapter(name, path),
    unloadAdapter: (name) => engine.unloadAdapter(name),
    stats: () => ({ running: limiter.active, waiting: limiter.waiting }),
    close() {
      closed ??= (async () => {
        closing = true;
        const stopped = new Promise<void>((ok) => server.close(() => ok()));
        server.closeIdleConnections();
        for (const socket of sockets) socket.destroy();
        await stopped;
        await engine.close();
        logger.info("model server stopped");
      })();
      return closed;
    },
  };
}

interface HandlerContext {
  engine: InferenceEngine;
  metrics: ModelServerMetrics;
  logger: Logger;
  hooks: ModelServerHooks;
  limiter: ConcurrencyLimiter;
  maxQueue: number;
  maxBodyBytes: number;
  streamIntervalMs: number;
}

type Endpoint = "completion" | "chat";

async function generate(
  ctx: HandlerContext,
  res: ServerResponse,
  endpoint: Endpoint,
  request: CompletionRequest | ChatRequest,
): Promise<void> {
  const arrived = performance.now();
  const { engine, metrics, limiter, hooks } = ctx;
  const model = request.model ?? engine.baseId;
  if (!engine.has(model)) throw unknownModel(model);
  const prompt: PreparedPrompt =
    endpoint === "chat" ? engine.chatPrompt((request as ChatRequest).messages) : engine.completionPrompt((request as CompletionRequest).prompt);
  const maxTokens =
    request.maxTokens ?? (endpoint === "completion" ? DEFAULTS.completionMaxTokens : Math.max(1, engine.maxModelLen - prompt.tokens.length));
  const grammar = await grammarFor(engine, request);

  // The client going away cancels the wait and the generation.
  const cancel = new AbortController();
  res.on("close", () => {
    if (!res.writableFinished) cancel.abort(new Error("client disconnected"));
  });

  if (limiter.active >= limiter.limit && limiter.waiting >= ctx.maxQueue) {
    metrics.rejected.inc();
    throw new ModelServerError(
      429,
      `the model server is at capacity: ${limiter.active} generations running and ${limiter.waiting} waiting (the queue holds ${ctx.maxQueue}); retry later`,
    );
  }
  let release: Release;
  const mustWait = limiter.active >= limiter.limit || limiter.waiting > 0;
  try {
    const acquired = limiter.acquire(cancel.signal);
    if (mustWait) {
      metrics.waiting.set(limiter.waiting);
      hooks.queued?.({ model });
    }
    release = await acquired;
  } catch {
    metrics.waiting.set(limiter.waiting);
    return; // the client left while waiting: nobody to answer
  }
  metrics.waiting.set(limiter.waiting);
  metrics.running.inc();
  try {
    await hooks.admitted?.({ model });
    if (cancel.signal.aborted) return;
    const admitted = performance.now();
    const id = `${endpoint === "chat" ? "chatcmpl" : "cmpl"}-${randomBytes(12).toString("hex")}`;
    const created = Math.floor(Date.now() / 1000);
    let firstText = true;
    const onFirstText = () => {
      if (!firstText) return;
      firstText = false;
      metrics.timeToFirstToken.observe({ model_name: model }, (performance.now() - admitted) / 1000);
    };

    let result: GenerationResult;
    if (request.stream) {
      const stream = new SseWriter(res, endpoint, id, created, model, ctx.streamIntervalMs);
      stream.start();
      try {
        result = await engine.generate(model, prompt, {
          ...sampling(request, maxTokens, grammar, cancel.signal),
          onText: (text) => {
            if (text === "") return;
            onFirstText();
            stream.text(text);
          },
        });
      } catch (error) {
        stream.flush(); // the text so far, then the error event
        throw error;
      }
      if (cancel.signal.aborted) return;
      stream.finish(result, request.includeUsage);
    } else {
      result = await engine.generate(model, prompt, sampling(request, maxTokens, grammar, cancel.signal));
      if (cancel.signal.aborted) return;
      if (result.text !== "") onFirstText();
      sendJson(res, 200, responseBody(endpoint, id, created, model, result));
    }
    metrics.promptTokens.inc({ model_name: model }, result.promptTokens);
    metrics.generationTokens.inc({ model_name: model }, result.completionTokens);
    metrics.succeeded.inc({ model_name: model, finished_reason: result.finishReason });
    metrics.e2eLatency.observe({ model_name: model }, (performance.now() - arrived) / 1000);
    ctx.logger.debug(
      { model, endpoint, stream: request.stream, promptTokens: result.promptTokens, completionTokens: result.completionTokens, finishReason: result.finishReason, ms: Math.round(performance.now() - arrived) },
      "generation done",
    );
  } finally {
    metrics.running.dec();
    release();
  }
}

function sampling(request: SamplingRequest, maxTokens: number, grammar: LlamaGrammar | undefined, signal: AbortSignal) {
  return {
    maxTokens,
    temperature: request.temperature,
    topP: request.topP,
    ...(request.seed === undefined ? {} : { seed: request.seed }),
    stop: request.stop,
    ignoreEos: request.ignoreEos,
    ...(grammar === undefined ? {} : { grammar }),
    signal,
  };
}

async function grammarFor(engine: InferenceEngine, request: SamplingRequest): Promise<LlamaGrammar | undefined> {
  const guided = request.guided;
  if (guided === undefined) return undefined;
  if (guided.kind === "json_object") return engine.llama.getGrammarFor("json");
  return engine.jsonGrammar(guided.schema, guided.param);
}

function usageOf(result: GenerationResult) {
  return {
    prompt_tokens: result.promptTokens,
    completion_tokens: result.completionTokens,
    total_tokens: result.promptTokens + result.completionTokens,
  };
}

function responseBody(endpoint: Endpoint, id: string, created: number, model: string, result: GenerationResult) {
  const finish = { logprobs: null, finish_reason: result.finishReason, stop_reason: result.stopReason };
  if (endpoint === "chat") {
    return {
      id,
      object: "chat.completion",
      created,
      model,
      choices: [{ index: 0, message: { role: "assistant", content: result.text }, ...finish }],
      usage: usageOf(result),
    };
  }
  return {
    id,
    object: "text_completion",
    created,
    model,
    choices: [{ index: 0, text: result.text, ...finish }],
    usage: usageOf(result),
  };
}

/**
 * Server-sent events as vLLM streams them: one JSON chunk per `data:` line (one per piece of text), usage last, then
 * `[DONE]`.
 *
 * Events are queued and written later, not when the token comes:
 * - node-llama-cpp hands a context's tokens to JavaScript and dispatches the next batch (from a setImmediate) only
 *   after the sequences of the batch have taken theirs, so a socket write made there sat on the path of every
 *   decoding step (8 writes per step with 8 streams). The writes wait two event-loop turns, after that dispatch,
 *   and go out while the next batch decodes off the JavaScript thread.
 * - A loopback socket write costs the server ≈ 0.1–0.25 ms of CPU (the kernel delivers to the client and wakes it),
 *   as much as 10–15% of a token of the tiny model; so a stream writes at most every `intervalMs` (the first text
 *   at once): one token at a time with one stream, a few per write.
 * Order and content are the same as one write per event; the last events go with `[DONE]`.
 */
/** Stands for the text in a text event's template (a control character JSON escapes, which no split text holds). */
const PLACEHOLDER = "\u0000";

class SseWriter {
  readonly #object: string;
  /** Events not yet written. */
  #pending = "";
  #flushScheduled = false;
  /** performance.now() of the last write; -Infinity before the first. */
  #lastWrite = Number.NEGATIVE_INFINITY;
  /** A text event's JSON before and after the text. */
  #textEvent: [string, string] | undefined;

  constructor(
    readonly res: ServerResponse,
    readonly endpoint: Endpoint,
    readonly id: string,
    readonly created: number,
    readonly model: string,
    readonly intervalMs: number,
  ) {
    this.#object = endpoint === "chat" ? "chat.completion.chunk" : "text_completion";
  }

  start(): void {
    this.res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache", connection: "keep-alive" });
    this.res.flushHeaders();
    // The role chunk goes out with the headers; it does not count as a write, so the first text follows at once.
    if (this.endpoint === "chat") this.res.write(this.#event([{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }]));
  }

  text(text: string): void {
    // The same bytes as #event() on the chunk, without serialising the whole chunk for every token.
    if (this.#textEvent === undefined) {
      const template = this.#event([
        this.endpoint === "chat"
          ? { index: 0, delta: { content: PLACEHOLDER }, logprobs: null, finish_reason: null }
          : { index: 0, text: PLACEHOLDER, logprobs: null, finish_reason: null, stop_reason: null },
      ]);
      const at = template.lastIndexOf(JSON.stringify(PLACEHOLDER)); // the choices come last
      this.#textEvent = [template.slice(0, at), template.slice(at + JSON.stringify(PLACEHOLDER).length)];
    }
    this.#append(this.#textEvent[0] + JSON.stringify(text) + this.#textEvent[1]);
  }

  finish(result: GenerationResult, includeUsage: boolean): void {
    const finish = { logprobs: null, finish_reason: result.finishReason, stop_reason: result.stopReason };
    this.#queue([this.endpoint === "chat" ? { index: 0, delta: {}, ...finish } : { index: 0, text: "", ...finish }]);
    if (includeUsage) this.#queue([], usageOf(result));
    const rest = this.#take();
    this.res.end(`${rest}data: [DONE]\n\n`);
  }

  /** Writes the queued events now (before an error event ends the stream). */
  flush = (): void => {
    this.#flushScheduled = false;
    const events = this.#take();
    if (events !== "" && !this.res.writableEnded && !this.res.destroyed) {
      this.#lastWrite = performance.now();
      this.res.write(events);
    }
  };

  #take(): string {
    const events = this.#pending;
    this.#pending = "";
    return events;
  }

  #event(choices: unknown[], usage?: unknown): string {
    const chunk = { id: this.id, object: this.#object, created: this.created, model: this.model, choices, ...(usage === undefined ? {} : { usage }) };
    return `data: ${JSON.stringify(chunk)}\n\n`;
  }

  #queue(choices: unknown[], usage?: unknown): void {
    this.#append(this.#event(choices, usage));
  }

  #append(event: string): void {
    this.#pending += event;
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      const wait = this.#lastWrite + this.intervalMs - performance.now();
      // Two turns on at the soonest: node-llama-cpp dispatches the next batch from a setImmediate of its own that
      // is queued after this point, and the write should follow it, not precede it.
      if (wait > 0) setTimeout(this.flush, wait);
      else setImmediate(() => setImmediate(this.flush));
    }
  }
}

function modelList(engine: InferenceEngine) {
  return {
    object: "list",
    data: engine.models().map((m) => ({
      id: m.id,
      object: "model",
      created: m.created,
      owned_by: "ragtune",
      root: m.loraPath ?? engine.options.modelPath,
      parent: m.loraPath === undefined ? null : engine.baseId,
      max_model_len: m.loraPath === undefined ? engine.maxModelLen : null,
      permission: [],
    })),
  };
}

type RouteName = "health" | "metrics" | "models" | "completions" | "chat" | "load_lora" | "unload_lora" | "not_found";
interface Route {
  name: RouteName;
  path: string;
  method: "GET" | "POST";
}

const ROUTES: Record<string, { name: RouteName; method: "GET" | "POST" }> = {
  "/health": { name: "health", method: "GET" },
  "/metrics": { name: "metrics", method: "GET" },
  "/v1/models": { name: "models", method: "GET" },
  "/v1/completions": { name: "completions", method: "POST" },
  "/v1/chat/completions": { name: "chat", method: "POST" },
  "/v1/load_lora_adapter": { name: "load_lora", method: "POST" },
  "/v1/unload_lora_adapter": { name: "unload_lora", method: "POST" },
};

function routeOf(req: IncomingMessage): Route {
  const path = (req.url ?? "/").split("?")[0]!.replace(/\/+$/, "") || "/";
  const known = ROUTES[path];
  return known ? { ...known, path } : { name: "not_found", path, method: "GET" };
}

async function readJson(req: IncomingMessage, maxBytes: number): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes) {
      req.resume();
      throw new ModelServerError(413, `the request body is larger than ${maxBytes} bytes`);
    }
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (text.trim() === "") throw new ModelServerError(400, "the request body is empty: send a JSON object");
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ModelServerError(400, `the request body is not valid JSON: ${(error as Error).message}`);
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers }).end(text);
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(text) }).end(text);
}

function digest(value: string): Buffer {
  return createHash("sha256").update(value).digest();
}

function authorized(req: IncomingMessage, keyDigest: Buffer): boolean {
  const header = req.headers.authorization ?? "";
  const match = /^Bearer (.+)$/i.exec(header.trim());
  return match !== null && timingSafeEqual(digest(match[1]!), keyDigest);
}

function positiveInt(value: number, name: string): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`${name} must be an integer ≥ 1, got ${value}`);
  return value;
}
