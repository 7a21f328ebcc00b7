import type { Logger } from "@ragtune/logger";
import type { z } from "zod";
import { offAbort, onAbort } from "./abort-fanout.js";
import { ConcurrencyLimiter, type Release } from "./concurrency-limiter.js";
import { kindForStatus, LlmError, serverMessageOf } from "./errors.js";
import { guidedJsonFor, parseJsonOutput } from "./guided-json.js";
import { type AbortHook, BodyTooLargeError, headerLookup, HttpTransport, type HttpResponse } from "./http-transport.js";
import {
  DEFAULT_GUIDED_JSON_FIELDS,
  parseChunk,
  parseGeneration,
  parseModels,
  PATHS,
  requestBody,
  type ChatRequest,
  type CompletionRequest,
  type Endpoint,
  type GuidedJsonField,
  type ModelInfo,
  type ParsedGeneration,
  type TokenUsage,
} from "./protocol.js";
import { backoffDelay, cancelledError, isQuickFailure, retryAfterMs, sleep, type BackoffOptions } from "./retry-policy.js";
import { revealSecret, type Secret } from "./secret.js";
import { SseLineTooLongError, SseParser, type SseEvent } from "./sse.js";

export interface LlmClientOptions {
  /** Server root or its `/v1` URL, e.g. `http://127.0.0.1:8000/v1` (a trailing `/v1` is optional). */
  baseUrl: string;
  /** Sent as `Authorization: Bearer <key>`; vLLM checks it when started with `--api-key`. */
  apiKey?: string | Secret;
  /** Model used when a request names none; without either, the server picks (vLLM: its base model). */
  model?: string;
  /** Requests on the wire at once; further calls wait in a FIFO queue. Default 32. */
  concurrency?: number;
  /**
   * Per attempt: a non-streaming request must be answered completely within this time; a stream must not stay
   * silent longer than this (before its headers or between two chunks). Default 120 s.
   */
  timeoutMs?: number;
  /** Retries after the first attempt for retryable failures. Default 4. */
  maxRetries?: number;
  /**
   * Full-jitter exponential backoff between attempts. Default base 250 ms, cap 15 s; the first retry of a failure
   * answered at once (under 50 ms) or of malformed output within 25 ms (retry-policy.ts, isQuickFailure).
   */
  backoff?: Partial<BackoffOptions>;
  /** A 429 asking to wait longer than this fails the call at once instead of waiting. Default 60 s. */
  maxRetryAfterMs?: number;
  /** Which request field(s) carry a guided-JSON schema. Default `["response_format", "guided_json"]`. */
  guidedJsonFields?: readonly GuidedJsonField[];
  /** Largest response body (or stream line) accepted. Default 16 MiB. */
  maxResponseBytes?: number;
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** Retries (debug) and calls that give up (warn) are logged on a child `{ subsystem: "llm" }`. */
  logger?: Logger;
  /** Aborting it cancels every call of this client (the service's shutdown signal). */
  signal?: AbortSignal;
  /** Called before each backoff sleep (progress reporting, tests). */
  onRetry?: (event: RetryEvent) => void;
  /** Random source for the jitter, in [0, 1). */
  random?: () => number;
}

export interface CallOptions {
  /** Cancels the call wherever it is: waiting for a slot, on the wire, or sleeping before a retry. */
  signal?: AbortSignal;
  timeoutMs?: number;
  maxRetries?: number;
}

export interface RetryEvent {
  path: string;
  /** The attempt that failed (1 = the first). */
  attempt: number;
  delayMs: number;
  error: LlmError;
}

/** Where a call's time went. */
export interface CallLatency {
  /** Waiting for a concurrency slot (summed over attempts). */
  queueMs: number;
  /** On the wire: request sent until the response was read (summed over attempts). */
  requestMs: number;
  /** Sleeping between attempts. */
  backoffMs: number;
  totalMs: number;
  attempts: number;
}

export interface StreamLatency extends CallLatency {
  /** From the call's start to the first text delta. */
  firstTokenMs: number | undefined;
}

