/**
 * The inference engine: one GGUF base model loaded with node-llama-cpp (llama.cpp on the CPU) and, per served
 * model name, a context of its own: the base model's, and one per LoRA adapter (llama.cpp applies adapters per
 * context). Each context has `sequences` slots, so that many requests of one model decode in the same batch.
 * Tokens are evaluated natively off the JS thread; the event loop only sees the text as it comes.
 */
import { stat } from "node:fs/promises";
import { resolve } from "node:path";
import type { Logger } from "@ragtune/logger";
import {
  getLlama,
  type ChatHistoryItem,
  type ChatWrapper,
  type Llama,
  type LlamaContext,
  type LlamaContextSequence,
  LlamaCompletion,
  type LlamaGrammar,
  LlamaLogLevel,
  type LlamaModel,
  LlamaText,
  resolveChatWrapper,
  type Token,
  TokenBias,
} from "node-llama-cpp";
import { ModelServerError } from "./errors.js";
import { grammarSchema } from "./json-schema-grammar.js";
import { StepBatcher } from "./step-batcher.js";
import { StopStringFilter } from "./stop-strings.js";

export interface EngineOptions {
  /** The base model, a GGUF file. */
  modelPath: string;
  /** Name the base model is served under (default: the file path, as vLLM names a model by its path). */
  servedModelName?: string;
  /** Tokens per sequence: prompt + completion (vLLM's max_model_len). */
  contextSize: number;
  /** Sequences per context: how many requests of one model decode together. */
  sequences: number;
  /** CPU threads llama.cpp uses per evaluation batch. */
  threads: number;
  logger: Logger;
  /** Called for each decoding step of any context: its tokens and how many sequences it serves. */
  onBatch?: (tokens: number, sequences: number) => void;
}

/** One served model: the base model or an adapter on it. */
export interface ServedModel {
  /** The name requests select it by. */
  id: string;
  /** The adapter file; undefined for the base model. */
  loraPath?: string;
  /** Unix seconds. */
  created: number;
}

interface Variant extends ServedModel {
  context: LlamaContext;
  /** Forms the context's decode batches (all generations in their token loop in each step). */
  batcher: StepBatcher;
  /** Sequences not in use. They are made once with the context and reused: a disposed sequence's slot comes back
   * to the context only later (asynchronously), so getSequence() right after a dispose can find none left. */
  free: LlamaContextSequence[];
  /** Generations running on this variant's context. */
  active: number;
  /** Unloaded: no new generation; the context is freed when the last running one ends. */
  retired: boolean;
}

export type FinishReason = "stop" | "length";

export interface GenerationParams {
  maxTokens: number;
  temperature: number;
  topP: number;
  seed?: number;
  /** Strings that end the generation; the text stops before them (vLLM's default). */
  stop: string[];
  /** Generate past the end-of-sequence token (vLLM's ignore_eos): exactly maxTokens tokens unless a stop string comes. */
  ignoreEos?: boolean;
  grammar?: LlamaGrammar;
  signal?: AbortSignal;
  /** Text as it is generated (held back while it might be the start of a stop string). */
  onText?: (text: string) => void;
}

export interface GenerationResult {
  text: string;
  finishReason: FinishReason;
  /** The stop string that ended the generation (vLLM's `stop_reason`); null for EOS or max_tokens. */
  stopReason: string | null;
  promptTokens: number;
  completionTokens: number;
}

export interface ChatTurn {
  role: "system" | "user" | "assistant";
  content: string;
}

/** A prompt ready to run: its tokens and the stop triggers its format brings (the chat template's end of turn). */
export interface PreparedPrompt {
  tokens: Token[];
  templateStops: LlamaText[];
}

export class InferenceEngine {
  readonly #variants = new Map<string, Variant>();
  readonly #pending = new Set<string>();
  readonly #chatWrapper: ChatWrapper;
  #closed = false;

