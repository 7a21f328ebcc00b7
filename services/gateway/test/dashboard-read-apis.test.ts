/**
 * The read APIs the dashboard adds, behind the gateway's guard (API key → tenant), over in-memory ingest, dataset,
 * trainer and eval services: each answers for the caller's tenant's resources, refuses another tenant's with
 * PERMISSION_DENIED and an unknown one with NOT_FOUND, and the job watch streams the trainer's events as they come.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { createLogger } from "@ragtune/logger";
import {
  ChunkSchema,
  DatasetService,
  DatasetSplit,
  DatasetVersionSchema,
  DocumentSchema,
  EvalItemResultSchema,
  EvalRunSchema,
  EvalService,
  ExampleSchema,
  GatewayService,
  IngestRunSchema,
  IngestService,
  JobEventSchema,
  JobSchema,
  JobStatus,
  TrainerService,
} from "@ragtune/proto";
import { expectCode } from "@ragtune/testing";
import { describe, expect, it } from "vitest";
import { type AccessControl, type ApiKeys, guardService, RateLimiter, type Tenancy } from "../src/access.js";
import { createReadApis } from "../src/read-apis.js";

const OWNERS: Record<string, string> = { "acme-docs": "acme", "globex-docs": "globex" };
const KEYS: Record<string, string> = { "Bearer acme-key": "acme", "Bearer globex-key": "globex" };

const access: AccessControl = {
  keys: {
    async authenticate(header: string | null) {
      const tenant = header === null ? undefined : KEYS[header];
      if (tenant === undefined) throw new ConnectError("the API key is not valid for this gateway", Code.Unauthenticated);
      return { keyId: tenant, tenant };
    },
  } as unknown as ApiKeys,
  tenancy: { owner: async (c: string) => OWNERS[c] } as unknown as Tenancy,
  limiter: new RateLimiter(1_000_000, 1_000_000),
  logger: createLogger({ svc: "test", level: "silent" }),
};

const notFound = (what: string) => new ConnectError(`${what} not found`, Code.NotFound);
const docs = { "doc-a": "acme-docs", "doc-g": "globex-docs" } as Record<string, string>;
const versions = { "dsv-a": "acme-docs", "dsv-g": "globex-docs", "dsv-eval": "acme-docs" } as Record<string, string>;
const jobs = { "job-a": "acme-docs", "job-g": "globex-docs" } as Record<string, string>;
const runs = { "eval-a": "acme-docs", "eval-g": "globex-docs" } as Record<string, string>;
const ingestRuns = { "run-a": "acme-docs", "run-g": "globex-docs" } as Record<string, string>;
/** The deadline (ms) each upstream watch arrived with. */
const deadlines: (number | undefined)[] = [];
/** Releases the trainer's job stream one event at a time (the test decides when). */
let releaseEvent: (() => void) | undefined;

