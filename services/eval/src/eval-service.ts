import { createHash, randomBytes } from "node:crypto";
import { create, fromJson, type JsonValue } from "@bufbuild/protobuf";
import { timestampDate, timestampNow } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import type { ArtifactStore } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  type EvalItemResult,
  EvalItemResultSchema,
  EvalPromptFormat,
  type EvalRun,
  EvalRunSchema,
  EvalRunStatus,
  type EvalService,
  PageResponseSchema,
} from "@ragtune/proto";
import { failedPrecondition, invalidArgument, notFound, paginate } from "@ragtune/rpc";
import { readArtifact, storeArtifact } from "./artifact-io.js";
import { EvalSourceError, MAX_EVAL_FILE_BYTES, parseEvalFile } from "./eval-items.js";
import { differences, type ScoredAnswer } from "./report.js";
import { truthfulnessOf } from "./metrics.js";
import type { RunExecutor } from "./run-executor.js";
import { completedEvent } from "./run-executor.js";
import { isFinished, type RunStore, statusChanged, statusName } from "./run-store.js";

export interface EvalServiceDeps {
  runs: RunStore;
  artifacts: ArtifactStore;
  executor: Pick<RunExecutor, "submit">;
  logger: Logger;
  /** Defaults of a request that names none: endpoint (LLM_BASE_URL), base model (LLM_MODEL), concurrency. */
  defaults: { endpointUrl: string; baseModel: string | undefined; concurrency: number; maxConcurrency: number };
  /** Whether the dataset service is configured (EVAL_DATASET_URL). */
  datasetConfigured: boolean;
}

const COLLECTION_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;
const MODEL_RE = /^[^\s]{1,256}$/;
const MAX_ADAPTERS = 16;

function newRunId(clientRequestId: string): string {
  if (clientRequestId !== "") return `eval-${createHash("sha256").update(clientRequestId).digest("hex").slice(0, 20)}`;
  return `eval-${randomBytes(10).toString("hex")}`;
}

