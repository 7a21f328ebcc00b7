/**
 * The one-call pipeline end to end through the gateway, over real sockets: nats-server, the five services as child
 * processes (as the dev stack starts them), the Python trainer worker on the tiny model, and the local model server.
 * The gateway is killed with SIGKILL exactly where the trainer job exists upstream but the run has not recorded it
 * (GATEWAY_TEST_HALT_AT=started:train); a new gateway resumes the run with the same job, and the run promotes.
 */
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectBus } from "@ragtune/bus";
import { createLogger } from "@ragtune/logger";
import {
  EvalService,
  GatewayService,
  JobStatus,
  PipelineRunStatus,
  PipelineStage,
  PipelineStageStatus,
  RetrainFrom,
  type PipelineRun,
  type PipelineRunEvent,
  type StartPipelineRunRequest,
  TrainerService,
} from "@ragtune/proto";
import { Code, createClient } from "@ragtune/rpc";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { StartPipelineRunRequestSchema } from "@ragtune/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot, startStack, type Stack } from "../../../tools/src/stack.js";
import { generateTinyModel } from "../../../tools/src/tiny-model.js";
import { ApiKeys, Tenancy } from "../src/access.js";

const SAMPLE_DOCS = join(repoRoot, "tools", "sample-docs");

let root: string;
let stack: Stack;
let keyA: string;
let keyB: string;
const logs: string[] = [];

function gateway(key: string) {
  return createClient(GatewayService, { baseUrl: stack.services.gateway.url, protocol: "grpc", authToken: key, timeoutMs: 60_000 });
}

async function sampleSources() {
  const files = (await readdir(SAMPLE_DOCS)).filter((f) => /\.(md|html?)$/.test(f)).sort();
  return Promise.all(files.map(async (filename) => ({ source: { case: "inline" as const, value: { filename, content: await readFile(join(SAMPLE_DOCS, filename)) } } })));
}

/** Resolves with the first log line of the stack that matches. */
function logLine(match: RegExp, timeoutMs = 240_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const seen = logs.find((l) => match.test(l));
    if (seen !== undefined) return resolve(seen);
    const timer = setInterval(() => {
      const line = logs.find((l) => match.test(l));
      if (line !== undefined) {
        clearInterval(timer);
        clearTimeout(deadline);
        resolve(line);
      }
    }, 50);
    const deadline = setTimeout(() => {
      clearInterval(timer);
      reject(new Error(`no log line matched ${match} within ${timeoutMs} ms; last lines:\n${logs.slice(-30).join("\n")}`));
    }, timeoutMs);
  });
}

/** Every event of a run until it ends. */
async function watchToEnd(key: string, id: string): Promise<PipelineRunEvent[]> {
  const events: PipelineRunEvent[] = [];
  for await (const { event } of gateway(key).watchPipelineRun({ pipelineRunId: id }, { timeoutMs: 600_000 })) events.push(event!);
  return events;
}

const stageOf = (run: PipelineRun, stage: PipelineStage) => run.stages.find((s) => s.stage === stage)!;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "ragtune-pipeline-e2e-"));
  const modelDir = join(root, "tiny");
  await generateTinyModel(["--out", modelDir, "--seed", "0"], () => undefined);
  stack = await startStack({
    env: {
      LOG_LEVEL: "info",
      TRAINER_MODEL_ROOT: root,
      TRAINER_DATA_ROOT: root,
      TRAINER_WORK_DIR: join(root, "trainer-work"),
      GATEWAY_ADAPTER_DIR: join(root, "adapters"),
      GATEWAY_PIPELINE_BASE_MODEL: modelDir,
      GATEWAY_PIPELINE_LEASE: "3s",
      GATEWAY_TEST_HALT_AT: "started:train",
    },
    modelServer: { model: join(modelDir, "model.gguf"), servedModelName: "tiny", concurrency: 2 },
    onLog: (service, line) => logs.push(`${service} ${typeof line === "string" ? line : JSON.stringify(line)}`),
  });
  const bus = await connectBus({ servers: stack.natsUrl, name: "pipeline-e2e", logger: createLogger({ svc: "pipeline-e2e", level: "silent" }) });
  try {
    const keys = await ApiKeys.open(bus, "gateway-api-keys");
    keyA = (await keys.create("acme", "e2e")).key;
    keyB = (await keys.create("other", "e2e")).key;
    await (await Tenancy.open(bus, "gateway-tenancy")).grant("elsewhere", "other");
  } finally {
    await bus.close();
  }
}, 600_000);

