/**
 * The gateway's read APIs over the internal services, each limited to the caller's tenant's collections, and lineage:
 * adapter → job → dataset version → documents, eval runs, promotions; document → dataset versions → adapters.
 */
import { create } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  AdapterEvalRunSchema,
  type DatasetService,
  DatasetSplit,
  type DatasetVersion,
  DatasetVersionStatus,
  type DatasetVersionDetail,
  DatasetVersionDetailSchema,
  type DatasetVersionView,
  DatasetVersionViewSchema,
  type EvalRunView,
  EvalRunViewSchema,
  type JobDetail,
  JobDetailSchema,
  DocumentAdapterSchema,
  type EvalItemResult,
  type EvalRun,
  EvalRunStatus,
  type EvalService,
  type JobView,
  JobViewSchema,
  PageResponseSchema,
  type GatewayService,
  type IngestService,
  type Job,
  JobStatus,
  PageRequestSchema,
  type TrainerService,
} from "@ragtune/proto";
import { paginate } from "@ragtune/rpc";
import { type AccessControl, callerOf, requireCollection } from "./access.js";
import type { PromotionStore } from "./promotion-store.js";

export interface ReadApiDeps {
  access?: AccessControl | undefined;
  ingest: Pick<Client<typeof IngestService>, "listCollections" | "listDocuments" | "getDocument" | "listChunks" | "getIngestRun" | "watchIngestRun">;
  dataset: Pick<Client<typeof DatasetService>, "listDatasetVersions" | "getDatasetVersion" | "listExamples" | "listDroppedExamples">;
  trainer: Pick<Client<typeof TrainerService>, "getJob" | "listJobs" | "watchJob" | "listCheckpoints" | "cancelJob" | "downloadAdapter">;
  evals: Pick<Client<typeof EvalService>, "getEvalRun" | "getEvalReport" | "listEvalRuns" | "listEvalItemResults">;
  promotions: Pick<PromotionStore, "record">;
}

/** Jobs read per page while filtering by collection (the trainer lists all jobs). */
const PAGE = 500;

export function jobView(j: Job): JobView {
  return create(JobViewSchema, {
    jobId: j.id,
    status: JobStatus[j.status] === undefined ? String(j.status) : `JOB_STATUS_${JobStatus[j.status]}`,
    adapterId: j.adapter?.id ?? "",
    baseModel: j.baseModel,
    datasetVersionId: j.dataset.case === "datasetVersionId" ? j.dataset.value : "",
    initAdapterJobId: j.initAdapterJobId,
  });
}

export function versionView(v: DatasetVersion): DatasetVersionView {
  return create(DatasetVersionViewSchema, {
    datasetVersionId: v.id,
    status: `DATASET_VERSION_STATUS_${DatasetVersionStatus[v.status] ?? v.status}`,
    ...(v.stats !== undefined ? { stats: v.stats } : {}),
    ...(v.createdAt !== undefined ? { createdAt: v.createdAt } : {}),
  });
}

const runStatus = (r: EvalRun) => `EVAL_RUN_STATUS_${EvalRunStatus[r.status] ?? r.status}`;

export function jobDetail(j: Job): JobDetail {
  const view = jobView(j);
  return create(JobDetailSchema, {
    jobId: view.jobId,
    status: view.status,
    baseModel: view.baseModel,
    datasetVersionId: view.datasetVersionId,
    initAdapterJobId: view.initAdapterJobId,
    collection: j.collection,
    displayName: j.displayName,
    attempt: j.attempt,
    ...(j.hyperparameters !== undefined ? { hyperparameters: j.hyperparameters } : {}),
    ...(j.progress !== undefined ? { progress: j.progress } : {}),
    ...(j.failure !== undefined ? { failure: j.failure } : {}),
    ...(j.adapter !== undefined ? { adapter: j.adapter } : {}),
    ...(j.createdAt !== undefined ? { createdAt: j.createdAt } : {}),
    ...(j.startedAt !== undefined ? { startedAt: j.startedAt } : {}),
    ...(j.finishedAt !== undefined ? { finishedAt: j.finishedAt } : {}),
  });
}

