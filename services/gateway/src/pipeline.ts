/**
 * Pipeline runs: ingest → dataset → train → eval → promote for one collection, as one resource of the shared history
 * (libs/bus). A run's state names the resource each stage created upstream (ingest run, dataset version, trainer job,
 * eval run, promoted adapter); a replica of the gateway holds the run under a lease (LeasedWorkRunner) and drives it by
 * each stage's Watch stream. Every upstream call carries an idempotency key derived from the run and stage, so a
 * gateway killed at any point resumes the run after restart (or on another replica once the lease lapses) without
 * starting anything twice.
 */
import { createHash, randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import { timestampNow, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import {
  type Bus,
  type LeasedWork,
  LeasedWorkRunner,
  OwnershipLostError,
  type ResourceKind,
  ResourceStore,
  type ResourceStoreOptions,
  WorkCancelledError,
} from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  type DatasetService,
  DatasetVersionStatus,
  DocumentSourceSchema,
  type EvalService,
  EvalRunStatus,
  type Failure,
  FailureKind,
  FailureSchema,
  GatewayService,
  PageResponseSchema,
  type IngestService,
  IngestRunStatus,
  JobStatus,
  type PipelineRun,
  type PipelineRunEvent,
  PipelineRunEventSchema,
  PipelineRunSchema,
  PipelineRunStatus,
  type PipelineSpec,
  PipelineSpecSchema,
  PipelineStage,
  type PipelineStageState,
  PipelineStageStateSchema,
  PipelineStageStatus,
  type StartPipelineRunRequest,
  type TrainerService,
} from "@ragtune/proto";
import { failedPrecondition, invalidArgument, notFound, paginate } from "@ragtune/rpc";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { type AccessControl, callerOf, requireCollection } from "./access.js";
import { collectionName } from "./gateway-service.js";
import type { CollectionUpdates } from "./updates.js";
import type { PromotionStore } from "./promotion-store.js";
import type { Promotions } from "./promotions.js";

/** The stages in pipeline order. */
export const PIPELINE_STAGES = [PipelineStage.INGEST, PipelineStage.DATASET, PipelineStage.TRAIN, PipelineStage.EVAL, PipelineStage.PROMOTE] as const;

export const stageName = (stage: PipelineStage): string => (PipelineStage[stage] ?? String(stage)).toLowerCase();

export function isFinished(status: PipelineRunStatus): boolean {
  return status === PipelineRunStatus.SUCCEEDED || status === PipelineRunStatus.FAILED || status === PipelineRunStatus.CANCELLED;
}

type EventDetail = PipelineRunEvent["event"];

export const pipelineRunKind: ResourceKind<typeof PipelineRunSchema, typeof PipelineRunEventSchema, EventDetail> = {
  kind: "pipeline-run",
  stateSchema: PipelineRunSchema,
  eventSchema: PipelineRunEventSchema,
  stampEvent: (detail, { id, sequence, timeMs }) => ({ sequence, pipelineRunId: id, time: timestampFromMs(timeMs), event: detail }),
  sequenceOf: (e) => e.sequence,
  isTerminal: (r) => isFinished(r.status),
};

export type PipelineStore = ResourceStore<typeof PipelineRunSchema, typeof PipelineRunEventSchema, EventDetail>;

const statusChanged = (status: PipelineRunStatus, failure?: Failure): { body: EventDetail } => ({
  body: { case: "statusChanged", value: { $typeName: "ragtune.gateway.v1.PipelineRunStatusChange", status, ...(failure === undefined ? {} : { failure }) } } as EventDetail,
});
const stageChanged = (state: PipelineStageState): { body: EventDetail } => ({
  body: { case: "stageChanged", value: create(PipelineStageStateSchema, state) } as EventDetail,
});

const userFailure = (message: string, reason: string, field = ""): Failure => create(FailureSchema, { kind: FailureKind.USER_ERROR, message, reason, field });
const systemFailure = (message: string, reason = "SYSTEM_ERROR"): Failure => create(FailureSchema, { kind: FailureKind.SYSTEM_ERROR, message, reason });

/** Upstream errors worth waiting out (the service restarts, is overloaded or briefly unreachable). */
function isTransient(err: unknown): boolean {
  if (!(err instanceof ConnectError)) return false;
  return [Code.Unavailable, Code.DeadlineExceeded, Code.ResourceExhausted, Code.Aborted, Code.Unknown, Code.Internal].includes(err.code);
}

/** What a stage's upstream resource looks like now. */
interface StageSnapshot {
  phase: "running" | "succeeded" | "failed" | "cancelled";
  done: number;
  total: number;
  unit: string;
  detail: string;
  failure?: Failure;
}

/** One stage's upstream: how to start it (idempotently), read it, follow it and cancel it. */
interface StageDriver {
  /** Starts the stage's upstream work; returns the resource it created, or why the stage is skipped. */
  start(run: PipelineRun, key: string, signal: AbortSignal): Promise<{ id: string } | { skipped: string }>;
  read(id: string): Promise<StageSnapshot>;
  /** The resource's events (any that arrive mean "read again"); ends when the resource finished. */
  watch?(id: string, fromSequence: number, signal: AbortSignal): AsyncIterable<{ sequence: number }>;
  cancel?(id: string): Promise<void>;
}

export interface PipelinesOptions {
  bus: Bus;
  /** Bucket/stream prefix (GATEWAY_BUCKET_PREFIX). */
  prefix: string;
  ingest: Pick<Client<typeof IngestService>, "ingestDocuments" | "getIngestRun" | "watchIngestRun">;
  dataset: Pick<Client<typeof DatasetService>, "buildDatasetVersion" | "getDatasetVersion" | "watchDatasetVersion" | "cancelDatasetBuild">;
  trainer: Pick<Client<typeof TrainerService>, "createJob" | "getJob" | "watchJob" | "cancelJob">;
  evals: Pick<Client<typeof EvalService>, "createEvalRun" | "getEvalRun" | "watchEvalRun" | "cancelEvalRun">;
  promotion: Pick<Promotions, "promote" | "stageAdapter">;
  promotions: Pick<PromotionStore, "current">;
  /** The model endpoint the gateway serves with (LLM_BASE_URL): the eval stage evaluates there. */
  endpointUrl: string;
  /** Base model name at the endpoint (LLM_MODEL), when the spec names none. */
  servedBaseModel?: string | undefined;
  /** Base model folder for training when the spec names none (GATEWAY_PIPELINE_BASE_MODEL). */
  baseModel?: string | undefined;
  logger: Logger;
  /** How long a claim on a run lasts without renewal. */
  leaseMs: number;
  /** Shortest time between two progress writes of a stage. Default 1 s. */
  progressEveryMs?: number;
  /** How long the train stage waits for the trainer to learn of a new dataset version. Default 60 s. */
  trainerCatchUpMs?: number;
  storeOptions?: ResourceStoreOptions;
  /** Test hook: awaited at named steps of a run (a test kills the gateway there). */
  onStep?: (runId: string, step: `${"started" | "recorded" | "finished"}:${string}`) => void | Promise<void>;
}

/** A validated StartPipelineRun request. */
interface NormalizedStart {
  collection: string;
  spec: PipelineSpec;
  stages: Set<PipelineStage>;
}

/**
 * The pipeline runs of this gateway: created by StartPipelineRun, driven by a LeasedWorkRunner (one run at a time per
 * replica), cancelled by CancelPipelineRun (the running stage's upstream resource is cancelled too).
 */
export class Pipelines {
  readonly #o: PipelinesOptions;
  readonly #drivers: Map<PipelineStage, StageDriver>;
  readonly #runner: LeasedWorkRunner<typeof PipelineRunSchema, typeof PipelineRunEventSchema, EventDetail>;

  private constructor(
    readonly store: PipelineStore,
    options: PipelinesOptions,
  ) {
    this.#o = options;
    this.#drivers = this.#makeDrivers();
    this.#runner = new LeasedWorkRunner({
      store,
      what: "pipeline run",
      idField: "pipelineRunId",
      logger: options.logger,
      leaseMs: options.leaseMs,
      isOpen: (run) => !isFinished(run.status),
      isCancelled: (run) => run.status === PipelineRunStatus.CANCELLED,
      claimChange: (run, previous, reason) => {
        const events: { body: EventDetail }[] = [];
        if (run.status === PipelineRunStatus.QUEUED) {
          run.status = PipelineRunStatus.RUNNING;
          run.startedAt = timestampNow();
          events.push(statusChanged(PipelineRunStatus.RUNNING));
        } else if (previous.epoch > 0) {
          options.logger.warn({ pipelineRunId: run.id, reason }, "pipeline run taken over; it continues at its current stage");
        }
        return { state: run, events };
      },
      work: (claimed) => this.#execute(claimed),
    });
  }

  static async open(options: PipelinesOptions): Promise<Pipelines> {
    const store = await ResourceStore.open(options.bus, pipelineRunKind, {
      ...options.storeOptions,
      bucket: `${options.prefix}-pipeline-runs`,
      stream: `${options.prefix.toUpperCase().replace(/-/g, "_")}_PIPELINE_HISTORY`,
      subjectPrefix: `${options.prefix}.pipeline-history`,
    });
    return new Pipelines(store, options);
  }

  /** This replica's name in the claims of the runs it drives. */
  get owner(): string {
    return this.#runner.owner;
  }

  /** Picks up the unfinished runs nobody holds (after a restart), now and every half lease. */
  resume(): Promise<string[]> {
    return this.#runner.resume();
  }

  /** Interrupts the running run (it resumes on the next start or another replica). */
  close(): Promise<void> {
    return this.#runner.close();
  }

  /** Validates the request, starts the ingest of its sources (so the documents are safe upstream) and queues the run. */
  async start(req: StartPipelineRunRequest, collection: string, scope: string, trigger = "api"): Promise<PipelineRun> {
    const n = this.#normalize(req, collection);
    const id =
      req.clientRequestId !== ""
        ? `pipe-${createHash("sha256").update(`${scope}\n${n.collection}\n${req.clientRequestId}`).digest("hex").slice(0, 20)}`
        : `pipe-${randomBytes(10).toString("hex")}`;
    const existing = await this.store.get(id);
    if (existing !== null) return existing.state;
    await this.#checkReferences(n.collection, n.spec);

    const now = timestampNow();
    const stages = PIPELINE_STAGES.map((stage) =>
      create(PipelineStageStateSchema, {
        stage,
        status: n.stages.has(stage) ? PipelineStageStatus.PENDING : PipelineStageStatus.SKIPPED,
        detail: n.stages.has(stage) ? "" : "not one of this run's stages",
      }),
    );
    const ingestStage = stages[0]!;
    if (n.stages.has(PipelineStage.INGEST)) {
      if (n.spec.sources.length === 0) {
        ingestStage.status = PipelineStageStatus.SKIPPED;
        ingestStage.detail = "no sources: the collection as it is";
      } else {
        // The documents go upstream now: the run's state keeps only their names (a resource record must stay small).
        const { run } = await this.#o.ingest.ingestDocuments({
          collection: n.collection,
          sources: n.spec.sources,
          ...(n.spec.chunking === undefined ? {} : { chunking: n.spec.chunking }),
          clientRequestId: `${id}-ingest`,
        });
        ingestStage.status = PipelineStageStatus.RUNNING;
        ingestStage.resourceId = run!.id;
        ingestStage.startedAt = now;
        ingestStage.progressTotal = BigInt(run!.documentsTotal);
        ingestStage.progressUnit = "documents";
      }
    }
    const spec = create(PipelineSpecSchema, {
      ...n.spec,
      sources: n.spec.sources.map((s) =>
        s.source.case === "inline"
          ? create(DocumentSourceSchema, { source: { case: "inline", value: { filename: s.source.value.filename, mediaType: s.source.value.mediaType } } })
          : s,
      ),
      stages: PIPELINE_STAGES.filter((s) => n.stages.has(s)),
    });
    const first = PIPELINE_STAGES.find((s) => n.stages.has(s))!;
    const state = create(PipelineRunSchema, { id, collection: n.collection, status: PipelineRunStatus.QUEUED, currentStage: first, stages, spec, createdAt: now, trigger });
    let stored: PipelineRun;
    try {
      stored = (await this.store.create(id, state, [statusChanged(PipelineRunStatus.QUEUED), ...(ingestStage.resourceId ? [stageChanged(ingestStage)] : [])])).state;
    } catch (err) {
      if ((err as Error).name !== "ResourceExistsError") throw err;
      stored = (await this.store.get(id))!.state; // a concurrent retry with the same client_request_id
    }
    this.#o.logger.info({ pipelineRunId: id, collection: n.collection, stages: spec.stages.map(stageName), trigger }, "pipeline run queued");
    this.#runner.submit(id);
    return stored;
  }

  async get(id: string): Promise<PipelineRun> {
    const r = id.trim() === "" ? null : await this.store.get(id.trim());
    if (r === null) throw notFound("pipeline run", id);
    return r.state;
  }

  /** Every run (newest first), or those of one collection. */
  async list(where: (run: PipelineRun) => boolean = () => true): Promise<PipelineRun[]> {
    const all = (await this.store.list((r) => where(r.state))).map((r) => r.state);
    const ms = (r: PipelineRun) => Number(r.createdAt?.seconds ?? 0n) * 1000 + Math.floor((r.createdAt?.nanos ?? 0) / 1e6);
    return all.sort((a, b) => ms(b) - ms(a) || b.id.localeCompare(a.id));
  }

  watch(id: string, fromSequence: number, signal: AbortSignal): AsyncGenerator<PipelineRunEvent> {
    return this.store.watch(id, { fromSequence: Math.max(1, fromSequence), signal });
  }

  /** Cancels a run and its running stage's upstream work. FAILED_PRECONDITION for a finished run. */
  async cancel(id: string): Promise<PipelineRun> {
    const run = await this.get(id);
    if (isFinished(run.status)) {
      throw failedPrecondition(`pipeline run ${run.id} has already finished (${PipelineRunStatus[run.status].toLowerCase()}); only queued or running runs can be cancelled`);
    }
    let upstream: { stage: PipelineStage; id: string } | undefined;
    const cancelled = await this.store.modify(run.id, (state) => {
      if (isFinished(state.status)) return null;
      const events = [];
      for (const st of state.stages) {
        if (st.status !== PipelineStageStatus.RUNNING && st.status !== PipelineStageStatus.PENDING) continue;
        if (st.status === PipelineStageStatus.RUNNING && st.resourceId !== "") upstream = { stage: st.stage, id: st.resourceId };
        st.status = PipelineStageStatus.CANCELLED;
        st.finishedAt = timestampNow();
        events.push(stageChanged(st));
      }
      state.status = PipelineRunStatus.CANCELLED;
      state.finishedAt = timestampNow();
      events.push(statusChanged(PipelineRunStatus.CANCELLED));
      return { state, events };
    });
    if (upstream !== undefined) await this.#cancelUpstream(upstream.stage, upstream.id);
    this.#o.logger.info({ pipelineRunId: run.id }, "pipeline run cancelled");
    return cancelled.state;
  }

  async #cancelUpstream(stage: PipelineStage, id: string): Promise<void> {
    try {
      await this.#drivers.get(stage)?.cancel?.(id);
    } catch (err) {
      // Finished meanwhile (FAILED_PRECONDITION) or unreachable: the stage's own service ends it either way.
      if (!(err instanceof ConnectError && err.code === Code.FailedPrecondition)) {
        this.#o.logger.warn({ err, stage: stageName(stage), upstreamId: id }, "could not cancel the stage's upstream work");
      }
    }
  }

  #normalize(req: StartPipelineRunRequest, collection: string): NormalizedStart {
    const spec = create(PipelineSpecSchema, req.spec ?? {});
    const picked = spec.stages.length === 0 ? [...PIPELINE_STAGES] : spec.stages;
    for (const s of picked) {
      if (!PIPELINE_STAGES.includes(s as (typeof PIPELINE_STAGES)[number])) throw invalidArgument("spec.stages", `unknown stage ${s}; use ingest, dataset, train, eval, promote`);
    }
    const stages = new Set(picked);
    if (stages.size !== picked.length) throw invalidArgument("spec.stages", "a stage is named twice");
    const positions = [...stages].map((s) => PIPELINE_STAGES.indexOf(s as (typeof PIPELINE_STAGES)[number])).sort((a, b) => a - b);
    if (positions.some((p, i) => i > 0 && p !== positions[i - 1]! + 1)) {
      throw invalidArgument("spec.stages", "stages must be consecutive in pipeline order (ingest, dataset, train, eval, promote), e.g. train, eval, promote");
    }
    const has = (s: PipelineStage) => stages.has(s);
    if (!has(PipelineStage.INGEST) && spec.sources.length > 0) throw invalidArgument("spec.sources", "sources are given but the run has no ingest stage; add it or drop the sources");
    if (has(PipelineStage.TRAIN) && !has(PipelineStage.DATASET) && spec.datasetVersionId.trim() === "") {
      throw invalidArgument("spec.dataset_version_id", "a run that trains without building a dataset needs dataset_version_id (a READY version of the collection)");
    }
    if ((has(PipelineStage.EVAL) || has(PipelineStage.PROMOTE)) && !has(PipelineStage.TRAIN) && spec.jobId.trim() === "") {
      throw invalidArgument("spec.job_id", "a run that evaluates or promotes without training needs job_id (a SUCCEEDED trainer job)");
    }
    if (has(PipelineStage.TRAIN) && spec.baseModel.trim() === "") {
      if (this.#o.baseModel === undefined) {
        throw invalidArgument("spec.base_model", "the run trains but names no base_model and the gateway has no GATEWAY_PIPELINE_BASE_MODEL; name the base model folder");
      }
      spec.baseModel = this.#o.baseModel;
    }
    if (spec.evalMaxItems !== undefined && spec.evalMaxItems < 1) throw invalidArgument("spec.eval_max_items", "must be at least 1 (leave it unset for the whole test split)");
    spec.datasetVersionId = spec.datasetVersionId.trim();
    spec.jobId = spec.jobId.trim();
    spec.initAdapterJobId = spec.initAdapterJobId.trim();
    if (spec.initAdapterJobId !== "" && !has(PipelineStage.TRAIN)) throw invalidArgument("spec.init_adapter_job_id", "the run does not train; a warm start needs the train stage");
    return { collection, spec, stages };
  }

  /**
   * The jobs and dataset versions a spec names belong to the run's collection: a run works only with its own
   * collection's data (and so only with its tenant's), whatever IDs a caller passes.
   */
  async #checkReferences(collection: string, spec: PipelineSpec): Promise<void> {
    const jobOwner = async (jobId: string) => (await this.#o.trainer.getJob({ jobId })).job?.collection;
    const versionOwner = async (datasetVersionId: string) => (await this.#o.dataset.getDatasetVersion({ datasetVersionId })).version?.collection;
    const references: { field: string; id: string; what: string; owner: (id: string) => Promise<string | undefined> }[] = [
      { field: "spec.job_id", id: spec.jobId, what: "trainer job", owner: jobOwner },
      { field: "spec.init_adapter_job_id", id: spec.initAdapterJobId, what: "trainer job", owner: jobOwner },
      { field: "spec.dataset_version_id", id: spec.datasetVersionId, what: "dataset version", owner: versionOwner },
      { field: "spec.dataset_base_version_id", id: spec.datasetBaseVersionId, what: "dataset version", owner: versionOwner },
    ];
    for (const { field, id, what, owner } of references) {
      if (id === "") continue;
      const owning = await owner(id).catch((err: unknown) => {
        if (err instanceof ConnectError && err.code === Code.NotFound) throw invalidArgument(field, `${what} "${id}" not found`);
        throw err;
      });
      if (owning !== undefined && owning !== collection) throw invalidArgument(field, `${what} ${id} belongs to another collection than "${collection}"`);
    }
  }

  async #execute({ id, resource, fence, signal, log }: LeasedWork<typeof PipelineRunSchema>): Promise<void> {
    let run = resource.state;
    const write = async (change: (state: PipelineRun) => { body: EventDetail }[] | null): Promise<PipelineRun> => {
      let cancelled = false;
      const r = await this.store.modify(
        id,
        (state) => {
          if (isFinished(state.status)) {
            cancelled = state.status === PipelineRunStatus.CANCELLED;
            return null;
          }
          const events = change(state);
          return events === null ? null : { state, events };
        },
        { fence },
      );
      if (cancelled) throw new WorkCancelledError();
      return r.state;
    };
    let current: PipelineStageState | undefined;
    try {
      for (const stage of PIPELINE_STAGES) {
        current = run.stages.find((s) => s.stage === stage)!;
        if (current.status === PipelineStageStatus.SUCCEEDED || current.status === PipelineStageStatus.SKIPPED) continue;
        run = await this.#runStage(run, stage, write, signal, log);
        if (isFinished(run.status)) return;
      }
      current = undefined;
      await write((state) => {
        state.status = PipelineRunStatus.SUCCEEDED;
        state.finishedAt = timestampNow();
        return [statusChanged(PipelineRunStatus.SUCCEEDED)];
      });
      log.info("pipeline run succeeded");
      await this.#o.onStep?.(id, "finished:run");
    } catch (err) {
      const why = signal.aborted ? (signal.reason as unknown) : err;
      if (why instanceof WorkCancelledError) {
        const latest = (await this.store.get(id))?.state;
        const st = latest?.stages.find((s) => s.stage === current?.stage);
        if (st !== undefined && st.resourceId !== "") await this.#cancelUpstream(st.stage, st.resourceId);
        log.info("pipeline run cancelled");
        return;
      }
      if (signal.aborted || err instanceof OwnershipLostError || this.#runner.stopped) throw why; // resumes elsewhere or on the next start
      log.error({ err }, "pipeline run failed with a system error");
      const failure = systemFailure(`the pipeline stopped at ${current ? stageName(current.stage) : "its end"}: ${err instanceof Error ? err.message : String(err)}`);
      await write((state) => this.#fail(state, current?.stage, failure)).catch((e: unknown) => log.warn({ err: e }, "could not record the failure"));
    }
  }

  #fail(state: PipelineRun, stage: PipelineStage | undefined, failure: Failure): { body: EventDetail }[] {
    const events = [];
    const st = state.stages.find((s) => s.stage === stage);
    if (st !== undefined) {
      st.status = PipelineStageStatus.FAILED;
      st.failure = failure;
      st.finishedAt = timestampNow();
      events.push(stageChanged(st));
    }
    state.status = PipelineRunStatus.FAILED;
    state.failure = failure;
    state.finishedAt = timestampNow();
    events.push(statusChanged(PipelineRunStatus.FAILED, failure));
    return events;
  }

  async #runStage(
    run: PipelineRun,
    stage: PipelineStage,
    write: (change: (state: PipelineRun) => { body: EventDetail }[] | null) => Promise<PipelineRun>,
    signal: AbortSignal,
    log: Logger,
  ): Promise<PipelineRun> {
    const driver = this.#drivers.get(stage)!;
    const name = stageName(stage);
    const stageOf = (state: PipelineRun) => state.stages.find((s) => s.stage === stage)!;
    let resourceId = stageOf(run).resourceId;
    if (resourceId === "") {
      run = await write((state) => {
        const st = stageOf(state);
        state.currentStage = stage;
        if (st.status === PipelineStageStatus.RUNNING) return null;
        st.status = PipelineStageStatus.RUNNING;
        st.startedAt = timestampNow();
        return [stageChanged(st)];
      });
      let started: { id: string } | { skipped: string };
      try {
        started = await this.#retrying(
          `starting the ${name} stage`,
          signal,
          log,
          () => driver.start(run, `${run.id}-${name}`, signal),
          async (why) => {
            run = await write((state) => {
              const st = stageOf(state);
              st.detail = `waiting for the ${name} service: ${why}`;
              return [stageChanged(st)];
            });
          },
        );
      } catch (err) {
        if (!(err instanceof ConnectError) || isTransient(err)) throw err;
        log.warn({ err, stage: name }, "pipeline stage could not start");
        return write((state) => this.#fail(state, stage, userFailure(`${name}: ${err.rawMessage}`, `${name.toUpperCase()}_REJECTED`)));
      }
      await this.#o.onStep?.(run.id, `started:${name}`);
      if ("skipped" in started) {
        log.info({ stage: name, why: started.skipped }, "pipeline stage skipped");
        return write((state) => {
          const st = stageOf(state);
          st.status = PipelineStageStatus.SKIPPED;
          st.detail = started.skipped;
          st.finishedAt = timestampNow();
          return [stageChanged(st)];
        });
      }
      resourceId = started.id;
      run = await write((state) => {
        const st = stageOf(state);
        st.resourceId = started.id;
        return [stageChanged(st)];
      });
      log.info({ stage: name, upstreamId: resourceId }, "pipeline stage started");
      await this.#o.onStep?.(run.id, `recorded:${name}`);
    } else if (run.currentStage !== stage) {
      run = await write((state) => {
        state.currentStage = stage;
        return [];
      });
    }

    const final = await this.#follow(driver, resourceId, signal, log, name, async (snap) => {
      run = await write((state) => {
        const st = stageOf(state);
        if (st.progressDone === BigInt(snap.done) && st.progressTotal === BigInt(snap.total) && st.detail === snap.detail) return null;
        st.progressDone = BigInt(snap.done);
        st.progressTotal = BigInt(snap.total);
        st.progressUnit = snap.unit;
        st.detail = snap.detail;
        return [stageChanged(st)];
      });
    });
    if (final.phase === "succeeded") {
      log.info({ stage: name, upstreamId: resourceId, detail: final.detail }, "pipeline stage succeeded");
      run = await write((state) => {
        const st = stageOf(state);
        st.status = PipelineStageStatus.SUCCEEDED;
        st.progressDone = BigInt(final.done);
        st.progressTotal = BigInt(final.total);
        st.progressUnit = final.unit;
        st.detail = final.detail;
        st.finishedAt = timestampNow();
        return [stageChanged(st)];
      });
      await this.#o.onStep?.(run.id, `finished:${name}`);
      return run;
    }
    const failure =
      final.failure ??
      userFailure(final.phase === "cancelled" ? `${name} ${resourceId} was cancelled outside the pipeline` : `${name} ${resourceId} failed`, `${name.toUpperCase()}_${final.phase.toUpperCase()}`);
    log.warn({ stage: name, upstreamId: resourceId, failure: failure.message }, "pipeline stage did not succeed");
    return write((state) => this.#fail(state, stage, failure));
  }

  /** Follows a stage's upstream resource until it finishes: reads it on each burst of its events (at most every progressEveryMs). */
  async #follow(driver: StageDriver, id: string, signal: AbortSignal, log: Logger, name: string, onProgress: (s: StageSnapshot) => Promise<void>): Promise<StageSnapshot> {
    const every = this.#o.progressEveryMs ?? 1_000;
    let from = 1;
    let lastRead = 0;
    let failures = 0;
    for (;;) {
      signal.throwIfAborted();
      try {
        let snap = await driver.read(id);
        lastRead = Date.now();
        if (snap.phase !== "running" || driver.watch === undefined) return snap;
        await onProgress(snap);
        for await (const event of driver.watch(id, from, signal)) {
          from = event.sequence + 1;
          failures = 0;
          if (Date.now() - lastRead < every) continue;
          snap = await driver.read(id);
          lastRead = Date.now();
          if (snap.phase !== "running") return snap;
          await onProgress(snap);
        }
      } catch (err) {
        if (signal.aborted || !isTransient(err)) throw err;
        failures += 1;
        const waitMs = Math.min(10_000, 250 * 2 ** Math.min(failures, 6));
        log.warn({ err, stage: name, upstreamId: id, waitMs }, "lost the stage's upstream; following it again");
        await sleep(waitMs, undefined, { signal });
      }
    }
  }

  /** Runs `call`, waiting out transient upstream errors (the service restarting) until the run is cancelled. */
  async #retrying<T>(what: string, signal: AbortSignal, log: Logger, call: () => Promise<T>, onWait: (why: string) => Promise<void>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      signal.throwIfAborted();
      try {
        return await call();
      } catch (err) {
        if (signal.aborted || !isTransient(err)) throw err;
        const waitMs = Math.min(10_000, 250 * 2 ** Math.min(attempt, 6));
        log.warn({ err, waitMs }, `${what} failed; retrying`);
        if (attempt === 3) await onWait((err as ConnectError).rawMessage);
        await sleep(waitMs, undefined, { signal });
      }
    }
  }

  /** The trainer job the eval and promote stages use: this run's train stage, else the spec's job_id. */
  static jobOf(run: PipelineRun): string {
    return run.stages.find((s) => s.stage === PipelineStage.TRAIN && s.status !== PipelineStageStatus.SKIPPED)?.resourceId || run.spec!.jobId;
  }

  #makeDrivers(): Map<PipelineStage, StageDriver> {
    const o = this.#o;
    const drivers = new Map<PipelineStage, StageDriver>();
    drivers.set(PipelineStage.INGEST, {
      async start() {
        throw new ConnectError("the ingest stage starts with the run; its documents are no longer at hand", Code.FailedPrecondition);
      },
      async read(id) {
        const run = (await o.ingest.getIngestRun({ runId: id })).run!;
        const failed = run.documents.filter((d) => d.error !== undefined).length;
        const base = { done: run.documentsDone, total: run.documentsTotal, unit: "documents" };
        switch (run.status) {
          case IngestRunStatus.SUCCEEDED:
          case IngestRunStatus.PARTIALLY_SUCCEEDED:
            return { ...base, phase: "succeeded", detail: `${run.documentsTotal} documents, ${run.statistics?.tokenStats?.count ?? 0} chunks${failed > 0 ? `; ${failed} documents failed (see ingest run ${id})` : ""}` };
          case IngestRunStatus.FAILED:
            return { ...base, phase: "failed", detail: "", failure: run.failure ?? userFailure(`ingest run ${id} failed: no document could be ingested`, "INGEST_FAILED") };
          default:
            return { ...base, phase: "running", detail: `${run.documentsDone}/${run.documentsTotal} documents` };
        }
      },
      async *watch(id, fromSequence, signal) {
        for await (const { event } of o.ingest.watchIngestRun({ runId: id, fromSequence }, { signal, timeoutMs: 0 })) if (event) yield event;
      },
    });
    drivers.set(PipelineStage.DATASET, {
      async start(run, key) {
        const { version } = await o.dataset.buildDatasetVersion({
          collection: run.collection,
          ...(run.spec?.dataset ? { settings: run.spec.dataset } : {}),
          baseVersionId: run.spec?.datasetBaseVersionId ?? "",
          clientRequestId: key,
        });
        return { id: version!.id };
      },
      async read(id) {
        const v = (await o.dataset.getDatasetVersion({ datasetVersionId: id })).version!;
        const base = { done: v.chunksDone, total: v.chunksTotal, unit: "chunks" };
        const examples = (v.stats?.splits ?? []).reduce((n, s) => n + s.examples, 0);
        switch (v.status) {
          case DatasetVersionStatus.READY:
            return { ...base, phase: "succeeded", detail: `${examples} examples (${(v.stats?.splits ?? []).map((s) => s.examples).join("/")} train/val/test)` };
          case DatasetVersionStatus.FAILED:
            return { ...base, phase: "failed", detail: "", failure: v.failure ?? userFailure(`dataset version ${id} failed`, "DATASET_FAILED") };
          case DatasetVersionStatus.CANCELLED:
            return { ...base, phase: "cancelled", detail: "" };
          default:
            return { ...base, phase: "running", detail: `${v.chunksDone}/${v.chunksTotal} chunks` };
        }
      },
      async *watch(id, fromSequence, signal) {
        for await (const { event } of o.dataset.watchDatasetVersion({ datasetVersionId: id, fromSequence }, { signal, timeoutMs: 0 })) if (event) yield event;
      },
      async cancel(id) {
        await o.dataset.cancelDatasetBuild({ datasetVersionId: id });
      },
    });
    drivers.set(PipelineStage.TRAIN, {
      async start(run, key, signal) {
        const spec = run.spec!;
        const datasetVersionId = run.stages.find((s) => s.stage === PipelineStage.DATASET && s.status === PipelineStageStatus.SUCCEEDED)?.resourceId || spec.datasetVersionId;
        const request = {
          baseModel: spec.baseModel,
          dataset: { case: "datasetVersionId" as const, value: datasetVersionId },
          ...(spec.hyperparameters ? { hyperparameters: spec.hyperparameters } : {}),
          initAdapterJobId: spec.initAdapterJobId,
          promptTemplate: spec.promptTemplate,
          displayName: `pipeline ${run.id}`,
          collection: run.collection,
          clientRequestId: key,
        };
        // The trainer learns of a READY version from the dataset service's event, a moment after it was announced.
        const deadline = Date.now() + (o.trainerCatchUpMs ?? 60_000);
        for (;;) {
          try {
            return { id: (await o.trainer.createJob(request)).job!.id };
          } catch (err) {
            const unknown = err instanceof ConnectError && err.code === Code.FailedPrecondition && /unknown to the trainer/.test(err.message);
            if (!unknown || Date.now() > deadline) throw err;
            await sleep(250, undefined, { signal });
          }
        }
      },
      async read(id) {
        const job = (await o.trainer.getJob({ jobId: id })).job!;
        const p = job.progress;
        const base = { done: p?.step ?? 0, total: p?.totalSteps ?? 0, unit: "steps" };
        const loss = p?.trainLoss !== undefined ? `, loss ${p.trainLoss.toFixed(4)}` : "";
        const val = p?.valLoss !== undefined ? `, val loss ${p.valLoss.toFixed(4)}` : "";
        switch (job.status) {
          case JobStatus.SUCCEEDED:
            return { ...base, phase: "succeeded", detail: `adapter ${job.adapter?.id ?? ""} after ${p?.step ?? 0} steps${loss}${val}` };
          case JobStatus.FAILED:
            return { ...base, phase: "failed", detail: "", failure: job.failure ?? userFailure(`trainer job ${id} failed`, "TRAIN_FAILED") };
          case JobStatus.CANCELLED:
            return { ...base, phase: "cancelled", detail: "" };
          default:
            return { ...base, phase: "running", detail: `${JobStatus[job.status].toLowerCase()}, step ${p?.step ?? 0}/${p?.totalSteps ?? 0}${loss}${val}` };
        }
      },
      async *watch(id, fromSequence, signal) {
        for await (const { event } of o.trainer.watchJob({ jobId: id, fromSequence }, { signal, timeoutMs: 0 })) if (event) yield event;
      },
      async cancel(id) {
        await o.trainer.cancelJob({ jobId: id });
      },
    });
    drivers.set(PipelineStage.EVAL, {
      async start(run, key) {
        const spec = run.spec!;
        const jobId = Pipelines.jobOf(run);
        // The endpoint must serve the adapter before it can be evaluated: load it (not promoted) under its adapter ID.
        const adapterId = await o.promotion.stageAdapter(jobId);
        const job = (await o.trainer.getJob({ jobId })).job!;
        const datasetVersionId =
          run.stages.find((s) => s.stage === PipelineStage.DATASET && s.status === PipelineStageStatus.SUCCEEDED)?.resourceId ||
          (job.dataset.case === "datasetVersionId" ? job.dataset.value : spec.datasetVersionId);
        if (datasetVersionId === "") throw failedPrecondition(`trainer job ${jobId} was not trained on a dataset version; the eval stage needs one for its test split`);
        const { run: evalRun } = await o.evals.createEvalRun({
          source: { case: "datasetVersionId", value: datasetVersionId },
          endpointUrl: o.endpointUrl,
          baseModel: spec.servedBaseModel || o.servedBaseModel || "",
          adapters: [adapterId],
          ...(spec.evalSampling ? { sampling: spec.evalSampling } : {}),
          ...(spec.evalMaxItems === undefined ? {} : { maxItems: spec.evalMaxItems }),
          collection: run.collection,
          clientRequestId: key,
        });
        return { id: evalRun!.id };
      },
      async read(id) {
        const r = (await o.evals.getEvalRun({ evalRunId: id })).run!;
        const base = { done: r.answersDone, total: r.answersTotal, unit: "answers" };
        switch (r.status) {
          case EvalRunStatus.SUCCEEDED: {
            const failing = (r.report?.gates ?? []).filter((g) => !g.passed).map((g) => g.name);
            return { ...base, phase: "succeeded", detail: r.report?.gatesPassed ? "every promotion gate passed" : `gates not passed: ${failing.join(", ") || "none checked"}` };
          }
          case EvalRunStatus.FAILED:
            return { ...base, phase: "failed", detail: "", failure: r.failure ?? userFailure(`eval run ${id} failed`, "EVAL_FAILED") };
          case EvalRunStatus.CANCELLED:
            return { ...base, phase: "cancelled", detail: "" };
          default:
            return { ...base, phase: "running", detail: `${r.answersDone}/${r.answersTotal} answers` };
        }
      },
      async *watch(id, fromSequence, signal) {
        for await (const { event } of o.evals.watchEvalRun({ evalRunId: id, fromSequence }, { signal, timeoutMs: 0 })) if (event) yield event;
      },
      async cancel(id) {
        await o.evals.cancelEvalRun({ evalRunId: id });
      },
    });
    drivers.set(PipelineStage.PROMOTE, {
      async start(run) {
        const policy = run.spec?.promotion;
        if (policy?.autoPromote === false) return { skipped: "auto_promote is off: promote the adapter with PromoteAdapter" };
        const jobId = Pipelines.jobOf(run);
        const evalRunId = run.stages.find((s) => s.stage === PipelineStage.EVAL && s.status === PipelineStageStatus.SUCCEEDED)?.resourceId ?? "";
        const job = (await o.trainer.getJob({ jobId })).job;
        const current = await o.promotions.current(run.collection);
        // Resumed after the promotion landed: the collection already serves this adapter from this run's evidence.
        if (current !== undefined && job?.adapter !== undefined && current.adapterId === job.adapter.id && current.evalRunId === evalRunId) return { id: current.adapterId };
        try {
          const adapter = await o.promotion.promote({
            collection: run.collection,
            jobId,
            evalRunId,
            force: policy?.force ?? false,
            pin: policy?.pin ?? false,
            replacePinned: policy?.replacePinned ?? false,
          });
          return { id: adapter.adapterId };
        } catch (err) {
          // The gates said no, or the collection is pinned: the run did its work, the adapter just does not serve.
          if (err instanceof ConnectError && err.code === Code.FailedPrecondition && /eval gate|pinned|no succeeded eval run/.test(err.rawMessage)) {
            return { skipped: `not promoted: ${err.rawMessage}` };
          }
          throw err;
        }
      },
      async read(id) {
        return { phase: "succeeded", done: 1, total: 1, unit: "adapters", detail: `adapter ${id} serves the collection` };
      },
    });
    return drivers;
  }
}


