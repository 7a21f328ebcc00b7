import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { type ArtifactStore, type Fence, type LeasedWork, LeasedWorkRunner, OwnershipLostError, readArtifactContent, storeArtifactContent, WorkCancelledError } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  DatasetSplit,
  type DatasetSplitExport,
  DatasetSplitExportSchema,
  DatasetExportFormat,
  DatasetLineageSchema,
  DatasetVersionBuiltSchema,
  type DatasetVersionEventSchema,
  type DatasetVersionSchema,
  DatasetVersionFailedSchema,
  DatasetVersionStatus,
  DatasetVersionStatsSchema,
  type DatasetVersion,
  type Failure,
  FailureKind,
  FailureSchema,
  type IngestService,
  PromptTemplate,
  TokenStatsSchema,
} from "@ragtune/proto";
import { tokenDistribution } from "@ragtune/text";
import { BuildTimeoutError, runBuild, STORED_FORMATS, type BuildOutput, type StoredFormat } from "./build-process.js";
import { baseProblem, resolveBuildSettings } from "./build-settings.js";
import { BatchPlanner, compareListed, type ListedChunk } from "./batch-plan.js";
import { GenerationFatalError, type GenerationProgress, type GenerationQueue } from "./generation-queue.js";
import { DEFAULT_QUALITY_GATE } from "./quality-gate.js";
import type { DatasetBuildSettings } from "./dataset-builder.js";
import type { DatasetExample } from "./example.js";
import type { ChunkFailure } from "./llm-generator.js";
import type { SourceChunk } from "./extractive-generator.js";
import type { TokenizerName } from "@ragtune/text";
import { SPLITS, type SplitName } from "./splits.js";
import { tokenHistograms } from "./token-histogram.js";
import { isFinished, type VersionEventDetail, type VersionStore } from "./version-store.js";

/** Token counts of a split's training rows (prompt + completion + EOS) against the row budget. */
function rowTokenStats(counts: readonly number[], budget: number) {
  const d = tokenDistribution(counts, budget);
  return create(TokenStatsSchema, {
    count: d.chunks,
    min: d.min,
    mean: d.mean,
    median: d.median,
    max: d.max,
    budget,
    shareInTopQuarterOfBudget: d.shareNearBudget,
    overBudgetCount: d.overBudget,
    totalTokens: d.totalTokens,
  });
}

/** Page size of the ingest listings (its maximum). */
const LIST_PAGE = 1000;

const SPLIT_ENUM: Record<SplitName, DatasetSplit> = { train: DatasetSplit.TRAIN, val: DatasetSplit.VAL, test: DatasetSplit.TEST };

export interface VersionBuilderDeps {
  versions: VersionStore;
  artifacts: ArtifactStore;
  ingest: Client<typeof IngestService>;
  tokenizer: TokenizerName;
  logger: Logger;
  /** How long a claim on a build lasts without renewal (DATASET_BUILD_LEASE). */
  leaseMs: number;
  /** Longest a build may run (DATASET_BUILD_TIMEOUT). */
  buildTimeoutMs: number;
  /** The shared generation queue (LLM_BASE_URL set); without it, versions naming settings.model fail. */
  generation?: GenerationQueue;
}

interface ProgressCounts {
  total: number;
  done: number;
  generated: number;
  chunksReused: number;
  chunksFailed: number;
  promptTokens: number;
  completionTokens: number;
  llmRetries: number;
}

/** A generated example as the lineage stores it: without its context, which its (content-addressed) chunk holds. */
type StoredGenerated = Omit<DatasetExample, "context" | "headingPath" | "answerable" | "distractorSource">;

/** One source chunk in the lineage. */
interface LineageChunk {
  chunkId: string;
  documentId: string;
  documentSha256: string;
  reused: boolean;
}

interface FinishedBuild {
  chunks: SourceChunk[];
  documents: Map<string, { sourceName: string; contentSha256: string }>;
  reused: Set<string>;
  output: BuildOutput;
  generator: string;
  promptSha256: string;
  usage: Omit<ProgressCounts, "total" | "done" | "generated">;
}