  private constructor(
    readonly llama: Llama,
    readonly model: LlamaModel,
    readonly baseId: string,
    readonly options: EngineOptions,
  ) {
    this.#chatWrapper = resolveChatWrapper(model);
  }

  /** Loads the base model and creates its context. Fails with a message naming the file. */
  static async load(options: EngineOptions): Promise<InferenceEngine> {
    const modelPath = resolve(options.modelPath);
    await expectFile(modelPath, "the model");
    // "auto": the CPU build unless a GPU build was opted into (root package.json overrides) and its GPU is present.
    const llama = await getLlama({ gpu: "auto", build: "never", logLevel: LlamaLogLevel.error });
    let model: LlamaModel;
    try {
      model = await llama.loadModel({ modelPath });
    } catch (error) {
      await llama.dispose();
      throw new Error(`cannot load the model ${modelPath}: ${(error as Error).message}`, { cause: error });
    }
    const engine = new InferenceEngine(llama, model, options.servedModelName ?? options.modelPath, options);
    try {
      const batcher = engine.#batcher();
      const context = await engine.#createContext(undefined, batcher);
      engine.#variants.set(engine.baseId, { id: engine.baseId, created: unixNow(), context, batcher, free: engine.#sequences(context), active: 0, retired: false });
    } catch (error) {
      await engine.close();
      throw error;
    }
    return engine;
  }

  get maxModelLen(): number {
    return this.options.contextSize;
  }

