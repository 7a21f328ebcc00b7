/// <reference lib="dom" />
/// <reference lib="dom.iterable" />
/**
 * The dashboard in a real browser (Debian's Chromium, headless, driven by playwright-core) against a real stack:
 * nats-server, the ingest, dataset, trainer (Python worker on the tiny model) and eval services as child processes,
 * the local model server on the tiny model's GGUF, and the gateway serving the built dashboard. Screenshots of the
 * main pages go to .data/dashboard-screenshots/ (git-ignored).
 */
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { ComputeDtype, DatasetService, DatasetSplit, DatasetVersionStatus, GatewayService, IngestRunStatus, IngestService, PipelineStage, TrainerService } from "@ragtune/proto";
import { Code, ConnectError, createClient } from "@ragtune/rpc";
import { removeTempDir, tempDir } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot, startStack, type Stack } from "../../../tools/src/stack.js";
import { generateTinyModel } from "../../../tools/src/tiny-model.js";
import { GATEWAY, type GatewayTestService } from "./testbed.js";
import { startTestService } from "@ragtune/rpc";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const SHOTS = join(repoRoot, ".data", "dashboard-screenshots");
const STEPS = 12;

let dir: string;
let stack: Stack;
let gateway: GatewayTestService;
let browser: Browser;
let acmeKey: string;
let globexKey: string;
let acmeVersion: string;
let globexJob: string;
let acmeJob: string;
let evalRunId: string;
let acmeIngestRun: string;

const log = (text: string) => process.stderr.write(`[dashboard test] ${text}\n`);

