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
import { homedir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type DescMessage, type MessageShape, toJsonString } from "@bufbuild/protobuf";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { runKeysCommand } from "@ragtune/gateway-service/keys-command";
import {
  AskResponseSchema,
  GatewayService,
  GetAdapterLineageResponseSchema,
  GetDocumentLineageResponseSchema,
  GetEvalRunReportResponseSchema,
  ListCollectionDatasetVersionsResponseSchema,
  ListCollectionDocumentsResponseSchema,
  ListCollectionJobsResponseSchema,
  ListPromotionsResponseSchema,
  ListTenantCollectionsResponseSchema,
  PromoteAdapterResponseSchema,
  RollbackAdapterResponseSchema,
} from "@ragtune/proto";
import { createClient } from "@ragtune/rpc";

export const USAGE = `ragtune — the command line of a ragtune gateway

usage: ragtune <command> [options]

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
exit codes: 0 ok, 1 error, 2 usage, 3 unauthenticated/permission denied, 4 not found, 5 failed precondition,
            6 limit hit, 7 unavailable`;

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
    switch (command) {
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
        print(AskResponseSchema, res, () => `${res.answer}\n\n${citationText(res.refused, res.citations)}model: ${res.model}${res.adapterId ? ` (adapter ${res.adapterId})` : ""}`);
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
              `dataset version: ${res.datasetVersion?.datasetVersionId ?? "(uploaded files)"}`,
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
              table([["JOB", "ADAPTER", "DATASET VERSION", "SERVING"], ...res.adapters.map((a) => [a.jobId, a.adapterId, a.datasetVersionId, a.serving ? "yes" : ""])]),
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
        print(ListPromotionsResponseSchema, res, () => table([["PROMOTED", "ADAPTER", "JOB", "EVAL RUN", "FORCED", "PINNED"], ...res.promotions.map((p) => [when(p.promotedAt), p.adapterId, p.jobId, p.evalRunId, String(p.forced), String(p.pinned)])]));
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