const FORMAT_ENUM: Record<StoredFormat, DatasetExportFormat> = {
  "mistral-instruct": DatasetExportFormat.INSTRUCT,
  "mistral-inference": DatasetExportFormat.INFERENCE,
  chat: DatasetExportFormat.CHAT,
  "prompt-completion": DatasetExportFormat.PROMPT_COMPLETION,
};
const FORMAT_TEMPLATE: Record<StoredFormat, PromptTemplate> = {
  "mistral-instruct": PromptTemplate.MISTRAL_INSTRUCT,
  "mistral-inference": PromptTemplate.MISTRAL_INSTRUCT,
  chat: PromptTemplate.UNSPECIFIED,
  "prompt-completion": PromptTemplate.UNSPECIFIED,
};

function groupCount(keys: readonly string[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const k of keys) out.set(k, (out.get(k) ?? 0) + 1);
  return out;
}

/** A reused example with its chunk's current context (the same text: chunk IDs are content-addressed). */
function withChunk(e: StoredGenerated, chunk: SourceChunk): DatasetExample {
  return { ...e, documentId: chunk.documentId, headingPath: [...chunk.headingPath], context: chunk.text, answerable: true };
}

/** A failure a user can act on (bad input, not a system fault). */
class UserFailure extends Error {
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

function statusChanged(status: DatasetVersionStatus, extra: { failure?: Failure; stats?: DatasetVersion["stats"] } = {}): VersionEventDetail {
  return { case: "statusChanged", value: { $typeName: "ragtune.dataset.v1.DatasetVersionStatusChange", status, ...extra } } as VersionEventDetail;
}

/**
 * Builds dataset versions in this process, one at a time: claims a version (a lease, renewed while it builds, so an
 * abandoned build is taken over by another replica), reads the collection's chunks through the ingest API, runs the
 * build in a child process (off the event loop, with a time limit), stores the split exports and the examples in the
 * object store and finishes the version — READY with its exports and statistics, announced as
 * ragtune.dataset.version.built, or FAILED with the reason, announced as ragtune.dataset.version.failed.
 */
export class VersionBuilder {
  private readonly runner: LeasedWorkRunner<typeof DatasetVersionSchema, typeof DatasetVersionEventSchema, VersionEventDetail>;

  constructor(private readonly deps: VersionBuilderDeps) {
    this.runner = new LeasedWorkRunner({
      store: deps.versions,
      what: "dataset build",
      idField: "datasetVersionId",
      logger: deps.logger,
      leaseMs: deps.leaseMs,
      isOpen: (v) => !isFinished(v.status),
      isCancelled: (v) => v.status === DatasetVersionStatus.CANCELLED,
      claimChange: (v, previous) => {
        const events: { body: VersionEventDetail }[] = [];
        if (v.status === DatasetVersionStatus.QUEUED) {
          v.status = DatasetVersionStatus.GENERATING;
          v.startedAt = timestampNow();
          events.push({ body: statusChanged(DatasetVersionStatus.GENERATING) });
        } else if (previous.epoch > 0) {
          events.push({ body: { case: "warning", value: { $typeName: "ragtune.dataset.v1.DatasetBuildWarning", message: `build restarted: ${previous.claimReason || "claimed again"}`, chunkId: "" } } as VersionEventDetail });
        }
        return { state: v, events };
      },
      work: (claimed) => this.build(claimed),
    });
  }

  get owner(): string {
    return this.runner.owner;
  }

  submit(id: string): void {
    this.runner.submit(id);
  }

  /** Queues every unfinished version nobody holds, now and then every half lease. Returns the IDs queued now. */
  resume(): Promise<string[]> {
    return this.runner.resume();
  }

  /** Stops the running build (it resumes on the next start, here or on another replica) and waits for the loop. */
  close(): Promise<void> {
    return this.runner.close();
  }