export interface GenerationResult {
  text: string;
  finishReason: string | null;
  /** The model that answered, as the server names it. */
  model: string;
  /** Token counts of the answer as the server reported them (zero when it reported none); `stats()` also counts
   * the tokens of attempts whose output was rejected. */
  usage: TokenUsage;
  latency: CallLatency;
}

export interface JsonResult<T> extends GenerationResult {
  /** The output parsed and validated against the schema. */
  value: T;
}

export interface ModelsResult {
  models: ModelInfo[];
  latency: CallLatency;
}

interface JsonSpec<S extends z.ZodType> {
  /** The zod schema the output must match; its JSON Schema is what guides the server. */
  schema: S;
  /** Name sent with the schema (default "response"). */
  schemaName?: string;
  /** OpenAI strict mode (default true). */
  strict?: boolean;
  /** Send this JSON Schema instead of the one derived from `schema`. */
  jsonSchema?: Record<string, unknown>;
}

/** A guided-JSON call: chat (`messages`) or completion (`prompt`) with a schema. */
export type JsonRequest<S extends z.ZodType> =
  | (Omit<ChatRequest, "guidedJson"> & JsonSpec<S>)
  | (Omit<CompletionRequest, "guidedJson"> & JsonSpec<S>);

export interface StreamDelta {
  text: string;
  /** Set on the delta that ends the choice ("stop", "length", ...). */
  finishReason: string | null;
}

export interface StreamResult {
  text: string;
  finishReason: string | null;
  model: string;
  /** Only when the server sent it (the client asks with `stream_options.include_usage`). */
  usage: TokenUsage | undefined;
  latency: StreamLatency;
}

/** Counters since the client was created, plus what is happening now. */
export interface LlmStats {
  calls: number;
  succeeded: number;
  failed: number;
  cancelled: number;
  /** Attempts after a first one. */
  retries: number;
  attempts: number;
  promptTokens: number;
  completionTokens: number;
  /** Requests on the wire now. */
  inFlight: number;
  /** Calls waiting for a slot now. */
  queued: number;
  /** Calls sleeping before a retry now. */
  backingOff: number;
}

/**
 * A streaming call: iterate it for the text deltas; `text`, `finishReason`, `usage` and `latency` are complete
 * once the iteration has ended. The request starts with the iteration and can be iterated once. Leaving the loop
 * early (break) closes the connection. Attempts that fail before the first delta are retried like any call; after
 * a delta has been handed out a failure ends the iteration with the LlmError (a retry would repeat text).
 */
export class LlmStream implements AsyncIterable<StreamDelta> {
  text = "";
  finishReason: string | null = null;
  model = "";
  usage: TokenUsage | undefined;
  latency: StreamLatency | undefined;
  #source: AsyncGenerator<StreamDelta, void> | undefined;

  constructor(start: (stream: LlmStream) => AsyncGenerator<StreamDelta, void>) {
    this.#source = start(this);
  }

  [Symbol.asyncIterator](): AsyncIterator<StreamDelta> {
    const source = this.#source;
    if (!source) throw new Error("an LlmStream can be iterated only once");
    this.#source = undefined;
    return source;
  }

  /** Reads the whole stream. */
  async collect(): Promise<StreamResult> {
    for await (const _ of this) {
      // the generator fills in this object
    }
    return { text: this.text, finishReason: this.finishReason, model: this.model, usage: this.usage, latency: this.latency! };
  }
}

const DEFAULTS = {
  concurrency: 32,
  timeoutMs: 120_000,
  maxRetries: 4,
  backoff: { baseMs: 250, capMs: 15_000 },
  maxRetryAfterMs: 60_000,
  maxResponseBytes: 16 * 1024 * 1024,
};
const MAX_ERROR_BODY = 64 * 1024;

const now = () => performance.now();

function describeTransportError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const code = (error as NodeJS.ErrnoException).code;
  return code && !error.message.includes(code) ? `${code}: ${error.message}` : error.message;
}

const NEVER = new AbortController().signal;

/**
 * What stops a call: the caller's signal, the client's (service shutdown), both or neither. Attempts listen to them
 * directly; one combined AbortSignal is built only when a wait needs it (a queue for a slot, a backoff sleep), so a
 * call that neither waits nor is cancelled creates no AbortController.
 */
