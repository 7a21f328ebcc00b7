import { randomBytes } from "node:crypto";
import { hostname } from "node:os";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { ArtifactStore, Bus } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  ChunkChangeCountsSchema,
  DocumentChunkedSchema,
  DocumentErrorReason,
  DocumentStatus,
  FailureKind,
  FailureSchema,
  IngestDocumentResultSchema,
  IngestRunCompletedSchema,
  IngestRunItemSchema,
  IngestRunStatisticsSchema,
  IngestRunStatus,
  ServerPathSchema,
  type Failure,
  type IngestDocumentResult,
  type IngestRunItem,
  type IngestRunRecord,
  type IngestRunStatistics,
} from "@ragtune/proto";
import { fromChunkingProto, type ChunkingDefaults } from "./chunking-options.js";
import type { DocumentPool } from "./document-pool.js";
import { failedResult, processDocument, SourceReadError, tokenStatsOf, type PublishChunked } from "./document-processor.js";
import type { DocumentStore } from "./document-store.js";
import type { KeyedLock } from "./keyed-lock.js";
import { LeaseLostError, type RunStore } from "./run-store.js";
import { resolveServerPath, type ResolvedServerFile } from "./source-resolver.js";

export interface IngestRunnerDeps {
  runs: RunStore;
  store: DocumentStore;
  /** Inline document content of runs, content-addressed. */
  sources: ArtifactStore;
  bus: Pick<Bus, "publish">;
  /** Parses and chunks documents in worker threads; a run keeps LANES_PER_WORKER documents per worker in flight. */
  pool: Pick<DocumentPool, "run" | "size">;
  locks: KeyedLock;
  logger: Logger;
  allowedRoot: string | undefined;
  maxDocumentBytes: number;
  maxBatchDocuments: number;
  chunkingDefaults: ChunkingDefaults;
  /** How long a claim on a run lasts without a write; another instance may take the run after that. */
  runLeaseMs: number;
  /** How often to look for unfinished runs nobody holds (0: only at `resume()`). */
  scanIntervalMs: number;
}

/**
 * Documents of a run in flight per worker thread: a document spends far longer on its reads and writes (a dozen
 * JetStream round trips: its record, its chunk set's upload, its chunks, its event) than in its worker, so many per
 * worker keep the workers busy and the writes of many documents in flight together (4 per worker left the service
 * waiting on round trips; see the ingest benchmark).
 */
const LANES_PER_WORKER = 16;

function isDone(result: IngestDocumentResult): boolean {
  return result.status === DocumentStatus.READY || result.status === DocumentStatus.FAILED;
}

/**
 * Serializes the saves of one run and coalesces them: a request while a save waits to start joins it; one while a
 * save is being written is served by one more save after it, shared by every request made meanwhile (each change is
 * written by a save that starts after it). Saves start at most every SAVE_SHARE⁻¹ × the last save's duration (and
 * SAVE_MIN_INTERVAL_MS): the run record grows with the batch, so saving after every document would make a run's
 * writes quadratic in its documents and leave the event loop no time for them.
 */
class CoalescingSave {
  private inflight: Promise<void> | undefined;
  private started = false;
  private again: Promise<void> | undefined;
  private nextStart = 0;
  /** Ends the wait of a save that has not started yet. */
  private endWait: (() => void) | undefined;
  private closed = false;

  constructor(private readonly write: () => Promise<void>) {}

  request(): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (this.inflight === undefined) {
      this.started = false;
      const wait = Math.max(0, this.nextStart - Date.now());
      const waited =
        wait > 0
          ? new Promise<void>((resolve) => {
              const timer = setTimeout(resolve, wait);
              this.endWait = () => {
                clearTimeout(timer);
                resolve();
              };
            })
          : Promise.resolve();
      this.inflight = waited
        .then(async () => {
          this.endWait = undefined;
          if (this.closed) return; // dropped: whoever closed writes what is pending
          this.started = true;
          const start = Date.now();
          try {
            await this.write();
          } finally {
            this.nextStart = start + Math.max(SAVE_MIN_INTERVAL_MS, (Date.now() - start) / SAVE_SHARE);
          }
        })
        .finally(() => {
          this.inflight = undefined;
        });
      return this.inflight;
    }
    if (!this.started) return this.inflight;
    this.again ??= this.inflight
      .catch(() => {})
      .then(() => {
        this.again = undefined;
        return this.request();
      });
    return this.again;
  }

  /**
   * Stops saving, once every document is done: a save waiting for its turn is dropped (the run's last write, which
   * comes next, carries its changes — so the end of a run never waits for the spacing of saves), one being written
   * is awaited, and its failure thrown.
   */
  async close(): Promise<void> {
    this.closed = true;
    this.endWait?.();
    await this.inflight;
  }
}