  private async build({ id, resource, fence, signal, log }: LeasedWork<typeof DatasetVersionSchema>): Promise<void> {
    const { versions } = this.deps;
    const version = resource.state;
    try {
      const model = version.settings?.model ?? "";
      if (model !== "" && this.deps.generation === undefined) {
        throw new UserFailure("LLM_NOT_CONFIGURED", `the version names the generation model "${model}", but LLM_BASE_URL is not configured on this dataset service replica`);
      }
      const { build } = resolveBuildSettings(version.settings, { llmConfigured: this.deps.generation !== undefined });
      const maxConcurrency = version.settings?.maxConcurrency ?? 4;
      // A build with the model and no base version starts generating from the first page of chunks while the rest are
      // read (its first page is about the batches the window holds); the others read every chunk first.
      const streamed = build.llm !== undefined && version.baseVersionId === "";
      const pages = this.chunkPages(version.collection, streamed ? Math.min(LIST_PAGE, Math.max(64, maxConcurrency)) : LIST_PAGE);
      const [head, documents] = await Promise.all([pages.next(), this.readDocuments(version.collection)]);
      const listed: ListedChunk[] = head.done === true ? [] : [...head.value.chunks];
      const nameOf = (documentId: string) => documents.get(documentId)?.sourceName ?? documentId;
      // A fixed order (documents by source name, chunks by position), whatever order ingest lists them in (it lists in
      // write order): the version is built from it, and generation batches are its cut (batch-plan.ts), so a build
      // taken over by another replica forms the same batches and reads the finished ones back.
      const inOrder = () => [...listed].sort(compareListed(nameOf)).map((l) => l.chunk);
      const usage = { chunksReused: 0, chunksFailed: 0, promptTokens: 0, completionTokens: 0, llmRetries: 0 };
      let chunks: SourceChunk[];
      let reused = new Set<string>();
      let examples: DatasetExample[] | undefined;
      let fresh: SourceChunk[];
      let failures: ChunkFailure[] = [];
      if (streamed && head.done !== true && listed.length > 0) {
        const llm = build.llm!;
        const totalHint = head.value.totalSize;
        let listingDone = false;
        const planner = new BatchPlanner(
          this.deps.generation!.batchChunks,
          [...documents].map(([documentId, d]) => ({ id: documentId, sourceName: d.sourceName, chunkCount: d.chunkCount })),
        );
        const first = head.value.chunks;
        async function* batches(): AsyncGenerator<SourceChunk[]> {
          yield* planner.add(first);
          for await (const page of pages) {
            listed.push(...page.chunks);
            yield* planner.add(page.chunks);
          }
          listingDone = true;
          yield* planner.finish();
        }
        log.info({ chunks: totalHint, generator: llm.model }, "dataset build started");
        const generated = await this.generateWithLlm(id, fence, batches(), { total: () => (listingDone ? listed.length : Math.max(totalHint, listed.length)), reusedChunks: 0, reusedExamples: 0 }, build, maxConcurrency, signal, log);
        chunks = inOrder();
        fresh = chunks;
        if (!planner.exact) log.info({ chunks: chunks.length }, "the chunks did not match their documents' counts; the last generation batches were cut after the listing");
        // In chunk order, as a build that read every chunk first has them (batches are formed as their chunks arrive).
        const rank = new Map(chunks.map((c, i) => [c.id, i]));
        examples = generated.examples.sort((a, b) => rank.get(a.chunkId)! - rank.get(b.chunkId)!);
        failures = generated.failures.sort((a, b) => rank.get(a.chunkId)! - rank.get(b.chunkId)!);
        Object.assign(usage, { chunksFailed: generated.progress.chunksFailed, promptTokens: generated.progress.promptTokens, completionTokens: generated.progress.completionTokens, llmRetries: generated.progress.llmRetries });
      } else {
        if (head.done !== true) for await (const page of pages) listed.push(...page.chunks);
        chunks = inOrder();
        if (chunks.length === 0) {
          throw new UserFailure("NO_CHUNKS", `collection "${version.collection}" has no ready documents to build a dataset from; ingest documents first`);
        }
        // Incremental build: the base version's examples of every chunk it already had (chunk IDs are content-addressed).
        const chunkById = new Map(chunks.map((c) => [c.id, c]));
        const base = version.baseVersionId === "" ? undefined : await this.readBase(version.baseVersionId, version);
        reused = new Set(base === undefined ? [] : chunks.filter((c) => base.chunkIds.has(c.id)).map((c) => c.id));
        const reusedExamples = (base?.examples ?? []).filter((e) => reused.has(e.chunkId)).map((e) => withChunk(e, chunkById.get(e.chunkId)!));
        fresh = chunks.filter((c) => !reused.has(c.id));
        usage.chunksReused = reused.size;
        log.info({ chunks: chunks.length, reused: reused.size, generator: model || "extractive" }, "dataset build started");
        examples = base === undefined ? undefined : reusedExamples;
        if (build.llm !== undefined) {
          const total = chunks.length;
          const generated = await this.generateWithLlm(id, fence, fresh, { total: () => total, reusedChunks: reused.size, reusedExamples: reusedExamples.length }, build, maxConcurrency, signal, log);
          examples = [...reusedExamples, ...generated.examples];
          failures = generated.failures;
          Object.assign(usage, { chunksFailed: generated.progress.chunksFailed, promptTokens: generated.progress.promptTokens, completionTokens: generated.progress.completionTokens, llmRetries: generated.progress.llmRetries });
        } else {
          await this.progress(id, fence, { total: chunks.length, done: reused.size, generated: reusedExamples.length, ...usage });
        }
      }
      if (build.llm !== undefined) {
        if (examples!.length === 0) {
          const first = failures[0];
          throw new UserFailure(
            "GENERATION_FAILED",
            `the model "${build.llm.model}" wrote no usable example for any of ${chunks.length} chunks${first ? ` (chunk ${first.chunkId}: ${first.reason}: ${first.message})` : ""}`,
          );
        }
      }
      const output = await runBuild(
        {
          chunks,
          settings: { ...build, ...(version.baseVersionId === "" ? {} : { baseVersionId: version.baseVersionId }) },
          tokenizer: this.deps.tokenizer,
          ...(examples === undefined ? {} : { examples }),
          ...(examples !== undefined && build.llm === undefined ? { extractiveChunkIds: fresh.map((c) => c.id) } : {}),
        },
        { timeoutMs: this.deps.buildTimeoutMs, signal },
      );
      // Pairs the model was asked for and did not turn into examples, counted beside the quality gate's drops.
      const lost = output.counts.droppedByReason as Record<string, number>;
      for (const f of failures) lost[`llm_${f.reason}`] = (lost[`llm_${f.reason}`] ?? 0) + f.pairsLost;
      if (output.counts.kept === 0) {
        const why = Object.entries(lost)
          .filter(([, n]) => n > 0)
          .sort((a, b) => b[1] - a[1])
          .map(([reason, n]) => `${reason} ${n}`)
          .join(", ");
        throw new UserFailure("NO_EXAMPLES", `no example of collection "${version.collection}" passed the quality checks (${output.counts.generated} generated; dropped: ${why || "none"})`);
      }
      await versions.modify(
        id,
        (v) => {
          if (v.status === DatasetVersionStatus.CANCELLED) throw new WorkCancelledError();
          v.status = DatasetVersionStatus.FINALIZING;
          v.chunksDone = chunks.length;
          return {
            state: v,
            events: [
              { body: statusChanged(DatasetVersionStatus.FINALIZING) },
              { body: this.progressEvent({ total: chunks.length, done: chunks.length, generated: output.counts.generated + output.counts.negatives, accepted: output.counts.kept, ...usage }) },
            ],
          };
        },
        { fence },
      );
      await this.finish(id, fence, version, { chunks, documents, reused, output, generator: model || "extractive", promptSha256: build.llm?.promptHash ?? "", usage });
      log.info({ examples: output.counts.kept }, "dataset version ready");
    } catch (err) {
      if (err instanceof OwnershipLostError || this.runner.stopped) throw err;
      if (err instanceof WorkCancelledError || signal.reason instanceof WorkCancelledError) {
        await versions.release(id, fence).catch(() => {});
        await this.deps.generation?.forget(id).catch(() => {});
        log.info("dataset build cancelled");
        return;
      }
      const failure =
        err instanceof UserFailure
          ? create(FailureSchema, { kind: FailureKind.USER_ERROR, reason: err.reason, message: err.message })
          : err instanceof GenerationFatalError
            ? create(FailureSchema, { kind: err.reason === "GENERATION_MODEL_UNAUTHORIZED" ? FailureKind.USER_ERROR : FailureKind.SYSTEM_ERROR, reason: err.reason, message: err.message })
            : err instanceof BuildTimeoutError
              ? create(FailureSchema, { kind: FailureKind.SYSTEM_ERROR, reason: "TIMEOUT", message: err.message })
              : create(FailureSchema, { kind: FailureKind.SYSTEM_ERROR, reason: "INTERNAL", message: `the build failed: ${(err as Error).message}` });
      if (!(err instanceof UserFailure)) log.error({ err }, "dataset build failed");
      await this.fail(id, fence, version, failure);
    }
  }