const upstream = createRouterTransport((router) => {
  router.service(IngestService, {
    async getDocument(req) {
      if (docs[req.documentId] === undefined) throw notFound(`document ${req.documentId}`);
      return { document: create(DocumentSchema, { id: req.documentId, collection: docs[req.documentId]! }) };
    },
    async listChunks(req) {
      return { chunks: [0, 1].map((i) => create(ChunkSchema, { id: `${req.documentId}-c${i}`, documentId: req.documentId, ordinal: i, headingPath: ["H"], tokenCount: 10 + i })) };
    },
    async getIngestRun(req) {
      if (ingestRuns[req.runId] === undefined) throw notFound(`ingest run ${req.runId}`);
      return { run: create(IngestRunSchema, { id: req.runId, collection: ingestRuns[req.runId]! }) };
    },
    async *watchIngestRun(req, ctx) {
      yield { event: { sequence: 1, runId: req.runId, event: { case: "statusChanged", value: {} } } };
      deadlines.push(ctx.timeoutMs());
    },
  });
  router.service(DatasetService, {
    async getDatasetVersion(req) {
      if (versions[req.datasetVersionId] === undefined) throw notFound(`dataset version ${req.datasetVersionId}`);
      return { version: create(DatasetVersionSchema, { id: req.datasetVersionId, collection: versions[req.datasetVersionId]! }) };
    },
    async listExamples(req) {
      if (req.datasetVersionId === "dsv-eval") {
        // The eval run's test split over two pages, items 0..4 (their IDs are the eval item IDs), plus a train example.
        if (req.split !== DatasetSplit.TEST) throw new Error("the gateway reads only the test split for eval contexts");
        const page = Number(req.page?.pageToken || "0");
        const ids = page === 0 ? [4, 0] : [2, 1, 3];
        return { examples: ids.map((i) => create(ExampleSchema, { id: `item-${i}`, split: DatasetSplit.TEST, context: `context of item ${i}` })), page: { nextPageToken: page === 0 ? "1" : "" } };
      }
      return { examples: [create(ExampleSchema, { id: "ex1", datasetVersionId: req.datasetVersionId, split: req.split === DatasetSplit.UNSPECIFIED ? DatasetSplit.TRAIN : req.split })] };
    },
    async listDroppedExamples(req) {
      return { examples: [{ example: create(ExampleSchema, { id: "dropped1" }), reason: req.reason || "duplicate", detail: "d" }] };
    },
  });
  router.service(TrainerService, {
    async getJob(req) {
      if (jobs[req.jobId] === undefined) throw notFound(`trainer job ${req.jobId}`);
      return { job: create(JobSchema, { id: req.jobId, collection: jobs[req.jobId]!, status: JobStatus.RUNNING }) };
    },
    async listCheckpoints(req) {
      return { checkpoints: [{ id: "ck1", jobId: req.jobId, step: 10 }] };
    },
    async cancelJob(req) {
      return { job: create(JobSchema, { id: req.jobId, status: JobStatus.CANCEL_REQUESTED }) };
    },
    async *downloadAdapter(req, ctx) {
      deadlines.push(ctx.timeoutMs());
      for (const [i, text] of ["{}", "weights"].entries()) yield { fileName: i === 0 ? "adapter_config.json" : "adapter.gguf", offset: 0n, data: new TextEncoder().encode(`${req.jobId}:${text}`), totalSizeBytes: 10n, sha256: "x" };
    },
    async *watchJob(req, ctx) {
      deadlines.push(ctx.timeoutMs());
      for (let step = 1; step <= 3; step++) {
        await new Promise<void>((resolve) => (releaseEvent = resolve));
        yield { event: create(JobEventSchema, { sequence: step, jobId: req.jobId, event: { case: "metrics", value: { step, totalSteps: 3, trainLoss: 3 - step / 2, learningRate: 1e-3 } } }) };
      }
    },
  });
  router.service(EvalService, {
    async getEvalRun(req) {
      if (runs[req.evalRunId] === undefined) throw notFound(`eval run ${req.evalRunId}`);
      return { run: create(EvalRunSchema, { id: req.evalRunId, collection: runs[req.evalRunId]!, datasetVersionId: req.evalRunId === "eval-a" ? "dsv-eval" : "" }) };
    },
    async listEvalRuns(req) {
      return { runs: Object.entries(runs).filter(([, c]) => c === req.collection).map(([id, collection]) => create(EvalRunSchema, { id, collection })) };
    },
    async listEvalItemResults(req) {
      const page = Number(req.page?.pageToken || "0");
      // Two pages: items 0..2 then 3..4; odd items have a failed answer.
      const ids = page === 0 ? [0, 1, 2] : [3, 4];
      return {
        results: ids.map((i) => create(EvalItemResultSchema, { itemId: `item-${i}`, answers: [{ model: "base", success: true }, { model: "adapter", success: i % 2 === 0 }] })),
        page: { nextPageToken: page === 0 ? "1" : "" },
      };
    },
  });
}, { transport: { defaultTimeoutMs: 60_000 } }); // the gateway's upstream clients have a 60 s default deadline

