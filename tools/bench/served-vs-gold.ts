/**
 * Train as served vs gold-chunk-only training (issue 22), through the gateway's pipeline on the sample documents:
 * two dataset versions of the same collection with the same seed — gold (each example's context is the chunk its
 * question was written from) and served (the top CONTEXT_CHUNKS chunks of the gateway's retriever, the gold chunk among
 * them in GOLD_SHARE of the examples, the refusal exactly when no chunk of the context holds the answer) — each trained
 * into an adapter with the same hyperparameters; then one eval run answers the served version's test split (the same
 * questions; the contexts as the gateway retrieves them at answer time) with the base model and both adapters, so the
 * three are compared on one test split with paired bootstrap intervals.
 *
 * Run: npm run bench:served-vs-gold -w @ragtune/tools
 *   MODEL_DIR   a Hugging Face model folder with model.gguf beside it (default: the demo's tiny model, made if missing)
 *   STEPS (60), CONTEXT_CHUNKS (4), GOLD_SHARE (0.8), MAX_ITEMS (all)
 * On the tiny random model the figures show the mechanics, not quality; with a real model (e.g. a Mistral-7B folder and
 * its GGUF) the same command gives the comparison that matters.
 */
import { existsSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { EvalRunStatus, EvalService, GatewayService, type PipelineRun, PipelineRunStatus, PipelineStage } from "@ragtune/proto";
import { createClient } from "@ragtune/rpc";
import { repoRoot, startStack } from "../src/stack.js";
import { generateTinyModel } from "../src/tiny-model.js";

const out = (t = "") => process.stdout.write(`${t}\n`);
const DEMO_DIR = process.env.DEMO_DIR ?? join(repoRoot, ".data", "demo");
const MODEL_DIR = process.env.MODEL_DIR ?? join(DEMO_DIR, "tiny-model");
const STEPS = Number(process.env.STEPS ?? 60);
const CONTEXT_CHUNKS = Number(process.env.CONTEXT_CHUNKS ?? 4);
const GOLD_SHARE = Number(process.env.GOLD_SHARE ?? 0.8);
const MAX_ITEMS = process.env.MAX_ITEMS === undefined ? undefined : Number(process.env.MAX_ITEMS);
const COLLECTION = "compare";

if (!existsSync(join(MODEL_DIR, "model.gguf"))) {
  if (process.env.MODEL_DIR !== undefined) throw new Error(`${MODEL_DIR} has no model.gguf for the local model server`);
  out(`making the tiny model in ${MODEL_DIR}…`);
  await generateTinyModel(["--out", MODEL_DIR, "--seed", "0", "--warmup-docs", join(repoRoot, "tools", "sample-docs"), "--warmup-steps", "40"], () => undefined);
}

const stack = await startStack({
  env: {
    GATEWAY_AUTH: "none",
    TRAINER_MODEL_ROOT: join(MODEL_DIR, ".."),
    TRAINER_DATA_ROOT: repoRoot,
    TRAINER_WORK_DIR: join(DEMO_DIR, "compare-trainer-work"),
    GATEWAY_ADAPTER_DIR: join(DEMO_DIR, "compare-adapters"),
    GATEWAY_PIPELINE_BASE_MODEL: MODEL_DIR,
  },
  modelServer: { model: join(MODEL_DIR, "model.gguf"), servedModelName: "base", concurrency: 2 },
});
try {
  const gateway = createClient(GatewayService, { baseUrl: stack.services.gateway.url, protocol: "grpc" });
  const evals = createClient(EvalService, { baseUrl: stack.services.eval.url, protocol: "grpc" });
  const follow = async (id: string): Promise<PipelineRun> => {
    for await (const res of gateway.watchPipelineRun({ pipelineRunId: id }, { timeoutMs: 0 })) void res;
    const run = (await gateway.getPipelineRun({ pipelineRunId: id })).run!;
    if (run.status !== PipelineRunStatus.SUCCEEDED) throw new Error(`pipeline run ${id} ended ${PipelineRunStatus[run.status]}: ${run.failure?.message ?? ""}`);
    return run;
  };
  const stage = (run: PipelineRun, s: PipelineStage) => run.stages.find((x) => x.stage === s)!.resourceId;

  const docs = join(repoRoot, "tools", "sample-docs");
  const files = (await readdir(docs)).filter((f) => /\.(md|html?)$/.test(f)).sort();
  const sources = await Promise.all(files.map(async (filename) => ({ source: { case: "inline" as const, value: { filename, content: await readFile(join(docs, filename)) } } })));
  await follow((await gateway.startPipelineRun({ collection: COLLECTION, spec: { stages: [PipelineStage.INGEST], sources } })).run!.id);

  const hyperparameters = {
    duration: { case: "maxSteps" as const, value: STEPS },
    learningRate: 2e-3,
    warmupSteps: 4,
    gradientAccumulationSteps: 1,
    gradientCheckpointing: false,
    evalIntervalSteps: 0,
    checkpointIntervalSteps: STEPS,
  };
  const train = async (label: string, dataset: { contextChunks?: number; goldShare?: number }) => {
    out(`${label}: dataset → train → eval on its own test split (${STEPS} steps)…`);
    const run = await follow(
      (
        await gateway.startPipelineRun({
          collection: COLLECTION,
          spec: { stages: [PipelineStage.DATASET, PipelineStage.TRAIN, PipelineStage.EVAL], dataset: { seed: 7, ...dataset }, hyperparameters, evalSampling: { temperature: 0, maxTokens: 96 } },
        })
      ).run!.id,
    );
    // The eval stage loaded the adapter on the endpoint under its served name.
    const evalRun = (await evals.getEvalRun({ evalRunId: stage(run, PipelineStage.EVAL) })).run!;
    return { version: stage(run, PipelineStage.DATASET), job: stage(run, PipelineStage.TRAIN), name: evalRun.adapters[0]! };
  };
  const gold = await train("gold-chunk-only", { contextChunks: 1 });
  const served = await train(`as served (top ${CONTEXT_CHUNKS}, gold in ${GOLD_SHARE})`, { contextChunks: CONTEXT_CHUNKS, goldShare: GOLD_SHARE });

  out(`one eval run: base, gold-trained and served-trained adapters on the served version's test split (${served.version})…`);
  const { run } = await evals.createEvalRun({
    source: { case: "datasetVersionId", value: served.version },
    endpointUrl: stack.modelServer!.baseUrl,
    baseModel: "base",
    adapters: [gold.name, served.name],
    sampling: { temperature: 0, maxTokens: 96 },
    concurrency: 2,
    ...(MAX_ITEMS === undefined ? {} : { maxItems: MAX_ITEMS }),
  });
  for await (const res of evals.watchEvalRun({ evalRunId: run!.id }, { timeoutMs: 0 })) void res;
  const done = (await evals.getEvalRun({ evalRunId: run!.id })).run!;
  if (done.status !== EvalRunStatus.SUCCEEDED) throw new Error(`eval run ${done.id} ended ${EvalRunStatus[done.status]}: ${done.failure?.message ?? ""}`);
  const report = done.report!;
  const label = (m: string) => (m === gold.name ? "gold-chunk-only adapter" : m === served.name ? "as-served adapter" : "base");
  const est = (e: { value: number; ciLow: number; ciHigh: number } | undefined) => (e === undefined ? "–" : `${e.value.toFixed(3)} [${e.ciLow.toFixed(3)}, ${e.ciHigh.toFixed(3)}]`);
  out(`\n${report.items} items (${report.answerable} answerable, ${report.unanswerable} unanswerable), eval run ${done.id}\n`);
  out("| model | success (correct) | answer rate, answerable | false-answer rate, unanswerable | truthfulness |");
  out("|---|---:|---:|---:|---:|");
  for (const m of report.models) {
    const c = m.calibration;
    out(`| ${label(m.model)} | ${m.successRate.toFixed(3)} | ${est(c?.answerRateAnswerable)} | ${est(c?.falseAnswerRate)} | ${est(c?.truthfulness)} |`);
  }
  out("\npaired differences (95% bootstrap interval):");
  for (const d of report.differences.filter((x) => ["success_rate", "false_answer_rate", "truthfulness"].includes(x.metric))) {
    out(`  ${label(d.model)} − ${label(d.baseline)}: ${d.metric} ${d.delta >= 0 ? "+" : ""}${d.delta.toFixed(3)} [${d.ciLow.toFixed(3)}, ${d.ciHigh.toFixed(3)}]`);
  }
} finally {
  await stack.stop();
}