  /**
   * The examples of the fresh chunks written by the generation model through the shared queue (every replica's
   * workers take batches; finished batches of an earlier attempt are read back, not regenerated). Progress events per
   * batch, a warning per chunk that gave no or fewer examples; a fatal batch (endpoint unreachable, key refused) fails
   * the build.
   */
  private async generateWithLlm(
    id: string,
    fence: Fence,
    fresh: SourceChunk[] | AsyncIterable<SourceChunk[]>,
    counts: { total: () => number; reusedChunks: number; reusedExamples: number },
    build: DatasetBuildSettings,
    maxConcurrency: number,
    signal: AbortSignal,
    log: Logger,
  ) {
    const { reusedChunks, reusedExamples } = counts;
    const llm = build.llm!;
    // Version writes happen one after another, in the order the generation reports them. A progress report that finds
    // the previous one still waiting behind other writes, with nothing queued after it, replaces it (the counts are
    // cumulative): the history gets fewer progress events when the store lags, never a stale one, and the last
    // report (every chunk done) is written one write after it arrives instead of after a backlog.
    let writes: Promise<void> = Promise.resolve();
    let writeError: unknown;
    let waitingProgress: { p: GenerationProgress } | undefined;
    const write = (change: () => Promise<void>) => {
      waitingProgress = undefined;
      writes = writes.then(change).catch((err: unknown) => {
        writeError ??= err;
      });
    };
    const reportProgress = (p: GenerationProgress) => {
      if (waitingProgress !== undefined) {
        waitingProgress.p = p;
        return;
      }
      const slot = { p };
      write(() => {
        if (waitingProgress === slot) waitingProgress = undefined;
        const latest = slot.p;
        return this.progress(id, fence, {
          total: counts.total(),
          done: reusedChunks + latest.chunksDone,
          generated: reusedExamples + latest.examplesGenerated,
          chunksReused: reusedChunks,
          chunksFailed: latest.chunksFailed,
          promptTokens: latest.promptTokens,
          completionTokens: latest.completionTokens,
          llmRetries: latest.llmRetries,
        });
      });
      waitingProgress = slot;
    };
    const warn = (f: ChunkFailure) => {
      log.warn({ chunkId: f.chunkId, reason: f.reason, pairsLost: f.pairsLost }, f.message);
      write(() =>
        this.deps.versions
          .modify(
            id,
            (v) => ({
              state: v,
              events: [{ body: { case: "warning", value: { $typeName: "ragtune.dataset.v1.DatasetBuildWarning", message: `${f.reason}: ${f.message}`, chunkId: f.chunkId } } as VersionEventDetail }],
            }),
            { fence },
          )
          .then(() => {}),
      );
    };
    log.info({ model: llm.model, promptHash: llm.promptHash, maxConcurrency }, "generating examples with the model");
    // The first progress (nothing generated yet; the reused chunks done) goes first in the write order, without
    // holding up the first batches.
    write(() => this.progress(id, fence, { total: counts.total(), done: reusedChunks, generated: reusedExamples, chunksReused: reusedChunks, chunksFailed: 0, promptTokens: 0, completionTokens: 0, llmRetries: 0 }));
    try {
      const result = await this.deps.generation!.generate(
        id,
        fresh,
        { model: llm.model, questionsPerChunk: llm.questionsPerChunk, temperature: llm.temperature, seed: llm.seed, maxConcurrency },
        {
          signal,
          onFailure: warn,
          onProgress: reportProgress,
        },
      );
      await writes;
      if (writeError !== undefined) throw writeError;
      log.info({ model: llm.model, examples: result.examples.length, ...result.progress }, "model generation done");
      // In the order of the chunks given (batches may finish, and be formed, in any order).
      if (Array.isArray(fresh)) {
        const rank = new Map(fresh.map((c, i) => [c.id, i]));
        result.examples.sort((a, b) => rank.get(a.chunkId)! - rank.get(b.chunkId)!);
        result.failures.sort((a, b) => rank.get(a.chunkId)! - rank.get(b.chunkId)!);
      }
      return result;
    } finally {
      await writes;
    }
  }

