/**
 * Continuous updates: a collection that follows its documents gets a new adapter after its documents change, with no
 * person in the loop. An ingest run that changed chunks (ragtune.ingest.run.completed, one durable consumer shared by
 * the gateway replicas) marks the collection's policy pending; every replica's scheduler starts the update once the
 * change settled (`settle_seconds` after the first change, and not sooner than that after the previous update) and no
 * update of the collection is running: a pipeline run of dataset (incremental from the newest ready version, same
 * settings) → train (from the base, or with `retrain_from` PROMOTED_ADAPTER on from the adapter serving the collection)
 * → eval → promote (gated as every promotion). The run's idempotency key is made of the pending
 * mark, so replicas racing to start the same update start it once; a burst of edits makes one update.
 */
import { resolve } from "node:path";
import { clone, create } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs, timestampNow } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { type Bus, type EventSubscription, RevisionConflictError, type TypedKv } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  type CollectionUpdatePolicy,
  CollectionUpdatePolicySchema,
  type DatasetService,
  DatasetVersionStatus,
  type IngestRunCompleted,
  IngestRunCompletedSchema,
  IngestRunStatus,
  PageRequestSchema,
  PipelineSpecSchema,
  PipelineStage,
  RetrainFrom,
} from "@ragtune/proto";
import { invalidArgument } from "@ragtune/rpc";
import { isFinished, type Pipelines } from "./pipeline.js";
import { kvKey, type PromotionStore } from "./promotion-store.js";

const DEFAULT_SETTLE_SECONDS = 60;
const UPDATE_STAGES = [PipelineStage.DATASET, PipelineStage.TRAIN, PipelineStage.EVAL, PipelineStage.PROMOTE];

export interface CollectionUpdatesOptions {
  bus: Bus;
  prefix: string;
  pipelines: Pick<Pipelines, "start" | "get">;
  dataset: Pick<Client<typeof DatasetService>, "listDatasetVersions">;
  /** The adapter serving a collection: an update's base model and, with RETRAIN_FROM_PROMOTED_ADAPTER, its start. */
  promotions: Pick<PromotionStore, "current">;
  logger: Logger;
  /** How often each replica looks for updates that are due. Default 1 s. */
  tickMs?: number;
}

export class CollectionUpdates {
  readonly #o: CollectionUpdatesOptions;
  readonly #kv: TypedKv<typeof CollectionUpdatePolicySchema>;
  #timer: NodeJS.Timeout | undefined;
  #ticking: Promise<void> | undefined;
  #events: EventSubscription | undefined;

  private constructor(options: CollectionUpdatesOptions, kv: TypedKv<typeof CollectionUpdatePolicySchema>) {
    this.#o = options;
    this.#kv = kv;
  }

  static async open(options: CollectionUpdatesOptions): Promise<CollectionUpdates> {
    return new CollectionUpdates(options, await options.bus.kv(`${options.prefix}-update-policies`, CollectionUpdatePolicySchema));
  }

