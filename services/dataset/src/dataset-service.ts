import { createHash, randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampNow } from "@bufbuild/protobuf/wkt";
import { ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { type ArtifactStore, readArtifactContent, type TypedKv } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  type BuildDatasetVersionRequest,
  CollectionConfigSchema,
  type DatasetService,
  DatasetExportFormat,
  DatasetSplit,
  type DatasetVersion,
  DatasetVersionSchema,
  DatasetVersionStatus,
  type Example,
  type IngestRunCompleted,
  IngestRunStatus,
  ExampleKind,
  ExampleSchema,
  PageResponseSchema,
  PromptTemplate,
} from "@ragtune/proto";
import { failedPrecondition, invalidArgument, notFound, paginate } from "@ragtune/rpc";
import type { DroppedRow } from "./build-process.js";
import { baseProblem, resolveBuildSettings } from "./build-settings.js";
import type { DatasetExample } from "./example.js";
import { contextBlock, exportRow, type ExportFormat } from "./exports.js";
import type { SplitName } from "./splits.js";
import type { VersionBuilder } from "./version-builder.js";
import { isFinished, type VersionStore } from "./version-store.js";

export interface DatasetServiceDeps {
  versions: VersionStore;
  artifacts: ArtifactStore;
  builder: Pick<VersionBuilder, "submit">;
  logger: Logger;
  /** Whether a generation model endpoint (LLM_BASE_URL) is configured: builds naming settings.model need one. */
  llmConfigured: boolean;
  /** Collection configs (rebuild on ingest), keyed by collection. */
  collections: TypedKv<typeof CollectionConfigSchema>;
}

const FORMAT_NAME: Record<DatasetExportFormat, ExportFormat> = {
  [DatasetExportFormat.UNSPECIFIED]: "mistral-instruct",
  [DatasetExportFormat.INSTRUCT]: "mistral-instruct",
  [DatasetExportFormat.INFERENCE]: "mistral-inference",
  [DatasetExportFormat.CHAT]: "chat",
  [DatasetExportFormat.PROMPT_COMPLETION]: "prompt-completion",
};

/** The collection name of a request (empty: `default`), checked. */
export function collectionOf(name: string): string {
  const collection = name === "" ? "default" : name;
  if (!COLLECTION_RE.test(collection)) throw invalidArgument("collection", "use 1–63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit");
  return collection;
}

/**
 * Creates a QUEUED version (or returns the one a retried request with the same client_request_id created) and hands
 * it to the builder: the one way a build starts, for the RPC and for rebuilds after an ingest run.
 */
export async function queueBuild(deps: Pick<DatasetServiceDeps, "versions" | "builder" | "logger" | "llmConfigured">, req: Pick<BuildDatasetVersionRequest, "collection" | "settings" | "baseVersionId" | "clientRequestId">): Promise<DatasetVersion> {
  const { versions } = deps;
  const collection = collectionOf(req.collection);
  const { settings } = resolveBuildSettings(req.settings, { llmConfigured: deps.llmConfigured });
  if (req.baseVersionId !== "") {
    const base = (await versions.get(req.baseVersionId))?.state;
    if (base === undefined) throw notFound("dataset version", req.baseVersionId);
    const problem = baseProblem(base, { collection, settings });
    if (problem !== undefined) throw failedPrecondition(`base_version_id: ${problem}`);
  }
  const id = newVersionId(collection, req.clientRequestId);
  const version = create(DatasetVersionSchema, {
    id,
    collection,
    status: DatasetVersionStatus.QUEUED,
    settings,
    baseVersionId: req.baseVersionId,
    createdAt: timestampNow(),
  });
  const queued = { case: "statusChanged" as const, value: { $typeName: "ragtune.dataset.v1.DatasetVersionStatusChange" as const, status: DatasetVersionStatus.QUEUED } };
  let stored: DatasetVersion;
  try {
    stored = (await versions.create(id, version, [{ body: queued as never }])).state;
  } catch (err) {
    if ((err as Error).name !== "ResourceExistsError") throw err;
    stored = (await versions.get(id))!.state; // a retried request with the same client_request_id
  }
  deps.builder.submit(id);
  deps.logger.info({ datasetVersionId: id, collection, baseVersionId: req.baseVersionId || undefined }, "dataset build queued");
  return stored;
}

const COLLECTION_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const SPLIT_OF: Record<SplitName, DatasetSplit> = { train: DatasetSplit.TRAIN, val: DatasetSplit.VAL, test: DatasetSplit.TEST };
const EXPORT_PIECE_BYTES = 64 * 1024;