  private progressEvent(p: ProgressCounts & { accepted?: number }): VersionEventDetail {
    return {
      case: "progress",
      value: {
        $typeName: "ragtune.dataset.v1.DatasetBuildProgress",
        chunksTotal: p.total,
        chunksDone: p.done,
        examplesGenerated: p.generated,
        examplesAccepted: p.accepted ?? 0,
        chunksReused: p.chunksReused,
        chunksFailed: p.chunksFailed,
        promptTokens: BigInt(p.promptTokens),
        completionTokens: BigInt(p.completionTokens),
        llmRetries: p.llmRetries,
      },
    } as VersionEventDetail;
  }

  private async progress(id: string, fence: Fence, p: ProgressCounts): Promise<void> {
    await this.deps.versions.modify(
      id,
      (v) => {
        v.chunksTotal = p.total;
        v.chunksDone = p.done;
        return { state: v, events: [{ body: this.progressEvent(p) }] };
      },
      { fence },
    );
  }

  /**
   * The ready chunks of the collection through the ingest API, page by page (the first of `firstPageSize`, the rest
   * of LIST_PAGE), with the collection's chunk count as ingest gave it on the first page.
   */
  private async *chunkPages(collection: string, firstPageSize: number): AsyncGenerator<{ chunks: ListedChunk[]; totalSize: number }> {
    let pageToken = "";
    let pageSize = firstPageSize;
    do {
      let res;
      try {
        res = await this.deps.ingest.listChunks({ collection, page: { pageSize, pageToken } });
      } catch (err) {
        const message = (err as Error).message;
        if (/not.?found/i.test(message)) throw new UserFailure("UNKNOWN_COLLECTION", `collection "${collection}" does not exist in the ingest service`);
        throw new Error(`reading the chunks of "${collection}" from the ingest service failed: ${message}`, { cause: err });
      }
      yield {
        chunks: res.chunks.map((c) => ({ chunk: { id: c.id, documentId: c.documentId, headingPath: [...c.headingPath], text: c.text }, ordinal: c.ordinal })),
        totalSize: res.page?.totalSize ?? 0,
      };
      pageToken = res.page?.nextPageToken ?? "";
      pageSize = LIST_PAGE;
    } while (pageToken !== "");
  }

