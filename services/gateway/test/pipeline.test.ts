/**
 * Pipeline runs on the gateway testbed (real nats-server and ingest service, a loopback model endpoint): what a start
 * request must hold, an ingest-only run end to end with its event history, restart of a run after its gateway stopped.
 */
import { Code } from "@connectrpc/connect";
import { PipelineRunStatus, PipelineStage, PipelineStageStatus } from "@ragtune/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GatewayService, startGatewayTestbed, type GatewayTestbed } from "./testbed.js";

let tb: GatewayTestbed;

const doc = (filename: string, text: string) => ({ source: { case: "inline" as const, value: { filename, content: new TextEncoder().encode(text) } } });

beforeAll(async () => {
  // The testbed's own gateway scans for abandoned runs only every 5 minutes (half its lease): in the takeover test the
  // runs are the replicas' own, and no third replica can take one in between.
  tb = await startGatewayTestbed(() => " ok", { GATEWAY_PIPELINE_LEASE: "10m" });
}, 120_000);

afterAll(async () => {
  await tb?.close();
});

describe("StartPipelineRun", () => {
  it("refuses specs it cannot run, naming the field", async () => {
    const gw = tb.gateway.client(GatewayService);
    const cases: [Parameters<typeof gw.startPipelineRun>[0], string, RegExp][] = [
      [{ spec: { stages: [PipelineStage.INGEST, PipelineStage.TRAIN] } }, "spec.stages", /consecutive/],
      [{ spec: { stages: [PipelineStage.DATASET, PipelineStage.DATASET] } }, "spec.stages", /twice/],
      [{ spec: { stages: [PipelineStage.TRAIN] } }, "spec.dataset_version_id", /dataset_version_id/],
      [{ spec: { stages: [PipelineStage.EVAL] } }, "spec.job_id", /job_id/],
      [{ spec: { stages: [PipelineStage.DATASET], sources: [doc("a.md", "# A\n\ntext\n")] } }, "spec.sources", /no ingest stage/],
      [{ spec: { stages: [PipelineStage.TRAIN], datasetVersionId: "v" } }, "spec.base_model", /GATEWAY_PIPELINE_BASE_MODEL/],
      [{ spec: { stages: [PipelineStage.EVAL], jobId: "j", evalMaxItems: 0 } }, "spec.eval_max_items", /at least 1/],
    ];
    for (const [req, field, message] of cases) {
      const err = await gw.startPipelineRun(req).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, field).toMatchObject({ code: Code.InvalidArgument });
      expect(String((err as Error).message), field).toMatch(message);
      expect(String((err as Error).message), field).toContain(field);
    }
    expect((await gw.listPipelineRuns({})).runs).toHaveLength(0);
  });

  it("runs an ingest-only run to SUCCEEDED with a gapless history, the other stages SKIPPED, and is idempotent per client_request_id", async () => {
    const gw = tb.gateway.client(GatewayService);
    const req = { collection: "kb", clientRequestId: "once", spec: { stages: [PipelineStage.INGEST], sources: [doc("a.md", "# A\n\n## Part\n\nAlpha text here.\n"), doc("b.md", "# B\n\nBeta text.\n")] } };
    const { run } = await gw.startPipelineRun(req);
    expect((await gw.startPipelineRun(req)).run!.id).toBe(run!.id);
    const events = [];
    for await (const { event } of gw.watchPipelineRun({ pipelineRunId: run!.id })) events.push(event!);
    expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
    expect(events.at(-1)!.event).toMatchObject({ case: "statusChanged", value: { status: PipelineRunStatus.SUCCEEDED } });
    const done = (await gw.getPipelineRun({ pipelineRunId: run!.id })).run!;
    expect(done.stages.map((s) => PipelineStageStatus[s.status])).toEqual(["SUCCEEDED", "SKIPPED", "SKIPPED", "SKIPPED", "SKIPPED"]);
    expect(done.stages[0]!.progressDone).toBe(2n);
    expect(done.stages[0]!.progressUnit).toBe("documents");
    expect(done.stages[0]!.detail).toMatch(/^2 documents, \d+ chunks$/);
    // From a later sequence: only the rest of the history.
    const tail = [];
    for await (const { event } of gw.watchPipelineRun({ pipelineRunId: run!.id, fromSequence: events.length })) tail.push(event!);
    expect(tail.map((e) => e.sequence)).toEqual([events.length]);
    expect((await gw.listPipelineRuns({ collection: "kb" })).runs.map((r) => r.id)).toEqual([run!.id]);
    expect((await gw.listPipelineRuns({ collection: "elsewhere" })).runs).toHaveLength(0);
    await expect(gw.cancelPipelineRun({ pipelineRunId: run!.id })).rejects.toMatchObject({ code: Code.FailedPrecondition });
  });

  it("resumes a run on another replica after its gateway stopped mid-stage, and cancels it there", async () => {
    // Two gateways whose dataset service is unreachable: the dataset stage waits, retrying, and says so.
    const env = { GATEWAY_DATASET_URL: "http://127.0.0.1:1", GATEWAY_PIPELINE_LEASE: "2s" };
    const first = await tb.startGateway(env);
    let second: Awaited<ReturnType<typeof tb.startGateway>> | undefined;
    try {
      const { run } = await first.client(GatewayService).startPipelineRun({ collection: "kb", spec: { stages: [PipelineStage.DATASET] } });
      const id = run!.id;
      const waiting = async (gw: typeof first) => {
        for await (const { event } of gw.client(GatewayService).watchPipelineRun({ pipelineRunId: id })) {
          if (event!.event.case === "stageChanged" && /waiting for the dataset service/.test(event!.event.value.detail)) return;
        }
      };
      await waiting(first);
      const store = tb.gateway.instance.pipelines.store;
      expect((await store.get(id))!.owner).toBe(first.instance.pipelines.owner);
      // The second replica starts once the first holds the run, then the first stops: the second claims the run once
      // the first one's lease lapsed.
      second = await tb.startGateway(env);
      await first.stop();
      const states = await store.watchState(id);
      for await (const r of states) {
        if (r?.owner === second.instance.pipelines.owner) break;
      }
      states.stop();
      const seen = (await second.client(GatewayService).getPipelineRun({ pipelineRunId: id })).run!;
      expect(seen.status).toBe(PipelineRunStatus.RUNNING);
      const cancelled = (await second.client(GatewayService).cancelPipelineRun({ pipelineRunId: id })).run!;
      expect(cancelled.status).toBe(PipelineRunStatus.CANCELLED);
      expect(cancelled.stages[1]!.status).toBe(PipelineStageStatus.CANCELLED);
    } finally {
      await first.stop().catch(() => undefined);
      await second?.stop();
    }
  });
});
