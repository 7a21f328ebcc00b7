/**
 * The `ragtune` command over the gateway. Every command is one or a few gateway calls; `--json` prints the response as
 * protobuf JSON for scripts, otherwise tables and plain text. The gateway URL and API key come from flags
 * (--url, --key), else the environment (RAGTUNE_URL, RAGTUNE_API_KEY), else the config file ($RAGTUNE_CONFIG or
 * ~/.config/ragtune/config.json: {"url": "...", "key": "..."}); the URL defaults to http://127.0.0.1:8080.
 *
 * Exit codes: 0 done; 2 bad usage; 3 not authenticated or not allowed; 4 not found; 5 refused in the current state
 * (failed precondition, e.g. an adapter without a passed gate); 6 a limit was hit (rate, size); 7 the gateway or a
 * service behind it is unavailable or timed out; 1 anything else.
 */
import { readFileSync } from "node:fs";
import { readdir, readFile, stat } from "node:fs/promises";
import { homedir } from "node:os";
import { join, relative } from "node:path";
import { parseArgs } from "node:util";
import { type DescMessage, fromJson, type JsonValue, type MessageShape, toJsonString } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { runKeysCommand } from "@ragtune/gateway-service/keys-command";
import {
  AskResponseSchema,
  GatewayService,
  GetAdapterLineageResponseSchema,
  GetDocumentLineageResponseSchema,
  GetEvalRunReportResponseSchema,
  HyperparametersSchema,
  ListCollectionDatasetVersionsResponseSchema,
  ListCollectionDocumentsResponseSchema,
  ListCollectionJobsResponseSchema,
  ListPromotionsResponseSchema,
  ListPipelineRunsResponseSchema,
  ListTenantCollectionsResponseSchema,
  type PipelineRun,
  PipelineRunSchema,
  PipelineRunStatus,
  PipelineStage,
  RetrainFrom,
  PipelineStageStatus,
  PromoteAdapterResponseSchema,
  SetCollectionUpdatePolicyResponseSchema,
  RollbackAdapterResponseSchema,
} from "@ragtune/proto";
import { createClient } from "@ragtune/rpc";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { PipelineSpecSchema } from "@ragtune/proto";

export const USAGE = `ragtune — the command line of a ragtune gateway

usage: ragtune <command> [options]

  ingest <dir|file>...      ingest Markdown/HTML documents into a collection (--collection)
  dataset build             build a dataset version of a collection (--collection, --questions N, --negative-ratio R,
                            --model <generation model at the gateway's LLM endpoint; default: extractive>)
  train                     train an adapter (--dataset-version <ID>, --base-model <folder>, --steps N | --epochs N,
                            --hp name=value for any other hyperparameter, e.g. --hp learning_rate=2e-4,
                            --from-adapter <job ID> to train on from that job's adapter instead of a fresh one)
  eval                      evaluate a job's adapter against the base model on its test split (--job <ID>, --max-items N)
  pipeline run [<dir>]      ingest → dataset → train → eval → promote in one run (--base-model, --steps, --max-items,
                            --no-promote, --force-promote)
  follow                    renew the collection's adapter after its documents change (--settle-seconds N,
                            --retrain-from base|promoted, and the pipeline run options for the updates); --off stops
                            following; prints the policy
  pipeline list|get <ID>|watch <ID>|cancel <ID>
                            pipeline runs (ingest, dataset build, train and eval are pipeline runs too)
  ask <question>            answer from a collection (--collection, --top-k, --max-tokens, --base, --adapter, --stream)
  collections               the collections your key reaches
  documents                 documents of a collection (--collection)
  datasets                  dataset versions of a collection (--collection)
  jobs                      trainer jobs of a collection (--collection)
  eval-report <eval run ID> an eval run's report (Markdown)
  lineage adapter <job ID>  job, dataset version, documents, eval runs and promotions of an adapter
  lineage document <doc ID> dataset versions and adapters a document went into
  promote <job ID>          serve a job's adapter for a collection (--collection, --eval-run, --force, --pin, --replace-pinned)
  rollback                  serve the adapter promoted before the current one (--collection)
  promotions                promotion history of a collection (--collection)
  keys <create|revoke|list|grant> ...   API keys and tenants (operators: runs against NATS with the gateway's environment)

options: --url <gateway URL>  --key <API key>  --json  --collection <name> (default: default)
         --detach (start a run and print its ID instead of following it)
exit codes: 0 ok, 1 error, 2 usage, 3 unauthenticated/permission denied, 4 not found, 5 failed precondition,
            6 limit hit, 7 unavailable, 8 the run failed, 9 the run was cancelled`;

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

