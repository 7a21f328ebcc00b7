// `npm run demo`: runs every stage of ragtune that exists so far, end to end, on the shipped sample documents,
// then stops cleanly. Stages grow with the system; each prints what a user would want to see.
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  DocumentStatus,
  Health,
  HealthCheckResponse_ServingStatus,
  IngestRunStatus,
  IngestService,
  type IngestRunSummary,
} from "@ragtune/proto";
import { createClient } from "@ragtune/rpc";
import { SERVICE_NAMES, repoRoot, startStack, type Stack } from "./stack.js";

const SAMPLE_DOCS = join(repoRoot, "tools", "sample-docs");
const COLLECTION = "demo";

const out = (text = "") => process.stdout.write(text + "\n");

async function checkHealth(stack: Stack): Promise<void> {
  out("Health (grpc.health.v1 over gRPC, h2c):");
  for (const name of SERVICE_NAMES) {
    const service = stack.services[name];
    const health = createClient(Health, { baseUrl: service.url, protocol: "grpc", timeoutMs: 5_000 });
    const res = await health.check({ service: "" });
    const status = HealthCheckResponse_ServingStatus[res.status];
    out(`  ${name.padEnd(8)} ${service.url.padEnd(24)} ${status}`);
    if (res.status !== HealthCheckResponse_ServingStatus.SERVING) throw new Error(`${name} is ${status}`);
  }
}

/** Stage 1 — ingest: the sample documents, inline, into the "demo" collection; print the run's chunk statistics. */
async function ingestSampleDocs(stack: Stack): Promise<void> {
  const ingest = createClient(IngestService, { baseUrl: stack.services.ingest.url, protocol: "grpc" });
  const files = (await readdir(SAMPLE_DOCS)).filter((f) => /\.(md|html?|txt)$/.test(f)).sort();
  const sources = await Promise.all(
    files.map(async (filename) => ({
      source: { case: "inline" as const, value: { filename, content: await readFile(join(SAMPLE_DOCS, filename)) } },
    })),
  );
  out(`\nIngest: ${files.length} sample documents from tools/sample-docs into collection "${COLLECTION}" (Mistral tokenizer, 512-token chunks)`);
  const { run } = await ingest.ingestDocuments({ collection: COLLECTION, sources });
  let summary: IngestRunSummary | undefined;
  for await (const { event } of ingest.watchIngestRun({ runId: run!.id })) {
    const e = event?.event;
    if (e?.case === "documentProgress") {
      const r = e.value.result!;
      if (r.status === DocumentStatus.READY || r.status === DocumentStatus.FAILED) {
        const what = r.error ? `error: ${r.error.message}` : `${r.chunkCount} chunks (+${r.changes?.added ?? 0} ~${r.changes?.kept ?? 0} -${r.changes?.removed ?? 0})`;
        out(`  ${r.sourceName.padEnd(28)} ${(r.unchanged ? "unchanged" : DocumentStatus[r.status].toLowerCase()).padEnd(9)} ${what}`);
      }
    }
    if (e?.case === "completed") {
      summary = e.value;
      break;
    }
  }
  if (!summary) throw new Error("the ingest run's event stream ended before the run completed");
  const st = summary.statistics!;
  const t = st.tokenStats!;
  out(`  run ${run!.id}: ${IngestRunStatus[summary.status].toLowerCase()}; ${st.documentsIngested} ingested, ${st.documentsUnchanged} unchanged, ${st.documentsFailed} failed`);
  out(`  chunks: ${t.count}, tokens: ${t.totalTokens}; per chunk min ${t.min} / mean ${t.mean.toFixed(1)} / median ${t.median} / max ${t.max} of ${t.budget}`);
  out(`  share of chunks in 75–100% of the budget: ${(t.shareInTopQuarterOfBudget * 100).toFixed(1)}%; over budget: ${t.overBudgetCount}`);
  if (summary.status !== IngestRunStatus.SUCCEEDED) throw new Error(`ingest run ended ${IngestRunStatus[summary.status]}`);
}

const logs: string[] = [];
out("Starting the ragtune stack (nats-server with JetStream + 5 services)…");
const stack = await startStack({
  env: { LOG_LEVEL: process.env.LOG_LEVEL ?? "warn" },
  onLog: (service, line) => logs.push(`${service} ${typeof line === "string" ? line : JSON.stringify(line)}`),
});
let failed = false;
try {
  out(`NATS JetStream at ${stack.natsUrl}\n`);
  await checkHealth(stack);
  await ingestSampleDocs(stack);
} catch (err) {
  failed = true;
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.stderr.write(logs.slice(-40).join("\n") + "\n");
} finally {
  out("\nStopping the stack…");
  await stack.stop();
  out("Stopped.");
}
process.exitCode = failed ? 1 : 0;
