/**
 * Generation through a JetStream work queue: the LLM calls of a build are shared by every dataset replica, and a
 * build that loses its replica resumes without writing finished batches again.
 *
 * The replica that holds a build (the coordinator) cuts the chunks to generate into batches (or takes them as the
 * build cuts them while it still reads the collection, batch-plan.ts) whose key is a hash of their chunk IDs and the
 * generation settings, and keeps at most ⌈max_concurrency / per-batch concurrency⌉ of them
 * in the queue `work.<prefix>-generation` (message ID `<version>.<batch key>`, so a coordinator that takes a build
 * over does not queue a batch twice). Any replica's generation worker takes a batch, writes its examples with the
 * LLM generator and stores the outcome in the KV bucket `<prefix>-generation-batches` under `<version>.<batch key>`
 * before it acknowledges the message: a batch is done exactly when its outcome is stored. The coordinator follows
 * that bucket (stored outcomes first, then live ones; one that arrives before its batch is formed waits for it), so
 * after a takeover every batch finished before the crash is read back, never regenerated; a batch whose worker died
 * is delivered again by the server after the ack wait.
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

/**
 * Test hooks: run at the named step of a worker (`batch-stored`: after the outcome is stored, before the ack) or of a
 * coordinator (`outcome-seen`: an outcome of the build was read from the bucket and handled, or kept for its batch).
 */
export type GenerationStep = "batch-taken" | "batch-stored" | "outcome-seen";

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

