/**
 * Generation through a JetStream work queue: the LLM calls of a build are shared by every dataset replica, and a
 * build that loses its replica resumes without writing finished batches again.
 *
 * The replica that holds a build (the coordinator) cuts the chunks to generate into batches whose key is a hash of
 * their chunk IDs and the generation settings, and keeps at most ⌈max_concurrency / per-batch concurrency⌉ of them
 * in the queue `work.<prefix>-generation` (message ID `<version>.<batch key>`, so a coordinator that takes a build
 * over does not queue a batch twice). Any replica's generation worker takes a batch, writes its examples with the
 * LLM generator and stores the outcome in the KV bucket `<prefix>-generation-batches` under `<version>.<batch key>`
 * before it acknowledges the message: a batch is done exactly when its outcome is stored. The coordinator follows
 * that bucket (stored outcomes first, then live ones), so after a takeover every batch finished before the crash is
 * read back, never regenerated; a batch whose worker died is delivered again by the server after the ack wait.
 */
import { createHash } from "node:crypto";
import { setMaxListeners } from "node:events";
import { create } from "@bufbuild/protobuf";
import type { Bus, Job, TypedKv, WorkQueue } from "@ragtune/bus";
import { type LlmClient } from "@ragtune/llm";
import type { Logger } from "@ragtune/logger";
import { FailureKind, FailureSchema, type GenerationBatchResult, GenerationBatchResultSchema, GenerationBatchSchema } from "@ragtune/proto";
import type { DatasetExample, QuestionKind } from "./example.js";
import type { SourceChunk } from "./extractive-generator.js";
import { generateLlmDataset, LlmGenerationError, llmPromptHash, type ChunkFailure, type LlmGenerationResult } from "./llm-generator.js";

export interface GenerationOptions {
  model: string;
  questionsPerChunk: number;
  temperature: number;
  seed: number;
  /** Requests in flight for the whole build, over all replicas. */
  maxConcurrency: number;
}

export interface GenerationProgress {
  chunksDone: number;
  chunksTotal: number;
  examplesGenerated: number;
  chunksFailed: number;
  promptTokens: number;
  completionTokens: number;
  llmRetries: number;
}

/** A batch's outcome said the endpoint failed for all chunks (unreachable, key refused). */
export class GenerationFatalError extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
    this.name = "GenerationFatalError";
  }
}

/** Test hooks: run at the named step of a worker (`batch-stored`: after the outcome is stored, before the ack). */
export type GenerationStep = "batch-taken" | "batch-stored";

export interface GenerationQueueOptions {
  /** Prefix of the bucket and queue names (DATASET_BUCKET_PREFIX). */
  prefix: string;
  logger: Logger;
  /** Who writes outcomes (the replica's owner name). */
  worker: string;
  /** Chunks per batch (DATASET_GENERATION_BATCH_CHUNKS). */
  batchChunks: number;
  /** Time a worker has before its batch goes to another one; renewed while it works. */
  ackWaitMs: number;
  /** Deliveries of a batch before its build fails with it (a batch that stops its worker every time). */
  maxDeliver?: number;
  faults?: (step: GenerationStep, batch: { versionId: string; batchKey: string }) => void | Promise<void>;
}

interface StoredExample {
  id: string;
  chunkId: string;
  question: string;
  answer: string;
  kind: QuestionKind;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function jsonl(rows: readonly unknown[]): Uint8Array {
  return encoder.encode(rows.map((r) => `${JSON.stringify(r)}\n`).join(""));
}

function parseJsonl<T>(bytes: Uint8Array): T[] {
  return decoder
    .decode(bytes)
    .split("\n")
    .filter((l) => l !== "")
    .map((l) => JSON.parse(l) as T);
}

/** The batch key: what the batch holds and what it is asked, so a stored outcome is only read back for the same work. */
function batchKey(chunks: readonly SourceChunk[], options: GenerationOptions): string {
  const h = createHash("sha256");
  h.update(`${options.model}\u0000${options.questionsPerChunk}\u0000${options.temperature}\u0000${options.seed}\u0000${llmPromptHash(options.questionsPerChunk)}\n`);
  for (const c of chunks) h.update(`${c.id}\n`);
  return h.digest("hex").slice(0, 24);
}

/** The queue, the outcome bucket, and this replica's generation workers. */
export class GenerationQueue {
  private running: Promise<void>[] = [];
  private readonly stopping = new AbortController();

