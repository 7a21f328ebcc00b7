/**
 * Promotions against a real nats-server (the KV record, the promoted event), a real loopback model endpoint (adapter
 * loads and unloads over HTTP) and in-memory trainer and eval services (createRouterTransport) that answer GetJob,
 * DownloadAdapter, GetEvalRun and ListEvalRuns with fixed jobs and runs: the gateway's side of the contract.
 */
import { createHash } from "node:crypto";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
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
  DatasetService,
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
import { adapterDigest, Promotions, type PromoteRequest, servedNameOf } from "../src/promotions.js";
import { type ModelEndpoint, startModelEndpoint } from "./model-endpoint.js";

const WEIGHTS = new TextEncoder().encode("lora weights ".repeat(1000));
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const enc = (s: string) => new TextEncoder().encode(s);
/** adapter_config.json per job (default `{}`). */
const CONFIGS = new Map<string, Uint8Array>([
  ["j-rank32", enc(JSON.stringify({ r: 32, lora_alpha: 64 }))],
  ["j-pattern", enc(JSON.stringify({ r: 8, rank_pattern: { "model.layers.0.self_attn.q_proj": 64 } }))],
  ["j-saves", enc(JSON.stringify({ r: 8, modules_to_save: ["lm_head"] }))],
]);
const configOf = (jobId: string) => CONFIGS.get(jobId) ?? enc("{}");
/** The served name of a test job's adapter, computed as the gateway documents it. */
const nm = (jobId: string, collection = "docs") =>
  servedNameOf({ id: jobId, collection }, adapterDigest([{ fileName: "adapter_config.json", sha256: sha(configOf(jobId)) }, { fileName: "adapter_model.safetensors", sha256: sha(WEIGHTS) }]));

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
              { kind: AdapterFileKind.PEFT_CONFIG, fileName: "adapter_config.json", artifact: { sizeBytes: BigInt(configOf(id).length), sha256: sha(configOf(id)) } },
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
const RUNS = [evalRun("e3", nm("j3"), true), evalRun("e1", nm("j1"), true), evalRun("e2", nm("j2"), true), evalRun("e-bad", nm("j-bad"), false)];

/** Weights the trainer sends for a job instead of the recorded ones (a corrupted transfer). */
const TAMPERED = new Map<string, Uint8Array>();