const EXIT: Partial<Record<Code, number>> = {
  [Code.InvalidArgument]: 2,
  [Code.Unauthenticated]: 3,
  [Code.PermissionDenied]: 3,
  [Code.NotFound]: 4,
  [Code.FailedPrecondition]: 5,
  [Code.ResourceExhausted]: 6,
  [Code.Unavailable]: 7,
  [Code.DeadlineExceeded]: 7,
};

const OPTIONS = {
  url: { type: "string" },
  key: { type: "string" },
  json: { type: "boolean" },
  collection: { type: "string" },
  "top-k": { type: "string" },
  "max-tokens": { type: "string" },
  base: { type: "boolean" },
  adapter: { type: "string" },
  stream: { type: "boolean" },
  "eval-run": { type: "string" },
  force: { type: "boolean" },
  pin: { type: "boolean" },
  "replace-pinned": { type: "boolean" },
  tenant: { type: "string" },
  name: { type: "string" },
  help: { type: "boolean", short: "h" },
  detach: { type: "boolean" },
  questions: { type: "string" },
  "negative-ratio": { type: "string" },
  model: { type: "string" },
  "dataset-version": { type: "string" },
  "base-model": { type: "string" },
  steps: { type: "string" },
  epochs: { type: "string" },
  job: { type: "string" },
  "max-items": { type: "string" },
  "no-promote": { type: "boolean" },
  "force-promote": { type: "boolean" },
  hp: { type: "string", multiple: true },
  "settle-seconds": { type: "string" },
  "from-adapter": { type: "string" },
  "retrain-from": { type: "string" },
  off: { type: "boolean" },
} as const;

class UsageError extends Error {}

function settings(flags: { url?: string | undefined; key?: string | undefined }, env: Record<string, string | undefined>): { url: string; key?: string } {
  let file: { url?: string; key?: string } = {};
  const path = env.RAGTUNE_CONFIG ?? join(env.HOME ?? homedir(), ".config", "ragtune", "config.json");
  try {
    file = JSON.parse(readFileSync(path, "utf8")) as typeof file;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new UsageError(`config file ${path} is not valid JSON: ${(e as Error).message}`);
  }
  const url = flags.url ?? env.RAGTUNE_URL ?? file.url ?? "http://127.0.0.1:8080";
  const key = flags.key ?? env.RAGTUNE_API_KEY ?? file.key;
  return key === undefined ? { url } : { url, key };
}

function table(rows: readonly (readonly string[])[]): string {
  if (rows.length <= 1) return rows.length === 0 ? "" : `${rows[0]!.join("  ")}\n(none)`;
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join("  ")).join("\n");
}

const when = (t: Timestamp | undefined) => (t === undefined ? "" : timestampDate(t).toISOString().replace(/\.\d+Z$/, "Z"));

function intFlag(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new UsageError(`--${name} must be a whole number, got "${value}"`);
  return n;
}

const DOCUMENT_RE = /\.(md|markdown|html?)$/i;