  private constructor(
    private readonly queue: WorkQueue<typeof GenerationBatchSchema>,
    private readonly results: TypedKv<typeof GenerationBatchResultSchema>,
    private readonly options: GenerationQueueOptions,
  ) {
    // Every batch in flight listens for the stop (LLM_CONCURRENCY / batch size of them, and more when configured so).
    setMaxListeners(0, this.stopping.signal);
  }

  static async open(bus: Bus, options: GenerationQueueOptions): Promise<GenerationQueue> {
    const queue = await bus.workQueue({
      name: `${options.prefix}-generation`,
      schema: GenerationBatchSchema,
      ackWaitMs: options.ackWaitMs,
      maxDeliver: -1,
    });
    // Outcomes outlive their build only by accident (a worker finishing a cancelled build's batch): a week's TTL.
    const results = await bus.kv(`${options.prefix}-generation-batches`, GenerationBatchResultSchema, { ttlMs: 7 * 24 * 3600_000 });
    return new GenerationQueue(queue, results, options);
  }

  /**
   * Starts writing batches with `llm`: `workers` batches' worth of chunks at once (`workers` × batch size), counted by
   * chunk, so the slots a batch's finished chunks free are refilled from the next batch while its slowest chunk (a
   * retry) is still out. `isActive(versionId)` tells whether the batch's build still wants it (a cancelled or finished
   * build's batches are dropped unread). One pull at a time, and only when a whole batch fits: a replica never holds
   * batches it is not working on (another replica could), and a stopping replica hands back at most the one batch a
   * pull brought in as it stopped.
   */
  startWorkers(workers: number, llm: Pick<LlmClient, "json">, isActive: (versionId: string) => Promise<boolean>): void {
    this.running.push(
      this.pullLoop(Math.max(1, workers), llm, isActive).catch((err: unknown) => {
        if (!this.stopping.signal.aborted) this.options.logger.error({ err }, "generation workers stopped");
      }),
    );
  }

  async close(): Promise<void> {
    this.stopping.abort(new Error("the dataset service is stopping"));
    await Promise.all(this.running);
    this.running = [];
  }

  /** Chunks of taken batches not written yet, and a wake-up for the pull loop when one is. */
  private pendingChunks = 0;
  private wake: (() => void) | undefined;

  private chunksDone(n: number): void {
    this.pendingChunks -= n;
    this.wake?.();
  }

  private async pullLoop(workers: number, llm: Pick<LlmClient, "json">, isActive: (versionId: string) => Promise<boolean>): Promise<void> {
    const log = this.options.logger;
    const inFlight = new Set<Promise<void>>();
    const capacity = workers * this.options.batchChunks;
    try {
      while (!this.stopping.signal.aborted) {
        if (this.pendingChunks + this.options.batchChunks > capacity && inFlight.size > 0) {
          await Promise.race([...inFlight, new Promise<void>((resolve) => (this.wake = resolve))]);
          this.wake = undefined;
          continue;
        }
        let job: Job<typeof GenerationBatchSchema> | null;
        try {
          job = await this.queue.take({ expiresMs: 2_000 });
        } catch (err) {
          if (this.stopping.signal.aborted) return;
          log.warn({ err }, "taking a generation batch failed; retrying");
          await new Promise((r) => setTimeout(r, 500));
          continue;
        }
        if (job === null) continue;
        if (this.stopping.signal.aborted) {
          job.nak(0); // another replica takes it
          return;
        }
        const taken = job;
        const chunks = parseJsonl<SourceChunk>(taken.value.chunksJsonl);
        this.pendingChunks += chunks.length;
        const running = this.work(taken, chunks, llm, isActive)
          .catch((err: unknown) => {
            if (this.stopping.signal.aborted) {
              taken.nak(0);
              return;
            }
            log.warn({ err, batch: taken.value.batchKey }, "generation batch failed; it is delivered again");
            taken.nak(1_000);
          })
          .finally(() => inFlight.delete(running));
        inFlight.add(running);
      }
    } finally {
      await Promise.all(inFlight);
    }
  }

  /** Writes one taken batch; its chunks were counted as pending when it was taken and are released as they are done. */
  private async work(job: Job<typeof GenerationBatchSchema>, chunks: SourceChunk[], llm: Pick<LlmClient, "json">, isActive: (versionId: string) => Promise<boolean>): Promise<void> {
    let counted = 0;
    const chunkDone = () => {
      counted++;
      this.chunksDone(1);
    };
    try {
      const batch = job.value;
      const key = `${batch.datasetVersionId}.${batch.batchKey}`;
      const [stored, active] = await Promise.all([this.results.get(key), isActive(batch.datasetVersionId)]);
      if (stored !== null || !active) {
        await job.ack(); // done before (a takeover queued it again), or nobody wants it any more
        return;
      }
      await this.options.faults?.("batch-taken", { versionId: batch.datasetVersionId, batchKey: batch.batchKey });
      job.startHeartbeat();
      await this.storeBatch(job, batch, chunks, llm, chunkDone);
    } finally {
      this.chunksDone(chunks.length - counted);
    }
  }