  /** Follows ingest runs and starts the scheduler. */
  async start(): Promise<void> {
    this.#events = await this.#o.bus.subscribe({
      durable: `${this.#o.prefix}-updates-on-ingest`,
      schema: IngestRunCompletedSchema,
      deliver: "new",
      handler: async ({ event }) => {
        await this.onIngestRun(event);
      },
    });
    this.#timer = setInterval(() => {
      this.#ticking ??= this.tick()
        .catch((err: unknown) => this.#o.logger.warn({ err }, "collection update scheduler failed; trying again"))
        .finally(() => {
          this.#ticking = undefined;
        });
    }, this.#o.tickMs ?? 1_000);
    this.#timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#events?.stop();
    await this.#ticking;
  }

  /** The collection's policy (defaults when none was set). */
  async get(collection: string): Promise<CollectionUpdatePolicy> {
    const entry = await this.#kv.get(kvKey(collection));
    return entry?.value ?? create(CollectionUpdatePolicySchema, { collection, settleSeconds: DEFAULT_SETTLE_SECONDS });
  }

  /** Sets what a user may set (follow, settle time, spec); the bookkeeping stays. */
  async set(collection: string, policy: CollectionUpdatePolicy | undefined): Promise<CollectionUpdatePolicy> {
    const settle = policy?.settleSeconds ?? DEFAULT_SETTLE_SECONDS;
    if (settle > 86_400) throw invalidArgument("policy.settle_seconds", `must be 0..86400, got ${settle}`);
    if ((policy?.spec?.sources.length ?? 0) > 0) throw invalidArgument("policy.spec.sources", "an update run ingests nothing; leave sources empty");
    if (policy !== undefined && RetrainFrom[policy.retrainFrom] === undefined) throw invalidArgument("policy.retrain_from", `unknown value ${policy.retrainFrom}; use BASE or PROMOTED_ADAPTER`);
    if (policy?.spec?.initAdapterJobId) throw invalidArgument("policy.spec.init_adapter_job_id", "an update starts from the base or the serving adapter (retrain_from), not a fixed job");
    return this.#change(collection, (current) => {
      current.followDocuments = policy?.followDocuments ?? false;
      current.retrainFrom = policy?.retrainFrom ?? RetrainFrom.UNSPECIFIED;
      current.settleSeconds = settle;
      current.spec = policy?.spec === undefined ? undefined : { ...clone(PipelineSpecSchema, policy.spec), stages: [], sources: [] };
      current.updatedAt = timestampNow();
      if (!current.followDocuments) {
        current.pendingSince = undefined;
        current.pendingIngestRunId = "";
      }
      return current;
    });
  }

  /** An ingest run finished: when it changed chunks of a followed collection, its update becomes pending. */
  async onIngestRun(event: IngestRunCompleted): Promise<void> {
    const changes = event.statistics?.chunkChanges;
    if (event.status === IngestRunStatus.FAILED || changes === undefined || changes.added + changes.removed === 0) return;
    let marked = false;
    await this.#change(event.collection, (current) => {
      if (!current.followDocuments || current.pendingSince !== undefined) return null; // not followed, or already pending: one update
      current.pendingSince = timestampNow();
      current.pendingIngestRunId = event.ingestRunId;
      marked = true;
      return current;
    });
    if (marked) this.#o.logger.info({ collection: event.collection, ingestRunId: event.ingestRunId }, "documents changed: collection update pending");
  }

  /** Starts every update that is due. */
  async tick(now = Date.now()): Promise<void> {
    for await (const { value } of this.#kv.entries()) {
      if (!value.followDocuments || value.pendingSince === undefined) continue;
      const settleMs = (value.settleSeconds ?? DEFAULT_SETTLE_SECONDS) * 1000;
      if (now < timestampMs(value.pendingSince) + settleMs) continue;
      if (value.lastUpdateStartedAt !== undefined && now < timestampMs(value.lastUpdateStartedAt) + settleMs) continue;
      if (value.lastUpdateRunId !== "") {
        const last = await this.#o.pipelines.get(value.lastUpdateRunId).catch(() => undefined);
        if (last !== undefined && !isFinished(last.status)) continue; // one update at a time; the next follows it
      }
      await this.#startUpdate(value);
    }
  }

  async #startUpdate(policy: CollectionUpdatePolicy): Promise<void> {
    const collection = policy.collection;
    const pendingMs = timestampMs(policy.pendingSince!);
    const spec = policy.spec === undefined ? create(PipelineSpecSchema) : clone(PipelineSpecSchema, policy.spec);
    spec.stages = [...UPDATE_STAGES];
    spec.sources = [];
    if (spec.dataset === undefined) {
      // Incremental: the newest ready version's settings, so only new and changed chunks generate.
      const { versions } = await this.#o.dataset.listDatasetVersions({
        collection,
        status: DatasetVersionStatus.READY,
        page: create(PageRequestSchema, { pageSize: 1 }),
      });
      const base = versions[0];
      if (base !== undefined) {
        spec.datasetBaseVersionId = base.id;
        spec.dataset = base.settings;
      }
    }
    const serving = await this.#o.promotions.current(collection);
    if (serving !== undefined) {
      if (spec.baseModel === "") spec.baseModel = serving.baseModel;
      if (policy.retrainFrom === RetrainFrom.PROMOTED_ADAPTER && spec.initAdapterJobId === "") {
        if (resolve(spec.baseModel) === resolve(serving.baseModel)) {
          spec.initAdapterJobId = serving.jobId;
          // The adapter's shape is the serving one's: the trainer takes rank, alpha and target modules from it.
          if (spec.hyperparameters !== undefined) {
            spec.hyperparameters.rank = undefined;
            spec.hyperparameters.alpha = undefined;
            spec.hyperparameters.targetModules = [];
          }
        } else {
          this.#o.logger.info({ collection, baseModel: spec.baseModel, serving: serving.baseModel }, "the serving adapter has another base model: the update trains from the base");
        }
      }
    }
    const run = await this.#o.pipelines.start(
      { $typeName: "ragtune.gateway.v1.StartPipelineRunRequest", collection, spec, clientRequestId: `update-${pendingMs}` },
      collection,
      "updates",
      `update after ingest run ${policy.pendingIngestRunId}`,
    );
    await this.#change(collection, (current) => {
      if (current.pendingSince === undefined || timestampMs(current.pendingSince) !== pendingMs) return null; // another replica recorded it
      current.pendingSince = undefined;
      current.pendingIngestRunId = "";
      current.lastUpdateRunId = run.id;
      current.lastUpdateStartedAt = timestampFromMs(Date.now());
      return current;
    });
    this.#o.logger.info({ collection, pipelineRunId: run.id }, "collection update started");
  }

  /** Read-modify-write of a policy with compare-and-set; `change` returns null for no change. */
  async #change(collection: string, change: (current: CollectionUpdatePolicy) => CollectionUpdatePolicy | null): Promise<CollectionUpdatePolicy> {
    const key = kvKey(collection);
    for (;;) {
      const entry = await this.#kv.get(key);
      const current = entry?.value ?? create(CollectionUpdatePolicySchema, { collection, settleSeconds: DEFAULT_SETTLE_SECONDS });
      const next = change(create(CollectionUpdatePolicySchema, current));
      if (next === null) return current;
      try {
        if (entry === null) await this.#kv.create(key, next);
        else await this.#kv.update(key, next, entry.revision);
        return next;
      } catch (err) {
        if (!(err instanceof RevisionConflictError)) throw err;
      }
    }
  }
}