/** The documents under the given files and folders (Markdown and HTML, folders recursively), named by relative path. */
async function documentSources(paths: string[]) {
  if (paths.length === 0) throw new UsageError("name the documents to ingest: a folder or files (Markdown, HTML)");
  const found: { name: string; path: string }[] = [];
  const walk = async (path: string, base: string): Promise<void> => {
    let info;
    try {
      info = await stat(path);
    } catch {
      throw new UsageError(`${path} does not exist`);
    }
    if (info.isDirectory()) {
      for (const entry of (await readdir(path)).sort()) if (!entry.startsWith(".")) await walk(join(path, entry), base);
    } else if (DOCUMENT_RE.test(path) || path === base) {
      found.push({ name: path === base ? relative(join(base, ".."), path) : relative(base, path), path });
    }
  };
  for (const p of paths) await walk(p, p);
  if (found.length === 0) throw new UsageError(`no Markdown or HTML documents in ${paths.join(", ")}`);
  return Promise.all(found.map(async (d) => ({ source: { case: "inline" as const, value: { filename: d.name, content: await readFile(d.path) } } })));
}

const stageLabel = (s: PipelineStage) => (PipelineStage[s] ?? String(s)).toLowerCase();
const stageStatus = (s: PipelineStageStatus) => (PipelineStageStatus[s] ?? String(s)).toLowerCase();
const runStatus = (s: PipelineRunStatus) => (PipelineRunStatus[s] ?? String(s)).toLowerCase();

/** One line per stage: a bar for the running one, its status and detail otherwise. */
export function progressLine(st: PipelineRun["stages"][number]): string {
  const name = stageLabel(st.stage).padEnd(8);
  if (st.status === PipelineStageStatus.RUNNING && st.progressTotal > 0n) {
    const share = Math.min(1, Number(st.progressDone) / Number(st.progressTotal));
    const filled = Math.round(share * 24);
    return `${name} [${"#".repeat(filled)}${"-".repeat(24 - filled)}] ${String(Math.round(share * 100)).padStart(3)}%  ${st.detail}`;
  }
  return `${name} ${stageStatus(st.status).padEnd(9)} ${st.detail}${st.failure ? ` — ${st.failure.message}` : ""}`;
}

function runTable(run: PipelineRun): string {
  return [
    `pipeline run ${run.id} of collection ${run.collection}: ${runStatus(run.status)}${run.failure ? ` — ${run.failure.message}` : ""}`,
    table([["STAGE", "STATUS", "RESOURCE", "DETAIL"], ...run.stages.map((s) => [stageLabel(s.stage), stageStatus(s.status), s.resourceId, s.detail])]),
  ].join("\n");
}

function runExit(run: PipelineRun): number {
  return run.status === PipelineRunStatus.SUCCEEDED ? 0 : run.status === PipelineRunStatus.CANCELLED ? 9 : 8;
}

