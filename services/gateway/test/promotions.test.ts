/**
 * Promotions against a real nats-server (the KV record, the promoted event), a real loopback model endpoint (adapter
 * loads and unloads over HTTP) and in-memory trainer and eval services (createRouterTransport) that answer GetJob,
 * DownloadAdapter, GetEvalRun and ListEvalRuns with fixed jobs and runs: the gateway's side of the contract.
 */
import { createHash } from "node:crypto";
import { readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { createClient, createRouterTransport } from "@connectrpc/connect";
import { connectBus, type Bus } from "@ragtune/bus";
import { createLlmClient } from "@ragtune/llm";
import { createLogger } from "@ragtune/logger";
import {
  AdapterFileKind,
  AdapterPromotedSchema,
  type EvalRun,
  EvalRunSchema,
  EvalRunStatus,
  EvalService,
  type Job,
  JobSchema,
  JobStatus,
  TrainerService,
} from "@ragtune/proto";
import { Code, ConnectError } from "@ragtune/rpc";
import { expectCode, startNatsServer, tempDir, type NatsServerHandle } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PromotionStore } from "../src/promotion-store.js";
import { Promotions, type PromoteRequest } from "../src/promotions.js";
import { type ModelEndpoint, startModelEndpoint } from "./model-endpoint.js";

const WEIGHTS = new TextEncoder().encode("lora weights ".repeat(1000));
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

function job(id: string, collection: string, status = JobStatus.SUCCEEDED): Job {
  return create(JobSchema, {
    id,
    status,
    collection,
    baseModel: "/models/base",
    ...(status === JobStatus.SUCCEEDED
      ? {
          adapter: {
            id: `adapter-${id}`,
            jobId: id,
            baseModel: "/models/base",
            files: [
              { kind: AdapterFileKind.PEFT_CONFIG, fileName: "adapter_config.json", artifact: { sizeBytes: 2n, sha256: sha(new TextEncoder().encode("{}")) } },
              { kind: AdapterFileKind.PEFT_WEIGHTS, fileName: "adapter_model.safetensors", artifact: { sizeBytes: BigInt(WEIGHTS.length), sha256: sha(WEIGHTS) } },
            ],
          },
        }
      : {}),
  });
}

function evalRun(id: string, adapter: string, passed: boolean): EvalRun {
  return create(EvalRunSchema, {
    id,
    status: EvalRunStatus.SUCCEEDED,
    collection: "docs",
    adapters: [adapter],
    report: { evalRunId: id, gatesPassed: passed, gates: [{ name: "success_gain", model: adapter, rule: "success_rate ≥ base + 0.10", value: passed ? 0.3 : 0.02, threshold: 0.1, passed }] },
  });
}

const JOBS = new Map<string, Job>([
  ["j1", job("j1", "docs")],
  ["j2", job("j2", "docs")],
  ["j3", job("j3", "docs")],
  ["j-bad", job("j-bad", "docs")],
  ["j-run", job("j-run", "docs", JobStatus.RUNNING)],
  ["j-other", job("j-other", "other")],
  ["r1", job("r1", "race")],
  ["r2", job("r2", "race")],
]);
const RUNS = [evalRun("e3", "adapter-j3", true), evalRun("e1", "adapter-j1", true), evalRun("e2", "adapter-j2", true), evalRun("e-bad", "adapter-j-bad", false)];

const upstream = createRouterTransport((router) => {
  router.service(TrainerService, {
    getJob(req) {
      const j = JOBS.get(req.jobId);
      if (j === undefined) throw new ConnectError(`job ${req.jobId} not found`, Code.NotFound);
      return { job: j };
    },
    async *downloadAdapter(req) {
      const data = req.kind === AdapterFileKind.PEFT_CONFIG ? new TextEncoder().encode("{}") : WEIGHTS;
      for (let offset = 0; offset < data.length; offset += 4096) {
        yield { kind: req.kind, offset: BigInt(offset), data: data.subarray(offset, offset + 4096), totalSizeBytes: BigInt(data.length), sha256: sha(data) };
      }
    },
  });
  router.service(EvalService, {
    getEvalRun(req) {
      const run = RUNS.find((r) => r.id === req.evalRunId);
      if (run === undefined) throw new ConnectError(`eval run ${req.evalRunId} not found`, Code.NotFound);
      return { run };
    },
    listEvalRuns(req) {
      return { runs: RUNS.filter((r) => r.collection === req.collection) };
    },
  });
});

let nats: NatsServerHandle;
let bus: Bus;
let model: ModelEndpoint;
let dir: string;
let promotions: Promotions;
let store: PromotionStore;
const published: string[] = [];

const req = (r: Partial<PromoteRequest>): PromoteRequest => ({ collection: "docs", jobId: "", evalRunId: "", force: false, pin: false, replacePinned: false, ...r });

beforeAll(async () => {
  nats = await startNatsServer();
  const logger = createLogger({ svc: "gateway-test", level: "silent" });
  bus = await connectBus({ servers: nats.url, name: "gateway-test", logger });
  await bus.ensureEventsStream();
  model = await startModelEndpoint("base", () => "ok", (path) => !path.includes("adapter-j-unloadable"));
  dir = await tempDir("gateway-adapters");
  store = await PromotionStore.open(bus, "gwtest-promotions");
  promotions = new Promotions({
    store,
    trainer: createClient(TrainerService, upstream),
    evals: createClient(EvalService, upstream),
    endpoint: createLlmClient({ baseUrl: model.url, maxRetries: 0 }),
    adapterDir: dir,
    loraFormat: "peft",
    logger,
    async publish(adapter) {
      published.push(adapter.adapterId);
      await bus.publish(AdapterPromotedSchema, { eventId: `${adapter.collection}:${adapter.adapterId}:${published.length}`, adapter }, { msgId: `${adapter.collection}:${adapter.adapterId}:${published.length}` });
    },
  });
}, 60_000);