  private async storeBatch(
    job: Job<typeof GenerationBatchSchema>,
    batch: Job<typeof GenerationBatchSchema>["value"],
    chunks: SourceChunk[],
    llm: Pick<LlmClient, "json">,
    chunkDone: () => void,
  ): Promise<void> {
    const where = { versionId: batch.datasetVersionId, batchKey: batch.batchKey };
    const key = `${batch.datasetVersionId}.${batch.batchKey}`;
    const maxDeliver = this.options.maxDeliver ?? 20;
    let result: GenerationBatchResult;
    if (job.deliveryCount > maxDeliver) {
      result = create(GenerationBatchResultSchema, {
        datasetVersionId: batch.datasetVersionId,
        batchKey: batch.batchKey,
        worker: this.options.worker,
        fatal: create(FailureSchema, {
          kind: FailureKind.SYSTEM_ERROR,
          reason: "GENERATION_BATCH_ABANDONED",
          message: `generation batch ${batch.batchKey} (chunks ${chunks.map((c) => c.id).join(", ")}) was taken ${job.deliveryCount - 1} times and never finished: its workers stopped each time`,
        }),
      });
    } else {
      result = await this.writeBatch(batch.datasetVersionId, batch.batchKey, chunks, batch, llm, chunkDone);
    }
    await this.results.put(key, result);
    await this.options.faults?.("batch-stored", where);
    await job.ack();
  }

  private async writeBatch(
    versionId: string,
    key: string,
    chunks: SourceChunk[],
    batch: { model: string; questionsPerChunk: number; temperature: number; seed: number; maxConcurrency: number },
    llm: Pick<LlmClient, "json">,
    chunkDone: () => void,
  ): Promise<GenerationBatchResult> {
    const base = { datasetVersionId: versionId, batchKey: key, worker: this.options.worker };
    let out: LlmGenerationResult;
    try {
      out = await generateLlmDataset(
        chunks,
        { model: batch.model, questionsPerChunk: batch.questionsPerChunk, temperature: batch.temperature, seed: batch.seed, maxConcurrency: Math.max(1, batch.maxConcurrency) },
        { llm, signal: this.stopping.signal, onProgress: chunkDone, progressEvery: 1 },
      );
    } catch (err) {
      if (!(err instanceof LlmGenerationError)) throw err;
      const unauthorized = err.llmError.kind === "unauthorized";
      return create(GenerationBatchResultSchema, {
        ...base,
        fatal: create(FailureSchema, {
          kind: unauthorized ? FailureKind.USER_ERROR : FailureKind.SYSTEM_ERROR,
          reason: unauthorized ? "GENERATION_MODEL_UNAUTHORIZED" : "GENERATION_MODEL_FAILED",
          message: `${err.message} (chunk ${err.chunkId})`,
        }),
      });
    }
    const stored: StoredExample[] = out.examples.map((e) => ({ id: e.id, chunkId: e.chunkId, question: e.question, answer: e.answer, kind: e.kind }));
    return create(GenerationBatchResultSchema, {
      ...base,
      examplesJsonl: jsonl(stored),
      failuresJsonl: jsonl(out.failures),
      promptTokens: BigInt(out.counts.promptTokens),
      completionTokens: BigInt(out.counts.completionTokens),
      llmRetries: out.counts.llmRetries,
    });
  }

