import { clone, create, equals } from "@bufbuild/protobuf";
import { timestampFromDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  type Bus,
  type Fence,
  type HistoryEvent,
  type OnReconnect,
  ResourceExistsError,
  type ResourceKind,
  ResourceStore,
  type ResourceStoreOptions,
  RevisionConflictError,
  retryTransient,
  type TypedKv,
} from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  type Checkpoint,
  CheckpointSchema,
  type Job,
  type JobEvent,
  JobEventSchema,
  JobLogEntrySchema,
  JobLogLevel,
  JobSchema,
  JobStatus,
  JobStatusChangedSchema,
  TrainerJobEventKind,
  TrainerJobEventSchema,
} from "@ragtune/proto";
import { type JobTransition, isTerminal, transition } from "./job-status.js";

/** Names of the trainer's NATS resources; tests pass their own to isolate. */
export interface JobStoreNames {
  /** KV bucket of job records, key = job ID. */
  jobsBucket: string;
  /** KV bucket of checkpoints, key = `<jobId>.<step, 10 digits>`. */
  checkpointsBucket: string;
  /** KV bucket of the checkpoint-pruning passes in progress (checkpoint-pruning.ts). */
  pruningBucket: string;
  /** Stream of every job's event history, subject `<historySubjectPrefix>.<jobId>`. */
  historyStream: string;
  historySubjectPrefix: string;
}

export const DEFAULT_STORE_NAMES: JobStoreNames = {
  jobsBucket: "trainer-jobs",
  checkpointsBucket: "trainer-checkpoints",
  pruningBucket: "trainer-checkpoint-pruning",
  historyStream: "HISTORY_TRAINER_JOB",
  historySubjectPrefix: "history.trainer-job",
};

/** The event part of a JobEvent (status change, metrics, checkpoint, log). */
export type JobEventDetail = JobEvent["event"];

/** What a change function returns: the new job, and the event recorded with it (none: no history entry). */
export interface JobChange {
  job: Job;
  event?: JobEventDetail;
}

const VERBS: Partial<Record<JobStatus, TrainerJobEventKind>> = {
  [JobStatus.QUEUED]: TrainerJobEventKind.QUEUED,
  [JobStatus.RUNNING]: TrainerJobEventKind.RUNNING,
  [JobStatus.SUCCEEDED]: TrainerJobEventKind.SUCCEEDED,
  [JobStatus.FAILED]: TrainerJobEventKind.FAILED,
  [JobStatus.CANCELLED]: TrainerJobEventKind.CANCELLED,
};

export function checkpointKey(jobId: string, step: number): string {
  return `${jobId}.${String(step).padStart(10, "0")}`;
}

export function checkpointId(jobId: string, step: number): string {
  return `${jobId}-ckpt-${step}`;
}

/** Splits a checkpoint ID into its job ID and step, or undefined when it is not one. */
export function parseCheckpointId(id: string): { jobId: string; step: number } | undefined {
  const m = /^(.+)-ckpt-(\d{1,9})$/.exec(id);
  return m ? { jobId: m[1]!, step: Number(m[2]) } : undefined;
}

/** A training job as a resource of the shared history (libs/bus): state `Job`, history `JobEvent`. */
export const trainerJobKind: ResourceKind<typeof JobSchema, typeof JobEventSchema, JobEventDetail> = {
  kind: "trainer-job",
  stateSchema: JobSchema,
  eventSchema: JobEventSchema,
  stampEvent: (detail, { id, sequence, timeMs }) => ({ sequence, jobId: id, time: timestampFromMs(timeMs), event: detail }),
  sequenceOf: (e) => e.sequence,
  isTerminal: (job) => isTerminal(job.status),
  onCommit: (job, lastSequence) => {
    job.lastSequence = lastSequence;
  },
};

type JobResources = ResourceStore<typeof JobSchema, typeof JobEventSchema, JobEventDetail>;

/**
 * Jobs as resources of the shared history (libs/bus): the job record in KV with compare-and-set through the status
 * machine, its event history gap-free and exactly once, and every status change, progress and checkpoint announced
 * on the catalog subject `ragtune.trainer.job.<verb>` (message ID `<jobId>:<sequence>`). Writes of a running attempt
 * carry its fence (owner + epoch from `claim`): a replica that lost the job fails its next write.
 */
export class JobStore {
  private constructor(
    readonly resources: JobResources,
    private readonly checkpoints: TypedKv<typeof CheckpointSchema>,
    readonly names: JobStoreNames,
    private readonly logger: Logger,
    /** The connection's reconnect signal: a checkpoint record's read or write in flight across one is retried at once. */
    readonly onReconnect: OnReconnect,
  ) {}

