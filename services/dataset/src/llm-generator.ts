/**
 * The LLM generator: question–answer pairs written by a model through the OpenAI-compatible client (libs/llm), for
 * builds that name a generation model (`settings.model`).
 *
 * Per chunk one guided-JSON chat call asks for exactly N pairs (`{ pairs: [{ kind, question, answer }] }`, the kinds
 * cycling factual, conceptual, comparison) whose answers come only from the chunk; the prompt gives the chunk's heading
 * path and text. The client retries output that does not parse or match the schema; a chunk whose output stays
 * malformed, whose request the server rejects (e.g. over the context length), or whose answers are refusals is
 * reported per chunk (a ChunkFailure, counted) and never dropped silently. Errors that are not about one chunk (the
 * endpoint is unreachable, the key is refused) stop the generation with an LlmGenerationError.
 *
 * The examples have the DatasetExample shape of the extractive generator with generator "llm" and content-addressed
 * IDs; grounding (content n-grams of the answer found in the context) is the quality gate's `ungrounded` check.
 */
import { createHash } from "node:crypto";
import { isLlmError, type LlmClient, type LlmError } from "@ragtune/llm";
import { z } from "zod";
import type { DatasetExample } from "./example.js";
import type { AnswerableKind, SourceChunk } from "./extractive-generator.js";
import { findDisclaimer } from "./quality-gate.js";

/** The question kinds asked for, in order; N pairs take the first N kinds, cycling. */
export const LLM_QUESTION_KINDS = ["factual", "conceptual", "comparison"] as const satisfies readonly AnswerableKind[];

export const LLM_PROMPT_VERSION = "llm-qa-v1";

const SYSTEM_PROMPT = [
  "You write question-answer pairs for fine-tuning a model that answers questions from documentation.",
  "You are given one passage of a document and the headings it sits under.",
  "Rules:",
  "- Every answer must come only from the passage: restate or quote what it says, add nothing from your own knowledge.",
  "- Every question must be answerable from the passage alone and name what it asks about (no \"this section\", \"the text\").",
  "- factual: a specific fact, value, name or step stated in the passage.",
  "- conceptual: what something is, why or how it works, as the passage explains it.",
  "- comparison: how two things the passage mentions differ or relate; if it compares nothing, ask about two of its statements together.",
  "- Answers are complete sentences, 1 to 4 sentences long.",
  "Reply with JSON only, matching the schema.",
].join("\n");

function kindsFor(n: number): AnswerableKind[] {
  return Array.from({ length: n }, (_, i) => LLM_QUESTION_KINDS[i % LLM_QUESTION_KINDS.length]!);
}

function userPrompt(chunk: SourceChunk, kinds: readonly AnswerableKind[]): string {
  const headings = chunk.headingPath.length > 0 ? chunk.headingPath.join(" > ") : "(none)";
  return [
    `Write exactly ${kinds.length} question-answer pairs about the passage below, with these kinds in this order: ${kinds.join(", ")}.`,
    "",
    `Heading path: ${headings}`,
    "",
    "Passage:",
    "<<<",
    chunk.text,
    ">>>",
  ].join("\n");
}

/** Longest question and answer the schema allows (characters; a guided-JSON server enforces them). */
const MAX_QUESTION_CHARS = 300;
const MAX_ANSWER_CHARS = 1000;

/**
 * Tokens that always hold N pairs at the schema's longest: a token is at least one character, so a model that fills
 * every string to its limit (a random one does) still closes its JSON before max_tokens.
 */
export function pairsMaxTokens(n: number): number {
  return 64 + n * (MAX_QUESTION_CHARS + MAX_ANSWER_CHARS + 64);
}

/** The guided-JSON schema for N pairs (exactly N: the JSON Schema has minItems = maxItems = N). */
export function pairsSchema(n: number) {
  return z.object({
    pairs: z
      .array(
        z.object({
          kind: z.enum(LLM_QUESTION_KINDS),
          question: z.string().min(1).max(MAX_QUESTION_CHARS),
          answer: z.string().min(1).max(MAX_ANSWER_CHARS),
        }),
      )
      .length(n),
  });
}