/** Shortest time between the starts of two saves of a run. */
const SAVE_MIN_INTERVAL_MS = 100;
/** Most of a run's time its saves may take. */
const SAVE_SHARE = 0.2;

interface DocMeasure {
  tokenCounts: number[];
  bytes: number;
}

/**
 * Runs ingest runs one after another in this process: expands server directories, processes each
 * document in order with a progress event before and after, and finishes the run with statistics
 * and a completed event. Everything a run needs is in its KV record, so `resume()` continues
 * unfinished runs after a restart at the first document not yet done.
 */
export class IngestRunner {
  private readonly queue: string[] = [];
  /** Runs queued or in progress here, so a scan does not queue them twice. */
  private readonly pending = new Set<string>();
  private draining: Promise<void> | undefined;
  private stopping = false;
  private scanTimer: NodeJS.Timeout | undefined;
  /** This instance's name in run leases. */
  readonly owner = `${hostname()}-${process.pid}-${randomBytes(4).toString("hex")}`;

  constructor(private readonly deps: IngestRunnerDeps) {}

  /** Queues a stored run (a run another instance holds is skipped when its turn comes). */
  submit(runId: string): void {
    if (this.stopping || this.pending.has(runId)) return;
    this.pending.add(runId);
    this.queue.push(runId);
    this.draining ??= this.drain().finally(() => {
      this.draining = undefined;
    });
  }

  /**
   * Queues every unfinished run nobody holds (after a restart, or one whose instance died), and
   * from then on looks again every `scanIntervalMs`. Returns the IDs queued now.
   */
  async resume(): Promise<string[]> {
    const queued = await this.scan();
    if (this.deps.scanIntervalMs > 0 && this.scanTimer === undefined && !this.stopping) {
      this.scanTimer = setInterval(() => {
        this.scan().catch((err: unknown) => this.deps.logger.warn({ err }, "cannot scan for unfinished ingest runs"));
      }, this.deps.scanIntervalMs);
      this.scanTimer.unref();
    }
    return queued;
  }

  private async scan(): Promise<string[]> {
    const queued: string[] = [];
    for (const { record, claimable } of await this.deps.runs.unfinished()) {
      const runId = record.run!.id;
      if (this.pending.has(runId) || !claimable) continue;
      this.deps.logger.info({ runId, done: record.run!.documentsDone, total: record.run!.documentsTotal }, "resuming unfinished ingest run");
      this.submit(runId);
      queued.push(runId);
    }
    return queued;
  }

  /** Stops after the current document and releases its run, which resumes on the next start (or another instance). */
  async close(): Promise<void> {
    this.stopping = true;
    clearInterval(this.scanTimer);
    this.queue.length = 0;
    await this.draining;
  }

  private async drain(): Promise<void> {
    while (!this.stopping) {
      const runId = this.queue.shift();
      if (runId === undefined) return;
      const log = this.deps.logger.child({ runId });
      try {
        await this.execute(runId, log);
      } catch (err) {
        if (err instanceof LeaseLostError) {
          log.warn("another instance took the ingest run over; leaving it");
        } else if (this.stopping) {
          log.warn({ err }, "ingest run interrupted by shutdown; it resumes on the next start");
        } else {
          log.error({ err }, "ingest run failed with a system error");
          await this.failRun(runId, err, log).catch((e: unknown) => log.error({ err: e }, "cannot record the failure of the ingest run; it resumes later"));
        }
      } finally {
        this.pending.delete(runId);
      }
    }
  }