afterAll(async () => {
  await stack?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

describe("pipeline through the gateway", () => {
  let finished: PipelineRun;

  it("runs ingest → dataset → train → eval → promote, resumes after kill -9 of the gateway without a second job, and Ask answers with the promoted adapter", async () => {
    const a = gateway(keyA);
    const request: MessageInitShape<typeof StartPipelineRunRequestSchema> = {
      collection: "docs",
      clientRequestId: "e2e-first",
      spec: {
        sources: await sampleSources(),
        hyperparameters: { duration: { case: "maxSteps", value: 6 }, microBatchSize: 2, gradientAccumulationSteps: 1, warmupSteps: 1, evalIntervalSteps: 3, checkpointIntervalSteps: 3 },
        evalSampling: { temperature: 0, maxTokens: 16 },
        evalMaxItems: 4,
        // The tiny random model cannot pass the gates: the run promotes anyway, recorded as forced.
        promotion: { force: true },
      },
    };
    const { run } = await a.startPipelineRun(request);
    expect(run!.status).toBe(PipelineRunStatus.QUEUED);
    expect(stageOf(run!, PipelineStage.INGEST).resourceId).not.toBe("");
    // The run keeps the documents' names, not their bytes.
    expect(run!.spec!.sources.every((s) => s.source.case === "inline" && s.source.value.content.length === 0)).toBe(true);
    const again = (await a.startPipelineRun(request)).run!;
    expect(again.id).toBe(run!.id);

    // Another tenant sees nothing of it.
    const b = gateway(keyB);
    for (const call of [() => b.getPipelineRun({ pipelineRunId: run!.id }), () => b.cancelPipelineRun({ pipelineRunId: run!.id }), () => b.startPipelineRun({ collection: "docs", spec: {} })]) {
      await expect(call()).rejects.toMatchObject({ code: Code.PermissionDenied });
    }
    expect((await b.listPipelineRuns({})).runs.map((r) => r.id)).not.toContain(run!.id);
    await expect(a.getPipelineRun({ pipelineRunId: "pipe-nope" })).rejects.toMatchObject({ code: Code.NotFound });

    // The gateway halts right after the trainer created the job, before the run records it: kill it there.
    await logLine(/pipeline halted here for a crash test/);
    const trainer = createClient(TrainerService, { baseUrl: stack.services.trainer.url, protocol: "grpc" });
    const jobsBefore = (await trainer.listJobs({})).jobs.filter((j) => j.collection === "docs");
    expect(jobsBefore).toHaveLength(1);
    const halted = (await a.getPipelineRun({ pipelineRunId: run!.id })).run!;
    expect(stageOf(halted, PipelineStage.TRAIN).status).toBe(PipelineStageStatus.RUNNING);
    expect(stageOf(halted, PipelineStage.TRAIN).resourceId).toBe("");
    stack.services.gateway.process.kill("SIGKILL");

    await stack.startAnother("gateway", { GATEWAY_TEST_HALT_AT: "" });
    const events = await watchToEnd(keyA, run!.id);
    expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
    finished = (await gateway(keyA).getPipelineRun({ pipelineRunId: run!.id })).run!;
    expect(finished.status, finished.failure?.message).toBe(PipelineRunStatus.SUCCEEDED);
    for (const stage of [PipelineStage.INGEST, PipelineStage.DATASET, PipelineStage.TRAIN, PipelineStage.EVAL, PipelineStage.PROMOTE]) {
      expect(stageOf(finished, stage).status, PipelineStage[stage]).toBe(PipelineStageStatus.SUCCEEDED);
    }
    // The resumed run found the job created before the kill instead of starting another.
    const jobs = (await trainer.listJobs({})).jobs.filter((j) => j.collection === "docs");
    expect(jobs.map((j) => j.id)).toEqual([jobsBefore[0]!.id]);
    expect(stageOf(finished, PipelineStage.TRAIN).resourceId).toBe(jobsBefore[0]!.id);
    const job = (await trainer.getJob({ jobId: jobs[0]!.id })).job!;
    expect(job.status).toBe(JobStatus.SUCCEEDED);
    expect(stageOf(finished, PipelineStage.TRAIN).progressDone).toBe(6n);
    // Another tenant cannot bring this collection's job or dataset version into a run of its own collection.
    const theirs = gateway(keyB);
    for (const spec of [
      { stages: [PipelineStage.EVAL], jobId: job.id },
      { stages: [PipelineStage.TRAIN], datasetVersionId: stageOf(finished, PipelineStage.DATASET).resourceId },
      { stages: [PipelineStage.DATASET, PipelineStage.TRAIN], initAdapterJobId: job.id },
    ]) {
      await expect(theirs.startPipelineRun({ collection: "elsewhere", spec })).rejects.toMatchObject({ code: Code.InvalidArgument, rawMessage: expect.stringMatching(/belongs to another collection than "elsewhere"/) });
    }

    const promoted = (await gateway(keyA).getPromotedAdapter({ collection: "docs" })).adapter!;
    expect(promoted.adapterId).toBe(job.adapter!.id);
    // Evaluated under the content-addressed name it is then served by.
    expect(promoted.servedName).toMatch(new RegExp(`^docs-${job.id}@[0-9a-f]{16}$`));
    const evals = createClient(EvalService, { baseUrl: stack.services.eval.url, protocol: "grpc" });
    const evalRun = (await evals.getEvalRun({ evalRunId: stageOf(finished, PipelineStage.EVAL).resourceId })).run!;
    expect(evalRun.adapters).toEqual([promoted.servedName]);
    expect(evalRun.datasetVersionId).toBe(stageOf(finished, PipelineStage.DATASET).resourceId);
    expect(promoted.evalRunId).toBe(evalRun.id);
    expect(promoted.forced).toBe(true);

    const answer = await gateway(keyA).ask({ collection: "docs", question: "How do I configure the service?", options: { maxTokens: 16 } });
    expect(answer.adapterId).toBe(job.adapter!.id);
    expect(answer.model).toBe(promoted.servedName);
    expect(answer.context.length).toBeGreaterThan(0);
    expect(answer.context.every((c) => c.chunkId !== "" && c.text !== "")).toBe(true);
  }, 900_000);

  it("follows the documents: an edit (a burst of two ingest runs) makes one update run that promotes a new adapter, with lineage from the edited document", async () => {
    const a = gateway(keyA);
    const before = (await a.getPromotedAdapter({ collection: "docs" })).adapter!;
    const policy = (
      await a.setCollectionUpdatePolicy({
        collection: "docs",
        policy: {
          followDocuments: true,
          settleSeconds: 8,
          retrainFrom: RetrainFrom.PROMOTED_ADAPTER,
          spec: {
            hyperparameters: { duration: { case: "maxSteps", value: 4 }, microBatchSize: 2, gradientAccumulationSteps: 1, warmupSteps: 1, evalIntervalSteps: 2, checkpointIntervalSteps: 2 },
            evalSampling: { temperature: 0, maxTokens: 16 },
            evalMaxItems: 4,
            promotion: { force: true },
          },
        },
      })
    ).policy!;
    expect(policy.followDocuments).toBe(true);
    const faq = await readFile(join(SAMPLE_DOCS, "faq.md"), "utf8");
    const edit = (text: string) =>
      a.startPipelineRun({ collection: "docs", spec: { stages: [PipelineStage.INGEST], sources: [{ source: { case: "inline", value: { filename: "faq.md", content: new TextEncoder().encode(text) } } }] } });
    // Two edits at once: both land within the settle time.
    const edits = await Promise.all([edit(`${faq}\n\n### Is there a sandbox?\n\nYes: the sandbox book resets every Sunday.\n`), edit(`${faq}\n\n### Is there a sandbox?\n\nYes: the sandbox book resets every Monday.\n`)]);
    for (const e of edits) await watchToEnd(keyA, e.run!.id);
    let updateId = "";
    while (updateId === "") {
      const p = (await a.getCollectionUpdatePolicy({ collection: "docs" })).policy!;
      updateId = p.lastUpdateRunId;
      if (updateId === "") await new Promise((r) => setTimeout(r, 500));
    }
    await watchToEnd(keyA, updateId);
    const update = (await a.getPipelineRun({ pipelineRunId: updateId })).run!;
    expect(update.status, update.failure?.message).toBe(PipelineRunStatus.SUCCEEDED);
    expect(update.trigger).toMatch(/^update after ingest run /);
    expect(update.spec!.datasetBaseVersionId).toBe(stageOf(finished, PipelineStage.DATASET).resourceId);
    const after = (await a.getPromotedAdapter({ collection: "docs" })).adapter!;
    expect(after.adapterId).not.toBe(before.adapterId);
    expect(after.jobId).toBe(stageOf(update, PipelineStage.TRAIN).resourceId);
    // Retrained from the adapter that served: the update's job continued it.
    expect(update.spec!.initAdapterJobId).toBe(before.jobId);
    const trainer = createClient(TrainerService, { baseUrl: stack.services.trainer.url, protocol: "grpc" });
    expect((await trainer.getJob({ jobId: after.jobId })).job!.initAdapterJobId).toBe(before.jobId);
    // The gateway's job detail (the dashboard's job page) and the adapter's lineage name the warm start too.
    expect((await a.getCollectionJob({ jobId: after.jobId })).job!.initAdapterJobId).toBe(before.jobId);
    expect((await a.getAdapterLineage({ jobId: after.jobId })).job!.initAdapterJobId).toBe(before.jobId);
    // One update for the burst: nothing pending, and no other update run.
    const runs = (await a.listPipelineRuns({ collection: "docs" })).runs.filter((r) => r.trigger.startsWith("update"));
    expect(runs.map((r) => r.id)).toEqual([updateId]);
    expect((await a.getCollectionUpdatePolicy({ collection: "docs" })).policy!.pendingSince).toBeUndefined();
    // Lineage: from the edited document to the new adapter, which serves.
    const doc = (await a.listCollectionDocuments({ collection: "docs" })).documents.find((d) => d.sourceName === "faq.md")!;
    const lineage = await a.getDocumentLineage({ documentId: doc.id });
    expect(lineage.adapters.find((x) => x.adapterId === after.adapterId)?.serving).toBe(true);
    await a.setCollectionUpdatePolicy({ collection: "docs", policy: { followDocuments: false } });
  }, 900_000);

  it("cancels a run and the trainer job it is waiting for", async () => {
    const a = gateway(keyA);
    const { run } = await a.startPipelineRun({
      collection: "docs",
      spec: {
        stages: [PipelineStage.TRAIN, PipelineStage.EVAL],
        datasetVersionId: stageOf(finished, PipelineStage.DATASET).resourceId,
        hyperparameters: { duration: { case: "maxSteps", value: 400 }, microBatchSize: 2 },
      },
    });
    expect(stageOf(run!, PipelineStage.INGEST).status).toBe(PipelineStageStatus.SKIPPED);
    let jobId = "";
    for await (const { event } of a.watchPipelineRun({ pipelineRunId: run!.id })) {
      const e = event!.event;
      if (e.case === "stageChanged" && e.value.stage === PipelineStage.TRAIN && e.value.resourceId !== "") {
        jobId = e.value.resourceId;
        break;
      }
    }
    const cancelled = (await a.cancelPipelineRun({ pipelineRunId: run!.id })).run!;
    expect(cancelled.status).toBe(PipelineRunStatus.CANCELLED);
    expect(stageOf(cancelled, PipelineStage.TRAIN).status).toBe(PipelineStageStatus.CANCELLED);
    await expect(a.cancelPipelineRun({ pipelineRunId: run!.id })).rejects.toMatchObject({ code: Code.FailedPrecondition });
    const trainer = createClient(TrainerService, { baseUrl: stack.services.trainer.url, protocol: "grpc" });
    for await (const res of trainer.watchJob({ jobId }, { timeoutMs: 120_000 })) void res;
    expect((await trainer.getJob({ jobId })).job!.status).toBe(JobStatus.CANCELLED);
  }, 300_000);
});

