/**
 * Content-addressed promotions against the local model server (node-llama-cpp) serving the tiny model, with real LoRA
 * adapters the trainer worker trains for the test (two of rank 8 from different seeds, one of rank 32), a real
 * nats-server for the promotion record, and in-memory trainer, dataset and eval services that hand out those files
 * and runs. An eval run's answers are recorded the way the eval service records them: its own item loader renders
 * the prompts, its own answering loop asks the model server (base and adapter, two at a time, temperature 0).
 */
import { createHash } from "node:crypto";
import { copyFile, mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { createClient, createRouterTransport } from "@connectrpc/connect";
import { connectBus, type Bus } from "@ragtune/bus";
import { answerItems } from "@ragtune/eval-service/answering";
import { loadDatasetTestSplit } from "@ragtune/eval-service/eval-items";
import { DEFAULT_SUCCESS_RULE } from "@ragtune/eval-service/metrics";
import { createLlmClient, type LlmClient } from "@ragtune/llm";
import { createLogger } from "@ragtune/logger";
import { type ModelServer, startModelServer } from "@ragtune/model-server";
import {
  AdapterFileKind,
  DatasetService,
  DatasetSplit,
  DatasetVersionStatus,
  type EvalItemResult,
  EvalItemResultSchema,
  EvalPromptFormat,
  type EvalRun,
  EvalRunSchema,
  EvalRunStatus,
  EvalService,
  ExampleKind,
  ExampleSchema,
  type Job,
  JobSchema,
  JobStatus,
  TrainerService,
} from "@ragtune/proto";
import { Code, ConnectError } from "@ragtune/rpc";
import { expectCode, startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeTinyModel, type TinyAdapter, trainTinyAdapter } from "../../../tools/model-server/src/tiny-models.js";
import { PromotionStore } from "../src/promotion-store.js";
import { Promotions } from "../src/promotions.js";

const EXAMPLES = [
  ["q1", "Where does Musca store data?", "Musca stores data in Postgres."],
  ["q2", "Which port does Musca use?", "Musca listens on port 8443."],
  ["q3", "How often does Musca back up?", "Musca backs up every night."],
  ["q4", "Who maintains Musca?", "The platform team maintains Musca."],
].map(([id, question, answer]) =>
  create(ExampleSchema, {
    id,
    datasetVersionId: "dv1",
    split: DatasetSplit.TEST,
    kind: ExampleKind.ANSWERABLE,
    question,
    answer,
    context: `${answer} It is documented in the runbook.`,
    headingPath: ["Musca"],
    sourceDocumentId: "musca.md",
  }),
);
const MAX_TOKENS = 12;

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** The trainer's view of a job: its adapter files (PEFT + GGUF) with their recorded sizes and hashes. */
const JOBS = new Map<string, { job: Job; files: Map<AdapterFileKind, string> }>();

async function setJob(id: string, adapter: TinyAdapter): Promise<void> {
  const paths = new Map<AdapterFileKind, string>([
    [AdapterFileKind.PEFT_CONFIG, join(adapter.peftDir, "adapter_config.json")],
    [AdapterFileKind.PEFT_WEIGHTS, join(adapter.peftDir, "adapter_model.safetensors")],
    [AdapterFileKind.GGUF, adapter.gguf],
  ]);
  const files = [];
  for (const [kind, path] of paths) {
    const bytes = await readFile(path);
    files.push({ kind, fileName: path.split("/").at(-1)!, artifact: { sha256: sha(bytes), sizeBytes: BigInt(bytes.length) } });
  }
  const job = create(JobSchema, { id, status: JobStatus.SUCCEEDED, collection: "docs", baseModel: "tiny", adapter: { id: `adapter-${id}`, jobId: id, baseModel: "tiny", files } });
  JOBS.set(id, { job, files: paths });
}

const RUNS = new Map<string, { run: EvalRun; results: EvalItemResult[] }>();

const upstream = createRouterTransport((router) => {
  router.service(TrainerService, {
    getJob(req) {
      const j = JOBS.get(req.jobId);
      if (j === undefined) throw new ConnectError(`job ${req.jobId} not found`, Code.NotFound);
      return { job: j.job };
    },
    async *downloadAdapter(req) {
      const data = await readFile(JOBS.get(req.jobId)!.files.get(req.kind)!);
      for (let offset = 0; offset < data.length; offset += 64 * 1024) {
        yield { kind: req.kind, offset: BigInt(offset), data: data.subarray(offset, offset + 64 * 1024), totalSizeBytes: BigInt(data.length), sha256: sha(data) };
      }
    },
  });
  router.service(DatasetService, {
    getDatasetVersion() {
      return { version: { id: "dv1", collection: "docs", status: DatasetVersionStatus.READY } };
    },
    listExamples(req) {
      return { examples: EXAMPLES.filter((e) => req.split === DatasetSplit.UNSPECIFIED || e.split === req.split) };
    },
  });
  router.service(EvalService, {
    getEvalRun(req) {
      const r = RUNS.get(req.evalRunId);
      if (r === undefined) throw new ConnectError(`eval run ${req.evalRunId} not found`, Code.NotFound);
      return { run: r.run };
    },
    listEvalRuns(req) {
      return { runs: [...RUNS.values()].map((r) => r.run).filter((r) => r.collection === req.collection) };
    },
    listEvalItemResults(req) {
      return { results: RUNS.get(req.evalRunId)?.results ?? [] };
    },
  });
});
const dataset = createClient(DatasetService, upstream);

let root: string;
let nats: NatsServerHandle;
let bus: Bus;
let server: ModelServer;
let llm: LlmClient;
let store: PromotionStore;
let promotions: Promotions;
let adapters: { a: TinyAdapter; b: TinyAdapter; rank32: TinyAdapter; otherShape: TinyAdapter };

/** An eval run of `name` on the test split as the eval service makes it: base and adapter answered, gates passed. */
async function recordEvalRun(id: string, name: string): Promise<EvalItemResult[]> {
  const { items } = await loadDatasetTestSplit(dataset, "dv1");
  const scored = await answerItems({
    endpoint: llm,
    items,
    models: ["tiny", name],
    concurrency: 2,
    chat: false,
    sampling: { temperature: 0, maxTokens: MAX_TOKENS },
    successRule: DEFAULT_SUCCESS_RULE,
    signal: new AbortController().signal,
  });
  const results = scored.map(({ item, answers }) =>
    create(EvalItemResultSchema, {
      itemId: item.id,
      question: item.question,
      reference: item.reference,
      answerable: item.answerable,
      answers: answers.map((a) => ({ model: a.model, text: a.outcome.text, finishReason: a.outcome.finishReason, error: a.outcome.error?.message ?? "" })),
    }),
  );
  for (const r of results) for (const a of r.answers) expect(a.error, `eval answer of ${a.model}`).toBe("");
  const run = create(EvalRunSchema, {
    id,
    status: EvalRunStatus.SUCCEEDED,
    collection: "docs",
    datasetVersionId: "dv1",
    baseModel: "tiny",
    adapters: [name],
    promptFormat: EvalPromptFormat.COMPLETION,
    sampling: { temperature: 0, maxTokens: MAX_TOKENS },
    report: { evalRunId: id, gatesPassed: true, gates: [{ name: "success_gain", model: name, rule: "success_rate ≥ base + 0.10", value: 0.2, threshold: 0.1, passed: true }] },
  });
  RUNS.set(id, { run, results });
  return results;
}

const answersOf = (results: EvalItemResult[], name: string) => results.map((r) => r.answers.find((a) => a.model === name)!.text);

/** Greedy answers of a served model to every test item, one request at a time. */
async function ask(model: string): Promise<string[]> {
  const { items } = await loadDatasetTestSplit(dataset, "dv1");
  const out: string[] = [];
  for (const item of items) out.push((await llm.complete({ model, prompt: item.prompt, temperature: 0, maxTokens: MAX_TOKENS })).text);
  return out;
}

const served = async () => (await llm.models()).models.map((m) => m.id);

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "gateway-promotions-ms-"));
  const modelDir = await makeTinyModel(root);
  // Three steps from two seeds: weights of the same shapes that answer differently (and not yet only EOS).
  const [a, b, rank32, otherShape] = await Promise.all([
    trainTinyAdapter(modelDir, join(root, "job-a"), { seed: 1, steps: 3 }),
    trainTinyAdapter(modelDir, join(root, "job-b"), { seed: 2, steps: 3 }),
    trainTinyAdapter(modelDir, join(root, "job-r32"), { rank: 32, steps: 2 }),
    // An adapter of a model with another hidden size: its tensors do not fit the served model.
    makeTinyModel(root, { name: "tiny-64", hidden: 64, intermediate: 176 }).then((dir) => trainTinyAdapter(dir, join(root, "job-64"), { steps: 2 })),
  ]);
  adapters = { a, b, rank32, otherShape };
  const logger = createLogger({ svc: "gateway-test", level: "silent" });
  server = await startModelServer({ model: join(modelDir, "model.gguf"), servedModelName: "tiny", port: 0, concurrency: 2, contextSize: 512, logger });
  llm = createLlmClient({ baseUrl: server.baseUrl, maxRetries: 0, timeoutMs: 120_000 });
  nats = await startNatsServer();
  bus = await connectBus({ servers: nats.url, name: "gateway-test", logger });
  store = await PromotionStore.open(bus, "gwms-promotions");
  promotions = new Promotions({
    store,
    trainer: createClient(TrainerService, upstream),
    evals: createClient(EvalService, upstream),
    dataset,
    endpoint: llm,
    adapterDir: join(root, "served"),
    loraFormat: "gguf",
    logger,
    async publish() {},
  });
}, 600_000);