  /** The base model first, then adapters in load order. */
  models(): ServedModel[] {
    return [...this.#variants.values()].filter((v) => !v.retired).map(({ id, loraPath, created }) => ({
      id,
      created,
      ...(loraPath === undefined ? {} : { loraPath }),
    }));
  }

  has(id: string): boolean {
    const variant = this.#variants.get(id);
    return variant !== undefined && !variant.retired;
  }

  /**
   * Loads a GGUF LoRA adapter under `name` (vLLM's /v1/load_lora_adapter). A name in use, a missing file or a file
   * llama.cpp cannot apply to this model is a 400 saying so.
   */
  async loadAdapter(name: string, path: string): Promise<ServedModel> {
    this.#assertOpen();
    if (this.has(name) || this.#pending.has(name)) {
      throw new ModelServerError(400, `The lora adapter '${name}' has already been loaded.`, { param: "lora_name" });
    }
    const loraPath = resolve(path);
    await expectFile(loraPath, `lora_path of adapter '${name}'`, "lora_path");
    this.#pending.add(name);
    try {
      const batcher = this.#batcher();
      const context = await this.#createContext(loraPath, batcher).catch((error: unknown) => {
        throw new ModelServerError(
          400,
          `cannot load the lora adapter '${name}' from ${loraPath}: ${(error as Error).message} ` +
            "(expected a GGUF LoRA adapter for this base model, such as the trainer's adapter.gguf)",
          { param: "lora_path", cause: error },
        );
      });
      const variant: Variant = { id: name, loraPath, created: unixNow(), context, batcher, free: this.#sequences(context), active: 0, retired: false };
      this.#variants.set(name, variant);
      this.options.logger.info({ adapter: name, path: loraPath }, "lora adapter loaded");
      return { id: name, loraPath, created: variant.created };
    } finally {
      this.#pending.delete(name);
    }
  }

  /** Unloads an adapter: new requests for it get 404; running ones finish first, then its context is freed. */
  async unloadAdapter(name: string): Promise<void> {
    const variant = this.#variants.get(name);
    if (variant === undefined || variant.retired || variant.loraPath === undefined) {
      const why = name === this.baseId ? " (the base model cannot be unloaded)" : "";
      throw new ModelServerError(404, `The lora adapter '${name}' cannot be found${why}.`, { param: "lora_name" });
    }
    variant.retired = true;
    this.#variants.delete(name);
    this.options.logger.info({ adapter: name }, "lora adapter unloaded");
    if (variant.active === 0) await variant.context.dispose();
  }

  /** Tokens of a completion prompt: BOS first when the model's tokenizer adds one (as vLLM does). */
  completionPrompt(prompt: string): PreparedPrompt {
    const tokens = this.model.tokenize(prompt, false);
    const bos = this.model.tokens.bos;
    if (this.model.tokens.shouldPrependBosToken && bos !== null && tokens[0] !== bos) tokens.unshift(bos);
    return { tokens, templateStops: [] };
  }

  /** Tokens of a conversation in the model's chat template, up to the start of the assistant's turn. */
  chatPrompt(messages: ChatTurn[]): PreparedPrompt {
    const history: ChatHistoryItem[] = messages.map((m): ChatHistoryItem => {
      if (m.role === "system") return { type: "system", text: m.content };
      if (m.role === "user") return { type: "user", text: m.content };
      return { type: "model", response: [m.content] };
    });
    history.push({ type: "model", response: [] });
    const state = this.#chatWrapper.generateContextState({ chatHistory: history });
    const tokens = state.contextText.tokenize(this.model.tokenizer);
    return { tokens, templateStops: state.stopGenerationTriggers };
  }

  /** Validates a JSON schema for guided output and compiles it to a grammar; a schema it cannot use is a 400. */
  async jsonGrammar(schema: unknown, param: string): Promise<LlamaGrammar> {
    try {
      // Checked and normalised first: node-llama-cpp would treat what it does not know as "any value".
      return await this.llama.createGrammarForJsonSchema(grammarSchema(schema, param) as never);
    } catch (error) {
      if (error instanceof ModelServerError) throw error;
      throw new ModelServerError(400, `${param}: cannot turn this JSON schema into a grammar: ${(error as Error).message}`, {
        param,
        cause: error,
      });
    }
  }

  /** Runs one generation on a free sequence of the model's context. The caller keeps within `sequences`. */
  async generate(modelId: string, prompt: PreparedPrompt, params: GenerationParams): Promise<GenerationResult> {
    this.#assertOpen();
    const variant = this.#variants.get(modelId);
    if (variant === undefined || variant.retired) throw unknownModel(modelId);
    const promptTokens = prompt.tokens.length;
    if (promptTokens + params.maxTokens > this.maxModelLen) {
      throw new ModelServerError(
        400,
        `This model's maximum context length is ${this.maxModelLen} tokens. However, you requested ` +
          `${promptTokens + params.maxTokens} tokens (${promptTokens} in the prompt, ${params.maxTokens} for the ` +
          "completion). Please reduce the length of the prompt or max_tokens.",
        { param: "max_tokens" },
      );
    }
    const sequence = variant.free.pop();
    if (sequence === undefined) throw new Error(`no free sequence for ${modelId}: more generations than concurrency`);
    variant.active++;
    // Stop strings are matched on the text, anywhere (also inside a token), as vLLM matches them; the filter holds
    // back text that may be the start of one and ends the generation when one appears.
    const stopped = new AbortController();
    const signal = params.signal === undefined ? stopped.signal : AbortSignal.any([params.signal, stopped.signal]);
    const batched = variant.batcher.generation(params.maxTokens);
    // A stopped or cancelled generation queues no further decode: the next step does not wait for it.
    signal.addEventListener("abort", batched.end, { once: true });
    const filter = new StopStringFilter(params.stop, (text) => params.onText?.(text), () => stopped.abort());
    try {
      const completion = new LlamaCompletion({ contextSequence: sequence });
      // Tokens the model generated: each one sampled, metered as an output token of the sequence's decodes. onToken
      // misses tokens LlamaCompletion still holds when max_tokens ends the generation (a character not finished, or
      // text held after one), so it is only the count of what the batcher waits for.
      const sampledBefore = sequence.tokenMeter.usedOutputTokens;
      const { metadata } = await completion.generateCompletionWithMeta(prompt.tokens, {
        maxTokens: params.maxTokens,
        temperature: params.temperature,
        topP: params.topP,
        ...(params.seed === undefined ? {} : { seed: params.seed }),
        ...(params.grammar === undefined ? {} : { grammar: params.grammar }),
        ...(params.ignoreEos ? { tokenBias: noEndOfSequenceBias(this.model) } : {}),
        ...(prompt.templateStops.length === 0 ? {} : { customStopTriggers: prompt.templateStops }),
        disableContextShift: true,
        signal,
        stopOnAbortSignal: true,
        onToken: (tokens) => batched.token(tokens.length),
        onTextChunk: (text) => filter.push(text),
      });
      // An end-of-generation token that ended it is not part of the completion.
      const completionTokens = sequence.tokenMeter.usedOutputTokens - sampledBefore - (metadata.stopReason === "eogToken" ? 1 : 0);
      const text = filter.end();
      const finishReason: FinishReason = filter.stopString === null && metadata.stopReason === "maxTokens" ? "length" : "stop";
      return { text, finishReason, stopReason: filter.stopString, promptTokens, completionTokens };
    } finally {
      batched.end();
      signal.removeEventListener("abort", batched.end);
      // Greedy answers must not depend on what ran before on this sequence.
      await sequence.clearHistory().catch(() => undefined);
      variant.free.push(sequence);
      variant.active--;
      if (variant.retired && variant.active === 0) await variant.context.dispose();
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const variant of this.#variants.values()) await variant.context.dispose();
    this.#variants.clear();
    await this.model.dispose();
    await this.llama.dispose();
  }

  #assertOpen(): void {
    if (this.#closed) throw new ModelServerError(503, "the model server is shutting down");
  }

  #sequences(context: LlamaContext): LlamaContextSequence[] {
    return Array.from({ length: this.options.sequences }, () => context.getSequence());
  }

  #batcher(): StepBatcher {
    return new StepBatcher(undefined, this.options.onBatch);
  }

  async #createContext(loraPath: string | undefined, batcher: StepBatcher): Promise<LlamaContext> {
    return this.model.createContext({
      contextSize: this.options.contextSize,
      sequences: this.options.sequences,
      threads: this.options.threads,
      batching: { itemPrioritizationStrategy: batcher.strategy },
      ...(loraPath === undefined ? {} : { lora: { adapters: [{ filePath: loraPath, scale: 1 }] } }),
    });
  }
}