  static async open(bus: Bus, logger: Logger, names: Partial<JobStoreNames> = {}, options: ResourceStoreOptions = {}): Promise<JobStore> {
    const n = { ...DEFAULT_STORE_NAMES, ...names };
    await bus.ensureEventsStream();
    const resources = await ResourceStore.open(bus, trainerJobKind, {
      ...options,
      bucket: n.jobsBucket,
      stream: n.historyStream,
      subjectPrefix: n.historySubjectPrefix,
      kvHistory: 5,
    });
    const checkpoints = await bus.kv(n.checkpointsBucket, CheckpointSchema);
    return new JobStore(resources, checkpoints, n, logger.child({ component: "job-store" }), bus.onReconnect);
  }

  historySubject(jobId: string): string {
    return this.resources.subject(jobId);
  }

  async get(jobId: string): Promise<Job | null> {
    if (!isKey(jobId)) return null;
    return (await this.resources.get(jobId))?.state ?? null;
  }

  /**
   * Stores a new QUEUED job with its first event. Returns the job already stored under that ID (and
   * created=false) when there is one: a retried create is idempotent.
   */
  async create(job: Job): Promise<{ job: Job; created: boolean }> {
    const first = clone(JobSchema, job);
    try {
      const stored = await this.resources.create(first.id, first, [this.historyEvent(first, statusChanged(JobStatus.UNSPECIFIED, first), 1)]);
      return { job: stored.state, created: true };
    } catch (err) {
      if (!(err instanceof ResourceExistsError)) throw err;
      const existing = await this.get(job.id);
      if (existing === null) throw err;
      return { job: existing, created: false };
    }
  }

  /**
   * Read-modify-write of one job with compare-and-set: `change` sees the current job and returns the next
   * one (or null for no change); a concurrent writer makes it run again on the newer job. An event, when
   * given, gets the next sequence number and is appended with the write. With a `fence`, only while this replica
   * still owns the job (else OwnershipLostError).
   */
  async modify(jobId: string, change: (job: Job) => JobChange | null, fence?: Fence): Promise<Job> {
    const stored = await this.resources.modify(
      jobId,
      (current, meta) => {
        const result = change(clone(JobSchema, current));
        if (result === null) return null;
        const next = result.job;
        next.updatedAt = timestampFromDate(new Date());
        const hasEvent = result.event !== undefined && result.event.case !== undefined;
        return { state: next, events: hasEvent ? [this.historyEvent(next, result.event!, meta.lastSequence + 1)] : [] };
      },
      fence === undefined ? {} : { fence },
    );
    return stored.state;
  }

  /** Applies a status transition (see job-status.ts); throws IllegalTransitionError if not allowed. */
  async transition(jobId: string, event: JobTransition, patch?: (job: Job) => void, fence?: Fence): Promise<Job> {
    return this.modify(
      jobId,
      (job) => {
        const next = transition(job, event);
        patch?.(next);
        return { job: next, event: statusChanged(job.status, next) };
      },
      fence,
    );
  }

  /**
   * Takes the job for this replica (the work queue delivered it here): a new ownership epoch, the `claim`
   * transition, and a log event saying which attempt starts where and why (a takeover names the replica it
   * replaces). With `leaseMs`, the claim holds until renewed and is refused while another replica's lease is live.
   * Returns null when the job is gone, finished or leased by another replica; throws IllegalTransitionError when it
   * cannot be claimed.
   */
  async claim(
    jobId: string,
    replicaId: string,
    options: { resumeFromCheckpointId?: string; leaseMs?: number; describe: (job: Job, reason: string) => string },
  ): Promise<{ job: Job; fence: Fence } | null> {
    const claimed = await this.resources.claim(jobId, replicaId, {
      ...(options.leaseMs !== undefined ? { leaseMs: options.leaseMs } : {}),
      change: (current, meta, reason) => {
        const next = transition(current, { type: "claim", ...(options.resumeFromCheckpointId ? { resumeFromCheckpointId: options.resumeFromCheckpointId } : {}) });
        next.updatedAt = timestampFromDate(new Date());
        const status = statusChanged(current.status, next);
        const log: JobEventDetail = { case: "log", value: create(JobLogEntrySchema, { level: JobLogLevel.INFO, message: options.describe(next, reason) }) };
        return {
          state: next,
          events: [this.historyEvent(next, status, meta.lastSequence + 1), this.historyEvent(next, log, meta.lastSequence + 2)],
        };
      },
    });
    return claimed === null ? null : { job: claimed.resource.state, fence: claimed.fence };
  }

  async list(): Promise<Job[]> {
    return (await this.resources.list()).map((r) => r.state);
  }

  /** The job's history from `fromSequence`: stored events, then live, ending after the terminal event. */
  watch(jobId: string, options: { fromSequence: number; signal?: AbortSignal }): AsyncGenerator<JobEvent> {
    return this.resources.watch(jobId, options);
  }

  /** Changes of one job record as they happen (the current value first), with its owner and epoch. */
  watchJob(jobId: string) {
    return this.resources.watchState(jobId);
  }