function newVersionId(collection: string, clientRequestId: string): string {
  if (clientRequestId !== "") return `dsv-${createHash("sha256").update(`${collection}\n${clientRequestId}`).digest("hex").slice(0, 20)}`;
  return `dsv-${randomBytes(10).toString("hex")}`;
}

function statusName(status: DatasetVersionStatus): string {
  return (DatasetVersionStatus[status] ?? String(status)).toLowerCase();
}

/**
 * After an ingest run of a collection whose config says `rebuild_on_ingest`: when the run changed chunks, queues a build
 * with the config's settings, incremental from the newest READY version built with the same generator settings (from
 * scratch when there is none). Idempotent per run (the run ID is the build's client_request_id). Returns the version,
 * or undefined when nothing is to be built.
 */
export async function rebuildAfterIngest(
  deps: Pick<DatasetServiceDeps, "versions" | "builder" | "logger" | "llmConfigured" | "collections">,
  run: Pick<IngestRunCompleted, "ingestRunId" | "collection" | "status" | "statistics">,
): Promise<DatasetVersion | undefined> {
  if (run.status !== IngestRunStatus.SUCCEEDED && run.status !== IngestRunStatus.PARTIALLY_SUCCEEDED) return undefined;
  const changes = run.statistics?.chunkChanges;
  if (changes === undefined || changes.added + changes.removed === 0) return undefined;
  const config = (await deps.collections.get(run.collection))?.value;
  if (config === undefined || !config.rebuildOnIngest) return undefined;
  const collection = run.collection;
  const settings = config.settings;
  const ready = (await deps.versions.list((r) => r.state.collection === collection && r.state.status === DatasetVersionStatus.READY))
    .map((r) => r.state)
    .sort((a, b) => (b.createdAt ? timestampDate(b.createdAt).getTime() : 0) - (a.createdAt ? timestampDate(a.createdAt).getTime() : 0));
  const base = ready.find((v) => baseProblem(v, { collection, settings }) === undefined);
  try {
    return await queueBuild(deps, { collection, settings, baseVersionId: base?.id ?? "", clientRequestId: `ingest-run:${run.ingestRunId}` });
  } catch (err) {
    // Settings that no longer resolve (e.g. a model while LLM_BASE_URL was removed): nothing to retry; say why.
    if (err instanceof ConnectError) {
      deps.logger.error({ err, collection, ingestRunId: run.ingestRunId }, "cannot rebuild the collection's dataset after its ingest run; fix its config (SetCollectionConfig)");
      return undefined;
    }
    throw err;
  }
}

