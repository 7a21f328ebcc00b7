// `npm run demo`: runs every stage of ragtune that exists so far (ingest → dataset → trainer → eval on the local model
// server), end to end, on the shipped sample documents,
// then stops cleanly. Stages grow with the system; each prints what a user would want to see.
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, open, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import {
  ComputeDtype,
  DatasetService,
  DatasetSplit,
  DatasetVersionStatus,
  ExampleKind,
  type DatasetVersion,
  DocumentStatus,
  EvalRunStatus,
  EvalService,
  JobStatus,
  TrainerService,
  Health,
  HealthCheckResponse_ServingStatus,
  IngestRunStatus,
  IngestService,
  type IngestRunSummary,
} from "@ragtune/proto";
import { createLogger } from "@ragtune/logger";
import { startModelServer } from "@ragtune/model-server";
import { Code, ConnectError, createClient } from "@ragtune/rpc";
import { renderLossChart, type LossPoint } from "./loss-chart.js";
import { SERVICE_NAMES, repoRoot, startStack, type Stack } from "./stack.js";
import { generateTinyModel } from "./tiny-model.js";

const SAMPLE_DOCS = join(repoRoot, "tools", "sample-docs");
const COLLECTION = "demo";
/** Demo state kept between runs (gitignored): the tiny model, the trainer's work dir, the downloaded adapter. */
const DEMO_DIR = process.env.DEMO_DIR ?? join(repoRoot, ".data", "demo");
const TINY_MODEL_DIR = join(DEMO_DIR, "tiny-model");

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

/** The tiny Llama model (random weights, real Mistral tokenizer), warmed up on the sample docs once and kept. */
async function ensureTinyModel(): Promise<void> {
  if (existsSync(join(TINY_MODEL_DIR, "config.json")) && existsSync(join(TINY_MODEL_DIR, "model.gguf"))) {
    out(`\nTiny model: reusing ${TINY_MODEL_DIR}`);
    return;
  }
  out(`\nTiny model: generating a 2-layer Llama (hidden 128, Mistral tokenizer) into ${TINY_MODEL_DIR},`);
  out("  warmed up on the sample docs so the base writes document-like text (a minute or two on 2 cores)…");
  await mkdir(DEMO_DIR, { recursive: true });
  let lastStep = "";
  await generateTinyModel(["--out", TINY_MODEL_DIR, "--seed", "0", "--warmup-docs", SAMPLE_DOCS, "--warmup-steps", "40"], (text) => {
    const m = /warmup step (\d+)\/(\d+) loss ([\d.]+)/.exec(text);
    if (m && m[1] !== lastStep && (Number(m[1]) % 10 === 0 || m[1] === m[2])) {
      lastStep = m[1]!;
      out(`  warm-up step ${m[1]}/${m[2]}  loss ${m[3]}`);
    }
  });
}

/**
 * Stage 2 — dataset: a dataset version of the ingested collection through the dataset service's API (offline: the
 * extractive generator, "not in context" negatives, the quality gate, splits by chunk); watch it build and print its
 * report and a few examples.
 */