/** The pipeline RPCs of GatewayService, each limited to the caller's tenant's collections. */
export function createPipelineApis(access: AccessControl | undefined, pipelines: Pipelines, updates: CollectionUpdates): Partial<ServiceImpl<typeof GatewayService>> {
  const visible = async (ctx: HandlerContext, id: string): Promise<PipelineRun> => {
    const run = await pipelines.get(id);
    await requireCollection(access, ctx, run.collection);
    return run;
  };
  return {
    async startPipelineRun(req, ctx) {
      const collection = collectionName(req.collection);
      const caller = callerOf(ctx);
      if (access !== undefined && caller !== undefined) {
        // A run that brings documents into a collection nobody owns creates it for the caller's tenant.
        const owner = await access.tenancy.owner(collection);
        if (owner === undefined && (req.spec?.sources.length ?? 0) > 0) await access.tenancy.grant(collection, caller.tenant);
        else await requireCollection(access, ctx, collection);
      }
      return { run: await pipelines.start(req, collection, caller?.tenant ?? "") };
    },
    async getPipelineRun(req, ctx) {
      return { run: await visible(ctx, req.pipelineRunId) };
    },
    async listPipelineRuns(req, ctx) {
      const caller = callerOf(ctx);
      const only = req.collection.trim() === "" ? undefined : collectionName(req.collection);
      if (only !== undefined) await requireCollection(access, ctx, only);
      const mine = access !== undefined && caller !== undefined ? new Set(await access.tenancy.collections(caller.tenant)) : undefined;
      const runs = await pipelines.list((r) => (only === undefined || r.collection === only) && (mine === undefined || mine.has(r.collection)));
      const page = paginate(runs, req.page, `pipeline-runs:${only ?? ""}`);
      return { runs: page.items, page: create(PageResponseSchema, { nextPageToken: page.nextPageToken, totalSize: page.totalSize }) };
    },
    async *watchPipelineRun(req, ctx) {
      const run = await visible(ctx, req.pipelineRunId);
      for await (const event of pipelines.watch(run.id, req.fromSequence, ctx.signal)) yield { event };
    },
    async cancelPipelineRun(req, ctx) {
      const run = await visible(ctx, req.pipelineRunId);
      return { run: await pipelines.cancel(run.id) };
    },
    async setCollectionUpdatePolicy(req, ctx) {
      const collection = collectionName(req.collection);
      await requireCollection(access, ctx, collection);
      return { policy: await updates.set(collection, req.policy) };
    },
    async getCollectionUpdatePolicy(req, ctx) {
      const collection = collectionName(req.collection);
      await requireCollection(access, ctx, collection);
      return { policy: await updates.get(collection) };
    },
  };
}