function run(cmd: string, args: string[]): Promise<void> {
  const child = spawn(cmd, args, { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (d: Buffer) => (output += d.toString()));
  child.stderr.on("data", (d: Buffer) => (output += d.toString()));
  return once(child, "exit").then(([code]) => {
    if (code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${String(code)}):\n${output.slice(-3000)}`);
  });
}

async function ingest(collection: string, files: Record<string, string>): Promise<string> {
  const client = createClient(IngestService, { baseUrl: stack.services.ingest.url, protocol: "grpc" });
  const sources = Object.entries(files).map(([filename, text]) => ({ source: { case: "inline" as const, value: { filename, content: new TextEncoder().encode(text) } } }));
  const { run: started } = await client.ingestDocuments({ collection, sources });
  for await (const res of client.watchIngestRun({ runId: started!.id })) void res;
  const done = (await client.getIngestRun({ runId: started!.id })).run!;
  if (done.status !== IngestRunStatus.SUCCEEDED) throw new Error(`ingest of ${collection} ended ${IngestRunStatus[done.status]}`);
  return done.id;
}

/** Longest row (prompt + completion tokens) of each dataset version built here: the job's max_seq_len covers it. */
const longestRow = new Map<string, number>();

async function buildDataset(collection: string): Promise<string> {
  const dataset = createClient(DatasetService, { baseUrl: stack.services.dataset.url, protocol: "grpc" });
  const { version } = await dataset.buildDatasetVersion({ collection });
  for await (const res of dataset.watchDatasetVersion({ datasetVersionId: version!.id })) void res;
  const ready = (await dataset.getDatasetVersion({ datasetVersionId: version!.id })).version!;
  if (ready.status !== DatasetVersionStatus.READY) throw new Error(`dataset version of ${collection} ended ${DatasetVersionStatus[ready.status]}: ${ready.failure?.message}`);
  longestRow.set(ready.id, Math.max(...(ready.stats?.splits ?? []).map((s) => s.tokenStats?.max ?? 0)));
  return ready.id;
}

async function createJob(collection: string, datasetVersionId: string, maxSteps: number): Promise<string> {
  const trainer = createClient(TrainerService, { baseUrl: stack.services.trainer.url, protocol: "grpc" });
  const request = {
    baseModel: join(dir, "tiny"),
    dataset: { case: "datasetVersionId" as const, value: datasetVersionId },
    displayName: `dashboard test ${collection}`,
    collection,
    hyperparameters: {
      duration: { case: "maxSteps" as const, value: maxSteps },
      learningRate: 2e-3,
      warmupSteps: 3,
      microBatchSize: 2,
      gradientAccumulationSteps: 1,
      maxSeqLen: Math.min(1024, Math.ceil((longestRow.get(datasetVersionId) ?? 256) / 64) * 64),
      evalIntervalSteps: 4,
      checkpointIntervalSteps: 6,
      computeDtype: ComputeDtype.FLOAT32,
      gradientCheckpointing: false,
    },
  };
  // The trainer learns of a READY version from the dataset service's event, a moment after the build ended.
  for (let attempt = 1; ; attempt++) {
    try {
      return (await trainer.createJob(request)).job!.id;
    } catch (err) {
      const unknown = err instanceof ConnectError && err.code === Code.FailedPrecondition && /unknown to the trainer/.test(err.message);
      if (!unknown || attempt >= 100) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function signIn(page: Page, key: string): Promise<void> {
  await page.goto(gateway.url);
  await page.fill("#api-key", key);
  await page.click("#sign-in");
}

const shot = (page: Page, name: string) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM_PATH)`);
  dir = await tempDir("dashboard-test");
  await mkdir(SHOTS, { recursive: true });
  const t0 = Date.now();
  // The dashboard's build (a few seconds) beside the tiny model (random weights, real tokenizer).
  await Promise.all([run("npm", ["run", "build", "-w", "@ragtune/dashboard"]), generateTinyModel(["--out", join(dir, "tiny"), "--seed", "0"], () => undefined)]);
  log(`dashboard built and tiny model made in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
  stack = await startStack({
    only: ["ingest", "dataset", "trainer", "eval"],
    modelServer: { model: join(dir, "tiny", "model.gguf"), servedModelName: "base", concurrency: 2 },
    env: { LOG_LEVEL: "warn", TRAINER_MODEL_ROOT: dir, TRAINER_DATA_ROOT: dir, TRAINER_WORK_DIR: join(dir, "trainer-work") },
  });
  gateway = await startTestService({
    definition: GATEWAY,
    nats: stack.nats,
    env: {
      GATEWAY_INGEST_URL: stack.services.ingest.url,
      GATEWAY_DATASET_URL: stack.services.dataset.url,
      GATEWAY_TRAINER_URL: stack.services.trainer.url,
      GATEWAY_EVAL_URL: stack.services.eval.url,
      LLM_BASE_URL: stack.modelServer!.baseUrl,
      LLM_MODEL: "base",
      GATEWAY_LORA_FORMAT: "gguf",
      GATEWAY_ADAPTER_DIR: join(dir, "adapters"),
      GATEWAY_RATE_BURST: "1000",
    },
  });
  log(`stack up in ${((Date.now() - t0) / 1000).toFixed(0)} s; gateway ${gateway.url}`);
  const access = gateway.instance.access!;
  acmeKey = (await access.keys.create("acme", "dashboard test")).key;
  globexKey = (await access.keys.create("globex", "dashboard test")).key;
  await access.tenancy.grant("acme-docs", "acme");
  await access.tenancy.grant("globex-docs", "globex");
  const samples = join(repoRoot, "tools", "sample-docs");
  const { readdir, readFile } = await import("node:fs/promises");
  const files = Object.fromEntries(await Promise.all((await readdir(samples)).filter((f) => /\.(md|html?)$/.test(f)).sort().map(async (f) => [f, await readFile(join(samples, f), "utf8")] as const)));
  [acmeIngestRun] = await Promise.all([
    ingest("acme-docs", files),
    ingest("globex-docs", { "globex.md": "# Globex reactors\n\nGlobex reactors are cooled with heavy water pumped from the lake.\n\n## Safety\n\nThe reactor stops when the pumps stop.\n" }),
  ]);
  const [acme, globex] = await Promise.all([buildDataset("acme-docs"), buildDataset("globex-docs")]);
  acmeVersion = acme;
  // Globex's job only has to exist: cancelled at once, it never takes the trainer from acme's.
  globexJob = await createJob("globex-docs", globex, 5);
  await createClient(TrainerService, { baseUrl: stack.services.trainer.url, protocol: "grpc" }).cancelJob({ jobId: globexJob });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"] });
  log(`ready in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
}, 300_000);

afterAll(async () => {
  await browser?.close();
  await gateway?.stop();
  await stack?.stop();
  if (dir !== undefined) await removeTempDir(dir);
}, 60_000);

describe("the dashboard", () => {
  it("refuses a wrong key and says why", async () => {
    const page = await browser.newPage();
    await signIn(page, `rt_${"0".repeat(16)}.${"A".repeat(43)}`);
    await page.waitForFunction(() => /refused the key/.test(document.querySelector("#login-error")?.textContent ?? ""));
    expect(await page.textContent("#login-error")).toContain("Unauthenticated: the API key is not valid for this gateway");
    await signIn(page, "not-a-key");
    await page.waitForFunction(() => /malformed/.test(document.querySelector("#login-error")?.textContent ?? ""));
    expect(await page.isVisible("#collections")).toBe(false);
    await shot(page, "login-refused");
    await page.close();
  });

  it("signs in with a key and lists only its tenant's collections", async () => {
    const page = await browser.newPage();
    await signIn(page, acmeKey);
    await page.waitForSelector("#collections");
    const names = await page.$$eval("#collections tbody tr td:first-child", (tds) => tds.map((td) => td.textContent));
    expect(names).toEqual(["acme-docs"]);
    await shot(page, "collections");
    await page.close();
  });

  it("shows a job's loss curve growing while the tiny model trains, from the job's stream (no polling)", async () => {
    acmeJob = await createJob("acme-docs", acmeVersion, STEPS);
    const page = await browser.newPage();
    const calls: string[] = [];
    page.on("request", (r) => {
      const m = /GatewayService\/(\w+)$/.exec(r.url());
      if (m) calls.push(m[1]!);
    });
    await signIn(page, acmeKey);
    await page.waitForSelector("#collections");
    await page.goto(`${gateway.url}/#/job/${acmeJob}`);
    await page.waitForSelector("#loss-chart");
    // Record every change of the chart's point count together with the job's status as the page shows it.
    await page.evaluate(() => {
      const seen: { points: number; status: string }[] = [];
      (window as unknown as { seen: typeof seen }).seen = seen;
      const chart = document.querySelector("#loss-chart") as HTMLElement;
      const record = () => seen.push({ points: Number(chart.dataset.points), status: document.querySelector("#job-status [data-status]")?.getAttribute("data-status") ?? "" });
      record();
      new MutationObserver(record).observe(chart, { attributes: true, attributeFilter: ["data-points"] });
    });
    // Three points in (or the job failed: then the assertion below says why).
    await page.waitForFunction(
      () => Number((document.querySelector("#loss-chart") as HTMLElement).dataset.points) >= 3 || document.querySelector('#job-status [data-status="failed"]') !== null,
      undefined,
      { timeout: 240_000 },
    );
    expect(await page.textContent("#job-status"), (await page.textContent("#job-log")) ?? "").not.toBe("failed");
    await shot(page, "job-training");
    await page.waitForSelector('#job-status [data-status="succeeded"], #job-status [data-status="failed"]', { timeout: 600_000 });
    expect(await page.textContent("#job-status"), (await page.textContent("#job-log")) ?? "").toBe("succeeded");
    await page.waitForSelector('#stream-state[data-state="ended"]');
    const seen = await page.evaluate(() => (window as unknown as { seen: { points: number; status: string }[] }).seen);
    const whileRunning = seen.filter((s) => s.status === "running" && s.points > 0).map((s) => s.points);
    // The curve grew point by point while the job ran: several distinct, increasing counts, not one history dump.
    expect(new Set(whileRunning).size).toBeGreaterThanOrEqual(3);
    expect(whileRunning).toEqual([...whileRunning].sort((a, b) => a - b));
    expect(await page.getAttribute("#loss-chart", "data-points")).toBe(String(STEPS));
    expect(await page.getAttribute("#lr-chart", "data-points")).toBe(String(STEPS));
    expect(await page.textContent("#job-progress")).toContain(`step ${STEPS}/${STEPS}`);
    expect(await page.$$eval("#checkpoints tbody tr", (rows) => rows.length)).toBeGreaterThanOrEqual(1);
    // One read of the job and one stream: the curve came from the stream, not from polling.
    expect(calls.filter((c) => c === "GetCollectionJob")).toHaveLength(1);
    expect(calls.filter((c) => c === "WatchCollectionJob")).toHaveLength(1);
    await shot(page, "job-succeeded");
    await page.close();
  }, 900_000);

  it("creates a training job from the collection's form (a TRAIN-only pipeline run) and opens the job once the run has created it", async () => {
    const page = await browser.newPage();
    await signIn(page, acmeKey);
    await page.waitForSelector("#collections");
    await page.goto(`${gateway.url}/#/c/acme-docs`);
    await page.waitForSelector("#create-job-form");
    // The picker offers the collection's READY versions: acme has the one built above.
    expect(await page.$$eval("#job-dataset-version option", (os) => os.map((o) => (o as HTMLOptionElement).value))).toEqual([acmeVersion]);
    // This gateway has no GATEWAY_PIPELINE_BASE_MODEL: without a base model folder the run is refused, saying why.
    await page.fill("#job-max-steps", "2");
    await page.fill("#job-learning-rate", "0.001");
    await page.click("#create-job");
    await page.waitForSelector('#create-job-result[data-state="failed"]');
    expect(await page.textContent("#create-job-result")).toContain("GATEWAY_PIPELINE_BASE_MODEL");
    await page.fill("#job-base-model", join(dir, "tiny"));
    await shot(page, "job-create");
    await page.click("#create-job");
    await page.waitForURL(/#\/job\/[^/]+$/, { timeout: 120_000 });
    const jobId = /#\/job\/(.+)$/.exec(page.url())![1]!;
    expect(jobId).not.toBe(acmeJob);
    const job = (await createClient(TrainerService, { baseUrl: stack.services.trainer.url, protocol: "grpc" }).getJob({ jobId })).job!;
    expect([job.collection, job.dataset.case, job.dataset.value, job.baseModel]).toEqual(["acme-docs", "datasetVersionId", acmeVersion, join(dir, "tiny")]);
    expect(job.hyperparameters?.duration).toEqual({ case: "maxSteps", value: 2 });
    expect(job.hyperparameters?.learningRate).toBeCloseTo(0.001, 9);
    // The job page follows it to its end (the trainer is free again for the pipeline test).
    await page.waitForSelector('#job-status [data-status="succeeded"], #job-status [data-status="failed"]', { timeout: 600_000 });
    expect(await page.textContent("#job-status"), (await page.textContent("#job-log")) ?? "").toBe("succeeded");
    expect(await page.textContent("#job-progress")).toContain("step 2/2");
    await page.close();
  }, 900_000);

  it("does not list a second tenant's job, and refuses to show it", async () => {
    const page = await browser.newPage();
    await signIn(page, acmeKey);
    await page.waitForSelector("#collections");
    await page.goto(`${gateway.url}/#/c/acme-docs`);
    await page.waitForSelector("#jobs");
    const jobs = await page.$$eval("#jobs tbody tr td:first-child", (tds) => tds.map((td) => td.textContent));
    expect(jobs).toContain(acmeJob);
    expect(jobs).not.toContain(globexJob);
    await shot(page, "collection");
    await page.goto(`${gateway.url}/#/job/${globexJob}`);
    await page.waitForFunction(() => /PermissionDenied/.test(document.querySelector(".page .error")?.textContent ?? ""));
    await page.goto(`${gateway.url}/#/c/globex-docs`);
    await page.waitForFunction(() => /PermissionDenied: collection "globex-docs" is not one of tenant "acme"'s collections/.test(document.querySelector(".page .error")?.textContent ?? ""));
    // And the other way round: globex sees its own job only.
    await page.click("#sign-out");
    await signIn(page, globexKey);
    await page.waitForSelector("#collections");
    expect(await page.$$eval("#collections tbody tr td:first-child", (tds) => tds.map((td) => td.textContent))).toEqual(["globex-docs"]);
    await page.goto(`${gateway.url}/#/c/globex-docs`);
    await page.waitForSelector("#jobs");
    const globexJobs = await page.$$eval("#jobs tbody tr td:first-child", (tds) => tds.map((td) => td.textContent));
    expect(globexJobs).toEqual([globexJob]);
    await page.close();
  });

  it("starts a pipeline run (eval of the trained job) from the form, shows its stages live, then the eval run's base and adapter metrics side by side, and promotes the adapter", async () => {
    const page = await browser.newPage();
    await signIn(page, acmeKey);
    await page.waitForSelector("#collections");
    await page.goto(`${gateway.url}/#/c/acme-docs/pipelines`);
    await page.waitForSelector("#start-pipeline");
    // Evaluate the job trained above (the run neither ingests, builds nor trains) and leave the promotion to the user.
    for (const stage of ["ingest", "dataset", "train", "promote"]) await page.uncheck(`input[data-stage="${stage}"]`);
    await page.check('input[data-stage="eval"]');
    await page.fill("#spec-job", acmeJob);
    await page.fill("#spec-eval-items", "6");
    await page.fill("#spec-eval-tokens", "32");
    await page.uncheck("#spec-auto-promote");
    await shot(page, "pipeline-start");
    await page.click("#start-run");
    await page.waitForSelector("#stages");
    const pipelineRunId = /#\/pipeline\/(.+)$/.exec(page.url())![1]!;
    // Record the eval stage's states as the page shows them, from the run's stream.
    await page.evaluate(() => {
      const seen: string[] = [];
      (window as unknown as { stageStates: string[] }).stageStates = seen;
      const record = () => {
        const s = document.querySelector('#stages tr[data-stage="eval"]')?.getAttribute("data-status") ?? "";
        if (seen.at(-1) !== s) seen.push(s);
      };
      record();
      new MutationObserver(record).observe(document.querySelector("#stages")!, { subtree: true, attributes: true, childList: true });
    });
    await page.waitForSelector('#run-status [data-status="succeeded"], #run-status [data-status="failed"]', { timeout: 600_000 });
    expect(await page.textContent("#run-status"), (await page.textContent("#run-failure")) ?? "").toBe("succeeded");
    await page.waitForSelector('#stream-state[data-state="ended"]');
    const states = await page.evaluate(() => (window as unknown as { stageStates: string[] }).stageStates);
    // The eval stage was seen running before it succeeded: the page followed the run live.
    expect(states).toContain("PIPELINE_STAGE_STATUS_RUNNING");
    expect(states.at(-1)).toBe("PIPELINE_STAGE_STATUS_SUCCEEDED");
    expect(await page.getAttribute('#stages tr[data-stage="promote"]', "data-status")).toBe("PIPELINE_STAGE_STATUS_SKIPPED");
    await shot(page, "pipeline-run");
    const run = (await createClient(GatewayService, { baseUrl: gateway.url, protocol: "grpc", authToken: acmeKey }).getPipelineRun({ pipelineRunId })).run!;
    evalRunId = run.stages.find((s) => s.stage === PipelineStage.EVAL)!.resourceId;
    const report = (await createClient(GatewayService, { baseUrl: gateway.url, protocol: "grpc", authToken: acmeKey }).getEvalRunReport({ evalRunId })).report!;
    // The adapter as the endpoint served it to the eval (its served name holds the job's ID).
    const adapterName = report.models.find((m) => !m.isBase)!.model;
    expect(adapterName).toContain(acmeJob);

    await page.click(`#stages a[href="#/eval/${evalRunId}"]`);
    await page.waitForSelector("#model-metrics");
    const headers = await page.$$eval("#model-metrics thead th", (ths) => ths.map((th) => th.textContent));
    expect(headers).toEqual(["metric", "base (base)", `${adapterName} (adapter)`]);
    const success = await page.$$eval("#model-metrics tbody tr", (rows) => rows.map((r) => [...r.children].map((c) => c.textContent)).find((cells) => cells[0] === "success rate"));
    expect(report.items).toBe(6);
    const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
    const base = report.models.find((m) => m.isBase)!;
    const adapter = report.models.find((m) => !m.isBase)!;
    expect(success).toEqual(["success rate", pct(base.successRate), pct(adapter.successRate)]);
    expect(await page.$$eval("#gates tbody tr", (rows) => rows.length)).toBe(report.gates.length);
    await page.waitForSelector("#items-count");
    // Every item's answers come with the context its question was asked with (collapsed): the test example's.
    await page.uncheck("#failures-only");
    await page.waitForFunction(() => document.querySelectorAll("#items .item").length === 6);
    const shown = await page.$$eval("#items .item", (items) =>
      items.map((item) => [item.querySelector(".meta")!.textContent!.split(" · ")[0]!, item.querySelector("details.context .context-text")?.textContent ?? null, item.querySelector("details.context")?.hasAttribute("open") ?? null] as const),
    );
    const testContexts = new Map<string, string>();
    const datasetClient = createClient(DatasetService, { baseUrl: stack.services.dataset.url, protocol: "grpc" });
    let token = "";
    do {
      const res = await datasetClient.listExamples({ datasetVersionId: acmeVersion, split: DatasetSplit.TEST, page: { pageSize: 1000, pageToken: token } });
      for (const e of res.examples) testContexts.set(e.id, e.context);
      token = res.page?.nextPageToken ?? "";
    } while (token !== "");
    expect(shown).toEqual(shown.map(([id]) => [id, testContexts.get(id) ?? "no test example", false]));
    for (const [, context] of shown) expect(context).not.toBe("");
    await page.click("#items .item details.context summary");
    expect(await page.isVisible("#items .item details.context .context-text")).toBe(true);
    await shot(page, "eval-run");

    // Promote from the eval page (forced: the tiny random model is not expected to pass the gates).
    await page.check("#promote-force");
    await page.click(`button.promote[data-model="${adapterName}"]`);
    await page.waitForSelector('#promote-result[data-outcome="promoted"]', { timeout: 120_000 });
    expect(await page.textContent("#promote-result")).toContain("now serves acme-docs");
    const promoted = await createClient(GatewayService, { baseUrl: gateway.url, protocol: "grpc", authToken: acmeKey }).getPromotedAdapter({ collection: "acme-docs" });
    expect(promoted.adapter?.jobId).toBe(acmeJob);
    expect(promoted.adapter?.evalRunId).toBe(evalRunId);
    await page.goto(`${gateway.url}/#/c/acme-docs`);
    await page.waitForFunction((job) => document.querySelector("#serving")?.textContent?.includes(job) === true, acmeJob);
    await page.close();
  }, 900_000);

  it("shows an ingest run, a dataset version, a document's chunks, the adapter's files and lineage", async () => {
    const page = await browser.newPage();
    await signIn(page, acmeKey);
    await page.waitForSelector("#collections");
    await page.goto(`${gateway.url}/#/ingest/${acmeIngestRun}`);
    await page.waitForSelector('#stream-state[data-state="ended"]');
    expect(await page.$$eval("#ingest-documents tbody tr", (rows) => rows.length)).toBe(8);
    expect(await page.textContent("#ingest-summary")).toContain("8 ingested, 0 unchanged, 0 failed");
    await shot(page, "ingest-run");
    await page.goto(`${gateway.url}/#/job/${acmeJob}`);
    await page.click('button.download[data-file="adapter.gguf"]');
    await page.waitForSelector('#adapter-downloads [data-verified="true"]');
    expect(await page.textContent("#adapter-downloads")).toMatch(/adapter\.gguf: \d+ bytes, SHA-256 verified/);
    await page.goto(`${gateway.url}/#/dataset/${acmeVersion}`);
    await page.waitForSelector("#split-counts");
    expect(await page.$$eval("#split-counts tbody tr td:first-child", (tds) => tds.map((td) => td.textContent))).toEqual(["train", "val", "test"]);
    // A token-length histogram per split (uPlot bars), from the version's stored stats: each counts its split's examples.
    const examplesPerSplit = await page.$$eval("#split-counts tbody tr", (rows) => rows.map((r) => [r.children[0]!.textContent, r.children[1]!.textContent]));
    const histograms = await page.$$eval("#token-histograms .token-histogram", (els) =>
      els.map((el) => [el.getAttribute("data-split"), el.getAttribute("data-total"), Number(el.getAttribute("data-buckets")) > 1, el.querySelector("canvas") !== null]),
    );
    expect(histograms).toEqual(examplesPerSplit.map(([split, n]) => [split, n, true, true]));
    await page.waitForSelector("#examples .example");
    await page.selectOption("#filter-split", { label: "test" });
    await page.waitForFunction(() => [...document.querySelectorAll("#examples .example .meta")].length > 0 && [...document.querySelectorAll("#examples .example .meta")].every((m) => m.textContent?.startsWith("test")));
    await shot(page, "dataset-version");
    const firstDoc = await page.getAttribute("#source-documents tbody tr td a", "href");
    await page.goto(`${gateway.url}/${firstDoc}`);
    await page.waitForSelector("#chunks tbody tr");
    await shot(page, "document");
    await page.goto(`${gateway.url}/#/lineage/${acmeJob}`);
    await page.waitForSelector("#lineage-graph");
    expect(await page.$$eval("#lineage-graph [data-node]", (nodes) => nodes.map((n) => n.getAttribute("data-node")))).toEqual(
      expect.arrayContaining(["dsv", "job", "adapter", `eval:${evalRunId}`, "promo:0"]),
    );
    await shot(page, "lineage");
    await page.close();
  });
});