  async putCheckpoint(checkpoint: Checkpoint): Promise<boolean> {
    const key = checkpointKey(checkpoint.jobId, checkpoint.step);
    try {
      await retryTransient(() => this.checkpoints.create(key, checkpoint), 30_000, this.logger, "storing a checkpoint", this.onReconnect);
      return true;
    } catch (err) {
      if (!(err instanceof RevisionConflictError)) throw err;
      // A create retried after a lost reply (a NATS restart) finds its own first try: still new.
      const stored = await retryTransient(() => this.checkpoints.get(key), 30_000, this.logger, "reading a checkpoint", this.onReconnect);
      if (stored !== null && equals(CheckpointSchema, stored.value, checkpoint)) return true;
      await retryTransient(() => this.checkpoints.put(key, checkpoint), 30_000, this.logger, "storing a checkpoint", this.onReconnect);
      return false;
    }
  }

  async getCheckpoint(id: string): Promise<Checkpoint | null> {
    const parsed = parseCheckpointId(id);
    if (parsed === undefined || !isKey(parsed.jobId)) return null;
    const found = await retryTransient(() => this.checkpoints.get(checkpointKey(parsed.jobId, parsed.step)), 30_000, this.logger, "reading a checkpoint", this.onReconnect);
    return found?.value ?? null;
  }

  /** A job's checkpoints, oldest first. */
  async listCheckpoints(jobId: string): Promise<Checkpoint[]> {
    if (!isKey(jobId)) return [];
    return this.checkpointsMatching(`${jobId}.*`);
  }

  /** Every job's checkpoints (by job, oldest first). */
  async allCheckpoints(): Promise<Checkpoint[]> {
    return this.checkpointsMatching(">");
  }

  /** Deletes a checkpoint's record (not its stored files: see checkpoint-pruning.ts). Deleting a deleted one is a no-op. */
  async deleteCheckpoint(checkpoint: Checkpoint): Promise<void> {
    const key = checkpointKey(checkpoint.jobId, checkpoint.step);
    await retryTransient(() => this.checkpoints.delete(key), 30_000, this.logger, "deleting a checkpoint", this.onReconnect);
  }

  private async checkpointsMatching(filter: string): Promise<Checkpoint[]> {
    return retryTransient(
      async () => {
        const out: Checkpoint[] = [];
        for await (const entry of this.checkpoints.entries(filter)) out.push(entry.value);
        return out.sort((a, b) => a.jobId.localeCompare(b.jobId) || a.step - b.step);
      },
      30_000,
      this.logger,
      "listing checkpoints",
      this.onReconnect,
    );
  }

  async latestCheckpoint(jobId: string): Promise<Checkpoint | undefined> {
    return (await this.listCheckpoints(jobId)).at(-1);
  }

  /** The history event `sequence` of a change, announced on `ragtune.trainer.job.<verb>` when it has a verb. */
  private historyEvent(job: Job, detail: JobEventDetail, sequence: number): HistoryEvent<JobEventDetail> {
    let kind: TrainerJobEventKind | undefined;
    let extra: Record<string, unknown> = {};
    switch (detail.case) {
      case "statusChanged":
        kind = VERBS[detail.value.status];
        if (detail.value.failure) extra = { detail: { case: "failure", value: detail.value.failure } };
        if (detail.value.adapter) extra = { detail: { case: "adapter", value: detail.value.adapter } };
        break;
      case "metrics":
        kind = TrainerJobEventKind.PROGRESS;
        extra = { detail: { case: "metrics", value: detail.value } };
        break;
      case "checkpointSaved":
        kind = TrainerJobEventKind.CHECKPOINT;
        if (detail.value.checkpoint) extra = { detail: { case: "checkpoint", value: detail.value.checkpoint } };
        break;
      default:
        kind = undefined;
    }
    if (kind === undefined) return { body: detail };
    const msgId = `${job.id}:${sequence}`;
    return {
      body: detail,
      announce: [
        {
          schema: TrainerJobEventSchema,
          msgId,
          value: {
            eventId: msgId,
            occurredAt: job.updatedAt ?? timestampFromDate(new Date()),
            jobId: job.id,
            sequence,
            kind,
            status: job.status,
            collection: job.collection,
            datasetVersionId: job.dataset.case === "datasetVersionId" ? job.dataset.value : "",
            ...extra,
          },
        },
      ],
    };
  }

  get log(): Logger {
    return this.logger;
  }
}

/** A status-changed event from the job before and after a transition. */
export function statusChanged(previous: JobStatus, job: Job): JobEventDetail {
  return {
    case: "statusChanged",
    value: create(JobStatusChangedSchema, {
      previousStatus: previous,
      status: job.status,
      attempt: job.attempt,
      ...(job.status === JobStatus.FAILED && job.failure ? { failure: job.failure } : {}),
      ...(job.status === JobStatus.SUCCEEDED && job.adapter ? { adapter: job.adapter } : {}),
    }),
  };
}

/** KV keys and subject tokens: letters, digits, '-', '_'. Job IDs are made of these. */
export function isKey(id: string): boolean {
  return /^[A-Za-z0-9_-]{1,128}$/.test(id);
}