async function buildDatasetVersion(stack: Stack): Promise<DatasetVersion> {
  const dataset = createClient(DatasetService, { baseUrl: stack.services.dataset.url, protocol: "grpc" });
  const { version } = await dataset.buildDatasetVersion({ collection: COLLECTION });
  out(`\nDataset: version ${version!.id} of collection "${COLLECTION}" (extractive questions, 15% unanswerable, quality gate, 60/20/20 by chunk)`);
  for await (const { event } of dataset.watchDatasetVersion({ datasetVersionId: version!.id })) {
    const e = event?.event;
    if (e?.case === "statusChanged") out(`  status: ${DatasetVersionStatus[e.value.status].toLowerCase()}`);
    if (e?.case === "progress" && e.value.examplesGenerated > 0) out(`  ${e.value.examplesGenerated} examples generated from ${e.value.chunksTotal} chunks, ${e.value.examplesAccepted} kept`);
  }
  const ready = (await dataset.getDatasetVersion({ datasetVersionId: version!.id })).version!;
  if (ready.status !== DatasetVersionStatus.READY) throw new Error(`dataset version ${ready.id} ended ${DatasetVersionStatus[ready.status]}: ${ready.failure?.message ?? ""}`);
  const stats = ready.stats!;
  for (const s of stats.splits) {
    const t = s.tokenStats!;
    out(`  ${DatasetSplit[s.split].toLowerCase().padEnd(5)} ${String(s.examples).padStart(4)} examples (${s.answerable} answerable, ${s.unanswerable} unanswerable); tokens per row ${t.min}–${t.max}, median ${t.median}`);
  }
  const dropped = Object.entries(stats.rejectedByCheck).map(([k, n]) => `${k} ${n}`).join(", ");
  out(`  dropped by the quality gate and the splits: ${dropped || "none"}`);
  const { examples } = await dataset.listExamples({ datasetVersionId: ready.id, split: DatasetSplit.TRAIN, page: { pageSize: 200 } });
  const sample = [examples.find((e) => e.kind === ExampleKind.ANSWERABLE), examples.find((e) => e.kind === ExampleKind.UNANSWERABLE)];
  for (const e of sample) if (e) out(`  e.g. Q: ${e.question}\n       A: ${e.answer.length > 110 ? `${e.answer.slice(0, 107)}…` : e.answer}`);
  return ready;
}

/**
 * Stage 3 — trainer: a QLoRA job (builtin NF4 base + LoRA on q/k/v/o) on the tiny model through the trainer's API;
 * watch its events, print the loss curve as a text chart, download the adapter (PEFT files + GGUF) and verify it.
 */