const schemas = new Map<number, ReturnType<typeof pairsSchema>>();
function schemaFor(n: number): ReturnType<typeof pairsSchema> {
  let s = schemas.get(n);
  if (s === undefined) schemas.set(n, (s = pairsSchema(n)));
  return s;
}

const promptHashes = new Map<number, string>();

/**
 * SHA-256 over the prompt version, the system prompt, the user prompt template and the JSON Schema for `n` pairs:
 * what a model was asked, for lineage (it enters the version's content hash).
 */
export function llmPromptHash(n: number): string {
  // Asked for every generation batch (its key and its outcome); deriving the JSON Schema each time cost ≈ 0.3 ms.
  let hash = promptHashes.get(n);
  if (hash === undefined) {
    const template = userPrompt({ id: "", documentId: "", headingPath: ["{heading_path}"], text: "{chunk_text}" }, kindsFor(n));
    hash = createHash("sha256")
      .update([LLM_PROMPT_VERSION, SYSTEM_PROMPT, template, JSON.stringify(z.toJSONSchema(schemaFor(n)))].join("\u0000"))
      .digest("hex");
    promptHashes.set(n, hash);
  }
  return hash;
}

/** The content-addressed ID of an LLM example (the extractive scheme with its own prefix). */
export function llmExampleId(chunkId: string, question: string, answer: string): string {
  return `ex_${createHash("sha256").update(`llm-v1\u0000${chunkId}\u0000${question}\u0000${answer}`).digest("hex").slice(0, 32)}`;
}