class CallSignals {
  readonly #a: AbortSignal | undefined;
  readonly #b: AbortSignal | undefined;
  #combined: { signal: AbortSignal; dispose: () => void } | undefined;

  constructor(a: AbortSignal | undefined, b: AbortSignal | undefined) {
    this.#a = a;
    this.#b = b;
  }

  get aborted(): boolean {
    return this.#a?.aborted === true || this.#b?.aborted === true;
  }

  /** The cancelled error of the signal that aborted (the caller's first). */
  cancelled(): LlmError {
    return cancelledError(this.#a?.aborted === true ? this.#a : this.#b!);
  }

  listen(listener: () => void): void {
    if (this.#a !== undefined) onAbort(this.#a, listener);
    if (this.#b !== undefined) onAbort(this.#b, listener);
  }

  unlisten(listener: () => void): void {
    if (this.#a !== undefined) offAbort(this.#a, listener);
    if (this.#b !== undefined) offAbort(this.#b, listener);
  }

  /** One signal that aborts when either does. */
  get signal(): AbortSignal {
    const a = this.#a;
    const b = this.#b;
    if (a === undefined || b === undefined) return a ?? b ?? NEVER;
    if (this.#combined !== undefined) return this.#combined.signal;
    const controller = new AbortController();
    const onA = () => controller.abort(a.reason);
    const onB = () => controller.abort(b.reason);
    if (a.aborted) onA();
    else if (b.aborted) onB();
    else {
      onAbort(a, onA);
      onAbort(b, onB);
    }
    this.#combined = {
      signal: controller.signal,
      dispose: () => {
        offAbort(a, onA);
        offAbort(b, onB);
      },
    };
    return controller.signal;
  }

  dispose(): void {
    this.#combined?.dispose();
  }
}

interface AttemptContext {
  /** The call's signals (caller and client). */
  signals: CallSignals;
  timeoutMs: number;
}

/** Per-attempt abort: the call's signals or the attempt's own timer; what the transport listens to (an AbortHook). */
class AttemptControl implements AbortHook {
  timedOut = false;
  #aborted = false;
  #timer: NodeJS.Timeout | undefined;
  #listener: (() => void) | undefined;
  readonly #onAbort = () => this.#abort();

  constructor(
    readonly call: CallSignals,
    readonly timeoutMs: number,
  ) {
    if (call.aborted) this.#aborted = true;
    else call.listen(this.#onAbort);
    this.arm();
  }

  get aborted(): boolean {
    return this.#aborted;
  }

  listen(listener: (() => void) | undefined): void {
    this.#listener = listener;
  }

  #abort(): void {
    if (this.#aborted) return;
    this.#aborted = true;
    const listener = this.#listener;
    this.#listener = undefined;
    listener?.();
  }

  arm(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.timedOut = true;
      this.#abort();
    }, this.timeoutMs);
  }

  pause(): void {
    clearTimeout(this.#timer);
  }

  /** The error to report for `error` thrown while this attempt ran. */
  classify(error: unknown, path: string): LlmError {
    if (this.call.aborted) return this.call.cancelled();
    if (this.timedOut) return new LlmError("timeout", `${path}: no response within ${this.timeoutMs} ms`, { cause: error });
    if (error instanceof LlmError) return error;
    if (error instanceof SseLineTooLongError) {
      return new LlmError("server_error", `${path}: ${error.message}`, { retryable: false, cause: error });
    }
    return new LlmError("connection", `${path}: connection failed (${describeTransportError(error)})`, { cause: error });
  }

  /** Stops the timer; aborts the request unless it completed (closes an unread body). */
  finish(completed: boolean): void {
    clearTimeout(this.#timer);
    this.call.unlisten(this.#onAbort);
    if (!completed) this.#abort();
  }
}

async function readBody(response: HttpResponse, limit: number, path: string): Promise<string> {
  const declared = Number(response.headers["content-length"]);
  const tooLarge = () => new LlmError("server_error", `${path}: response larger than ${limit} bytes`, { retryable: false });
  if (Number.isFinite(declared) && declared > limit) {
    response.destroy();
    throw tooLarge();
  }
  try {
    // Invalid UTF-8 becomes U+FFFD, as a non-fatal TextDecoder would make it.
    return (await response.readAll(limit)).toString("utf8");
  } catch (error) {
    if (error instanceof BodyTooLargeError) throw tooLarge();
    throw error;
  }
}

function parseJsonBody(text: string, path: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    const shown = text.length > 120 ? `${text.slice(0, 120)}…` : text;
    throw new LlmError("malformed_json", `${path}: the server's response is not JSON (${(error as Error).message}): ${JSON.stringify(shown)}`, {
      cause: error,
    });
  }
}

/**
 * The OpenAI-compatible client every service uses to talk to a model server (vLLM in production, the local model
 * server in development): chat and text completions, plain or streamed, guided JSON, the model list. All calls
 * share one concurrency limit with a FIFO queue, and retry rate limits, server errors, timeouts, dropped
 * connections and malformed JSON with exponential backoff and full jitter.
 */
export class LlmClient {
  readonly baseUrl: string;
  readonly model: string | undefined;
  readonly concurrency: number;
  readonly timeoutMs: number;
  readonly maxRetries: number;
  readonly guidedJsonFields: readonly GuidedJsonField[];
  readonly #transport: HttpTransport;
  /** The request header blocks, by accept type and whether a JSON body follows (built and checked once). */
  readonly #headerBlocks = new Map<string, string>();
  readonly #limiter: ConcurrencyLimiter;
  readonly #backoff: BackoffOptions;
  readonly #maxRetryAfterMs: number;
  readonly #maxResponseBytes: number;
  readonly #logger: Logger | undefined;
  readonly #signal: AbortSignal | undefined;
  readonly #onRetry: ((event: RetryEvent) => void) | undefined;
  readonly #random: () => number;
  readonly #stats = {
    calls: 0,
    succeeded: 0,
    failed: 0,
    cancelled: 0,
    retries: 0,
    attempts: 0,
    promptTokens: 0,
    completionTokens: 0,
    backingOff: 0,
  };

  constructor(options: LlmClientOptions) {
    let url: URL;
    try {
      url = new URL(options.baseUrl);
    } catch {
      throw new RangeError(`LLM base URL "${options.baseUrl}" is not a URL`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new RangeError(`LLM base URL must be http(s), got "${options.baseUrl}"`);
    const root = `${url.origin}${url.pathname.replace(/\/+$/, "").replace(/\/v1$/, "")}`;
    this.baseUrl = `${root}/v1`;
    this.#transport = new HttpTransport(new URL(root));
    this.model = options.model;
    this.concurrency = options.concurrency ?? DEFAULTS.concurrency;
    this.timeoutMs = options.timeoutMs ?? DEFAULTS.timeoutMs;
    this.maxRetries = options.maxRetries ?? DEFAULTS.maxRetries;
    this.guidedJsonFields = options.guidedJsonFields ?? DEFAULT_GUIDED_JSON_FIELDS;
    if (this.guidedJsonFields.length === 0) throw new RangeError("guidedJsonFields must name at least one field");
    if (!(this.timeoutMs > 0)) throw new RangeError(`timeoutMs must be positive, got ${this.timeoutMs}`);
    if (!Number.isInteger(this.maxRetries) || this.maxRetries < 0) throw new RangeError(`maxRetries must be an integer ≥ 0, got ${this.maxRetries}`);
    const apiKey = revealSecret(options.apiKey);
    for (const accept of ["application/json", "text/event-stream"]) {
      for (const body of [false, true]) {
        const headers: Record<string, string> = { accept };
        // host and content-length are the transport's to set
        for (const [name, value] of Object.entries(options.headers ?? {})) if (!/^(host|content-length)$/i.test(name)) headers[name] = value;
        if (body) headers["content-type"] = "application/json";
        if (apiKey !== undefined) headers["authorization"] = `Bearer ${apiKey}`;
        this.#headerBlocks.set(`${accept} ${body}`, HttpTransport.headerBlock(headers));
      }
    }
    this.#limiter = new ConcurrencyLimiter(this.concurrency);
    this.#backoff = { ...DEFAULTS.backoff, ...options.backoff };
    this.#maxRetryAfterMs = options.maxRetryAfterMs ?? DEFAULTS.maxRetryAfterMs;
    this.#maxResponseBytes = options.maxResponseBytes ?? DEFAULTS.maxResponseBytes;
    this.#logger = options.logger?.child({ subsystem: "llm" });
    this.#signal = options.signal;
    this.#onRetry = options.onRetry;
    this.#random = options.random ?? Math.random;
  }

  /** POST /v1/chat/completions. */
  async chat(request: ChatRequest, call: CallOptions = {}): Promise<GenerationResult> {
    return this.#generate("chat", request, call, (g) => g);
  }

  /** POST /v1/completions (a raw prompt, no chat template). */
  async complete(request: CompletionRequest, call: CallOptions = {}): Promise<GenerationResult> {
    return this.#generate("completion", request, call, (g) => g);
  }

  /**
   * A guided-JSON generation: the schema goes to the server (see `guidedJsonFields`) and the output comes back
   * parsed and validated. Output that does not parse or match is retried like a server error.
   */
  async json<S extends z.ZodType>(request: JsonRequest<S>, call: CallOptions = {}): Promise<JsonResult<z.output<S>>> {
    const name = request.schemaName ?? "response";
    const options: { strict?: boolean; jsonSchema?: Record<string, unknown> } = {};
    if (request.strict !== undefined) options.strict = request.strict;
    if (request.jsonSchema !== undefined) options.jsonSchema = request.jsonSchema;
    const guidedJson = guidedJsonFor(name, request.schema, options);
    const endpoint: Endpoint = "messages" in request ? "chat" : "completion";
    const path = PATHS[endpoint];
    return this.#generate(endpoint, { ...request, guidedJson } as ChatRequest | CompletionRequest, call, (g) => ({
      ...g,
      value: parseJsonOutput(g.text, request.schema, { path, name, finishReason: g.finishReason }),
    }));
  }

  /** POST /v1/chat/completions with `stream: true`. */
  streamChat(request: ChatRequest, call: CallOptions = {}): LlmStream {
    return new LlmStream((stream) => this.#stream("chat", request, call, stream));
  }

  /** POST /v1/completions with `stream: true`. */
  streamCompletion(request: CompletionRequest, call: CallOptions = {}): LlmStream {
    return new LlmStream((stream) => this.#stream("completion", request, call, stream));
  }

  /** GET /v1/models: base models and loaded LoRA adapters. */
  async models(call: CallOptions = {}): Promise<ModelsResult> {
    const { value, latency } = await this.#run(PATHS.models, call, (context) =>
      this.#request("GET", PATHS.models, undefined, context, async (response) =>
        parseModels(parseJsonBody(await readBody(response, this.#maxResponseBytes, PATHS.models), PATHS.models)),
      ),
    );
    return { models: value, latency };
  }

  /**
   * POST /v1/load_lora_adapter (vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING, and the local model server): serve the
   * adapter at `path` (a PEFT folder for vLLM, a GGUF LoRA file for the local server) under `name`. A name already in
   * use fails with the server's 400 (kind bad_request).
   */
  async loadLoraAdapter(name: string, path: string, call: CallOptions = {}): Promise<void> {
    await this.#loraCall(PATHS.loadLora, { lora_name: name, lora_path: path }, call);
  }

  /** POST /v1/unload_lora_adapter: stop serving the adapter `name` (an unknown name fails with the server's 404). */
  async unloadLoraAdapter(name: string, call: CallOptions = {}): Promise<void> {
    await this.#loraCall(PATHS.unloadLora, { lora_name: name }, call);
  }

  async #loraCall(path: string, body: Record<string, string>, call: CallOptions): Promise<void> {
    await this.#run(path, call, (context) =>
      this.#request("POST", path, body, context, async (response) => {
        await readBody(response, MAX_ERROR_BODY, path); // vLLM answers a line of plain text
      }),
    );
  }

  stats(): LlmStats {
    return { ...this.#stats, inFlight: this.#limiter.active, queued: this.#limiter.waiting };
  }

  /** Closes idle pooled connections (they never keep the process alive; this just frees them now). */
  close(): void {
    this.#transport.close();
  }

  async #generate<T extends ParsedGeneration>(
    endpoint: Endpoint,
    request: ChatRequest | CompletionRequest,
    call: CallOptions,
    finish: (generation: ParsedGeneration) => T,
  ): Promise<T & { latency: CallLatency }> {
    const path = PATHS[endpoint];
    const body = requestBody(endpoint, request, { model: this.model, guidedJsonFields: this.guidedJsonFields }, undefined);
    const { value, latency } = await this.#run(path, call, (context) =>
      this.#request("POST", path, body, context, async (response) => {
        const generation = parseGeneration(endpoint, parseJsonBody(await readBody(response, this.#maxResponseBytes, path), path));
        this.#countUsage(generation.usage); // also for output the schema then rejects: the server spent the tokens
        return finish(generation);
      }),
    );
    return { ...value, latency };
  }

  #countUsage(usage: TokenUsage | undefined): void {
    if (!usage) return;
    this.#stats.promptTokens += usage.promptTokens;
    this.#stats.completionTokens += usage.completionTokens;
  }

  /** Sends the request; a non-2xx status becomes its LlmError (with the server's message and Retry-After). */
  async #send(method: string, path: string, body: unknown, abort: AbortHook, accept: string): Promise<HttpResponse> {
    const response = await this.#transport.send(path, {
      method,
      headers: this.#headerBlocks.get(`${accept} ${body !== undefined}`)!,
      body: body === undefined ? undefined : JSON.stringify(body),
      abort,
    });
    const status = response.statusCode;
    if (status >= 200 && status < 300) return response;
    const text = await readBody(response, MAX_ERROR_BODY, path).catch(() => "");
    const serverMessage = serverMessageOf(text);
    const kind = kindForStatus(status);
    const wait = status === 429 ? retryAfterMs(headerLookup(response)) : undefined;
    const statusLine = `${status}${response.statusMessage ? ` ${response.statusMessage}` : ""}`;
    const hint = kind === "unauthorized" ? " (check LLM_API_KEY)" : "";
    throw new LlmError(kind, `${method} ${path}: ${statusLine}${serverMessage ? `: ${serverMessage}` : ""}${hint}`, {
      status,
      ...(serverMessage === undefined ? {} : { serverMessage }),
      ...(wait === undefined ? {} : { retryAfterMs: wait }),
    });
  }

  /** One non-streaming attempt: send, check the status, read the body with `read`, all under the attempt's timeout. */
  async #request<T>(
    method: string,
    path: string,
    body: unknown,
    context: AttemptContext,
    read: (response: HttpResponse) => Promise<T>,
  ): Promise<T> {
    const attempt = new AttemptControl(context.signals, context.timeoutMs);
    let completed = false;
    try {
      const response = await this.#send(method, path, body, attempt, "application/json");
      const value = await read(response);
      completed = true;
      return value;
    } catch (error) {
      throw attempt.classify(error, `${method} ${path}`);
    } finally {
      attempt.finish(completed);
    }
  }

  /** The delay before the next attempt (the failed one took `attemptMs`), or undefined when the call must give up. */
  #retryDelay(error: LlmError, attempts: number, maxRetries: number, attemptMs: number): number | undefined {
    if (!error.retryable || attempts > maxRetries) return undefined;
    const jitter = backoffDelay(attempts, this.#backoff, this.#random, isQuickFailure(error, attemptMs, this.#backoff));
    if (error.retryAfterMs === undefined) return jitter;
    if (error.retryAfterMs > this.#maxRetryAfterMs) return undefined;
    return Math.max(error.retryAfterMs, jitter);
  }

  #giveUp(error: LlmError, attempts: number): LlmError {
    if (error.kind === "cancelled") return error;
    let reason = "";
    if (attempts > 1) reason = ` (gave up after ${attempts} attempts)`;
    if (error.retryAfterMs !== undefined && error.retryAfterMs > this.#maxRetryAfterMs) {
      reason = ` (the server asked to wait ${error.retryAfterMs} ms, more than the ${this.#maxRetryAfterMs} ms allowed)`;
    }
    const final = new LlmError(error.kind, `${error.message}${reason}`, {
      retryable: error.retryable,
      attempts,
      cause: error.cause ?? error,
      ...(error.status === undefined ? {} : { status: error.status }),
      ...(error.serverMessage === undefined ? {} : { serverMessage: error.serverMessage }),
      ...(error.retryAfterMs === undefined ? {} : { retryAfterMs: error.retryAfterMs }),
    });
    if (error.retryable) this.#logger?.warn({ err: final, attempts }, "llm call failed");
    return final;
  }

  #noteRetry(path: string, attempt: number, delayMs: number, error: LlmError): void {
    this.#stats.retries++;
    this.#logger?.debug({ path, attempt, delayMs, kind: error.kind, status: error.status, reason: error.message }, "llm call retrying");
    this.#onRetry?.({ path, attempt, delayMs, error });
  }

  /** A slot: at once when one is free and nobody waits, else from the FIFO queue (which the call's signals can leave). */
  #acquire(signals: CallSignals, priority: boolean): Release | Promise<Release> {
    if (signals.aborted) throw signals.cancelled();
    return this.#limiter.tryAcquire() ?? this.#limiter.acquire(signals.signal, priority);
  }

  async #backoffSleep(delay: number, signal: AbortSignal): Promise<number> {
    const started = now();
    this.#stats.backingOff++;
    try {
      await sleep(delay, signal);
    } finally {
      this.#stats.backingOff--;
    }
    return now() - started;
  }

  /**
   * A call: take a slot (FIFO), run one attempt, give the slot back; on a retryable failure sleep (without a
   * slot, so other calls use it) and queue again ahead of fresh calls.
   */
  async #run<T>(path: string, call: CallOptions, attempt: (context: AttemptContext) => Promise<T>): Promise<{ value: T; latency: CallLatency }> {
    const signals = new CallSignals(call.signal, this.#signal);
    const maxRetries = call.maxRetries ?? this.maxRetries;
    const timeoutMs = call.timeoutMs ?? this.timeoutMs;
    const started = now();
    let queueMs = 0;
    let requestMs = 0;
    let backoffMs = 0;
    let attempts = 0;
    this.#stats.calls++;
    try {
      for (;;) {
        const queued = now();
        const release: Release = await this.#acquire(signals, attempts > 0);
        queueMs += now() - queued;
        attempts++;
        this.#stats.attempts++;
        const sent = now();
        let error: LlmError;
        try {
          const value = await attempt({ signals, timeoutMs });
          requestMs += now() - sent;
          this.#stats.succeeded++;
          return { value, latency: { queueMs, requestMs, backoffMs, totalMs: now() - started, attempts } };
        } catch (caught) {
          requestMs += now() - sent;
          error = caught instanceof LlmError ? caught : new LlmError("server_error", `${path}: ${String(caught)}`, { cause: caught });
        } finally {
          release();
        }
        const delay = this.#retryDelay(error, attempts, maxRetries, now() - sent);
        if (delay === undefined) throw this.#giveUp(error, attempts);
        this.#noteRetry(path, attempts, delay, error);
        backoffMs += await this.#backoffSleep(delay, signals.signal);
      }
    } catch (caught) {
      const error = caught instanceof LlmError ? caught : new LlmError("server_error", String(caught), { cause: caught });
      if (error.kind === "cancelled") this.#stats.cancelled++;
      else this.#stats.failed++;
      error.attempts ??= attempts;
      throw error;
    } finally {
      signals.dispose();
    }
  }

  async *#stream(endpoint: Endpoint, request: ChatRequest | CompletionRequest, call: CallOptions, out: LlmStream): AsyncGenerator<StreamDelta, void> {
    const path = PATHS[endpoint];
    const label = `POST ${path}`;
    const body = requestBody(endpoint, request, { model: this.model, guidedJsonFields: this.guidedJsonFields }, { includeUsage: true });
    const signals = new CallSignals(call.signal, this.#signal);
    const maxRetries = call.maxRetries ?? this.maxRetries;
    const timeoutMs = call.timeoutMs ?? this.timeoutMs;
    const started = now();
    let queueMs = 0;
    let requestMs = 0;
    let backoffMs = 0;
    let attempts = 0;
    let firstTokenMs: number | undefined;
    let settled = false;
    this.#stats.calls++;
    try {
      for (;;) {
        const queued = now();
        const release = await this.#acquire(signals, attempts > 0);
        queueMs += now() - queued;
        attempts++;
        this.#stats.attempts++;
        const sent = now();
        const attempt = new AttemptControl(signals, timeoutMs);
        let completed = false;
        let yielded = false;
        let done = false; // [DONE] arrived: the answer is complete even if what follows fails
        let error: LlmError | undefined;
        try {
          const response = await this.#send("POST", path, body, attempt, "text/event-stream");
          const decoder = new TextDecoder();
          const parser = new SseParser(this.#maxResponseBytes);
          // The deltas in a batch of events; [DONE] ends the stream.
          const take = (events: SseEvent[]): StreamDelta[] => {
            const deltas: StreamDelta[] = [];
            for (const event of events) {
              if (event.data.trim() === "[DONE]") {
                done = true;
                break;
              }
              const chunk = parseChunk(endpoint, parseJsonBody(event.data, path));
              if (chunk.model !== undefined) out.model = chunk.model;
              if (chunk.usage) out.usage = chunk.usage;
              if (chunk.finishReason !== null) out.finishReason = chunk.finishReason;
              if (chunk.text !== "" || chunk.finishReason !== null) deltas.push({ text: chunk.text, finishReason: chunk.finishReason });
            }
            return deltas;
          };
          const hand = (delta: StreamDelta) => {
            yielded = true;
            out.text += delta.text;
            if (delta.text !== "" && firstTokenMs === undefined) firstTokenMs = now() - started;
          };
          for await (const piece of response) {
            attempt.arm();
            if (done) continue; // read what follows [DONE] (normally nothing) so the connection can be reused
            for (const delta of take(parser.push(decoder.decode(piece, { stream: true })))) {
              hand(delta);
              attempt.pause(); // the consumer's time between deltas is not the server's silence
              yield delta;
              attempt.arm();
            }
          }
          if (!done) {
            attempt.pause();
            for (const delta of take([...parser.push(decoder.decode()), ...parser.end()])) {
              hand(delta);
              yield delta;
            }
          }
          if (!done) throw new LlmError("connection", `${label}: the stream ended before [DONE]`);
          completed = true;
          requestMs += now() - sent;
        } catch (caught) {
          requestMs += now() - sent;
          // A server that fails or stalls after [DONE] cost us the connection, not the answer.
          if (!done || signals.aborted) error = attempt.classify(caught, label);
        } finally {
          attempt.finish(completed);
          release();
        }
        if (completed || error === undefined) {
          settled = true;
          this.#stats.succeeded++;
          this.#countUsage(out.usage);
          out.latency = { queueMs, requestMs, backoffMs, totalMs: now() - started, attempts, firstTokenMs };
          return;
        }
        const delay = yielded ? undefined : this.#retryDelay(error, attempts, maxRetries, now() - sent);
        if (delay === undefined) throw this.#giveUp(error, attempts);
        this.#noteRetry(path, attempts, delay, error);
        backoffMs += await this.#backoffSleep(delay, signals.signal);
      }
    } catch (caught) {
      settled = true;
      const error = caught instanceof LlmError ? caught : new LlmError("server_error", String(caught), { cause: caught });
      if (error.kind === "cancelled") this.#stats.cancelled++;
      else this.#stats.failed++;
      error.attempts ??= attempts;
      throw error;
    } finally {
      // The consumer left the loop early: the call ends as cancelled.
      if (!settled) this.#stats.cancelled++;
      signals.dispose();
    }
  }
}

export function createLlmClient(options: LlmClientOptions): LlmClient {
  return new LlmClient(options);
}