  /**
   * The examples of `chunks` written by the model through the queue (in chunk order), resuming from the outcomes
   * already stored for this build. Progress after each batch; per-chunk failures as they arrive. A batch whose
   * outcome is fatal fails the generation with a GenerationFatalError.
   */
  async generate(
    versionId: string,
    chunks: readonly SourceChunk[],
    options: GenerationOptions,
    hooks: { signal: AbortSignal; onProgress?: (p: GenerationProgress) => void; onFailure?: (f: ChunkFailure) => void },
  ): Promise<{ examples: DatasetExample[]; failures: ChunkFailure[]; progress: GenerationProgress }> {
    const perBatch = Math.max(1, Math.min(this.options.batchChunks, options.maxConcurrency));
    const window = Math.max(1, Math.ceil(options.maxConcurrency / perBatch));
    const batches: { key: string; chunks: SourceChunk[] }[] = [];
    for (let i = 0; i < chunks.length; i += this.options.batchChunks) {
      const part = chunks.slice(i, i + this.options.batchChunks);
      batches.push({ key: batchKey(part, options), chunks: part });
    }
    const byKey = new Map(batches.map((b) => [b.key, b]));
    const done = new Map<string, GenerationBatchResult>();
    const outstanding = new Set<string>();
    const progress: GenerationProgress = { chunksDone: 0, chunksTotal: chunks.length, examplesGenerated: 0, chunksFailed: 0, promptTokens: 0, completionTokens: 0, llmRetries: 0 };
    let next = 0;
    // The batches that fit in the window, queued in order (their publishes go out in call order, not one round trip
    // after another).
    const topUp = async () => {
      const queued: Promise<unknown>[] = [];
      while (outstanding.size < window && next < batches.length) {
        const b = batches[next++]!;
        if (done.has(b.key)) continue;
        outstanding.add(b.key);
        queued.push(
          this.queue.enqueue(
            {
              datasetVersionId: versionId,
              batchKey: b.key,
              chunksJsonl: jsonl(b.chunks.map((c) => ({ id: c.id, documentId: c.documentId, headingPath: c.headingPath, text: c.text }))),
              model: options.model,
              questionsPerChunk: options.questionsPerChunk,
              temperature: options.temperature,
              seed: options.seed,
              maxConcurrency: perBatch,
            },
            { msgId: `${versionId}.${b.key}` },
          ),
        );
      }
      await Promise.all(queued);
    };
    // The first batches go out while the outcome watch is set up (it replays stored outcomes, so none is missed; a
    // batch queued again after a takeover is acknowledged unread by the worker that finds its outcome stored).
    const watching = this.results.watch({ key: `${versionId}.*` });
    const queued = topUp();
    let watch: Awaited<typeof watching>;
    try {
      [watch] = await Promise.all([watching, queued]);
    } catch (err) {
      watching.then((w) => w.stop(), () => {});
      queued.catch(() => {});
      throw err;
    }
    const onAbort = () => watch.stop();
    hooks.signal.addEventListener("abort", onAbort, { once: true });
    if (hooks.signal.aborted) watch.stop();
    try {
      if (batches.length > 0) {
        for await (const change of watch) {
          if (change.value === null) continue;
          const key = change.key.slice(versionId.length + 1);
          const batch = byKey.get(key);
          if (batch === undefined || done.has(key)) continue; // another chunk set's outcome (the collection changed)
          const result = change.value;
          if (result.fatal !== undefined) throw new GenerationFatalError(result.fatal.reason, result.fatal.message);
          done.set(key, result);
          outstanding.delete(key);
          const failures = parseJsonl<ChunkFailure>(result.failuresJsonl);
          for (const f of failures) hooks.onFailure?.(f);
          progress.chunksDone += batch.chunks.length;
          progress.examplesGenerated += parseJsonl<StoredExample>(result.examplesJsonl).length;
          progress.chunksFailed += new Set(failures.map((f) => f.chunkId)).size;
          progress.promptTokens += Number(result.promptTokens);
          progress.completionTokens += Number(result.completionTokens);
          progress.llmRetries += result.llmRetries;
          hooks.onProgress?.({ ...progress });
          if (done.size === batches.length) break;
          await topUp();
        }
      }
      if (hooks.signal.aborted) throw hooks.signal.reason;
      if (done.size < batches.length) throw new Error("the generation outcome watch ended early");
    } finally {
      hooks.signal.removeEventListener("abort", onAbort);
      watch.stop();
    }
    const examples: DatasetExample[] = [];
    const failures: ChunkFailure[] = [];
    for (const b of batches) {
      const result = done.get(b.key)!;
      const chunkOf = new Map(b.chunks.map((c) => [c.id, c]));
      for (const e of parseJsonl<StoredExample>(result.examplesJsonl)) {
        const c = chunkOf.get(e.chunkId)!;
        examples.push({ ...e, documentId: c.documentId, headingPath: [...c.headingPath], context: c.text, answerable: true, generator: "llm" });
      }
      failures.push(...parseJsonl<ChunkFailure>(result.failuresJsonl));
    }
    return { examples, failures, progress };
  }

  /** Removes a finished build's stored outcomes. */
  async forget(versionId: string): Promise<void> {
    for await (const key of this.results.keys(`${versionId}.*`)) await this.results.delete(key);
  }
}