async function trainAdapter(stack: Stack, version: DatasetVersion): Promise<{ jobId: string; adapterGguf: string }> {
  await ensureTinyModel();
  const trainer = createClient(TrainerService, { baseUrl: stack.services.trainer.url, protocol: "grpc" });
  // Rows as long as the longest one the version holds (the quality gate kept every row within 1024 tokens).
  const longest = Math.max(...version.stats!.splits.map((s) => s.tokenStats?.max ?? 0));
  const request = {
    baseModel: TINY_MODEL_DIR,
    dataset: { case: "datasetVersionId" as const, value: version.id },
    displayName: "demo adapter",
    collection: COLLECTION,
    hyperparameters: {
      duration: { case: "maxSteps" as const, value: 40 },
      learningRate: 2e-3,
      warmupSteps: 4,
      microBatchSize: 4,
      gradientAccumulationSteps: 1,
      maxSeqLen: Math.min(1024, Math.ceil(longest / 64) * 64),
      evalIntervalSteps: 10,
      checkpointIntervalSteps: 20,
      computeDtype: ComputeDtype.FLOAT32,
      gradientCheckpointing: false,
    },
  };
  // The trainer learns of a READY version from its ragtune.dataset.version.built event, a moment after the dataset
  // service announced it: a client retries "unknown" briefly.
  let job;
  for (let attempt = 1; job === undefined; attempt++) {
    try {
      job = (await trainer.createJob(request)).job!;
    } catch (err) {
      const unknown = err instanceof ConnectError && err.code === Code.FailedPrecondition && /unknown to the trainer/.test(err.message);
      if (!unknown || attempt >= 50) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  out(`\nTrainer: job ${job.id} (QLoRA, builtin NF4 base, LoRA r=8 on q/k/v/o, 40 steps on dataset version ${version.id}, rows up to ${request.hyperparameters.maxSeqLen} tokens)`);
  const train: LossPoint[] = [];
  const val: LossPoint[] = [];
  let final: JobStatus | undefined;
  let failure = "";
  for await (const { event } of trainer.watchJob({ jobId: job.id })) {
    const e = event?.event;
    if (e?.case === "statusChanged") {
      out(`  status: ${JobStatus[e.value.status].toLowerCase()}`);
      if ([JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED].includes(e.value.status)) {
        final = e.value.status;
        failure = e.value.failure?.message ?? "";
        break;
      }
    } else if (e?.case === "metrics") {
      const m = e.value;
      train.push({ step: m.step, loss: m.trainLoss });
      if (m.valLoss !== undefined) val.push({ step: m.step, loss: m.valLoss });
      if (m.step % 5 === 0 || m.valLoss !== undefined) {
        const v = m.valLoss !== undefined ? `  val loss ${m.valLoss.toFixed(4)}` : "";
        out(`  step ${String(m.step).padStart(3)}/${m.totalSteps}  train loss ${m.trainLoss.toFixed(4)}${v}  lr ${m.learningRate.toExponential(2)}  ${m.tokensPerSecond.toFixed(0)} tok/s`);
      }
    } else if (e?.case === "checkpointSaved") {
      out(`  checkpoint at step ${e.value.checkpoint?.step}`);
    }
  }
  if (final !== JobStatus.SUCCEEDED) throw new Error(`training job ended ${final === undefined ? "without a final status" : JobStatus[final]}: ${failure}`);
  out("\nLoss curve:");
  out(renderLossChart(train, val, { width: 60, height: 12 }).replace(/^/gm, "  "));

  const adapterDir = join(DEMO_DIR, "adapter", job.id);
  await mkdir(adapterDir, { recursive: true });
  const files = new Map<string, { handle: Awaited<ReturnType<typeof open>>; hash: ReturnType<typeof createHash>; size: bigint; sha256: string }>();
  for await (const piece of trainer.downloadAdapter({ jobId: job.id })) {
    let f = files.get(piece.fileName);
    if (!f) {
      f = { handle: await open(join(adapterDir, piece.fileName), "w"), hash: createHash("sha256"), size: piece.totalSizeBytes, sha256: piece.sha256 };
      files.set(piece.fileName, f);
    }
    await f.handle.write(piece.data);
    f.hash.update(piece.data);
  }
  out(`\nAdapter downloaded to ${adapterDir}:`);
  for (const [name, f] of files) {
    await f.handle.close();
    const ok = f.hash.digest("hex") === f.sha256;
    out(`  ${name.padEnd(28)} ${String(f.size).padStart(9)} bytes  sha256 ${ok ? "verified" : "MISMATCH"}`);
    if (!ok) throw new Error(`${name}: the downloaded bytes do not match the adapter's sha256`);
  }
  out("  (adapter_config.json + adapter_model.safetensors load in vLLM with --enable-lora; adapter.gguf in llama.cpp)");
  return { jobId: job.id, adapterGguf: join(adapterDir, "adapter.gguf") };
}

const pct = (x: number) => `${(x * 100).toFixed(1)}%`.padStart(6);

/**
 * Stage 4 — eval: the local model server (node-llama-cpp) on the tiny model's GGUF with the job's adapter.gguf, and an
 * eval run through the eval service's API on the dataset version's test split: base vs adapter, scored, gates checked.
 */
async function evaluate(stack: Stack, version: DatasetVersion, adapter: { jobId: string; adapterGguf: string }): Promise<void> {
  const server = await startModelServer({
    model: join(TINY_MODEL_DIR, "model.gguf"),
    servedModelName: "tiny",
    loraModules: [{ name: adapter.jobId, path: adapter.adapterGguf }],
    port: 0,
    concurrency: 2,
    logger: createLogger({ svc: "model-server", level: "warn" }),
  });
  try {
    out(`\nModel server: ${server.baseUrl} (node-llama-cpp, CPU) serving "tiny" and the adapter "${adapter.jobId}"`);
    const evals = createClient(EvalService, { baseUrl: stack.services.eval.url, protocol: "grpc" });
    const { run } = await evals.createEvalRun({
      source: { case: "datasetVersionId", value: version.id },
      endpointUrl: server.baseUrl,
      baseModel: "tiny",
      adapters: [adapter.jobId],
      concurrency: 2,
    });
    out(`Eval: run ${run!.id} on the test split of ${version.id} (completions in the training template, temperature 0, max 200 tokens)`);
    let lastShown = -1;
    for await (const { event } of evals.watchEvalRun({ evalRunId: run!.id })) {
      const e = event?.event;
      if (e?.case === "statusChanged") out(`  status: ${EvalRunStatus[e.value.status].toLowerCase()}${e.value.failure ? ` — ${e.value.failure.message}` : ""}`);
      if (e?.case === "progress" && e.value.answersTotal > 0) {
        const tenth = Math.floor((10 * e.value.answersDone) / e.value.answersTotal);
        if (tenth !== lastShown) {
          lastShown = tenth;
          out(`  ${e.value.answersDone}/${e.value.answersTotal} answers${e.value.answersFailed ? ` (${e.value.answersFailed} failed)` : ""}`);
        }
      }
      if (e?.case === "warning") out(`  warning: ${e.value.message}`);
    }
    const done = (await evals.getEvalRun({ evalRunId: run!.id })).run!;
    if (done.status !== EvalRunStatus.SUCCEEDED) throw new Error(`eval run ${done.id} ended ${EvalRunStatus[done.status]}: ${done.failure?.message ?? ""}`);
    const { report, markdown } = await evals.getEvalReport({ evalRunId: done.id });
    out(`\nEval report (${report!.items} items: ${report!.answerable} answerable, ${report!.unanswerable} unanswerable):`);
    out("  model                      success  tok F1  ROUGE-L  ground.  answer  false ans  empty  follow-up  degen.   p50 s   tok/s");
    for (const m of report!.models) {
      out(
        `  ${`${m.model}${m.isBase ? " (base)" : ""}`.padEnd(26)} ${pct(m.successRate)}  ${m.tokenF1.toFixed(3)}   ${m.rougeL.toFixed(3)}   ${m.grounding.toFixed(3)}  ${pct(m.answerRate)}    ${pct(m.falseAnswerRate)} ${pct(m.emptyRate)}     ${pct(m.followUpRate)} ${pct(m.degenerateRate)}  ${m.latencyP50.toFixed(2).padStart(6)}  ${m.tokensPerSecond.toFixed(0).padStart(6)}`,
      );
    }
    for (const d of report!.differences.filter((x) => x.metric === "success_rate" || x.metric === "token_f1")) {
      out(`  ${d.model} − ${d.baseline}: ${d.metric} ${(d.delta * 100).toFixed(1)} points, 95% CI [${(d.ciLow * 100).toFixed(1)}, ${(d.ciHigh * 100).toFixed(1)}]`);
    }
    out(`  promotion gates: ${report!.gatesPassed ? "PASSED" : "not passed"}`);
    for (const g of report!.gates) out(`    ${g.passed ? "pass" : "FAIL"}  ${g.name}: ${g.rule} (value ${g.value.toFixed(3)})`);
    const file = join(DEMO_DIR, `${done.id}.md`);
    await writeFile(file, markdown);
    out(`  full report (Markdown) written to ${file}; the tiny model has random weights, so the scores show the mechanism, not quality`);
  } finally {
    await server.close();
  }
}

const logs: string[] = [];
out("Starting the ragtune stack (nats-server with JetStream + 5 services)…");
const stack = await startStack({
  env: {
    TRAINER_MODEL_ROOT: DEMO_DIR,
    TRAINER_DATA_ROOT: repoRoot,
    TRAINER_WORK_DIR: join(DEMO_DIR, "trainer-work"),
  },
  onLog: (service, line) => logs.push(`${service} ${typeof line === "string" ? line : JSON.stringify(line)}`),
});
let failed = false;
let interrupted = false;
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    interrupted = true;
    out(`\n${signal}: stopping the stack…`);
    void stack.stop().then(() => {
      out("Stopped.");
      process.exit(130);
    });
  });
}
try {
  out(`NATS JetStream at ${stack.natsUrl}\n`);
  await checkHealth(stack);
  await ingestSampleDocs(stack);
  const version = await buildDatasetVersion(stack);
  const adapter = await trainAdapter(stack, version);
  await evaluate(stack, version, adapter);
} catch (err) {
  failed = true;
  if (!interrupted) {
    process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.stderr.write(logs.slice(-40).join("\n") + "\n");
  }
} finally {
  out("\nStopping the stack…");
  await stack.stop();
  out("Stopped.");
}
process.exitCode = failed ? 1 : 0;