afterAll(async () => {
  await bus?.close();
  await nats?.stop();
  await model?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe("PromoteAdapter", () => {
  it("loads a gated adapter on the endpoint, records it and tells the system", async () => {
    const adapter = await promotions.promote(req({ jobId: "j1" }));
    expect(adapter).toMatchObject({ collection: "docs", adapterId: "adapter-j1", jobId: "j1", evalRunId: "e1", previousAdapterId: "", forced: false, servedName: "adapter-j1" });
    expect(model.loraCalls).toEqual([{ op: "load", name: "adapter-j1", path: join(dir, "adapter-j1") }]);
    expect(await readFile(join(dir, "adapter-j1", "adapter_model.safetensors"))).toEqual(Buffer.from(WEIGHTS));
    expect((await store.current("docs"))?.adapterId).toBe("adapter-j1");
    expect(published).toEqual(["adapter-j1"]);
  });

  it("replaces the served adapter and unloads the old one", async () => {
    const adapter = await promotions.promote(req({ jobId: "j2", evalRunId: "e2" }));
    expect(adapter.previousAdapterId).toBe("adapter-j1");
    expect(model.served()).toEqual(["base", "adapter-j2"]);
    expect(model.loraCalls.slice(-2)).toEqual([{ op: "load", name: "adapter-j2", path: join(dir, "adapter-j2") }, { op: "unload", name: "adapter-j1" }]);
  });

  it("refuses what must not serve, with reasons", async () => {
    await expectCode(promotions.promote(req({ jobId: "j-bad" })), Code.FailedPrecondition, /did not pass the eval gates: adapter adapter-j-bad failed success_gain/);
    await expectCode(promotions.promote(req({ jobId: "j-bad", evalRunId: "e1" })), Code.FailedPrecondition, /did not evaluate adapter adapter-j-bad/);
    await expectCode(promotions.promote(req({ jobId: "j-run" })), Code.FailedPrecondition, /RUNNING and has no adapter/);
    await expectCode(promotions.promote(req({ jobId: "j-other" })), Code.FailedPrecondition, /trained for collection "other"/);
    await expectCode(promotions.promote(req({ jobId: "nope" })), Code.NotFound, /job nope not found/);
    await expectCode(promotions.promote(req({ jobId: "" })), Code.InvalidArgument, /job_id is empty/);
    expect((await store.current("docs"))?.adapterId).toBe("adapter-j2");
  });

  it("promotes an ungated adapter only when forced, and says so", async () => {
    const adapter = await promotions.promote(req({ jobId: "j-bad", force: true }));
    expect(adapter).toMatchObject({ adapterId: "adapter-j-bad", forced: true, evalRunId: "", previousAdapterId: "adapter-j2" });
  });

  it("keeps a pinned adapter until a promotion replaces it on purpose", async () => {
    await promotions.promote(req({ jobId: "j2", pin: true }));
    await expectCode(promotions.promote(req({ jobId: "j3" })), Code.FailedPrecondition, /pinned to adapter adapter-j2; promote with replace_pinned/);
    const replaced = await promotions.promote(req({ jobId: "j3", replacePinned: true }));
    expect(replaced).toMatchObject({ adapterId: "adapter-j3", pinned: false, previousAdapterId: "adapter-j2" });
  });

  it("rolls back to the adapter before, step by step", async () => {
    const history = (await promotions.list("docs")).map((a) => a.adapterId);
    expect(history).toEqual(["adapter-j3", "adapter-j2", "adapter-j-bad", "adapter-j2", "adapter-j1"]);
    const back = await promotions.rollback("docs");
    expect(back).toMatchObject({ adapterId: "adapter-j2", previousAdapterId: "adapter-j3" });
    expect(model.served()).toEqual(["base", "adapter-j2"]);
    expect((await promotions.rollback("docs")).adapterId).toBe("adapter-j-bad");
    expect((await promotions.list("docs")).map((a) => a.adapterId)).toEqual(["adapter-j-bad", "adapter-j2", "adapter-j1"]);
    await expectCode(promotions.rollback("empty"), Code.FailedPrecondition, /has no promoted adapter to roll back to/);
  });

  it("serializes concurrent promotions of a collection: both land, in order", async () => {
    const [a, b] = await Promise.all([promotions.promote(req({ collection: "race", jobId: "r1", force: true })), promotions.promote(req({ collection: "race", jobId: "r2", force: true }))]);
    expect(b.previousAdapterId).toBe(a.adapterId);
    expect((await promotions.list("race")).map((x) => x.adapterId)).toEqual(["adapter-r2", "adapter-r1"]);
  });

  it("turns an adapter the endpoint cannot load into FAILED_PRECONDITION and leaves the served one", async () => {
    JOBS.set("j-unloadable", job("j-unloadable", "docs"));
    const before = await store.current("docs");
    await expectCode(promotions.promote(req({ jobId: "j-unloadable", force: true })), Code.FailedPrecondition, /could not load adapter adapter-j-unloadable .*No adapter found/);
    expect((await store.current("docs"))?.adapterId).toBe(before?.adapterId);
  });
});