export function versionDetail(v: DatasetVersion): DatasetVersionDetail {
  const view = versionView(v);
  return create(DatasetVersionDetailSchema, {
    datasetVersionId: view.datasetVersionId,
    status: view.status,
    ...(view.stats !== undefined ? { stats: view.stats } : {}),
    ...(view.createdAt !== undefined ? { createdAt: view.createdAt } : {}),
    collection: v.collection,
    baseVersionId: v.baseVersionId,
    generator: v.generator,
    ...(v.settings !== undefined ? { settings: v.settings } : {}),
    ...(v.failure !== undefined ? { failure: v.failure } : {}),
    ...(v.finishedAt !== undefined ? { finishedAt: v.finishedAt } : {}),
    ...(v.lineage !== undefined ? { lineage: v.lineage } : {}),
  });
}

export function evalRunView(r: EvalRun): EvalRunView {
  return create(EvalRunViewSchema, {
    evalRunId: r.id,
    collection: r.collection,
    status: runStatus(r),
    datasetVersionId: r.datasetVersionId,
    baseModel: r.baseModel,
    adapters: r.adapters,
    items: r.items,
    answersDone: r.answersDone,
    answersTotal: r.answersTotal,
    hasReport: r.report !== undefined,
    gatesPassed: r.report?.gatesPassed ?? false,
    ...(r.failure !== undefined ? { failure: r.failure } : {}),
    ...(r.createdAt !== undefined ? { createdAt: r.createdAt } : {}),
    ...(r.finishedAt !== undefined ? { finishedAt: r.finishedAt } : {}),
  });
}