  /** The collection's documents (ID → source name and content hash), for the version's lineage and report. */
  private async readDocuments(collection: string): Promise<Map<string, { sourceName: string; contentSha256: string; chunkCount: number }>> {
    const out = new Map<string, { sourceName: string; contentSha256: string; chunkCount: number }>();
    let pageToken = "";
    do {
      let res;
      try {
        res = await this.deps.ingest.listDocuments({ collection, page: { pageSize: LIST_PAGE, pageToken } });
      } catch (err) {
        const message = (err as Error).message;
        if (/not.?found/i.test(message)) throw new UserFailure("UNKNOWN_COLLECTION", `collection "${collection}" does not exist in the ingest service`);
        throw new Error(`reading the documents of "${collection}" from the ingest service failed: ${message}`, { cause: err });
      }
      for (const d of res.documents) out.set(d.id, { sourceName: d.sourceName, contentSha256: d.contentSha256, chunkCount: d.chunkCount });
      pageToken = res.page?.nextPageToken ?? "";
    } while (pageToken !== "");
    return out;
  }

  /** The generated examples and source chunk IDs of a base version (incremental build). */
  private async readBase(baseId: string, version: DatasetVersion): Promise<{ examples: StoredGenerated[]; chunkIds: Set<string> }> {
    const base = (await this.deps.versions.get(baseId))?.state;
    const problem = base === undefined ? `dataset version ${baseId} does not exist` : baseProblem(base, version);
    if (problem !== undefined) throw new UserFailure("BASE_VERSION_UNUSABLE", `base_version_id: ${problem}`);
    const lineage = base!.lineage!;
    const read = async (hash: string, what: string) => {
      const content = await readArtifactContent(this.deps.artifacts, hash);
      if (content === null) throw new UserFailure("BASE_VERSION_UNUSABLE", `the ${what} of base version ${baseId} is missing from the object store (${this.deps.artifacts.bucket}/${hash})`);
      return content.toString("utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as unknown);
    };
    const examples = (await read(lineage.generated!.sha256, "generated examples")) as StoredGenerated[];
    const chunkIds = new Set(((await read(lineage.chunks!.sha256, "source chunks")) as LineageChunk[]).map((c) => c.chunkId));
    return { examples, chunkIds };
  }

  private async finish(id: string, fence: Fence, version: DatasetVersion, built: FinishedBuild): Promise<void> {
    const { artifacts } = this.deps;
    const { chunks, documents, reused, output, generator, usage } = built;
    const ref = (text: string) => storeArtifactContent(artifacts, text, "application/jsonl");
    const jsonl = (rows: readonly unknown[]) => rows.map((r) => `${JSON.stringify(r)}\n`).join("");
    const exports: DatasetSplitExport[] = [];
    for (const split of SPLITS) {
      for (const format of STORED_FORMATS) {
        exports.push(
          create(DatasetSplitExportSchema, {
            split: SPLIT_ENUM[split],
            template: FORMAT_TEMPLATE[format],
            format: FORMAT_ENUM[format],
            artifact: await ref(output.splits[split].exports[format]),
            rows: output.splits[split].examples.length,
          }),
        );
      }
    }
    const examples = SPLITS.flatMap((split) => output.splits[split].examples.map((e) => `${JSON.stringify({ ...e, split })}\n`)).join("");
    const shard = await ref(examples);
    const documentOf = new Map(chunks.map((c) => [c.id, c.documentId]));
    const lineageChunks: LineageChunk[] = chunks.map((c) => ({ chunkId: c.id, documentId: c.documentId, documentSha256: documents.get(c.documentId)?.contentSha256 ?? "", reused: reused.has(c.id) }));
    const generatedRows: StoredGenerated[] = output.generated.map((e) => ({ id: e.id, chunkId: e.chunkId, documentId: e.documentId, question: e.question, answer: e.answer, kind: e.kind, generator: e.generator }));
    const lineage = create(DatasetLineageSchema, {
      documents: [...groupCount(chunks.map((c) => c.documentId))].map(([documentId, n]) => ({
        documentId,
        sourceName: documents.get(documentId)?.sourceName ?? "",
        contentSha256: documents.get(documentId)?.contentSha256 ?? "",
        chunks: n,
      })),
      chunks: await ref(jsonl(lineageChunks)),
      generator,
      promptSha256: built.promptSha256,
      tokenizer: this.deps.tokenizer,
      baseVersionId: version.baseVersionId,
      generated: await ref(jsonl(generatedRows)),
      dropped: await ref(jsonl(output.dropped)),
    });
    const kept = SPLITS.flatMap((split) => output.splits[split].examples);
    const chunksOf = groupCount(chunks.map((c) => c.documentId));
    const keptOf = (docId: string, answerable?: boolean) => kept.filter((e) => e.documentId === docId && (answerable === undefined || e.answerable === answerable)).length;
    const droppedOf = groupCount(output.dropped.map((d) => d.example.documentId ?? documentOf.get(d.example.chunkId) ?? ""));
    const histograms = tokenHistograms(SPLITS.map((split) => output.splits[split].tokens));
    const stats = create(DatasetVersionStatsSchema, {
      chunksTotal: chunks.length,
      chunksReused: reused.size,
      generated: output.counts.generated + output.counts.negatives,
      rejectedByCheck: Object.fromEntries(Object.entries(output.counts.droppedByReason).filter(([, n]) => n > 0)),
      splits: SPLITS.map((split, i) => {
        const examplesOf = output.splits[split].examples;
        const answerable = examplesOf.filter((e) => e.answerable).length;
        return {
          split: SPLIT_ENUM[split],
          examples: examplesOf.length,
          answerable,
          unanswerable: examplesOf.length - answerable,
          tokenStats: rowTokenStats(output.splits[split].tokens, DEFAULT_QUALITY_GATE.maxSeqLen),
          tokenHistogram: histograms[i]!,
        };
      }),
      examplesByQuestionType: Object.fromEntries(groupCount(kept.map((e) => e.kind))),
      documents: [...chunksOf].map(([documentId, n]) => ({
        documentId,
        sourceName: documents.get(documentId)?.sourceName ?? "",
        chunks: n,
        examples: keptOf(documentId),
        answerable: keptOf(documentId, true),
        unanswerable: keptOf(documentId, false),
        dropped: droppedOf.get(documentId) ?? 0,
      })),
      promptTokens: BigInt(usage.promptTokens),
      completionTokens: BigInt(usage.completionTokens),
      llmRetries: usage.llmRetries,
      chunksFailed: usage.chunksFailed,
    });
    const finishedAt = timestampNow();
    await this.deps.versions.release(id, fence, (v) => {
      if (isFinished(v.status)) return { state: v }; // cancelled meanwhile
      v.status = DatasetVersionStatus.READY;
      v.stats = stats;
      v.exports = exports;
      v.shards = [shard];
      v.generator = generator;
      v.contentSha256 = output.contentHash;
      v.lineage = lineage;
      v.finishedAt = finishedAt;
      return {
        state: v,
        events: [
          {
            body: statusChanged(DatasetVersionStatus.READY, { stats }),
            announce: [
              {
                schema: DatasetVersionBuiltSchema,
                msgId: `${id}:built`,
                value: { eventId: `${id}:built`, occurredAt: finishedAt, datasetVersionId: id, collection: version.collection, stats, shards: [shard], exports },
              },
            ],
          },
        ],
      };
    });
    await this.deps.generation?.forget(id).catch((err: unknown) => this.deps.logger.warn({ err, datasetVersionId: id }, "cannot remove the build's generation outcomes"));
  }

  private async fail(id: string, fence: Fence, version: DatasetVersion, failure: Failure): Promise<void> {
    const finishedAt = timestampNow();
    await this.deps.versions.release(id, fence, (v) => {
      if (isFinished(v.status)) return { state: v };
      v.status = DatasetVersionStatus.FAILED;
      v.failure = failure;
      v.finishedAt = finishedAt;
      return {
        state: v,
        events: [
          {
            body: statusChanged(DatasetVersionStatus.FAILED, { failure }),
            announce: [
              {
                schema: DatasetVersionFailedSchema,
                msgId: `${id}:failed`,
                value: { eventId: `${id}:failed`, occurredAt: finishedAt, datasetVersionId: id, collection: version.collection, failure },
              },
            ],
          },
        ],
      };
    });
    await this.deps.generation?.forget(id).catch((err: unknown) => this.deps.logger.warn({ err, datasetVersionId: id }, "cannot remove the build's generation outcomes"));
  }
}