const REFUSALS: readonly RegExp[] = [
  /\b(?:i'm sorry|i am sorry|i apologi[sz]e|sorry, (?:but )?i)\b/,
  /\b(?:cannot|can't|unable to) (?:answer|help|provide|assist|generate|write|comply)\b/,
  /\bthe (?:passage|text|context|document) does not (?:contain|mention|provide|say|specify|state|include)\b/,
  /\bnot (?:mentioned|provided|stated|specified) in the (?:passage|text|context|document)\b/,
];

/** The refusal phrase an answer holds ("I'm sorry, I can't…", "the passage does not mention…"), if any. */
export function refusalIn(answer: string): string | undefined {
  const text = answer.normalize("NFKC").toLowerCase().replace(/[\u2018\u2019\u02bc]/g, "'");
  for (const pattern of REFUSALS) {
    const match = pattern.exec(text);
    if (match !== null) return match[0];
  }
  return findDisclaimer(answer);
}

export interface LlmGenerationOptions {
  /** The model (or LoRA adapter) the requests name. */
  model: string;
  /** Pairs per chunk, 1..20. */
  questionsPerChunk: number;
  temperature: number;
  /** Each chunk's request gets a seed derived from it and the chunk ID. */
  seed: number;
  /** Chunks in flight at once for this build; the client's own limit (LLM_CONCURRENCY) applies as well. */
  maxConcurrency: number;
  /** Most tokens per answer (default: enough for every pair at the schema's longest, pairsMaxTokens). */
  maxTokens?: number;
}

/**
 * A chunk that gave no example, or fewer than asked:
 * - `malformed_output`: the output stayed unparseable or off-schema after the client's retries
 * - `rejected_request`: the server refused the request (4xx, e.g. the chunk is over the model's context length)
 * - `timeout`: no answer within LLM_TIMEOUT, retries included
 * - `refused`: answers that refuse instead of answering (those pairs are dropped; `pairsLost` says how many)
 */
export interface ChunkFailure {
  chunkId: string;
  reason: "malformed_output" | "rejected_request" | "timeout" | "refused";
  message: string;
  /** Pairs asked for and not turned into examples. */
  pairsLost: number;
}

export interface LlmGenerationProgress {
  chunksDone: number;
  chunksTotal: number;
  examplesGenerated: number;
}

export interface LlmGenerationDeps {
  llm: Pick<LlmClient, "json">;
  signal?: AbortSignal;
  /** Called after each batch of chunks (and after the last chunk). */
  onProgress?: (progress: LlmGenerationProgress) => void;
  /** Called once per failed chunk, as it happens. */
  onFailure?: (failure: ChunkFailure) => void;
  /** Chunks per progress report (default: about 1 % of the chunks, at least maxConcurrency). */
  progressEvery?: number;
}

export interface LlmGenerationResult {
  /** In chunk order. */
  examples: DatasetExample[];
  failures: ChunkFailure[];
  promptHash: string;
  counts: {
    chunks: number;
    /** Chunks with at least one example. */
    chunksWithExamples: number;
    /** Per failure reason: chunks. */
    chunksFailed: Record<ChunkFailure["reason"], number>;
    examples: number;
    /** Pairs asked for and not turned into examples (failed chunks, refused and repeated pairs). */
    pairsLost: number;
    promptTokens: number;
    completionTokens: number;
    /** Requests that were sent again (429/5xx/timeouts/malformed output). */
    llmRetries: number;
  };
}

/** The model endpoint failed in a way that is not about one chunk; the generation stopped. */
export class LlmGenerationError extends Error {
  constructor(
    readonly llmError: LlmError,
    readonly chunkId: string,
  ) {
    super(`the generation model failed (${llmError.kind}): ${llmError.message}`, { cause: llmError });
    this.name = "LlmGenerationError";
  }
}

/** Failures that concern one chunk: its output, its size, its answer time. Everything else stops the build. */
function chunkFailureOf(error: LlmError): ChunkFailure["reason"] | undefined {
  if (error.kind === "malformed_json") return "malformed_output";
  if (error.kind === "bad_request") return "rejected_request";
  if (error.kind === "timeout") return "timeout";
  return undefined;
}

function chunkSeed(seed: number, chunkId: string): number {
  return (createHash("sha256").update(`${seed}\u0000${chunkId}`).digest().readUInt32BE(0) & 0x7fffffff) >>> 0;
}

interface ChunkOutcome {
  examples: DatasetExample[];
  failure?: ChunkFailure;
  pairsLost: number;
  promptTokens: number;
  completionTokens: number;
  retries: number;
}

async function generateForChunk(chunk: SourceChunk, options: LlmGenerationOptions, llm: Pick<LlmClient, "json">, signal: AbortSignal): Promise<ChunkOutcome> {
  const n = options.questionsPerChunk;
  const kinds = kindsFor(n);
  let result;
  try {
    result = await llm.json(
      {
        model: options.model,
        messages: [
          { role: "system", content: SYSTEM_PROMPT },
          { role: "user", content: userPrompt(chunk, kinds) },
        ],
        schema: schemaFor(n),
        schemaName: "qa_pairs",
        temperature: options.temperature,
        seed: chunkSeed(options.seed, chunk.id),
        maxTokens: options.maxTokens ?? pairsMaxTokens(n),
      },
      { signal },
    );
  } catch (err) {
    if (!isLlmError(err)) throw err;
    const reason = chunkFailureOf(err);
    if (reason === undefined) throw err.kind === "cancelled" ? err : new LlmGenerationError(err, chunk.id);
    const retries = Math.max(0, (err.attempts ?? 1) - 1);
    return { examples: [], failure: { chunkId: chunk.id, reason, message: err.message, pairsLost: n }, pairsLost: n, promptTokens: 0, completionTokens: 0, retries };
  }
  const examples: DatasetExample[] = [];
  const refused: string[] = [];
  const ids = new Set<string>();
  for (const pair of result.value.pairs) {
    const question = pair.question.trim();
    const answer = pair.answer.trim();
    const refusal = refusalIn(answer);
    if (refusal !== undefined) {
      refused.push(refusal);
      continue;
    }
    const id = llmExampleId(chunk.id, question, answer);
    if (ids.has(id)) continue; // the same pair twice: one example
    ids.add(id);
    examples.push({
      id,
      chunkId: chunk.id,
      documentId: chunk.documentId,
      headingPath: [...chunk.headingPath],
      context: chunk.text,
      question,
      answer,
      kind: pair.kind,
      answerable: true,
      generator: "llm",
    });
  }
  const outcome: ChunkOutcome = {
    examples,
    pairsLost: n - examples.length,
    promptTokens: result.usage.promptTokens,
    completionTokens: result.usage.completionTokens,
    retries: Math.max(0, result.latency.attempts - 1),
  };
  if (refused.length > 0) {
    outcome.failure = {
      chunkId: chunk.id,
      reason: "refused",
      message: `the model refused ${refused.length} of ${n} answers (${JSON.stringify(refused[0])})`,
      pairsLost: refused.length,
    };
  }
  return outcome;
}

/**
 * The LLM examples of many chunks, in chunk order. At most `maxConcurrency` chunks are in flight (and at most the
 * client's concurrency on the wire); progress is reported per batch of chunks, failures per chunk.
 */
export async function generateLlmDataset(
  chunks: readonly SourceChunk[],
  options: LlmGenerationOptions,
  deps: LlmGenerationDeps,
): Promise<LlmGenerationResult> {
  const n = options.questionsPerChunk;
  if (!Number.isInteger(n) || n < 1 || n > 20) throw new RangeError(`questionsPerChunk must be an integer from 1 to 20, got ${n}`);
  if (!Number.isInteger(options.maxConcurrency) || options.maxConcurrency < 1) {
    throw new RangeError(`maxConcurrency must be a positive integer, got ${options.maxConcurrency}`);
  }
  // One failure that is not about a chunk stops the other workers too.
  const stop = new AbortController();
  const onAbort = () => stop.abort(deps.signal?.reason);
  if (deps.signal?.aborted) onAbort();
  deps.signal?.addEventListener("abort", onAbort, { once: true });

  const outcomes: (ChunkOutcome | undefined)[] = new Array(chunks.length);
  const every = deps.progressEvery ?? Math.max(options.maxConcurrency, Math.ceil(chunks.length / 100));
  let next = 0;
  let done = 0;
  let generated = 0;
  const worker = async (): Promise<void> => {
    while (!stop.signal.aborted) {
      const index = next++;
      if (index >= chunks.length) return;
      const outcome = await generateForChunk(chunks[index]!, options, deps.llm, stop.signal);
      outcomes[index] = outcome;
      done++;
      generated += outcome.examples.length;
      if (outcome.failure) deps.onFailure?.(outcome.failure);
      if (done % every === 0 || done === chunks.length) deps.onProgress?.({ chunksDone: done, chunksTotal: chunks.length, examplesGenerated: generated });
    }
  };
  try {
    const workers = Array.from({ length: Math.min(options.maxConcurrency, Math.max(1, chunks.length)) }, () =>
      worker().catch((err: unknown) => {
        stop.abort(err);
        throw err;
      }),
    );
    const settled = await Promise.allSettled(workers);
    // The first real error, not the cancellations it caused in the other workers.
    const errors = settled.flatMap((s) => (s.status === "rejected" ? [s.reason as unknown] : []));
    const first = errors.find((e) => !(isLlmError(e) && e.kind === "cancelled")) ?? errors[0];
    if (first !== undefined) throw first;
    if (stop.signal.aborted) throw deps.signal?.reason ?? new Error("generation cancelled");
  } finally {
    deps.signal?.removeEventListener("abort", onAbort);
  }

  const examples: DatasetExample[] = [];
  const failures: ChunkFailure[] = [];
  const chunksFailed: Record<ChunkFailure["reason"], number> = { malformed_output: 0, rejected_request: 0, timeout: 0, refused: 0 };
  let chunksWithExamples = 0;
  let pairsLost = 0;
  let promptTokens = 0;
  let completionTokens = 0;
  let llmRetries = 0;
  for (const o of outcomes) {
    if (o === undefined) continue;
    examples.push(...o.examples);
    if (o.examples.length > 0) chunksWithExamples++;
    if (o.failure) {
      failures.push(o.failure);
      chunksFailed[o.failure.reason]++;
    }
    pairsLost += o.pairsLost;
    promptTokens += o.promptTokens;
    completionTokens += o.completionTokens;
    llmRetries += o.retries;
  }
  return {
    examples,
    failures,
    promptHash: llmPromptHash(n),
    counts: { chunks: chunks.length, chunksWithExamples, chunksFailed, examples: examples.length, pairsLost, promptTokens, completionTokens, llmRetries },
  };
}