function checkUrl(value: string, field: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw invalidArgument(field, `"${value}" is not a URL; use the endpoint's http(s) …/v1 URL, e.g. http://127.0.0.1:8000/v1`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw invalidArgument(field, `must be an http(s) URL, got "${value}"`);
  return value.replace(/\/+$/, "");
}

/** Items and report of a stored JSON report. */
interface StoredReportJson {
  report: JsonValue;
  items: JsonValue[];
}

/** The EvalService RPC handlers. */
export function createEvalService(deps: EvalServiceDeps): ServiceImpl<typeof EvalService> {
  const { runs, artifacts } = deps;

  async function getRun(id: string): Promise<EvalRun> {
    if (id === "") throw invalidArgument("eval_run_id", "is required");
    const found = await runs.get(id);
    if (found === null) throw notFound("eval run", id);
    return found.state;
  }

  async function succeededRun(id: string): Promise<EvalRun> {
    const run = await getRun(id);
    if (run.status !== EvalRunStatus.SUCCEEDED || run.report === undefined) {
      throw failedPrecondition(`eval run ${id} is ${statusName(run.status)}; its report exists once it has succeeded`);
    }
    return run;
  }

  async function itemResults(run: EvalRun): Promise<EvalItemResult[]> {
    const ref = run.report!.json!;
    const stored = JSON.parse((await readArtifact(artifacts, ref.sha256, `report of ${run.id}`)).toString("utf8")) as StoredReportJson;
    return stored.items.map((i) => fromJson(EvalItemResultSchema, i));
  }

  return {
    async createEvalRun(req) {
      const source = req.source;
      if (source.case === undefined) throw invalidArgument("source", "set dataset_version_id (a ready version's test split) or eval_file (JSON lines)");
      let collection = req.collection;
      let evalFile;
      let evalFileName = "";
      if (source.case === "datasetVersionId") {
        if (source.value === "") throw invalidArgument("dataset_version_id", "is empty");
        if (!deps.datasetConfigured) {
          throw failedPrecondition("this eval service has no dataset service configured (EVAL_DATASET_URL); upload an eval file instead");
        }
      } else {
        const file = source.value;
        if (file.jsonl.byteLength > MAX_EVAL_FILE_BYTES) throw invalidArgument("eval_file.jsonl", `is ${file.jsonl.byteLength} bytes; at most ${MAX_EVAL_FILE_BYTES}`);
        try {
          parseEvalFile(file.jsonl);
        } catch (err) {
          if (err instanceof EvalSourceError) throw invalidArgument(err.field || "eval_file", err.message);
          throw err;
        }
        evalFile = await storeArtifact(artifacts, file.jsonl, "application/jsonl");
        evalFileName = file.name;
      }
      if (collection !== "" && !COLLECTION_RE.test(collection)) throw invalidArgument("collection", "use 1–63 characters of a-z, 0-9, '_' and '-'");
      const endpointUrl = checkUrl(req.endpointUrl === "" ? deps.defaults.endpointUrl : req.endpointUrl, "endpoint_url");
      const baseModel = req.baseModel === "" ? (deps.defaults.baseModel ?? "") : req.baseModel;
      if (baseModel !== "" && !MODEL_RE.test(baseModel)) throw invalidArgument("base_model", "must be a model name without spaces");
      if (req.adapters.length > MAX_ADAPTERS) throw invalidArgument("adapters", `at most ${MAX_ADAPTERS} adapters per run`);
      const seen = new Set<string>([baseModel]);
      for (const a of req.adapters) {
        if (!MODEL_RE.test(a)) throw invalidArgument("adapters", `"${a}" is not a model name (no spaces, 1–256 characters)`);
        if (seen.has(a)) throw invalidArgument("adapters", `"${a}" is named twice (or is the base model)`);
        seen.add(a);
      }
      if (req.promptFormat !== EvalPromptFormat.UNSPECIFIED && EvalPromptFormat[req.promptFormat] === undefined) {
        throw invalidArgument("prompt_format", `unknown prompt format ${req.promptFormat}; use COMPLETION or CHAT`);
      }
      const temperature = req.sampling?.temperature ?? 0;
      if (!(temperature >= 0 && temperature <= 2)) throw invalidArgument("sampling.temperature", "must be between 0 and 2");
      const maxTokens = req.sampling?.maxTokens ?? 200;
      if (maxTokens < 1 || maxTokens > 32_768) throw invalidArgument("sampling.max_tokens", "must be between 1 and 32768");
      const concurrency = req.concurrency ?? deps.defaults.concurrency;
      if (concurrency < 1 || concurrency > deps.defaults.maxConcurrency) throw invalidArgument("concurrency", `must be between 1 and ${deps.defaults.maxConcurrency} (EVAL_MAX_CONCURRENCY)`);
      if (req.maxItems !== undefined && req.maxItems < 1) throw invalidArgument("max_items", "must be at least 1 (leave it unset for all items)");
      if (req.judge !== undefined && req.judge.endpointUrl !== "") checkUrl(req.judge.endpointUrl, "judge.endpoint_url");
      if (req.judge !== undefined && req.judge.endpointUrl !== "" && req.judge.model === "") throw invalidArgument("judge.model", "is required when a judge is set");
      if (req.judge?.samples !== undefined && (req.judge.samples < 1 || req.judge.samples > 9)) throw invalidArgument("judge.samples", `must be 1..9, got ${req.judge.samples}`);
      const id = newRunId(req.clientRequestId);
      const run = create(EvalRunSchema, {
        id,
        status: EvalRunStatus.QUEUED,
        collection,
        datasetVersionId: source.case === "datasetVersionId" ? source.value : "",
        evalFileName,
        ...(evalFile === undefined ? {} : { evalFile }),
        endpointUrl,
        baseModel,
        adapters: [...req.adapters],
        promptFormat: req.promptFormat === EvalPromptFormat.UNSPECIFIED ? EvalPromptFormat.COMPLETION : req.promptFormat,
        sampling: { temperature, maxTokens },
        concurrency,
        ...(req.maxItems === undefined ? {} : { maxItems: req.maxItems }),
        seed: req.seed ?? 42,
        ...(req.judge !== undefined && req.judge.model !== "" ? { judge: req.judge } : {}),
        createdAt: timestampNow(),
      });
      let stored: EvalRun;
      try {
        stored = (await runs.create(id, run, [{ body: statusChanged(EvalRunStatus.QUEUED) }])).state;
      } catch (err) {
        if ((err as Error).name !== "ResourceExistsError") throw err;
        stored = await getRun(id); // a retried request with the same client_request_id
      }
      deps.executor.submit(id);
      deps.logger.info({ evalRunId: id, endpointUrl, baseModel, adapters: run.adapters }, "eval run queued");
      return { run: stored };
    },

    async getEvalRun(req) {
      return { run: await getRun(req.evalRunId) };
    },

    async listEvalRuns(req) {
      if (req.status !== EvalRunStatus.UNSPECIFIED && EvalRunStatus[req.status] === undefined) throw invalidArgument("status", `unknown eval run status ${req.status}`);
      const all = (await runs.list())
        .map((r) => r.state)
        .filter(
          (r) =>
            (req.collection === "" || r.collection === req.collection) &&
            (req.datasetVersionId === "" || r.datasetVersionId === req.datasetVersionId) &&
            (req.status === EvalRunStatus.UNSPECIFIED || r.status === req.status),
        )
        .sort((a, b) => {
          const ta = a.createdAt ? timestampDate(a.createdAt).getTime() : 0;
          const tb = b.createdAt ? timestampDate(b.createdAt).getTime() : 0;
          return tb - ta || b.id.localeCompare(a.id);
        });
      const page = paginate(all, req.page, `runs:${req.collection}:${req.datasetVersionId}:${req.status}`);
      return { runs: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async *watchEvalRun(req, ctx) {
      const run = await getRun(req.evalRunId);
      for await (const event of runs.watch(run.id, { fromSequence: Math.max(1, req.fromSequence), signal: ctx.signal })) yield { event };
    },

    async cancelEvalRun(req) {
      const run = await getRun(req.evalRunId);
      if (isFinished(run.status)) {
        throw failedPrecondition(`eval run ${run.id} has already finished (${statusName(run.status)}); only queued or running runs can be cancelled`);
      }
      const cancelled = await runs.modify(run.id, (state) => {
        if (isFinished(state.status)) return null;
        const finishedAt = timestampNow();
        state.status = EvalRunStatus.CANCELLED;
        state.finishedAt = finishedAt;
        return { state, events: [{ body: statusChanged(EvalRunStatus.CANCELLED), announce: [completedEvent(state, EvalRunStatus.CANCELLED, finishedAt)] }] };
      });
      return { run: cancelled.state };
    },

    async getEvalReport(req) {
      const run = await succeededRun(req.evalRunId);
      const markdown = (await readArtifact(artifacts, run.report!.markdown!.sha256, `Markdown report of ${run.id}`)).toString("utf8");
      return { report: run.report!, markdown };
    },

    async listEvalItemResults(req) {
      const run = await succeededRun(req.evalRunId);
      const page = paginate(await itemResults(run), req.page, `items:${run.id}`);
      return { results: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async compareEvalRuns(req) {
      if (req.baselineRunId === "") throw invalidArgument("baseline_run_id", "is required");
      if (req.otherRunId === "") throw invalidArgument("other_run_id", "is required");
      const [a, b] = [await succeededRun(req.baselineRunId), await succeededRun(req.otherRunId)];
      const [itemsA, itemsB] = [await itemResults(a), await itemResults(b)];
      const byId = new Map(itemsB.map((i) => [i.itemId, i]));
      const shared = itemsA.filter((i) => byId.has(i.itemId));
      if (shared.length === 0) throw failedPrecondition(`eval runs ${a.id} and ${b.id} share no item; compare runs over the same eval set`);
      const models = [a.baseModel, ...a.adapters].filter((m) => [b.baseModel, ...b.adapters].includes(m));
      if (models.length === 0) throw failedPrecondition(`eval runs ${a.id} and ${b.id} share no model name`);
      const toScored = (i: EvalItemResult, model: string): ScoredAnswer => {
        const x = i.answers.find((ans) => ans.model === model)!;
        return {
          model,
          outcome: { text: x.text, finishReason: x.finishReason, ...(x.error === "" ? {} : { error: { kind: x.error.split(":")[0]!, message: x.error } }) },
          latencyMs: x.latencySeconds * 1000,
          completionTokens: x.completionTokens,
          scores: {
            tokenF1: x.tokenF1,
            rougeL: x.rougeL,
            exactMatch: x.exactMatch,
            grounding: x.grounding,
            refused: x.refused,
            empty: x.empty,
            followUp: x.followUp,
            degenerate: x.degenerate,
            lengthCutoff: x.finishReason === "length",
            words: 0,
            success: x.success,
            truthfulness: truthfulnessOf({ success: x.success, failed: x.error !== "", answerable: i.answerable, refused: x.refused, empty: x.empty }),
          },
        };
      };
      const diffs = models.flatMap((model) =>
        differences(
          shared.map((i) => ({
            item: { answerable: i.answerable },
            baseline: toScored(i, model),
            other: toScored(byId.get(i.itemId)!, model),
          })),
          model,
          a.id,
          a.seed,
        ),
      );
      return { sharedItems: shared.length, differences: diffs };
    },
  };
}