/** Pulls of one replica out at once at most. */
const MAX_PULLS = 4;

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
   * build's batches are dropped unread). A pull only for a whole batch that fits (several at once when several fit):
   * a replica never holds batches it is not working on (another replica could), and a stopping replica hands back the
   * batches its pulls brought in as it stopped.
   *
   * With `llm.stats` (the replica's own client, used for generation only), chunks whose call sleeps before a retry are
   * not counted: they want no slot until the sleep ends, so a batch is taken in their place and the client's slots
   * never wait for them (the retry then goes ahead of the queue; the replica holds at most that many chunks more, and
   * never more than twice its capacity).
   * Call `retrying()` from the client's `onRetry`, so the count is looked at again as a call starts its sleep.
   */
  startWorkers(workers: number, llm: Pick<LlmClient, "json"> & Partial<Pick<LlmClient, "stats">>, isActive: (versionId: string) => Promise<boolean>): void {
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

  /** Chunks of taken batches not written yet, and a wake-up for the pull loop when one is (or a pull returns). */
  private pendingChunks = 0;
  private wake: (() => void) | undefined;

  private chunksDone(n: number): void {
    this.pendingChunks -= n;
    this.wake?.();
  }

  /**
   * A call of the workers' client is about to sleep before a retry (its `onRetry`): the pull loop looks at the room
   * again. The client counts the call as backing off before it sleeps, in the same tick, and the loop resumes after
   * that tick (a promise continuation), so it sees the call counted.
   */
  retrying(): void {
    this.wake?.();
  }

  /**
   * Pulls batches while a batch's worth of chunks is free (counting a batch for each pull still out), up to MAX_PULLS
   * at once when several fit (a replica that starts, or whose batches all finished together, fills its slots in one
   * round trip instead of one pull after another). A stopping replica hands its batches back only once none of its
   * pulls is out any more: handed back earlier, a batch would go to its own next pull, and back, and again, each time
   * counting as a delivery.
   */
  private async pullLoop(workers: number, llm: Pick<LlmClient, "json"> & Partial<Pick<LlmClient, "stats">>, isActive: (versionId: string) => Promise<boolean>): Promise<void> {
    const log = this.options.logger;
    const batchChunks = this.options.batchChunks;
    const capacity = workers * batchChunks;
    // Chunks that want a slot or are on the wire: the pending ones less those sleeping before a retry, at most a
    // capacity's worth of them (an endpoint failing every call does not draw the whole build into this replica).
    const wanting = () => this.pendingChunks - Math.min(this.pendingChunks, capacity, Math.max(0, llm.stats?.().backingOff ?? 0));
    const inFlight = new Set<Promise<void>>();
    let pulls = 0;
    const handBack: Job<typeof GenerationBatchSchema>[] = [];
    const wakeUp = () => this.wake?.();
    this.stopping.signal.addEventListener("abort", wakeUp, { once: true });
    const pull = async () => {
      let job: Job<typeof GenerationBatchSchema> | null;
      try {
        job = await this.queue.take({ expiresMs: 2_000 });
      } catch (err) {
        if (!this.stopping.signal.aborted) {
          log.warn({ err }, "taking a generation batch failed; retrying");
          await new Promise((r) => setTimeout(r, 500));
        }
        return;
      }
      if (job === null) return;
      if (this.stopping.signal.aborted) {
        handBack.push(job); // another replica takes it
        return;
      }
      const taken = job;
      const chunks = parseJsonl<SourceChunk>(taken.value.chunksJsonl);
      this.pendingChunks += chunks.length;
      const running = this.work(taken, chunks, llm, isActive)
        .catch((err: unknown) => {
          if (this.stopping.signal.aborted) {
            handBack.push(taken);
            return;
          }
          log.warn({ err, batch: taken.value.batchKey }, "generation batch failed; it is delivered again");
          taken.nak(1_000);
        })
        .finally(() => inFlight.delete(running));
      inFlight.add(running);
    };
    try {
      while (!this.stopping.signal.aborted) {
        if (pulls < MAX_PULLS && wanting() + (pulls + 1) * batchChunks <= capacity) {
          pulls++;
          const pulling = pull().finally(() => {
            pulls--;
            inFlight.delete(pulling);
            this.wake?.();
          });
          inFlight.add(pulling);
          continue;
        }
        await new Promise<void>((resolve) => (this.wake = resolve));
        this.wake = undefined;
      }
    } finally {
      this.stopping.signal.removeEventListener("abort", wakeUp);
      while (inFlight.size > 0) await Promise.all([...inFlight]);
      for (const job of handBack) job.nak(0);
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

  /** Chunks per batch (DATASET_GENERATION_BATCH_CHUNKS): how callers that cut their own batches cut them. */
  get batchChunks(): number {
    return this.options.batchChunks;
  }

  /**
   * The examples written by the model through the queue for `input` — chunks (cut into batches here, in order) or
   * batches as they are formed (cut by the caller, e.g. while the collection is still being read; read eagerly, each
   * queued as soon as the window has room) — resuming from the outcomes already stored for this build. Examples and
   * failures come back in batch order, each batch's in chunk order. Progress after each batch; per-chunk failures as
   * they arrive. A batch whose outcome is fatal fails the generation with a GenerationFatalError; so does an error of
   * `input` (with that error).
   */
  async generate(
    versionId: string,
    input: readonly SourceChunk[] | AsyncIterable<readonly SourceChunk[]>,
    options: GenerationOptions,
    hooks: { signal: AbortSignal; onProgress?: (p: GenerationProgress) => void; onFailure?: (f: ChunkFailure) => void },
  ): Promise<{ examples: DatasetExample[]; failures: ChunkFailure[]; progress: GenerationProgress }> {
    const perBatch = Math.max(1, Math.min(this.options.batchChunks, options.maxConcurrency));
    const window = Math.max(1, Math.ceil(options.maxConcurrency / perBatch));
    const batches: { key: string; chunks: readonly SourceChunk[] }[] = [];
    const byKey = new Map<string, { key: string; chunks: readonly SourceChunk[] }>();
    /** Outcomes of batches not formed yet (a takeover's stored outcomes replay before the listing reaches them). */
    const early = new Map<string, GenerationBatchResult>();
    const done = new Map<string, { examples: DatasetExample[]; failures: ChunkFailure[] }>();
    const outstanding = new Set<string>();
    const progress: GenerationProgress = { chunksDone: 0, chunksTotal: 0, examplesGenerated: 0, chunksFailed: 0, promptTokens: 0, completionTokens: 0, llmRetries: 0 };
    let next = 0;
    let inputDone = false;
    let failed: { error: unknown } | undefined;
    let finished = false;
    let watch: Awaited<ReturnType<typeof this.results.watch>> | undefined;
    const stopWatch = () => watch?.stop();
    const fail = (error: unknown) => {
      failed ??= { error };
      stopWatch();
    };
    const finishIfDone = () => {
      if (inputDone && done.size === batches.length && !finished) {
        finished = true;
        stopWatch();
      }
    };
    // The batches that fit in the window, queued in order (their publishes go out in call order, not one round trip
    // after another).
    const topUp = () => {
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
      return Promise.all(queued).then(() => {}, fail);
    };
    // An outcome of a batch of this build: read once, as it arrives (the examples with their chunks' context).
    const record = (batch: { key: string; chunks: readonly SourceChunk[] }, result: GenerationBatchResult) => {
      if (result.fatal !== undefined) {
        fail(new GenerationFatalError(result.fatal.reason, result.fatal.message));
        return;
      }
      const chunkOf = new Map(batch.chunks.map((c) => [c.id, c]));
      const examples = parseJsonl<StoredExample>(result.examplesJsonl).map((e): DatasetExample => {
        const c = chunkOf.get(e.chunkId)!;
        return { ...e, documentId: c.documentId, headingPath: [...c.headingPath], context: c.text, answerable: true, generator: "llm" };
      });
      const failures = parseJsonl<ChunkFailure>(result.failuresJsonl);
      done.set(batch.key, { examples, failures });
      outstanding.delete(batch.key);
      for (const f of failures) hooks.onFailure?.(f);
      progress.chunksDone += batch.chunks.length;
      progress.examplesGenerated += examples.length;
      progress.chunksFailed += new Set(failures.map((f) => f.chunkId)).size;
      progress.promptTokens += Number(result.promptTokens);
      progress.completionTokens += Number(result.completionTokens);
      progress.llmRetries += result.llmRetries;
      hooks.onProgress?.({ ...progress });
      finishIfDone();
      if (!finished) void topUp();
    };
    const add = (chunks: readonly SourceChunk[]) => {
      if (chunks.length === 0) return;
      const key = batchKey(chunks, options);
      if (byKey.has(key)) return; // the same chunks twice: one batch
      const batch = { key, chunks };
      byKey.set(key, batch);
      batches.push(batch);
      progress.chunksTotal += chunks.length;
      const stored = early.get(key);
      if (stored !== undefined) {
        early.delete(key);
        record(batch, stored);
      } else void topUp();
    };
    const onAbort = () => fail(hooks.signal.reason);
    hooks.signal.addEventListener("abort", onAbort, { once: true });
    // The first batches go out while the outcome watch is set up (it replays stored outcomes, so none is missed; a
    // batch queued again after a takeover is acknowledged unread by the worker that finds its outcome stored).
    const watching = this.results.watch({ key: `${versionId}.*` });
    let reading: Promise<void> = Promise.resolve();
    if (Symbol.asyncIterator in input) {
      reading = (async () => {
        try {
          for await (const b of input) {
            if (failed !== undefined) return;
            add(b);
          }
          inputDone = true;
          finishIfDone();
        } catch (err) {
          fail(err);
        }
      })();
    } else {
      for (let i = 0; i < input.length; i += this.options.batchChunks) add(input.slice(i, i + this.options.batchChunks));
      inputDone = true;
    }
    try {
      try {
        watch = await watching;
      } catch (err) {
        fail(err);
      }
      if (hooks.signal.aborted) fail(hooks.signal.reason);
      if (failed !== undefined || finished) stopWatch();
      finishIfDone();
      if (watch !== undefined && failed === undefined && !finished) {
        for await (const change of watch) {
          if (change.value === null) continue;
          const key = change.key.slice(versionId.length + 1);
          const batch = byKey.get(key);
          if (batch === undefined) {
            if (!inputDone) early.set(key, change.value); // formed later, or another chunk set's outcome
          } else if (!done.has(key)) record(batch, change.value);
          if (failed !== undefined || finished) break;
          await this.options.faults?.("outcome-seen", { versionId, batchKey: key });
        }
      }
    } finally {
      hooks.signal.removeEventListener("abort", onAbort);
      stopWatch();
      if (watch === undefined) watching.then((w) => w.stop(), () => {});
    }
    await reading;
    if (failed !== undefined) throw failed.error;
    if (!finished) throw new Error("the generation outcome watch ended early");
    const examples: DatasetExample[] = [];
    const failures: ChunkFailure[] = [];
    for (const b of batches) {
      const result = done.get(b.key)!;
      examples.push(...result.examples);
      failures.push(...result.failures);
    }
    return { examples, failures, progress };
  }

  /** Removes a finished build's stored outcomes. */
  async forget(versionId: string): Promise<void> {
    for await (const key of this.results.keys(`${versionId}.*`)) await this.results.delete(key);
  }
}