/** The DatasetService RPC handlers. */
export function createDatasetService(deps: DatasetServiceDeps): ServiceImpl<typeof DatasetService> {
  const { versions, artifacts } = deps;

  async function getVersion(id: string): Promise<DatasetVersion> {
    if (id === "") throw invalidArgument("dataset_version_id", "is required");
    const found = await versions.get(id);
    if (found === null) throw notFound("dataset version", id);
    return found.state;
  }

  async function readyVersion(id: string): Promise<DatasetVersion> {
    const v = await getVersion(id);
    if (v.status !== DatasetVersionStatus.READY) {
      throw failedPrecondition(`dataset version ${id} is ${statusName(v.status)}; examples and exports exist once it is ready`);
    }
    return v;
  }

  /** The JSON lines of a stored artifact, parsed. */
  async function readRows<T>(hash: string, what: string): Promise<T[]> {
    return (await readArtifact(hash, what))
      .toString("utf8")
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => JSON.parse(l) as T);
  }

  /** The examples of a READY version in stored order, each with its split. */
  async function storedExamples(v: DatasetVersion): Promise<(DatasetExample & { split: SplitName })[]> {
    const shard = v.shards[0];
    if (shard === undefined) throw failedPrecondition(`dataset version ${v.id} has no stored examples`);
    return readRows(shard.sha256, `examples of ${v.id}`);
  }

  function toProto(v: DatasetVersion, e: DatasetExample, split: DatasetSplit) {
    return create(ExampleSchema, {
      id: e.id,
      datasetVersionId: v.id,
      split,
      kind: e.answerable ? ExampleKind.ANSWERABLE : ExampleKind.UNANSWERABLE,
      question: e.question,
      answer: e.answer,
      // A retrieved context: its chunks, and the whole numbered context block as the context (no heading path of its
      // own), so a prompt rendered from these fields is the one the version trains on.
      contextChunkIds: e.contextChunks?.length ? e.contextChunks.map((c) => c.chunkId) : [e.chunkId],
      sourceChunkId: e.distractorSource?.chunkId ?? e.chunkId,
      sourceDocumentId: e.distractorSource?.documentId ?? e.documentId,
      context: e.contextChunks?.length ? contextBlock(e) : e.context,
      headingPath: e.contextChunks?.length ? [] : [...e.headingPath],
      questionType: e.kind,
      generator: e.generator,
    });
  }

  async function readArtifact(hash: string, what: string): Promise<Buffer> {
    const content = await readArtifactContent(artifacts, hash);
    if (content === null) throw failedPrecondition(`the ${what} is missing from the object store (${artifacts.bucket}/${hash})`);
    return content;
  }

  return {
    async buildDatasetVersion(req) {
      return { version: await queueBuild(deps, req) };
    },

    async getDatasetVersion(req) {
      return { version: await getVersion(req.datasetVersionId) };
    },

    async listDatasetVersions(req) {
      if (req.status !== DatasetVersionStatus.UNSPECIFIED && DatasetVersionStatus[req.status] === undefined) {
        throw invalidArgument("status", `unknown dataset version status ${req.status}`);
      }
      const all = (await versions.list())
        .map((r) => r.state)
        .filter((v) => (req.collection === "" || v.collection === req.collection) && (req.status === DatasetVersionStatus.UNSPECIFIED || v.status === req.status))
        .sort((a, b) => {
          const ta = a.createdAt ? timestampDate(a.createdAt).getTime() : 0;
          const tb = b.createdAt ? timestampDate(b.createdAt).getTime() : 0;
          return tb - ta || b.id.localeCompare(a.id);
        });
      const page = paginate(all, req.page, `versions:${req.collection}:${req.status}`);
      return { versions: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async *watchDatasetVersion(req, ctx) {
      const v = await getVersion(req.datasetVersionId);
      for await (const event of versions.watch(v.id, { fromSequence: Math.max(1, req.fromSequence), signal: ctx.signal })) {
        yield { event };
      }
    },

    async cancelDatasetBuild(req) {
      const v = await getVersion(req.datasetVersionId);
      if (isFinished(v.status)) {
        throw failedPrecondition(`dataset version ${v.id} has already finished (${statusName(v.status)}); only queued or running builds can be cancelled`);
      }
      const cancelled = await versions.modify(v.id, (state) => {
        if (isFinished(state.status)) return null;
        state.status = DatasetVersionStatus.CANCELLED;
        state.finishedAt = timestampNow();
        return {
          state,
          events: [{ body: { case: "statusChanged", value: { $typeName: "ragtune.dataset.v1.DatasetVersionStatusChange", status: DatasetVersionStatus.CANCELLED } } as never }],
        };
      });
      return { version: cancelled.state };
    },

    async listExamples(req) {
      const v = await readyVersion(req.datasetVersionId);
      if (req.split !== DatasetSplit.UNSPECIFIED && DatasetSplit[req.split] === undefined) throw invalidArgument("split", `unknown split ${req.split}`);
      if (req.kind !== ExampleKind.UNSPECIFIED && ExampleKind[req.kind] === undefined) throw invalidArgument("kind", `unknown example kind ${req.kind}`);
      const examples: Example[] = [];
      for (const e of await storedExamples(v)) {
        const split = SPLIT_OF[e.split];
        const kind = e.answerable ? ExampleKind.ANSWERABLE : ExampleKind.UNANSWERABLE;
        if (req.split !== DatasetSplit.UNSPECIFIED && split !== req.split) continue;
        if (req.kind !== ExampleKind.UNSPECIFIED && kind !== req.kind) continue;
        examples.push(toProto(v, e, split));
      }
      const page = paginate(examples, req.page, `examples:${v.id}:${req.split}:${req.kind}`);
      return { examples: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async *exportDatasetVersion(req) {
      if (req.split === DatasetSplit.UNSPECIFIED || DatasetSplit[req.split] === undefined) throw invalidArgument("split", "is required: train, val or test");
      const format = FORMAT_NAME[req.format];
      if (format === undefined) throw invalidArgument("format", `unknown export format ${req.format}`);
      const templated = format === "mistral-instruct" || format === "mistral-inference";
      if (templated && req.template !== PromptTemplate.MISTRAL_INSTRUCT) {
        throw invalidArgument("template", "the instruct and inference formats are made in PROMPT_TEMPLATE_MISTRAL_INSTRUCT; chat and prompt/completion rows carry no template (leave it unspecified or set it to Mistral)");
      }
      if (!templated && req.template !== PromptTemplate.UNSPECIFIED && req.template !== PromptTemplate.MISTRAL_INSTRUCT) {
        throw invalidArgument("template", "chat and prompt/completion rows carry no template; leave it unspecified");
      }
      if (req.systemPrompt.length > 8_000) throw invalidArgument("system_prompt", `must be at most 8000 characters, got ${req.systemPrompt.length}`);
      const v = await readyVersion(req.datasetVersionId);
      let bytes: Buffer;
      let rows: number;
      if (req.systemPrompt.trim() === "") {
        const stored = v.exports.find((x) => x.split === req.split && FORMAT_NAME[x.format] === format);
        if (stored?.artifact === undefined) throw failedPrecondition(`dataset version ${v.id} has no stored ${format} export of the ${DatasetSplit[req.split]} split; build a new version to get one`);
        bytes = await readArtifact(stored.artifact.sha256, `${DatasetSplit[req.split]} export of ${v.id}`);
        rows = stored.rows;
      } else {
        // A custom system prompt: rendered from the stored examples on request.
        const splitName = (Object.keys(SPLIT_OF) as SplitName[]).find((k) => SPLIT_OF[k] === req.split)!;
        const examples = (await storedExamples(v)).filter((e) => e.split === splitName);
        let lines: string[];
        try {
          lines = examples.map((e) => exportRow(e, format, { systemPrompt: req.systemPrompt }));
        } catch (err) {
          throw invalidArgument("system_prompt", `cannot be used in the template: ${(err as Error).message.replace(/^example \S+: its text/, "it")}`);
        }
        bytes = Buffer.from(lines.join(""), "utf8");
        rows = lines.length;
      }
      const sha256 = createHash("sha256").update(bytes).digest("hex");
      // Whole lines per message, at most EXPORT_PIECE_BYTES each (a longer line is sent alone).
      let start = 0;
      while (start < bytes.length) {
        let end = Math.min(bytes.length, start + EXPORT_PIECE_BYTES);
        if (end < bytes.length) {
          const newline = bytes.lastIndexOf(0x0a, end - 1);
          end = newline >= start ? newline + 1 : bytes.indexOf(0x0a, end) + 1 || bytes.length;
        }
        yield { part: { case: "jsonl", value: bytes.subarray(start, end) } };
        start = end;
      }
      yield {
        part: {
          case: "summary",
          value: { $typeName: "ragtune.dataset.v1.DatasetExportSummary", rows, sha256, sizeBytes: BigInt(bytes.length) },
        },
      };
    },

    async listDroppedExamples(req) {
      const v = await getVersion(req.datasetVersionId);
      if (v.status !== DatasetVersionStatus.READY) {
        throw failedPrecondition(`dataset version ${v.id} is ${statusName(v.status)}; its dropped examples are listed once it is ready`);
      }
      const ref = v.lineage?.dropped;
      if (ref === undefined) throw failedPrecondition(`dataset version ${v.id} was built before versions stored their dropped examples; rebuild it to list them`);
      const rows = (await readRows<DroppedRow>(ref.sha256, `dropped examples of ${v.id}`)).filter((r) => req.reason === "" || r.reason === req.reason);
      if (rows.length === 0 && req.reason !== "" && !(req.reason in (v.stats?.rejectedByCheck ?? {}))) {
        throw invalidArgument("reason", `no example of ${v.id} was dropped for "${req.reason}"; reasons of this version: ${Object.keys(v.stats?.rejectedByCheck ?? {}).join(", ") || "none"}`);
      }
      const page = paginate(rows, req.page, `dropped:${v.id}:${req.reason}`);
      return {
        examples: page.items.map((r) => ({ example: toProto(v, r.example, DatasetSplit.UNSPECIFIED), reason: r.reason, detail: r.detail })),
        page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }),
      };
    },

    async setCollectionConfig(req) {
      const collection = collectionOf(req.collection);
      const { settings } = resolveBuildSettings(req.settings, { llmConfigured: deps.llmConfigured });
      const config = create(CollectionConfigSchema, { collection, rebuildOnIngest: req.rebuildOnIngest, settings, updatedAt: timestampNow() });
      await deps.collections.put(collection, config);
      deps.logger.info({ collection, rebuildOnIngest: req.rebuildOnIngest }, "collection config set");
      return { config };
    },

    async getCollectionConfig(req) {
      const collection = collectionOf(req.collection);
      const stored = await deps.collections.get(collection);
      return { config: stored?.value ?? create(CollectionConfigSchema, { collection, rebuildOnIngest: false, settings: resolveBuildSettings(undefined, { llmConfigured: deps.llmConfigured }).settings }) };
    },
  };
}