  private async execute(runId: string, log: Logger): Promise<void> {
    const record = await this.deps.runs.claim(runId, this.owner, this.deps.runLeaseMs);
    if (record === null) return; // finished, gone, or held by another instance
    const run = record.run!;
    const chunkingProto = run.chunking!;
    const chunking = fromChunkingProto(chunkingProto, this.deps.chunkingDefaults);
    const measures = new Map<number, DocMeasure>();

    if (run.status !== IngestRunStatus.RUNNING) {
      await this.expand(record);
      if (record.items.length > this.deps.maxBatchDocuments) {
        await this.finish(record, measures, create(FailureSchema, {
          kind: FailureKind.USER_ERROR,
          reason: "BATCH_TOO_LARGE",
          message: `the batch expands to ${record.items.length} documents, over the limit of ${this.deps.maxBatchDocuments}; split it into smaller batches`,
        }));
        return;
      }
      run.status = IngestRunStatus.RUNNING;
      run.startedAt = timestampNow();
      this.deps.runs.appendEvent(record, { event: { case: "statusChanged", value: { status: IngestRunStatus.RUNNING } } });
      // Documents that failed while the sources were listed are done from the start.
      run.documents.forEach((result, index) => {
        if (result.status === DocumentStatus.FAILED) this.progress(record, index);
      });
      await this.save(record);
      log.info({ collection: run.collection, documents: run.documentsTotal }, "ingest run started");
    }
    run.documentsDone = run.documents.filter(isDone).length;

    // Documents not done yet (a resumed run also redoes those that were in progress), several at a time: the pool
    // parses and chunks them on every core while finished ones are written. Every change is saved with its events
    // in the background, never waited for by the next document: saves coalesce (one in flight, the next carrying
    // every change made meanwhile), so a run of n documents costs far fewer than n writes of its growing record.
    // A failed save (another instance took the run over) stops the run.
    const todo = run.documents.flatMap((result, index) => (isDone(result) ? [] : [index]));
    // A document is told PROCESSING by the first save that finds it in flight: one that starts and finishes between
    // two saves (most of them: saves are far apart, documents quick) goes from PENDING to its result in one event.
    // Each event is one more publish in the run's history, appended in sequence.
    const untold = new Set<number>();
    const saver = new CoalescingSave(() => {
      for (const index of untold) this.progress(record, index);
      untold.clear();
      return this.save(record);
    });
    let saveFailure: unknown;
    const saveSoon = () => {
      saver.request().catch((err: unknown) => {
        saveFailure ??= err;
      });
    };
    let cursor = 0;
    const lane = async (): Promise<void> => {
      while (cursor < todo.length && !this.stopping && saveFailure === undefined) {
        const index = todo[cursor++]!;
        const item = record.items[index]!;
        run.documents[index] = create(IngestDocumentResultSchema, { ...run.documents[index]!, status: DocumentStatus.PROCESSING });
        untold.add(index);
        saveSoon();
        const output = await this.deps.locks.shared(run.collection, () => this.processItem(item, record, chunking, chunkingProto, log));
        measures.set(index, { tokenCounts: output.tokenCounts, bytes: output.bytes });
        run.documents[index] = output.result;
        run.documentsDone++;
        untold.delete(index);
        this.progress(record, index);
        saveSoon();
      }
    };
    const lanes = Array.from({ length: Math.min(todo.length, this.deps.pool.size * LANES_PER_WORKER) }, lane);
    const settled = await Promise.allSettled(lanes);
    const failure = settled.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failure !== undefined) throw failure.reason;
    // The last write (the run's completion, or its release) carries what no save has written yet.
    await saver.close().catch((err: unknown) => (saveFailure ??= err));
    if (saveFailure !== undefined) throw saveFailure;
    if (this.stopping) {
      await this.deps.runs.release(record);
      return;
    }
    await this.finish(record, measures, undefined);
    log.info({ status: IngestRunStatus[run.status], statistics: run.statistics?.documentsIngested }, "ingest run finished");
  }

  private async processItem(
    item: IngestRunItem,
    record: IngestRunRecord,
    chunking: ReturnType<typeof fromChunkingProto>,
    chunkingProto: NonNullable<IngestRunRecord["run"]>["chunking"] & object,
    log: Logger,
  ) {
    const run = record.run!;
    try {
      return await processDocument(
        {
          runId: run.id,
          collection: run.collection,
          sourceName: item.sourceName,
          mediaType: item.mediaType,
          // A file of a server path is read by the document's worker (off the event loop, without thread-pool round trips).
          ...(item.source.case === "serverPath" ? { path: item.source.value.path } : { read: () => this.read(item) }),
          chunking,
          chunkingProto,
        },
        {
          store: this.deps.store,
          prepare: (work) => this.deps.pool.run(work),
          publishChunked: this.publishChunked(run.id),
          maxDocumentBytes: this.deps.maxDocumentBytes,
          logger: log,
        },
      );
    } catch (err) {
      if (this.stopping) throw err;
      log.error({ err, sourceName: item.sourceName }, "document failed with a system error");
      return {
        result: failedResult(item.sourceName, "", DocumentErrorReason.INTERNAL, `${item.sourceName}: a system error stopped this document; its stored version (if any) is unchanged; retry the ingest`),
        tokenCounts: [],
        bytes: 0,
      };
    }
  }

  private async save(record: IngestRunRecord): Promise<void> {
    await this.deps.runs.save(record, this.deps.runLeaseMs);
  }

  private progress(record: IngestRunRecord, index: number): void {
    this.deps.runs.appendEvent(record, {
      event: { case: "documentProgress", value: { index, result: record.run!.documents[index]! } },
    });
  }

  /** Lists the requested sources into one item (and one pending result) per document. */
  private async expand(record: IngestRunRecord): Promise<void> {
    const run = record.run!;
    const items: IngestRunItem[] = [];
    const results: IngestDocumentResult[] = [];
    const seen = new Set<string>();
    for (const requested of record.requested) {
      if (requested.source.case === "inlineContent") {
        items.push(requested);
        results.push(create(IngestDocumentResultSchema, { sourceName: requested.sourceName, status: DocumentStatus.PENDING }));
        seen.add(requested.sourceName);
        continue;
      }
      if (requested.source.case !== "serverPath") continue;
      let files: ResolvedServerFile[];
      try {
        files = await resolveServerPath(this.deps.allowedRoot, requested.source.value);
      } catch (err) {
        this.deps.logger.warn({ err, path: requested.source.value.path }, "cannot list a server path");
        files = [{
          ok: false,
          sourceName: requested.source.value.path,
          reason: DocumentErrorReason.PATH_NOT_FOUND,
          message: `server path "${requested.source.value.path}" cannot be listed (check that the service may read it)`,
        }];
      }
      for (const file of files) {
        if (seen.has(file.sourceName)) continue; // the same file named twice is one document
        seen.add(file.sourceName);
        if (file.ok) {
          items.push(create(IngestRunItemSchema, {
            sourceName: file.sourceName,
            mediaType: requested.mediaType,
            source: { case: "serverPath", value: create(ServerPathSchema, { path: file.absolutePath }) },
          }));
          results.push(create(IngestDocumentResultSchema, { sourceName: file.sourceName, status: DocumentStatus.PENDING }));
        } else {
          items.push(create(IngestRunItemSchema, { sourceName: file.sourceName, source: { case: "serverPath", value: create(ServerPathSchema, { path: "" }) } }));
          results.push(failedResult(file.sourceName, "", file.reason, file.message));
        }
      }
    }
    record.items = items;
    run.documents = results;
    run.documentsTotal = items.length;
    run.documentsDone = 0;
  }

  /** Reads a document given inline (a server path's file is read by its worker, see DocumentWork.path). */
  private async read(item: IngestRunItem): Promise<Uint8Array> {
    const max = this.deps.maxDocumentBytes;
    const tooLarge = (size: number | bigint) =>
      new SourceReadError(DocumentErrorReason.TOO_LARGE, `${item.sourceName}: the document is ${size} bytes, over the limit of ${max} bytes (INGEST_MAX_DOCUMENT_BYTES)`);
    if (item.source.case === "inlineContent") {
      const ref = item.source.value;
      if (ref.sizeBytes > BigInt(max)) throw tooLarge(ref.sizeBytes);
      const stream = await this.deps.sources.get(ref.sha256);
      if (stream === null) throw new Error(`inline content ${ref.sha256} of ${item.sourceName} is missing from ${this.deps.sources.bucket}`);
      const parts: Buffer[] = [];
      for await (const part of stream) parts.push(part as Buffer);
      return Buffer.concat(parts);
    }
    throw new Error(`run item ${item.sourceName} has no source`);
  }

  private publishChunked(runId: string): PublishChunked {
    return async (e) => {
      // The run is part of the id: a resumed run republishing the same document is deduplicated, while a later run
      // that brings a document back to an earlier version (A → B → A inside the duplicate window) still publishes.
      const eventId = `${runId}:${e.documentId}:${e.chunkSet.sha256}`;
      await this.deps.bus.publish(
        DocumentChunkedSchema,
        {
          eventId,
          occurredAt: timestampNow(),
          collection: e.collection,
          documentId: e.documentId,
          sourceName: e.sourceName,
          title: e.title,
          contentSha256: e.contentSha256,
          addedChunkIds: e.added,
          keptChunkIds: e.kept,
          removedChunkIds: e.removed,
          chunkSet: e.chunkSet,
          chunking: e.chunking,
          ingestRunId: runId,
        },
        { msgId: eventId },
      );
    };
  }

  /** Statistics over the run's documents; counts of documents finished before a restart are read back. */
  private async statistics(record: IngestRunRecord, measures: Map<number, DocMeasure>): Promise<IngestRunStatistics> {
    const run = record.run!;
    const chunkSize = run.chunking?.chunkSizeTokens ?? this.deps.chunkingDefaults.chunkSize;
    const counts: number[] = [];
    const changes = { added: 0, kept: 0, removed: 0 };
    let ingested = 0;
    let unchanged = 0;
    let failed = 0;
    let bytes = 0n;
    for (const [index, result] of run.documents.entries()) {
      if (result.status === DocumentStatus.FAILED) {
        failed++;
        continue;
      }
      if (result.status !== DocumentStatus.READY) continue;
      if (result.unchanged) unchanged++;
      else ingested++;
      changes.added += result.changes?.added ?? 0;
      changes.kept += result.changes?.kept ?? 0;
      changes.removed += result.changes?.removed ?? 0;
      let measure = measures.get(index);
      if (measure === undefined) {
        const doc = await this.deps.store.getDocument(run.collection, result.documentId);
        const chunks = doc === null ? [] : await this.deps.store.readChunkSet(doc.chunkSet);
        measure = { tokenCounts: chunks.map((c) => c.tokenCount), bytes: Number(doc?.sizeBytes ?? 0n) };
      }
      counts.push(...measure.tokenCounts);
      bytes += BigInt(measure.bytes);
    }
    return create(IngestRunStatisticsSchema, {
      documentsTotal: run.documents.length,
      documentsIngested: ingested,
      documentsUnchanged: unchanged,
      documentsFailed: failed,
      chunkChanges: create(ChunkChangeCountsSchema, changes),
      tokenStats: tokenStatsOf(counts, chunkSize),
      bytesTotal: bytes,
    });
  }

  /**
   * Finishes a run: collection counts, statistics, then in one write the record (final status), the run's
   * `completed` event that ends watchers and the ragtune.ingest.run.completed event for downstream services.
   */
  private async finish(record: IngestRunRecord, measures: Map<number, DocMeasure>, failure: Failure | undefined): Promise<void> {
    const run = record.run!;
    // Counts change with ready documents and with new documents recorded as failed.
    const [statistics] = await Promise.all([
      this.statistics(record, measures),
      this.deps.locks.run(run.collection, () => this.deps.store.refreshCollection(run.collection)),
    ]);
    run.statistics = statistics;
    if (failure !== undefined) {
      run.status = IngestRunStatus.FAILED;
      run.failure = failure;
    } else if (statistics.documentsFailed === 0 && statistics.documentsTotal > 0) {
      run.status = IngestRunStatus.SUCCEEDED;
    } else if (statistics.documentsFailed < statistics.documentsTotal) {
      run.status = IngestRunStatus.PARTIALLY_SUCCEEDED;
    } else {
      run.status = IngestRunStatus.FAILED;
      if (statistics.documentsTotal === 0) {
        run.failure = create(FailureSchema, {
          kind: FailureKind.USER_ERROR,
          reason: "NO_DOCUMENTS",
          message: "the requested server paths hold no supported documents (.md, .markdown, .html, .htm, .txt)",
        });
      }
    }
    run.finishedAt = timestampNow();
    // The ragtune.ingest.run.completed event goes out with the run's own `completed` event, from one write.
    await this.deps.runs.completeRun(record, [
      {
        schema: IngestRunCompletedSchema,
        msgId: `${run.id}:completed`,
        value: {
          eventId: `${run.id}:completed`,
          occurredAt: run.finishedAt,
          ingestRunId: run.id,
          collection: run.collection,
          status: run.status,
          statistics,
          ...(run.failure !== undefined ? { failure: run.failure } : {}),
        },
      },
    ]);
  }

  private async failRun(runId: string, err: unknown, log: Logger): Promise<void> {
    const record = await this.deps.runs.claim(runId, this.owner, this.deps.runLeaseMs);
    if (record === null) return;
    log.debug({ err }, "marking ingest run failed");
    await this.finish(record, new Map(), create(FailureSchema, {
      kind: FailureKind.SYSTEM_ERROR,
      reason: "INTERNAL",
      message: "a system error stopped the run; documents finished before it are stored; retry the remaining documents",
    }));
  }
}
