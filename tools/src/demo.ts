// `npm run demo`: the whole pipeline on the shipped sample documents, through the gateway with the `ragtune` CLI as a
// user would run it: the stack (nats-server, five services) and the local model server on the tiny model start, an
// API key is made, `ragtune pipeline run` ingests, builds a dataset version, trains a QLoRA adapter, evaluates base vs
// adapter and promotes it; then the loss curve, the eval comparison, one answer with citations and the adapter's
// lineage are shown, and everything stops (`npm run demo -- --keep` keeps the stack up for the dashboard).
import { spawn, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fromJsonString } from "@bufbuild/protobuf";
import {
  GatewayService,
  GetEvalRunReportResponseSchema,
  Health,
  HealthCheckResponse_ServingStatus,
  type PipelineRun,
  PipelineRunSchema,
  PipelineRunStatus,
  PipelineStage,
} from "@ragtune/proto";
import { createClient } from "@ragtune/rpc";
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


const CLI = join(repoRoot, "tools", "cli", "bin", "ragtune.mjs");
const KEEP = process.argv.includes("--keep");
const pct = (x: number) => `${(x * 100).toFixed(1)}%`.padStart(6);

/**
 * Runs `ragtune <args>` as a user would (the CLI's bin, a child process) and echoes it: the command line, its progress
 * lines (stderr) as they come, and its output unless `quiet`. Returns stdout; a non-zero exit code fails the demo.
 */