/**
 * A token bias under which the model never ends the sequence (vLLM's ignore_eos). TokenBias.set() skips
 * end-of-generation tokens on purpose, so the bias goes into its map directly (node-llama-cpp 3.21 hands that map to
 * the native sampler as it is); the ignore_eos test catches a version where this stops working.
 */
export function noEndOfSequenceBias(model: LlamaModel): TokenBias {
  const bias = new TokenBias(model.tokenizer);
  const biases = (bias as unknown as { _biases: Map<Token, number> })._biases;
  if (!(biases instanceof Map)) throw new Error("this node-llama-cpp version has no TokenBias._biases map: ignore_eos cannot be served");
  for (const token of [model.tokens.eos, model.tokens.eot]) if (token !== null) biases.set(token, Number.NEGATIVE_INFINITY);
  return bias;
}

export function unknownModel(id: string): ModelServerError {
  return new ModelServerError(404, `The model \`${id}\` does not exist.`, { param: "model", type: "NotFoundError" });
}

async function expectFile(path: string, what: string, param?: string): Promise<void> {
  const info = await stat(path).catch(() => undefined);
  if (info === undefined || !info.isFile()) {
    const message = `${what}: no such file ${path}`;
    if (param === undefined) throw new Error(message);
    throw new ModelServerError(400, message, { param });
  }
}

function unixNow(): number {
  return Math.floor(Date.now() / 1000);
}
