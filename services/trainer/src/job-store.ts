import { clone, create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Bus, RevisionConflictError, type TypedKv, ensureEventsStream } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  type Checkpoint,
  CheckpointSchema,
  type Job,
  type JobEvent,
  JobEventSchema,
  JobSchema,
  JobStatus,
  JobStatusChangedSchema,
  TrainerJobEventKind,
  TrainerJobEventSchema,
} from "@ragtune/proto";
import { type JobTransition, isTerminal, transition } from "./job-status.js";

/** Names of the trainer's NATS resources; tests pass their own to isolate. */
export interface JobStoreNames {
  /** KV bucket of jobs, key = job ID. */
  jobsBucket: string;
  /** KV bucket of checkpoints, key = `<jobId>.<step, 10 digits>`. */
  checkpointsBucket: string;
  /** Stream of every job's event history, subject `<historySubjectPrefix>.<jobId>`. */
  historyStream: string;
  historySubjectPrefix: string;
}

export const DEFAULT_STORE_NAMES: JobStoreNames = {
  jobsBucket: "trainer-jobs",
  checkpointsBucket: "trainer-checkpoints",
  historyStream: "TRAINER_JOB_HISTORY",
  historySubjectPrefix: "trainer.history",
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

/**
 * Job state in a JetStream KV bucket (protobuf `Job` values, compare-and-set updates through the status machine),
 * the job's event history in a stream (one subject per job, `Nats-Msg-Id` = `<jobId>:<sequence>`), and every
 * change also published on the RAGTUNE stream as `ragtune.trainer.job.<verb>` with the same message ID, so a
 * retried publish never duplicates an event.
 */
export class JobStore {
  private constructor(
    private readonly bus: Bus,
    private readonly jobs: TypedKv<typeof JobSchema>,
    private readonly checkpoints: TypedKv<typeof CheckpointSchema>,
    readonly names: JobStoreNames,
    private readonly logger: Logger,
  ) {}

  static async open(bus: Bus, logger: Logger, names: Partial<JobStoreNames> = {}): Promise<JobStore> {
    const n = { ...DEFAULT_STORE_NAMES, ...names };
    await bus.ensureEventsStream();
    await ensureEventsStream(bus.jsm, { name: n.historyStream, subjects: [`${n.historySubjectPrefix}.>`] });
    const jobs = await bus.kv(n.jobsBucket, JobSchema, { history: 5 });
    const checkpoints = await bus.kv(n.checkpointsBucket, CheckpointSchema);
    return new JobStore(bus, jobs, checkpoints, n, logger.child({ component: "job-store" }));
  }

  historySubject(jobId: string): string {
    return `${this.names.historySubjectPrefix}.${jobId}`;
  }

  async get(jobId: string): Promise<Job | null> {
    if (!isKey(jobId)) return null;
    return (await this.jobs.get(jobId))?.value ?? null;
  }

  /**
   * Stores a new QUEUED job with its first event. Returns the job already stored under that ID (and
   * created=false) when there is one: a retried create is idempotent.
   */
  async create(job: Job): Promise<{ job: Job; created: boolean }> {
    const first = clone(JobSchema, job);
    first.lastSequence = 1;
    try {
      await this.jobs.create(first.id, first);
    } catch (err) {
      if (!(err instanceof RevisionConflictError)) throw err;
      const existing = await this.get(job.id);
      if (existing === null) throw err;
      return { job: existing, created: false };
    }
    await this.publish(first, statusChanged(JobStatus.UNSPECIFIED, first));
    return { job: first, created: true };
  }

  /**
   * Read-modify-write of one job with compare-and-set: `change` sees the current job and returns the next
   * one (or null for no change); a concurrent writer makes it run again on the newer job. An event, when
   * given, gets the next sequence number and is published after the write.
   */
  async modify(jobId: string, change: (job: Job) => JobChange | null): Promise<Job> {
    for (;;) {
      const current = await this.jobs.get(jobId);
      if (current === null) throw new Error(`job ${jobId} not found`);
      const result = change(clone(JobSchema, current.value));
      if (result === null) return current.value;
      const next = result.job;
      next.updatedAt = timestampFromDate(new Date());
      if (result.event !== undefined && result.event.case !== undefined) next.lastSequence = current.value.lastSequence + 1;
      try {
        await this.jobs.update(jobId, next, current.revision);
      } catch (err) {
        if (err instanceof RevisionConflictError) continue;
        throw err;
      }
      if (result.event !== undefined && result.event.case !== undefined) await this.publish(next, result.event);
      return next;
    }
  }

  /** Applies a status transition (see job-status.ts); throws IllegalTransitionError if not allowed. */
  async transition(jobId: string, event: JobTransition, patch?: (job: Job) => void): Promise<Job> {
    return this.modify(jobId, (job) => {
      const next = transition(job, event);
      patch?.(next);
      return { job: next, event: statusChanged(job.status, next) };
    });
  }

  async list(): Promise<Job[]> {
    const out: Job[] = [];
    for await (const entry of this.jobs.entries()) out.push(entry.value);
    return out;
  }

  /** Changes of one job as they happen (the current value first). */
  watchJob(jobId: string) {
    return this.jobs.watch({ key: jobId });
  }

  async putCheckpoint(checkpoint: Checkpoint): Promise<boolean> {
    const key = checkpointKey(checkpoint.jobId, checkpoint.step);
    try {
      await this.checkpoints.create(key, checkpoint);
      return true;
    } catch (err) {
      if (!(err instanceof RevisionConflictError)) throw err;
      await this.checkpoints.put(key, checkpoint);
      return false;
    }
  }

  async getCheckpoint(id: string): Promise<Checkpoint | null> {
    const parsed = parseCheckpointId(id);
    if (parsed === undefined || !isKey(parsed.jobId)) return null;
    return (await this.checkpoints.get(checkpointKey(parsed.jobId, parsed.step)))?.value ?? null;
  }

  /** A job's checkpoints, oldest first. */
  async listCheckpoints(jobId: string): Promise<Checkpoint[]> {
    if (!isKey(jobId)) return [];
    const out: Checkpoint[] = [];
    for await (const entry of this.checkpoints.entries(`${jobId}.*`)) out.push(entry.value);
    return out.sort((a, b) => a.step - b.step);
  }

  async latestCheckpoint(jobId: string): Promise<Checkpoint | undefined> {
    return (await this.listCheckpoints(jobId)).at(-1);
  }

  /** Publishes event number `job.lastSequence` to the job's history and, with a verb, to RAGTUNE. */
  private async publish(job: Job, detail: JobEventDetail): Promise<void> {
    const sequence = job.lastSequence;
    const msgId = `${job.id}:${sequence}`;
    const time = job.updatedAt ?? timestampFromDate(new Date());
    const event = create(JobEventSchema, { sequence, jobId: job.id, time, event: detail });
    await this.bus.js.publish(this.historySubject(job.id), toBinary(JobEventSchema, event), { msgID: msgId });

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
    if (kind === undefined) return;
    const verb = TrainerJobEventKind[kind].toLowerCase();
    await this.bus.publish(
      `ragtune.trainer.job.${verb}`,
      TrainerJobEventSchema,
      {
        eventId: msgId,
        occurredAt: time,
        jobId: job.id,
        sequence,
        kind,
        status: job.status,
        collection: job.collection,
        datasetVersionId: job.dataset.case === "datasetVersionId" ? job.dataset.value : "",
        ...extra,
      },
      { msgId },
    );
  }

  /** Decodes one history message. */
  static decodeEvent(data: Uint8Array): JobEvent {
    return fromBinary(JobEventSchema, data);
  }

  /** True once the job's status is terminal and `sequence` is its latest event. */
  async isFinishedAt(jobId: string, sequence: number): Promise<boolean> {
    const job = await this.get(jobId);
    return job !== null && isTerminal(job.status) && job.lastSequence <= sequence;
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