async function ragtune(env: Record<string, string>, args: string[], options: { quiet?: boolean; show?: string } = {}): Promise<string> {
  out(`\n$ ragtune ${options.show ?? args.map((a) => (/[\s"]/.test(a) ? JSON.stringify(a) : a)).join(" ")}`);
  const child = spawn(process.execPath, [CLI, ...args], { cwd: repoRoot, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  createInterface({ input: child.stderr }).on("line", (line) => out(`  ${line}`));
  const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
  if (!options.quiet && stdout.trim() !== "") out(stdout.trimEnd().replace(/^/gm, "  "));
  if (code !== 0) throw new Error(`ragtune ${args[0]} exited with code ${code}`);
  return stdout;
}

const logs: string[] = [];
await ensureTinyModel();
if (KEEP) {
  out("\nBuilding the dashboard (npm run build -w @ragtune/dashboard)…");
  const built = spawnSync("npm", ["run", "build", "-w", "@ragtune/dashboard"], { cwd: repoRoot, stdio: ["ignore", "ignore", "inherit"] });
  if (built.status !== 0) throw new Error("building the dashboard failed; see the output above");
}
out("\nStarting the ragtune stack: nats-server (JetStream), the local model server on the tiny model, 5 services…");
const stack = await startStack({
  env: {
    TRAINER_MODEL_ROOT: DEMO_DIR,
    TRAINER_DATA_ROOT: repoRoot,
    TRAINER_WORK_DIR: join(DEMO_DIR, "trainer-work"),
    GATEWAY_ADAPTER_DIR: join(DEMO_DIR, "adapters"),
    GATEWAY_PIPELINE_BASE_MODEL: TINY_MODEL_DIR,
  },
  modelServer: { model: join(TINY_MODEL_DIR, "model.gguf"), servedModelName: "tiny", concurrency: 2 },
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
      process.exit(KEEP ? 0 : 130);
    });
  });
}
try {
  out(`NATS JetStream at ${stack.natsUrl}; model server (node-llama-cpp, CPU) at ${stack.modelServer!.baseUrl} serving "tiny"\n`);
  await checkHealth(stack);
  const gatewayUrl = stack.services.gateway.url;
  const env: Record<string, string> = { RAGTUNE_URL: gatewayUrl, NATS_URL: stack.natsUrl, RAGTUNE_CONFIG: join(DEMO_DIR, "no-config.json") };

  out("\nAn API key for tenant \"demo\" (operators make keys against NATS; the gateway stores only its hash):");
  env.RAGTUNE_API_KEY = (await ragtune(env, ["keys", "create", "--tenant", "demo", "--name", "demo"], { quiet: true })).trim();
  out(`  ${env.RAGTUNE_API_KEY.slice(0, 22)}… (RAGTUNE_API_KEY for the commands below)`);

  out("\nThe pipeline in one call: ingest the sample documents → dataset version (extractive questions, 15% unanswerable,");
  out("quality gate, splits by chunk) → QLoRA on the tiny model (40 steps) → eval of base vs adapter on the test split →");
  out("promotion. The tiny model has random weights and cannot pass the eval gates, so the demo forces the promotion");
  out("(recorded as forced) to show serving; without --force-promote the run would stop short of promoting it.");
  // Hyperparameters for a 2-layer model on a CPU: a higher learning rate, no gradient accumulation or checkpointing.
  const hp = ["learning_rate=2e-3", "warmup_steps=4", "gradient_accumulation_steps=1", "gradient_checkpointing=false", "compute_dtype=COMPUTE_DTYPE_FLOAT32", "eval_interval_steps=10", "checkpoint_interval_steps=20"];
  const runJson = await ragtune(
    env,
    ["pipeline", "run", "tools/sample-docs", "--collection", COLLECTION, "--steps", "40", ...hp.flatMap((h) => ["--hp", h]), "--max-items", "24", "--force-promote", "--json"],
    { quiet: true },
  );
  const run: PipelineRun = fromJsonString(PipelineRunSchema, runJson);
  const resource = (stage: PipelineStage) => run.stages.find((s) => s.stage === stage)!.resourceId;
  out(`  run ${run.id}: ${PipelineRunStatus[run.status].toLowerCase()}`);
  for (const st of run.stages) out(`    ${PipelineStage[st.stage].toLowerCase().padEnd(8)} ${st.resourceId.padEnd(30)} ${st.detail}`);
  if (run.status !== PipelineRunStatus.SUCCEEDED) throw new Error(`the pipeline run ended ${PipelineRunStatus[run.status]}: ${run.failure?.message ?? ""}`);

  const gateway = createClient(GatewayService, { baseUrl: gatewayUrl, protocol: "connect", authToken: env.RAGTUNE_API_KEY });
  const train: LossPoint[] = [];
  const val: LossPoint[] = [];
  for await (const { event } of gateway.watchCollectionJob({ jobId: resource(PipelineStage.TRAIN) })) {
    if (event?.event.case !== "metrics") continue;
    const m = event.event.value;
    train.push({ step: m.step, loss: m.trainLoss });
    if (m.valLoss !== undefined) val.push({ step: m.step, loss: m.valLoss });
  }
  out(`\nLoss curve of job ${resource(PipelineStage.TRAIN)} (WatchCollectionJob through the gateway):`);
  out(renderLossChart(train, val, { width: 60, height: 12 }).replace(/^/gm, "  "));

  const { report, markdown } = fromJsonString(GetEvalRunReportResponseSchema, await ragtune(env, ["eval-report", resource(PipelineStage.EVAL), "--json"], { quiet: true }));
  out(`  base vs adapter on ${report!.items} test items (${report!.answerable} answerable, ${report!.unanswerable} unanswerable):`);
  out("    model                              success  tok F1  ROUGE-L  answer  false ans  truthful.  empty  degen.");
  for (const m of report!.models) {
    out(
      `    ${`${m.model}${m.isBase ? " (base)" : ""}`.padEnd(34)} ${pct(m.successRate)}  ${m.tokenF1.toFixed(3)}   ${m.rougeL.toFixed(3)}  ${pct(m.answerRate)}    ${pct(m.falseAnswerRate)}     ${(m.calibration?.truthfulness?.value ?? 0).toFixed(3).padStart(6)} ${pct(m.emptyRate)} ${pct(m.degenerateRate)}`,
    );
  }
  for (const d of report!.differences.filter((x) => x.metric === "success_rate" || x.metric === "truthfulness")) {
    out(`    ${d.model} − ${d.baseline}: ${d.metric} ${d.delta >= 0 ? "+" : ""}${(d.delta * 100).toFixed(1)} points, 95% CI [${(d.ciLow * 100).toFixed(1)}, ${(d.ciHigh * 100).toFixed(1)}]`);
  }
  out(`    promotion gates: ${report!.gatesPassed ? "PASSED" : "not passed"}`);
  for (const g of report!.gates) out(`      ${g.passed ? "pass" : "FAIL"}  ${g.name}: ${g.rule} (value ${g.value.toFixed(3)})`);
  await mkdir(DEMO_DIR, { recursive: true });
  const reportFile = join(DEMO_DIR, `${resource(PipelineStage.EVAL)}.md`);
  await writeFile(reportFile, markdown);
  out(`    full report (Markdown): ${reportFile}`);

  await ragtune(env, ["ask", "--collection", COLLECTION, "--max-tokens", "48", "Which settings does the configuration file hold?"]);
  await ragtune(env, ["lineage", "adapter", resource(PipelineStage.TRAIN)]);

  out("\nContinuous updates: the collection follows its documents. An edit (here: a new FAQ entry) is ingested; once the");
  out("change settled, the gateway runs an update on its own — incremental dataset build (only the changed chunks");
  out("generate), training on from the adapter that serves (--retrain-from promoted), eval, gated promotion (forced");
  out("here, as above) — and the new adapter serves.");
  await ragtune(env, ["follow", "--collection", COLLECTION, "--settle-seconds", "2", "--retrain-from", "promoted", "--steps", "20", ...hp.flatMap((h) => ["--hp", h]), "--max-items", "12", "--force-promote"]);
  const edited = join(DEMO_DIR, "edited");
  await mkdir(edited, { recursive: true });
  const faq = await readFile(join(SAMPLE_DOCS, "faq.md"), "utf8");
  await writeFile(join(edited, "faq.md"), `${faq}\n\n### Is there a sandbox book?\n\nYes. The sandbox book resets every Sunday at 03:00 UTC and never posts to the general ledger.\n`);
  await ragtune(env, ["ingest", "--collection", COLLECTION, join(edited, "faq.md")], { show: `ingest --collection ${COLLECTION} faq.md   # faq.md with a new entry` });
  let updateRun = "";
  while (updateRun === "") {
    updateRun = (await gateway.getCollectionUpdatePolicy({ collection: COLLECTION })).policy?.lastUpdateRunId ?? "";
    if (updateRun === "") await new Promise((r) => setTimeout(r, 500));
  }
  await ragtune(env, ["pipeline", "watch", updateRun]);
  await ragtune(env, ["promotions", "--collection", COLLECTION]);
  await ragtune(env, ["ask", "--collection", COLLECTION, "--max-tokens", "48", "Is there a sandbox book?"]);
  out("\nThe tiny model has random weights: the answers and scores above show the mechanics end to end, not quality.");
  out("With a real base model and a vLLM endpoint the same commands train and serve a useful adapter (README: \"Using a real model\").");
  if (KEEP) {
    out(`\nThe stack stays up (--keep). Dashboard: ${gatewayUrl}/ — sign in with the API key:\n  ${env.RAGTUNE_API_KEY}`);
    out(`CLI: RAGTUNE_URL=${gatewayUrl} RAGTUNE_API_KEY=<key> npx ragtune collections`);
    out("Ctrl-C stops everything.");
    await new Promise<never>(() => undefined);
  }
} catch (err) {
  failed = true;
  if (!interrupted) {
    process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
    process.stderr.write(logs.slice(-40).join("\n") + "\n");
  }
} finally {
  if (!KEEP || failed) {
    out("\nStopping the stack…");
    await stack.stop();
    out("Stopped.");
  }
}
process.exitCode = failed ? 1 : 0;