/** Runs one command line; returns the exit code. */
export async function run(argv: string[], env: Record<string, string | undefined>, io: Io): Promise<number> {
  if (argv[0] === "keys") return runKeysCommand(argv.slice(1), env, io.out, io.err);
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: OPTIONS, strict: true });
  } catch (e) {
    io.err(`${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const [command, ...args] = parsed.positionals;
  const f = parsed.values;
  if (command === undefined || f.help === true) {
    (command === undefined && f.help !== true ? io.err : io.out)(USAGE);
    return command === undefined && f.help !== true ? 2 : 0;
  }
  try {
    const { url, key } = settings(f, env);
    const gateway = createClient(GatewayService, { baseUrl: url, protocol: "connect", ...(key === undefined ? {} : { authToken: key }) });
    const collection = f.collection ?? "";
    const print = <D extends DescMessage>(schema: D, message: MessageShape<D>, text: () => string) => io.out(f.json === true ? toJsonString(schema, message, { prettySpaces: 2 }) : text());
    /** Follows a run to its end: progress lines on stderr as stages move, the final table (or JSON) on stdout. */
    const follow = async (id: string): Promise<number> => {
      const shown = new Map<PipelineStage, string>();
      for await (const { event } of gateway.watchPipelineRun({ pipelineRunId: id }, { timeoutMs: 24 * 3600_000 })) {
        const e = event?.event;
        if (e?.case !== "stageChanged") continue;
        // A line when a stage changes status, and at each tenth of its progress.
        const st = e.value;
        const tenth = st.progressTotal > 0n ? Math.floor((10 * Number(st.progressDone)) / Number(st.progressTotal)) : -1;
        const mark = `${st.status}:${tenth}`;
        if (shown.get(st.stage) === mark) continue;
        shown.set(st.stage, mark);
        io.err(progressLine(st));
      }
      const done = (await gateway.getPipelineRun({ pipelineRunId: id })).run!;
      print(PipelineRunSchema, done, () => runTable(done));
      return runExit(done);
    };
    const startRun = async (stages: PipelineStage[], spec: MessageInitShape<typeof PipelineSpecSchema>): Promise<number> => {
      const { run: started } = await gateway.startPipelineRun({ collection, spec: { ...spec, stages } });
      if (f.detach === true) {
        print(PipelineRunSchema, started!, () => started!.id);
        return 0;
      }
      if (f.json !== true) io.err(`pipeline run ${started!.id}: ${stages.map(stageLabel).join(" → ")} on collection ${started!.collection} (ragtune pipeline watch ${started!.id})`);
      return follow(started!.id);
    };
    const trainSpec = () => {
      const steps = intFlag(f.steps, "steps");
      const epochs = intFlag(f.epochs, "epochs");
      if (steps !== undefined && epochs !== undefined) throw new UsageError("give --steps or --epochs, not both");
      const duration = steps !== undefined ? { case: "maxSteps" as const, value: steps } : epochs !== undefined ? { case: "epochs" as const, value: epochs } : undefined;
      // --hp name=value (proto field names, e.g. learning_rate=2e-4, gradient_checkpointing=false, compute_dtype=COMPUTE_DTYPE_FLOAT32).
      const fields: Record<string, unknown> = {};
      for (const pair of f.hp ?? []) {
        const eq = pair.indexOf("=");
        if (eq <= 0) throw new UsageError(`--hp takes name=value (e.g. --hp learning_rate=2e-4), got "${pair}"`);
        const raw = pair.slice(eq + 1);
        let value: unknown = raw;
        try {
          value = JSON.parse(raw);
        } catch {
          // not JSON: an enum name or other text
        }
        fields[pair.slice(0, eq)] = value;
      }
      let hyperparameters;
      try {
        hyperparameters = fromJson(HyperparametersSchema, fields as JsonValue);
      } catch (e) {
        throw new UsageError(`--hp: ${(e as Error).message}`);
      }
      if (duration !== undefined) hyperparameters.duration = duration;
      return { baseModel: f["base-model"] ?? "", hyperparameters, initAdapterJobId: f["from-adapter"] ?? "" };
    };
    const datasetSpec = () => {
      const questions = intFlag(f.questions, "questions");
      const ratio = f["negative-ratio"] === undefined ? undefined : Number(f["negative-ratio"]);
      if (ratio !== undefined && !(ratio >= 0 && ratio <= 1)) throw new UsageError(`--negative-ratio must be 0..1, got "${f["negative-ratio"]}"`);
      return { dataset: { model: f.model ?? "", ...(questions === undefined ? {} : { questionsPerChunk: questions }), ...(ratio === undefined ? {} : { negativeRatio: ratio }) } };
    };
    const promotionSpec = () => ({ autoPromote: f["no-promote"] !== true, force: f["force-promote"] === true, pin: f.pin === true });
    const evalSpec = () => {
      const maxItems = intFlag(f["max-items"], "max-items");
      return maxItems === undefined ? {} : { evalMaxItems: maxItems };
    };
    switch (command) {
      case "ingest":
        return startRun([PipelineStage.INGEST], { sources: await documentSources(args) });
      case "dataset": {
        if (args[0] !== "build") throw new UsageError("dataset needs a subcommand: ragtune dataset build [--collection C]");
        return startRun([PipelineStage.DATASET], datasetSpec());
      }
      case "train": {
        if (f["dataset-version"] === undefined) throw new UsageError("train needs --dataset-version <ID> (ragtune datasets lists them)");
        return startRun([PipelineStage.TRAIN], { datasetVersionId: f["dataset-version"], ...trainSpec() });
      }
      case "eval": {
        if (f.job === undefined) throw new UsageError("eval needs --job <trainer job ID> (ragtune jobs lists them)");
        return startRun([PipelineStage.EVAL], { jobId: f.job, ...evalSpec() });
      }
      case "follow": {
        const settle = intFlag(f["settle-seconds"], "settle-seconds");
        if (f["from-adapter"] !== undefined) throw new UsageError("follow trains each update from the base or the serving adapter: use --retrain-from base|promoted, not --from-adapter");
        const retrainFrom = { base: RetrainFrom.BASE, promoted: RetrainFrom.PROMOTED_ADAPTER, undefined: RetrainFrom.UNSPECIFIED }[String(f["retrain-from"])];
        if (retrainFrom === undefined) throw new UsageError(`--retrain-from takes base or promoted, got "${f["retrain-from"]}"`);
        const res = await gateway.setCollectionUpdatePolicy({
          collection,
          policy: {
            followDocuments: f.off !== true,
            retrainFrom,
            ...(settle === undefined ? {} : { settleSeconds: settle }),
            spec: {
              ...(f.model !== undefined || f.questions !== undefined || f["negative-ratio"] !== undefined ? datasetSpec() : {}),
              ...trainSpec(),
              ...evalSpec(),
              promotion: promotionSpec(),
            },
          },
        });
        const p = res.policy!;
        print(SetCollectionUpdatePolicyResponseSchema, res, () =>
          p.followDocuments
            ? `collection ${p.collection} follows its documents: an ingest run that changes chunks starts an update ${p.settleSeconds ?? 60} s after the first change, training from ${p.retrainFrom === RetrainFrom.PROMOTED_ADAPTER ? "the serving adapter" : "the base model"} (ragtune pipeline list shows them)`
            : `collection ${p.collection} no longer follows its documents`,
        );
        return 0;
      }
      case "pipeline": {
        const [sub, id] = args;
        if (sub === "run") {
          const stages = [PipelineStage.INGEST, PipelineStage.DATASET, PipelineStage.TRAIN, PipelineStage.EVAL, PipelineStage.PROMOTE];
          const sources = args.length > 1 ? await documentSources(args.slice(1)) : [];
          return startRun(stages, {
            sources,
            ...datasetSpec(),
            ...trainSpec(),
            ...evalSpec(),
            promotion: promotionSpec(),
          });
        }
        if (sub === "list") {
          const res = await gateway.listPipelineRuns({ collection });
          print(ListPipelineRunsResponseSchema, res, () =>
            table([["RUN", "COLLECTION", "STATUS", "STAGE", "CREATED"], ...res.runs.map((r) => [r.id, r.collection, runStatus(r.status), stageLabel(r.currentStage), when(r.createdAt)])]),
          );
          return 0;
        }
        if (id === undefined || !["get", "watch", "cancel"].includes(sub ?? "")) throw new UsageError("pipeline needs run [<dir>], list, get <ID>, watch <ID> or cancel <ID>");
        if (sub === "watch") return follow(id);
        const res = sub === "get" ? await gateway.getPipelineRun({ pipelineRunId: id }) : await gateway.cancelPipelineRun({ pipelineRunId: id });
        print(PipelineRunSchema, res.run!, () => runTable(res.run!));
        return 0;
      }
      case "ask": {
        const question = args.join(" ");
        if (question.trim() === "") throw new UsageError("ask needs the question: ragtune ask \"How do I …?\"");
        const topK = intFlag(f["top-k"], "top-k");
        const maxTokens = intFlag(f["max-tokens"], "max-tokens");
        const options = { useBaseModel: f.base === true, adapterId: f.adapter ?? "", ...(topK === undefined ? {} : { topK }), ...(maxTokens === undefined ? {} : { maxTokens }) };
        if (f.stream === true && f.json !== true) {
          let done;
          for await (const part of gateway.askStream({ collection, question, options })) {
            if (part.part.case === "textDelta") io.out(part.part.value);
            if (part.part.case === "done") done = part.part.value;
          }
          io.out("\n");
          if (done !== undefined) io.out(citationText(done.refused, done.citations));
          return 0;
        }
        const res = await gateway.ask({ collection, question, options });
        const retrieved = res.context.map((c, i) => `  [${i + 1}] ${c.headingPath.join(" › ") || c.documentId} (score ${c.score.toFixed(2)})`).join("\n");
        print(AskResponseSchema, res, () => `${res.answer}\n\n${citationText(res.refused, res.citations)}retrieved context:\n${retrieved}\nmodel: ${res.model}${res.adapterId ? ` (adapter ${res.adapterId})` : ""}`);
        return 0;
      }
      case "collections": {
        const res = await gateway.listTenantCollections({});
        print(ListTenantCollectionsResponseSchema, res, () => table([["COLLECTION", "DOCUMENTS", "CHUNKS", "UPDATED"], ...res.collections.map((c) => [c.name, String(c.documentCount), String(c.chunkCount), when(c.updatedAt)])]));
        return 0;
      }
      case "documents": {
        const res = await gateway.listCollectionDocuments({ collection });
        print(ListCollectionDocumentsResponseSchema, res, () => table([["DOCUMENT", "SOURCE", "TITLE", "CHUNKS"], ...res.documents.map((d) => [d.id, d.sourceName, d.title, String(d.chunkCount)])]));
        return 0;
      }
      case "datasets": {
        const res = await gateway.listCollectionDatasetVersions({ collection });
        print(ListCollectionDatasetVersionsResponseSchema, res, () => table([["VERSION", "STATUS", "CREATED"], ...res.versions.map((v) => [v.datasetVersionId, v.status.replace("DATASET_VERSION_STATUS_", ""), when(v.createdAt)])]));
        return 0;
      }
      case "jobs": {
        const res = await gateway.listCollectionJobs({ collection });
        print(ListCollectionJobsResponseSchema, res, () => table([["JOB", "STATUS", "ADAPTER", "BASE MODEL"], ...res.jobs.map((j) => [j.jobId, j.status.replace("JOB_STATUS_", ""), j.adapterId, j.baseModel])]));
        return 0;
      }
      case "eval-report": {
        if (args[0] === undefined) throw new UsageError("eval-report needs the eval run ID");
        const res = await gateway.getEvalRunReport({ evalRunId: args[0] });
        print(GetEvalRunReportResponseSchema, res, () => res.markdown || `eval run ${res.evalRunId} is ${res.status.replace("EVAL_RUN_STATUS_", "")}; no report yet`);
        return 0;
      }
      case "lineage": {
        const [kind, id] = args;
        if (kind === "adapter" && id !== undefined) {
          const res = await gateway.getAdapterLineage({ jobId: id });
          print(GetAdapterLineageResponseSchema, res, () =>
            [
              `adapter ${res.job?.adapterId || "(none)"} of job ${res.job?.jobId} (${res.job?.status.replace("JOB_STATUS_", "")}), collection ${res.collection}`,
              `dataset version: ${res.datasetVersion?.datasetVersionId ?? "(uploaded files)"}` +
                (res.job?.initAdapterJobId ? `\ntrained on from the adapter of job ${res.job.initAdapterJobId} (ragtune lineage adapter ${res.job.initAdapterJobId})` : ""),
              table([["DOCUMENT", "SOURCE", "SHA-256", "CHUNKS"], ...res.documents.map((d) => [d.documentId, d.sourceName, d.contentSha256.slice(0, 12), String(d.chunks)])]),
              table([["EVAL RUN", "STATUS", "GATES PASSED"], ...res.evalRuns.map((r) => [r.evalRunId, r.status.replace("EVAL_RUN_STATUS_", ""), String(r.gatesPassed)])]),
              table([["PROMOTED", "COLLECTION", "FORCED", "PINNED"], ...res.promotions.map((p) => [when(p.promotedAt), p.collection, String(p.forced), String(p.pinned)])]),
            ].join("\n\n"),
          );
          return 0;
        }
        if (kind === "document" && id !== undefined) {
          const res = await gateway.getDocumentLineage({ documentId: id });
          print(GetDocumentLineageResponseSchema, res, () =>
            [
              `document ${res.document?.id} (${res.document?.sourceName}) in collection ${res.document?.collection}`,
              table([["DATASET VERSION", "DOCUMENT SHA-256 READ"], ...res.datasetVersions.map((v) => [v.datasetVersionId, v.contentSha256.slice(0, 12)])]),
              table([["JOB", "ADAPTER", "DATASET VERSION", "SERVING", "VIA"], ...res.adapters.map((a) => [a.jobId, a.adapterId, a.datasetVersionId, a.serving ? "yes" : "", a.viaJobId ? `warm start from ${a.viaJobId}` : ""])]),
            ].join("\n\n"),
          );
          return 0;
        }
        throw new UsageError("lineage needs `adapter <job ID>` or `document <document ID>`");
      }
      case "promote": {
        if (args[0] === undefined) throw new UsageError("promote needs the trainer job ID");
        const res = await gateway.promoteAdapter({ collection, jobId: args[0], evalRunId: f["eval-run"] ?? "", force: f.force === true, pin: f.pin === true, replacePinned: f["replace-pinned"] === true });
        print(PromoteAdapterResponseSchema, res, () => `adapter ${res.adapter?.adapterId} serves collection ${res.adapter?.collection}${res.adapter?.previousAdapterId ? ` (replacing ${res.adapter.previousAdapterId})` : ""}${res.adapter?.forced ? " — forced, without a passed eval gate" : ` — eval run ${res.adapter?.evalRunId}`}`);
        return 0;
      }
      case "rollback": {
        const res = await gateway.rollbackAdapter({ collection });
        print(RollbackAdapterResponseSchema, res, () => `adapter ${res.adapter?.adapterId} serves collection ${res.adapter?.collection} again (rolled back from ${res.adapter?.previousAdapterId})`);
        return 0;
      }
      case "promotions": {
        const res = await gateway.listPromotions({ collection });
        print(ListPromotionsResponseSchema, res, () => table([["PROMOTED", "ADAPTER", "JOB", "EVAL RUN", "FORCED", "PINNED", "CANARY CHECK"], ...res.promotions.map((p) => [when(p.promotedAt), p.adapterId, p.jobId, p.evalRunId, String(p.forced), String(p.pinned), p.canaryCheck])]));
        return 0;
      }
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`${e.message}\n\n${USAGE}`);
      return 2;
    }
    const err = ConnectError.from(e);
    io.err(`ragtune: ${Code[err.code] ?? "error"}: ${err.rawMessage}`);
    return EXIT[err.code] ?? 1;
  }
}

function citationText(refused: boolean, citations: readonly { documentTitle: string; documentId: string; headingPath: readonly string[]; chunkId: string; support: number }[]): string {
  if (refused) return "(refused: the context does not hold the answer)\n";
  if (citations.length === 0) return "(no retrieved chunk supports the answer)\n";
  return `${citations.map((c, i) => `[${i + 1}] ${c.documentTitle || c.documentId} › ${c.headingPath.join(" › ")} (chunk ${c.chunkId}, support ${c.support.toFixed(2)})`).join("\n")}\n`;
}