const handlers = createReadApis({
  access,
  ingest: createClient(IngestService, upstream),
  dataset: createClient(DatasetService, upstream),
  trainer: createClient(TrainerService, upstream),
  evals: createClient(EvalService, upstream),
  promotions: { record: async () => undefined },
});
/** A client of the guarded read APIs that sends `tenant`'s key. */
const as = (tenant: "acme" | "globex" | "nobody") =>
  createClient(
    GatewayService,
    createRouterTransport((router) => router.service(GatewayService, guardService(GatewayService, handlers, access)), {
      transport: { interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${tenant}-key`), next(req))] },
    }),
  );

const first = <T>(it: AsyncIterable<T>) => it[Symbol.asyncIterator]().next();

describe("the dashboard's read APIs", () => {
  const acme = as("acme");

  it("answer for the caller's own resources", async () => {
    expect((await acme.listDocumentChunks({ documentId: "doc-a" })).chunks.map((c) => c.tokenCount)).toEqual([10, 11]);
    expect((await first(acme.watchCollectionIngestRun({ runId: "run-a" }))).value?.event?.runId).toBe("run-a");
    expect((await acme.getCollectionDatasetVersion({ datasetVersionId: "dsv-a" })).version?.collection).toBe("acme-docs");
    expect((await acme.listDatasetExamples({ datasetVersionId: "dsv-a", split: DatasetSplit.TEST })).examples[0]?.split).toBe(DatasetSplit.TEST);
    expect((await acme.listDatasetDroppedExamples({ datasetVersionId: "dsv-a", reason: "too_long" })).examples[0]?.reason).toBe("too_long");
    const job = await acme.getCollectionJob({ jobId: "job-a" });
    expect([job.job?.jobId, job.job?.status, job.checkpoints.map((c) => c.step)]).toEqual(["job-a", "JOB_STATUS_RUNNING", [10]]);
    expect((await acme.cancelCollectionJob({ jobId: "job-a" })).job?.status).toBe("JOB_STATUS_CANCEL_REQUESTED");
    const pieces: string[] = [];
    for await (const { piece } of acme.downloadCollectionAdapter({ jobId: "job-a" })) pieces.push(`${piece?.fileName}=${new TextDecoder().decode(piece?.data)}`);
    expect(pieces).toEqual(["adapter_config.json=job-a:{}", "adapter.gguf=job-a:weights"]);
    expect((await acme.listCollectionEvalRuns({ collection: "acme-docs" })).runs.map((r) => r.evalRunId)).toEqual(["eval-a"]);
  });

  it("refuse another tenant's resources with PERMISSION_DENIED and unknown ones with NOT_FOUND", async () => {
    const denied = /collection "globex-docs" is not one of tenant "acme"'s collections/;
    await expectCode(acme.listDocumentChunks({ documentId: "doc-g" }), Code.PermissionDenied, denied);
    await expectCode(first(acme.watchCollectionIngestRun({ runId: "run-g" })), Code.PermissionDenied, denied);
    await expectCode(acme.getCollectionDatasetVersion({ datasetVersionId: "dsv-g" }), Code.PermissionDenied, denied);
    await expectCode(acme.listDatasetExamples({ datasetVersionId: "dsv-g" }), Code.PermissionDenied, denied);
    await expectCode(acme.listDatasetDroppedExamples({ datasetVersionId: "dsv-g" }), Code.PermissionDenied, denied);
    await expectCode(acme.getCollectionJob({ jobId: "job-g" }), Code.PermissionDenied, denied);
    await expectCode(first(acme.watchCollectionJob({ jobId: "job-g" })), Code.PermissionDenied, denied);
    await expectCode(acme.cancelCollectionJob({ jobId: "job-g" }), Code.PermissionDenied, denied);
    await expectCode(first(acme.downloadCollectionAdapter({ jobId: "job-g" })), Code.PermissionDenied, denied);
    await expectCode(acme.listCollectionEvalRuns({ collection: "globex-docs" }), Code.PermissionDenied, denied);
    await expectCode(acme.listEvalRunItems({ evalRunId: "eval-g" }), Code.PermissionDenied, denied);
    await expectCode(acme.getCollectionJob({ jobId: "job-missing" }), Code.NotFound, "trainer job job-missing not found");
    await expectCode(acme.listDocumentChunks({ documentId: "doc-missing" }), Code.NotFound, "document doc-missing not found");
    await expectCode(as("nobody").getCollectionJob({ jobId: "job-a" }), Code.Unauthenticated);
  });

  it("list an eval run's items filtered to those some model failed, paged", async () => {
    const all = await acme.listEvalRunItems({ evalRunId: "eval-a" });
    expect(all.results.map((r) => r.itemId)).toEqual(["item-0", "item-1", "item-2"]);
    const failed = await acme.listEvalRunItems({ evalRunId: "eval-a", failuresOnly: true, page: { pageSize: 1 } });
    expect([failed.results.map((r) => r.itemId), failed.page?.totalSize]).toEqual([["item-1"], 2]);
    const next = await acme.listEvalRunItems({ evalRunId: "eval-a", failuresOnly: true, page: { pageSize: 1, pageToken: failed.page!.nextPageToken } });
    expect([next.results.map((r) => r.itemId), next.page?.nextPageToken]).toEqual([["item-3"], ""]);
  });

  it("give each listed item the context of its dataset example (the run's test split, matched by item ID)", async () => {
    const all = await acme.listEvalRunItems({ evalRunId: "eval-a" });
    expect(all.contexts).toEqual({ "item-0": "context of item 0", "item-1": "context of item 1", "item-2": "context of item 2" });
    const failed = await acme.listEvalRunItems({ evalRunId: "eval-a", failuresOnly: true });
    expect(failed.contexts).toEqual({ "item-1": "context of item 1", "item-3": "context of item 3" });
    // A run without a dataset version (an eval file) has no contexts.
    expect((await as("globex").listEvalRunItems({ evalRunId: "eval-g" })).contexts).toEqual({});
  });

  it("stream a job's events as the trainer emits them", async () => {
    const stream = acme.watchCollectionJob({ jobId: "job-a" })[Symbol.asyncIterator]();
    const steps: number[] = [];
    for (let i = 0; i < 3; i++) {
      const next = stream.next();
      // The proxy holds no event back: each arrives once the trainer has sent it, and not before.
      while (releaseEvent === undefined) await new Promise((r) => setImmediate(r));
      const release = releaseEvent;
      releaseEvent = undefined;
      release();
      const { value } = await next;
      const e = value?.event?.event;
      if (e?.case === "metrics") steps.push(e.value.step);
    }
    expect(steps).toEqual([1, 2, 3]);
    expect((await stream.next()).done).toBe(true);
  });

  it("watch upstream without the upstream clients' default deadline (a job trains for longer than a minute)", async () => {
    deadlines.length = 0;
    for await (const res of acme.watchCollectionIngestRun({ runId: "run-a" })) void res;
    expect((await acme.getCollectionJob({ jobId: "job-a" })).job?.jobId).toBe("job-a");
    const stream = acme.watchCollectionJob({ jobId: "job-a" })[Symbol.asyncIterator]();
    const next = stream.next();
    while (releaseEvent === undefined) await new Promise((r) => setImmediate(r));
    releaseEvent();
    releaseEvent = undefined;
    await next;
    await stream.return?.();
    for await (const res of acme.downloadCollectionAdapter({ jobId: "job-a" })) void res;
    expect(deadlines).toEqual([undefined, undefined, undefined]);
  });
});