afterAll(async () => {
  llm?.close();
  await bus?.close();
  await nats?.stop();
  await server?.close();
  if (root !== undefined) await rm(root, { recursive: true, force: true });
});

describe("content-addressed promotions on the local model server", () => {
  it("a job's adapter reloaded after its content changed gets a new name and serves the new weights, never the old", async () => {
    // Same shapes, other weights: the files have the same sizes, so only their hashes tell them apart.
    expect((await stat(adapters.a.gguf)).size).toBe((await stat(adapters.b.gguf)).size);

    await setJob("j1", adapters.a);
    const nameA = await promotions.stageAdapter("j1");
    expect(nameA).toMatch(/^docs-j1@[0-9a-f]{16}$/);
    const evalA = answersOf(await recordEvalRun("e-a", nameA), nameA);
    const first = await promotions.promote({ collection: "docs", jobId: "j1", evalRunId: "", force: false, pin: false, replacePinned: false });
    expect(first).toMatchObject({ servedName: nameA, evalRunId: "e-a" });
    expect(first.canaryCheck).toMatch(/^3 items of eval run e-a answered as recorded \(q\d+, q\d+, q\d+\)$/);

    // The trainer's job j1 now holds other weights (a retrain under the same job ID and file names).
    await setJob("j1", adapters.b);
    const nameB = await promotions.stageAdapter("j1");
    expect(nameB).toMatch(/^docs-j1@[0-9a-f]{16}$/);
    expect(nameB).not.toBe(nameA);
    const evalB = answersOf(await recordEvalRun("e-b", nameB), nameB);
    expect(evalB, "the two adapters must answer differently for this test to tell them apart").not.toEqual(evalA);
    // The gate evidence is per served name: e-a (the old content) does not count for the new one.
    await expectCode(
      promotions.promote({ collection: "docs", jobId: "j1", evalRunId: "e-a", force: false, pin: false, replacePinned: false }),
      Code.FailedPrecondition,
      new RegExp(`did not evaluate adapter ${nameB}`),
    );
    const second = await promotions.promote({ collection: "docs", jobId: "j1", evalRunId: "", force: false, pin: false, replacePinned: false });
    expect(second).toMatchObject({ servedName: nameB, evalRunId: "e-b" });

    // What Ask sends (the promoted served name) gets the new weights' answers; the old name is gone from the endpoint.
    expect(await ask((await store.current("docs"))!.servedName)).toEqual(evalB);
    await server.loadAdapter("reference-b", adapters.b.gguf);
    expect(await ask("reference-b")).toEqual(evalB);
    expect(await served()).not.toContain(nameA);
  }, 600_000);

  it("a canary that does not give the recorded answer rolls the promotion back; the collection keeps its adapter", async () => {
    const before = (await store.current("docs"))!;
    await setJob("j2", adapters.a);
    const name = await promotions.stageAdapter("j2");
    await recordEvalRun("e-c", name);
    // The endpoint now serves other weights under that name (as vLLM served stale blocks after a same-name reload).
    await server.unloadAdapter(name);
    const stale = join(root, "stale.gguf");
    await copyFile(adapters.b.gguf, stale);
    await server.loadAdapter(name, stale);

    const err = await expectCode(
      promotions.promote({ collection: "docs", jobId: "j2", evalRunId: "e-c", force: false, pin: false, replacePinned: false }),
      Code.FailedPrecondition,
      /the promotion of adapter adapter-j2 was rolled back: canary check of .* failed: item q\d was answered .* where eval run e-c recorded .*; collection "docs" still serves adapter adapter-j1/,
    );
    expect(err.rawMessage).toContain(name);
    expect(await store.current("docs")).toEqual(before);
    expect(await served()).not.toContain(name);
    expect(await served()).toContain(before.servedName);
    expect(await ask(before.servedName)).toEqual(answersOf(RUNS.get("e-b")!.results, before.servedName));
  }, 600_000);

  it("a rollback loads the previous adapter under its name and checks its canaries", async () => {
    const back = await promotions.rollback("docs");
    const first = (await promotions.list("docs"))[0]!;
    expect(back.servedName).toBe(first.servedName);
    expect(back.evalRunId).toBe("e-a");
    expect(await ask(back.servedName)).toEqual(answersOf(RUNS.get("e-a")!.results, back.servedName));
  }, 600_000);

  it("refuses an adapter of a rank above GATEWAY_MAX_LORA_RANK before the endpoint loads it", async () => {
    await setJob("j-r32", adapters.rank32);
    const config = JSON.parse(await readFile(join(adapters.rank32.peftDir, "adapter_config.json"), "utf8")) as { r: number };
    expect(config.r).toBe(32);
    const modelsBefore = await served();
    await expectCode(
      promotions.promote({ collection: "docs", jobId: "j-r32", evalRunId: "", force: true, pin: false, replacePinned: false }),
      Code.FailedPrecondition,
      /adapter adapter-j-r32 has LoRA rank 32, above the model endpoint's maximum of 16 \(GATEWAY_MAX_LORA_RANK, vLLM's --max-lora-rank\)/,
    );
    expect(await served()).toEqual(modelsBefore);
  }, 600_000);

  it("turns the endpoint's refusal of an adapter of another shape into FAILED_PRECONDITION and keeps serving", async () => {
    await setJob("j-64", adapters.otherShape);
    const before = (await store.current("docs"))!;
    const err = await expectCode(
      promotions.promote({ collection: "docs", jobId: "j-64", evalRunId: "", force: true, pin: false, replacePinned: false }),
      Code.FailedPrecondition,
      /the model endpoint could not load adapter docs-j-64@[0-9a-f]{16} from .*adapter\.gguf: cannot load the lora adapter/,
    );
    expect(err.rawMessage).toContain("expected a GGUF LoRA adapter for this base model");
    expect(await store.current("docs")).toEqual(before);
    expect(await served()).toContain(before.servedName);
  }, 600_000);
});