const upstream = createRouterTransport((router) => {
  router.service(TrainerService, {
    getJob(req) {
      const j = JOBS.get(req.jobId);
      if (j === undefined) throw new ConnectError(`job ${req.jobId} not found`, Code.NotFound);
      return { job: j };
    },
    async *downloadAdapter(req) {
      const data = req.kind === AdapterFileKind.PEFT_CONFIG ? configOf(req.jobId) : (TAMPERED.get(req.jobId) ?? WEIGHTS);
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
    listEvalItemResults() {
      return { results: [] };
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
  model = await startModelEndpoint("base", () => "ok", (path) => !path.includes("-j-unloadable@"));
  dir = await tempDir("gateway-adapters");
  store = await PromotionStore.open(bus, "gwtest-promotions");
  promotions = new Promotions({
    store,
    trainer: createClient(TrainerService, upstream),
    evals: createClient(EvalService, upstream),
    dataset: createClient(DatasetService, upstream),
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
    expect(adapter).toMatchObject({ collection: "docs", adapterId: "adapter-j1", jobId: "j1", evalRunId: "e1", previousAdapterId: "", forced: false, servedName: nm("j1") });
    expect(nm("j1")).toMatch(/^docs-j1@[0-9a-f]{16}$/);
    // The stand-in eval run has no dataset version: nothing to ask again, and the promotion says so.
    expect(adapter.canaryCheck).toBe("not checked: eval run e1 evaluated an uploaded file, whose prompts the gateway cannot read");
    expect(model.loraCalls).toEqual([{ op: "load", name: nm("j1"), path: join(dir, nm("j1")) }]);
    expect(await readFile(join(dir, nm("j1"), "adapter_model.safetensors"))).toEqual(Buffer.from(WEIGHTS));
    expect((await store.current("docs"))?.adapterId).toBe("adapter-j1");
    expect(published).toEqual(["adapter-j1"]);
  });

  it("replaces the served adapter and unloads the old one", async () => {
    const adapter = await promotions.promote(req({ jobId: "j2", evalRunId: "e2" }));
    expect(adapter.previousAdapterId).toBe("adapter-j1");
    expect(model.served()).toEqual(["base", nm("j2")]);
    expect(model.loraCalls.slice(-2)).toEqual([{ op: "load", name: nm("j2"), path: join(dir, nm("j2")) }, { op: "unload", name: nm("j1") }]);
  });

  it("refuses what must not serve, with reasons", async () => {
    await expectCode(promotions.promote(req({ jobId: "j-bad" })), Code.FailedPrecondition, new RegExp(`did not pass the eval gates: adapter ${nm("j-bad")} failed success_gain`));
    await expectCode(promotions.promote(req({ jobId: "j-bad", evalRunId: "e1" })), Code.FailedPrecondition, new RegExp(`did not evaluate adapter ${nm("j-bad")}`));
    await expectCode(promotions.promote(req({ jobId: "j-run" })), Code.FailedPrecondition, /RUNNING and has no adapter/);
    await expectCode(promotions.promote(req({ jobId: "j-other" })), Code.FailedPrecondition, /trained for collection "other"/);
    await expectCode(promotions.promote(req({ jobId: "nope" })), Code.NotFound, /job nope not found/);
    await expectCode(promotions.promote(req({ jobId: "" })), Code.InvalidArgument, /job_id is empty/);
    expect((await store.current("docs"))?.adapterId).toBe("adapter-j2");
  });

  it("promotes an ungated adapter only when forced, and says so", async () => {
    const adapter = await promotions.promote(req({ jobId: "j-bad", force: true }));
    expect(adapter).toMatchObject({ adapterId: "adapter-j-bad", forced: true, evalRunId: "", previousAdapterId: "adapter-j2" });
    expect(adapter.canaryCheck).toBe("not checked: no eval run justified this adapter (forced without one)");
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
    expect(back.servedName).toBe(nm("j2"));
    expect(model.served()).toEqual(["base", nm("j2")]);
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
    await expectCode(promotions.promote(req({ jobId: "j-unloadable", force: true })), Code.FailedPrecondition, new RegExp(`could not load adapter ${nm("j-unloadable")} .*No adapter found`));
    expect((await store.current("docs"))?.adapterId).toBe(before?.adapterId);
  });

  it("refuses before loading what vLLM cannot serve: a rank above GATEWAY_MAX_LORA_RANK (rank_pattern included), modules_to_save", async () => {
    for (const id of ["j-rank32", "j-pattern", "j-saves"]) JOBS.set(id, job(id, "docs"));
    const loads = model.loraCalls.length;
    await expectCode(promotions.promote(req({ jobId: "j-rank32", force: true })), Code.FailedPrecondition, /has LoRA rank 32, above the model endpoint's maximum of 16 \(GATEWAY_MAX_LORA_RANK/);
    await expectCode(promotions.stageAdapter("j-pattern"), Code.FailedPrecondition, /has LoRA rank 64, above/);
    await expectCode(promotions.promote(req({ jobId: "j-saves", force: true })), Code.FailedPrecondition, /modules_to_save: lm_head.*vLLM cannot serve/);
    expect(model.loraCalls.length).toBe(loads);
  });

  it("stages an adapter under its served name; a stale file of the same size in its folder is replaced, not served", async () => {
    JOBS.set("j-stage", job("j-stage", "docs"));
    const name = nm("j-stage");
    const stale = Buffer.from(WEIGHTS).fill(0x41); // same size, other bytes: a size check would keep it
    await mkdir(join(dir, name), { recursive: true });
    await writeFile(join(dir, name, "adapter_model.safetensors"), stale);
    expect(await promotions.stageAdapter("j-stage")).toBe(name);
    expect(await readFile(join(dir, name, "adapter_model.safetensors"))).toEqual(Buffer.from(WEIGHTS));
    expect(model.loraCalls.at(-1)).toEqual({ op: "load", name, path: join(dir, name) });
    expect(model.served()).toContain(name);
  });

  it("refuses a transfer whose bytes are not the recorded ones and loads nothing", async () => {
    JOBS.set("j-tampered", job("j-tampered", "docs"));
    TAMPERED.set("j-tampered", Buffer.from(WEIGHTS).fill(0x42));
    const loads = model.loraCalls.length;
    await expectCode(promotions.stageAdapter("j-tampered"), Code.FailedPrecondition, /adapter_model.safetensors of job j-tampered arrived with SHA-256 [0-9a-f]{64}, expected/);
    expect(model.loraCalls.length).toBe(loads);
  });

  it("names content: another content is another name, the same files the same name, check it with sha256sum", () => {
    const a = adapterDigest([{ fileName: "adapter_model.safetensors", sha256: "b".repeat(64) }, { fileName: "adapter_config.json", sha256: "a".repeat(64) }]);
    const manifest = `${"a".repeat(64)}  adapter_config.json\n${"b".repeat(64)}  adapter_model.safetensors\n`;
    expect(a).toBe(createHash("sha256").update(manifest).digest("hex"));
    expect(adapterDigest([{ fileName: "adapter_config.json", sha256: "a".repeat(64) }, { fileName: "adapter_model.safetensors", sha256: "c".repeat(64) }])).not.toBe(a);
    expect(servedNameOf({ id: "job/7 x", collection: "Docs: AWS" }, a)).toBe(`Docs_AWS-job_7_x@${a.slice(0, 16)}`);
    expect(servedNameOf({ id: "j7", collection: "" }, a)).toBe(`adapter-j7@${a.slice(0, 16)}`);
  });
});