export function createReadApis(deps: ReadApiDeps): Partial<ServiceImpl<typeof GatewayService>> {
  const allow = async (ctx: HandlerContext, collection: string): Promise<string> => {
    const name = collection.trim() === "" ? "default" : collection.trim();
    await requireCollection(deps.access, ctx, name);
    return name;
  };

  const jobsOf = async (collection: string): Promise<Job[]> => {
    const out: Job[] = [];
    let token = "";
    do {
      const res = await deps.trainer.listJobs({ page: create(PageRequestSchema, { pageSize: PAGE, pageToken: token }) });
      out.push(...res.jobs.filter((j) => j.collection === collection));
      token = res.page?.nextPageToken ?? "";
    } while (token !== "");
    return out;
  };

  /** The job, once the caller may see its collection (NOT_FOUND / PERMISSION_DENIED otherwise). */
  const allowedJob = async (ctx: HandlerContext, jobId: string): Promise<Job> => {
    const job = (await deps.trainer.getJob({ jobId })).job;
    if (job === undefined) throw new ConnectError(`trainer job ${jobId} not found`, Code.NotFound);
    await allow(ctx, job.collection);
    return job;
  };

  const allowedVersion = async (ctx: HandlerContext, datasetVersionId: string): Promise<DatasetVersion> => {
    const version = (await deps.dataset.getDatasetVersion({ datasetVersionId })).version;
    if (version === undefined) throw new ConnectError(`dataset version ${datasetVersionId} not found`, Code.NotFound);
    await allow(ctx, version.collection);
    return version;
  };

  const evalRunsOf = async (collection: string, isAdapter: (model: string) => boolean): Promise<EvalRun[]> => {
    const out: EvalRun[] = [];
    let token = "";
    do {
      const res = await deps.evals.listEvalRuns({ collection, page: create(PageRequestSchema, { pageSize: 100, pageToken: token }) });
      out.push(...res.runs.filter((r) => r.adapters.some(isAdapter)));
      token = res.page?.nextPageToken ?? "";
    } while (token !== "");
    return out;
  };

  /**
   * The context each item's question was asked with: an eval run over a dataset version evaluates its test split and
   * names each item by its example's ID (services/eval/src/eval-items.ts), so the items are matched to the test
   * examples read from the dataset service. A run over an eval file has no version, hence no contexts; a version of
   * another collection than the run's (which the eval service never makes) is not read.
   */
  const contextsOf = async (run: EvalRun, results: readonly EvalItemResult[]): Promise<Record<string, string>> => {
    const contexts: Record<string, string> = {};
    if (run.datasetVersionId === "" || results.length === 0) return contexts;
    const wanted = new Set(results.map((r) => r.itemId));
    const version = (await deps.dataset.getDatasetVersion({ datasetVersionId: run.datasetVersionId })).version;
    if (version === undefined || version.collection !== run.collection) return contexts;
    let token = "";
    do {
      const res = await deps.dataset.listExamples({ datasetVersionId: version.id, split: DatasetSplit.TEST, page: create(PageRequestSchema, { pageSize: 1000, pageToken: token }) });
      for (const e of res.examples) {
        if (wanted.delete(e.id)) contexts[e.id] = e.context;
      }
      token = res.page?.nextPageToken ?? "";
    } while (token !== "" && wanted.size > 0);
    return contexts;
  };

  return {
    async listTenantCollections(req, ctx) {
      const caller = callerOf(ctx);
      const mine = caller === undefined || deps.access === undefined ? undefined : new Set(await deps.access.tenancy.collections(caller.tenant));
      const collections = [];
      let token = "";
      do {
        const res = await deps.ingest.listCollections({ page: create(PageRequestSchema, { pageSize: 1000, pageToken: token }) });
        collections.push(...res.collections.filter((c) => mine === undefined || mine.has(c.name)));
        token = res.page?.nextPageToken ?? "";
      } while (token !== "");
      const page = paginate(collections, req.page, `collections:${caller?.tenant ?? ""}`);
      return { collections: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async listCollectionDocuments(req, ctx) {
      const collection = await allow(ctx, req.collection);
      const res = await deps.ingest.listDocuments({ collection, ...(req.page ? { page: req.page } : {}) });
      return { documents: res.documents, ...(res.page ? { page: res.page } : {}) };
    },

    async listCollectionDatasetVersions(req, ctx) {
      const collection = await allow(ctx, req.collection);
      const res = await deps.dataset.listDatasetVersions({ collection, ...(req.page ? { page: req.page } : {}) });
      return { versions: res.versions.map(versionView), ...(res.page ? { page: res.page } : {}) };
    },

    async listCollectionJobs(req, ctx) {
      const collection = await allow(ctx, req.collection);
      const page = paginate(await jobsOf(collection), req.page, `jobs:${collection}`);
      return { jobs: page.items.map(jobView), page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async getEvalRunReport(req, ctx) {
      const run = (await deps.evals.getEvalRun({ evalRunId: req.evalRunId })).run;
      if (run === undefined) throw new ConnectError(`eval run ${req.evalRunId} not found`, Code.NotFound);
      await allow(ctx, run.collection);
      let markdown = "";
      if (run.report !== undefined) markdown = (await deps.evals.getEvalReport({ evalRunId: run.id })).markdown;
      return { evalRunId: run.id, collection: run.collection, status: runStatus(run), ...(run.report !== undefined ? { report: run.report } : {}), markdown };
    },

    async getAdapterLineage(req, ctx) {
      const job = (await deps.trainer.getJob({ jobId: req.jobId })).job;
      if (job === undefined) throw new ConnectError(`trainer job ${req.jobId} not found`, Code.NotFound);
      const collection = await allow(ctx, job.collection);
      const versionId = job.dataset.case === "datasetVersionId" ? job.dataset.value : "";
      const version = versionId === "" ? undefined : (await deps.dataset.getDatasetVersion({ datasetVersionId: versionId })).version;
      const adapterId = job.adapter?.id ?? "";
      const promotions = ((await deps.promotions.record(collection))?.history ?? []).filter((p) => p.jobId === job.id);
      // Eval runs name the adapter as the endpoint serves it: its adapter ID or a served name that holds the job's ID.
      const isAdapter = (model: string) => model === adapterId || model.includes(job.id);
      const runs = adapterId === "" ? [] : await evalRunsOf(collection, isAdapter);
      return {
        collection,
        job: jobView(job),
        ...(version !== undefined ? { datasetVersion: versionView(version) } : {}),
        documents: version?.lineage?.documents ?? [],
        evalRuns: runs.map((r) =>
          create(AdapterEvalRunSchema, {
            evalRunId: r.id,
            status: runStatus(r),
            gatesPassed: r.report !== undefined && r.report.gates.some((g) => isAdapter(g.model)) && r.report.gates.filter((g) => isAdapter(g.model)).every((g) => g.passed),
          }),
        ),
        promotions,
      };
    },

    async listDocumentChunks(req, ctx) {
      const document = (await deps.ingest.getDocument({ documentId: req.documentId })).document;
      if (document === undefined) throw new ConnectError(`document ${req.documentId} not found`, Code.NotFound);
      await allow(ctx, document.collection);
      const res = await deps.ingest.listChunks({ documentId: document.id, ...(req.page ? { page: req.page } : {}) });
      return { chunks: res.chunks, ...(res.page ? { page: res.page } : {}) };
    },

    async *watchCollectionIngestRun(req, ctx) {
      const run = (await deps.ingest.getIngestRun({ runId: req.runId })).run;
      if (run === undefined) throw new ConnectError(`ingest run ${req.runId} not found`, Code.NotFound);
      await allow(ctx, run.collection);
      // A watch lasts as long as the run: no deadline of the upstream client's (timeoutMs 0), ended by the caller.
      for await (const res of deps.ingest.watchIngestRun({ runId: run.id, fromSequence: req.fromSequence }, { signal: ctx.signal, timeoutMs: 0 })) {
        yield res.event === undefined ? {} : { event: res.event };
      }
    },

    async getCollectionDatasetVersion(req, ctx) {
      return { version: versionDetail(await allowedVersion(ctx, req.datasetVersionId)) };
    },

    async listDatasetExamples(req, ctx) {
      const version = await allowedVersion(ctx, req.datasetVersionId);
      const res = await deps.dataset.listExamples({ datasetVersionId: version.id, split: req.split, kind: req.kind, ...(req.page ? { page: req.page } : {}) });
      return { examples: res.examples, ...(res.page ? { page: res.page } : {}) };
    },

    async listDatasetDroppedExamples(req, ctx) {
      const version = await allowedVersion(ctx, req.datasetVersionId);
      const res = await deps.dataset.listDroppedExamples({ datasetVersionId: version.id, reason: req.reason, ...(req.page ? { page: req.page } : {}) });
      return { examples: res.examples, ...(res.page ? { page: res.page } : {}) };
    },

    async getCollectionJob(req, ctx) {
      const job = await allowedJob(ctx, req.jobId);
      const checkpoints = [];
      let token = "";
      do {
        const res = await deps.trainer.listCheckpoints({ jobId: job.id, page: create(PageRequestSchema, { pageSize: 1000, pageToken: token }) });
        checkpoints.push(...res.checkpoints);
        token = res.page?.nextPageToken ?? "";
      } while (token !== "");
      return { job: jobDetail(job), checkpoints };
    },

    async *watchCollectionJob(req, ctx) {
      const job = await allowedJob(ctx, req.jobId);
      // As long as the job trains (minutes to hours): no upstream deadline (timeoutMs 0), ended by the caller or the job's end.
      for await (const res of deps.trainer.watchJob({ jobId: job.id, fromSequence: req.fromSequence }, { signal: ctx.signal, timeoutMs: 0 })) {
        yield res.event === undefined ? {} : { event: res.event };
      }
    },

    async *downloadCollectionAdapter(req, ctx) {
      const job = await allowedJob(ctx, req.jobId);
      // Adapter files run to hundreds of MB on real models: no upstream deadline, ended by the caller.
      for await (const piece of deps.trainer.downloadAdapter({ jobId: job.id, kind: req.kind }, { signal: ctx.signal, timeoutMs: 0 })) yield { piece };
    },

    async cancelCollectionJob(req, ctx) {
      const job = await allowedJob(ctx, req.jobId);
      const res = await deps.trainer.cancelJob({ jobId: job.id });
      return res.job === undefined ? {} : { job: jobDetail(res.job) };
    },

    async listCollectionEvalRuns(req, ctx) {
      const collection = await allow(ctx, req.collection);
      const res = await deps.evals.listEvalRuns({ collection, ...(req.page ? { page: req.page } : {}) });
      return { runs: res.runs.map(evalRunView), ...(res.page ? { page: res.page } : {}) };
    },

    async listEvalRunItems(req, ctx) {
      const run = (await deps.evals.getEvalRun({ evalRunId: req.evalRunId })).run;
      if (run === undefined) throw new ConnectError(`eval run ${req.evalRunId} not found`, Code.NotFound);
      await allow(ctx, run.collection);
      if (!req.failuresOnly) {
        const res = await deps.evals.listEvalItemResults({ evalRunId: run.id, ...(req.page ? { page: req.page } : {}) });
        return { results: res.results, contexts: await contextsOf(run, res.results), ...(res.page ? { page: res.page } : {}) };
      }
      // The eval service has no failure filter: read the run's items (bounded by its test split) and page the failed ones.
      const failed: EvalItemResult[] = [];
      let token = "";
      do {
        const res = await deps.evals.listEvalItemResults({ evalRunId: run.id, page: create(PageRequestSchema, { pageSize: 1000, pageToken: token }) });
        failed.push(...res.results.filter((r) => r.answers.some((a) => !a.success)));
        token = res.page?.nextPageToken ?? "";
      } while (token !== "");
      const page = paginate(failed, req.page, `failed-items:${run.id}`);
      return { results: page.items, contexts: await contextsOf(run, page.items), page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },

    async getDocumentLineage(req, ctx) {
      const document = (await deps.ingest.getDocument({ documentId: req.documentId })).document;
      if (document === undefined) throw new ConnectError(`document ${req.documentId} not found`, Code.NotFound);
      const collection = await allow(ctx, document.collection);
      const datasetVersions = [];
      let token = "";
      do {
        const res = await deps.dataset.listDatasetVersions({ collection, page: create(PageRequestSchema, { pageSize: 100, pageToken: token }) });
        for (const v of res.versions) {
          const source = v.lineage?.documents.find((d) => d.documentId === document.id);
          if (source !== undefined) datasetVersions.push({ datasetVersionId: v.id, contentSha256: source.contentSha256 });
        }
        token = res.page?.nextPageToken ?? "";
      } while (token !== "");
      const versions = new Set(datasetVersions.map((v) => v.datasetVersionId));
      const serving = (await deps.promotions.record(collection))?.history[0]?.jobId;
      const succeeded = (await jobsOf(collection)).filter((j) => j.status === JobStatus.SUCCEEDED);
      // A job trained on the document directly, or warm-started (transitively) from one that was: its weights hold it.
      const via = new Map<string, string>();
      for (const j of succeeded) if (j.dataset.case === "datasetVersionId" && versions.has(j.dataset.value)) via.set(j.id, "");
      for (let grew = true; grew; ) {
        grew = false;
        for (const j of succeeded) {
          if (via.has(j.id) || j.initAdapterJobId === "" || !via.has(j.initAdapterJobId)) continue;
          via.set(j.id, via.get(j.initAdapterJobId) || j.initAdapterJobId);
          grew = true;
        }
      }
      const adapters = succeeded
        .filter((j) => via.has(j.id))
        .map((j) =>
          create(DocumentAdapterSchema, {
            jobId: j.id,
            adapterId: j.adapter?.id ?? "",
            datasetVersionId: j.dataset.case === "datasetVersionId" ? j.dataset.value : "",
            serving: j.id === serving,
            viaJobId: via.get(j.id)!,
          }),
        );
      return { document, datasetVersions, adapters };
    },
  };
}
