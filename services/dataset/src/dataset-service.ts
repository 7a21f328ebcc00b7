import { createHash, randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampNow } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { ArtifactStore } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  type DatasetService,
  DatasetSplit,
  type DatasetVersion,
  DatasetVersionSchema,
  DatasetVersionStatus,
  type Example,
  ExampleKind,
  ExampleSchema,
  PageResponseSchema,
  PromptTemplate,
} from "@ragtune/proto";
import { failedPrecondition, invalidArgument, notFound, paginate } from "@ragtune/rpc";
import { resolveBuildSettings } from "./build-settings.js";
import type { DatasetExample } from "./example.js";
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

/** The DatasetService RPC handlers. */
export function createDatasetService(deps: DatasetServiceDeps): Partial<ServiceImpl<typeof DatasetService>> {
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

  async function readArtifact(hash: string, what: string): Promise<Buffer> {
    const stream = await artifacts.get(hash);
    if (stream === null) throw failedPrecondition(`the ${what} is missing from the object store (${artifacts.bucket}/${hash})`);
    const parts: Buffer[] = [];
    for await (const part of stream) parts.push(part as Buffer);
    return Buffer.concat(parts);
  }

  return {
    async buildDatasetVersion(req) {
      const collection = req.collection === "" ? "default" : req.collection;
      if (!COLLECTION_RE.test(collection)) throw invalidArgument("collection", "use 1–63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit");
      if (req.baseVersionId !== "") {
        throw invalidArgument("base_version_id", "incremental builds are not supported yet; leave it empty to build from every chunk");
      }
      const { settings } = resolveBuildSettings(req.settings, { llmConfigured: deps.llmConfigured });
      const id = newVersionId(collection, req.clientRequestId);
      const version = create(DatasetVersionSchema, {
        id,
        collection,
        status: DatasetVersionStatus.QUEUED,
        settings,
        createdAt: timestampNow(),
      });
      const queued = { case: "statusChanged" as const, value: { $typeName: "ragtune.dataset.v1.DatasetVersionStatusChange" as const, status: DatasetVersionStatus.QUEUED } };
      let stored: DatasetVersion;
      try {
        stored = (await versions.create(id, version, [{ body: queued as never }])).state;
      } catch (err) {
        if ((err as Error).name !== "ResourceExistsError") throw err;
        stored = (await getVersion(id)); // a retried request with the same client_request_id
      }
      deps.builder.submit(id);
      deps.logger.info({ datasetVersionId: id, collection }, "dataset build queued");
      return { version: stored };
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
      const shard = v.shards[0];
      if (shard === undefined) throw failedPrecondition(`dataset version ${v.id} has no stored examples`);
      const lines = (await readArtifact(shard.sha256, `examples of ${v.id}`)).toString("utf8").split("\n").filter((l) => l !== "");
      const examples: Example[] = [];
      for (const line of lines) {
        const e = JSON.parse(line) as DatasetExample & { split: SplitName };
        const split = SPLIT_OF[e.split];
        const kind = e.answerable ? ExampleKind.ANSWERABLE : ExampleKind.UNANSWERABLE;
        if (req.split !== DatasetSplit.UNSPECIFIED && split !== req.split) continue;
        if (req.kind !== ExampleKind.UNSPECIFIED && kind !== req.kind) continue;
        examples.push(
          create(ExampleSchema, {
            id: e.id,
            datasetVersionId: v.id,
            split,
            kind,
            question: e.question,
            answer: e.answer,
            contextChunkIds: [e.chunkId],
            sourceChunkId: e.distractorSource?.chunkId ?? e.chunkId,
            sourceDocumentId: e.distractorSource?.documentId ?? e.documentId,
            context: e.context,
            headingPath: [...e.headingPath],
            questionType: e.kind,
            generator: e.generator,
          }),
        );
      }
      const page = paginate(examples, req.page, `examples:${v.id}:${req.split}:${req.kind}`);
      return { examples: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async *exportDatasetVersion(req) {
      if (req.split === DatasetSplit.UNSPECIFIED || DatasetSplit[req.split] === undefined) throw invalidArgument("split", "is required: train, val or test");
      if (req.template !== PromptTemplate.MISTRAL_INSTRUCT) {
        throw invalidArgument("template", "only PROMPT_TEMPLATE_MISTRAL_INSTRUCT exports are stored so far");
      }
      if (req.systemPrompt !== "") throw invalidArgument("system_prompt", "custom system prompts are not supported yet; leave it empty");
      const v = await readyVersion(req.datasetVersionId);
      const stored = v.exports.find((x) => x.split === req.split && x.template === req.template);
      if (stored?.artifact === undefined) throw failedPrecondition(`dataset version ${v.id} has no ${DatasetSplit[req.split]} export`);
      const bytes = await readArtifact(stored.artifact.sha256, `${DatasetSplit[req.split]} export of ${v.id}`);
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
          value: { $typeName: "ragtune.dataset.v1.DatasetExportSummary", rows: stored.rows, sha256: stored.artifact.sha256, sizeBytes: BigInt(bytes.length) },
        },
      };
    },
  };
}
