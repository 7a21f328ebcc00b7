import { clone } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  type Adapter,
  AdapterSchema,
  type Failure,
  FailureSchema,
  type Job,
  JobSchema,
  JobStatus,
} from "@ragtune/proto";

/**
 * The job status machine:
 *
 *   QUEUED → VALIDATING → RUNNING → SUCCEEDED | FAILED | CANCELLED
 *                                  (CANCEL_REQUESTED while a running job stops)
 *
 * Every status change of a job goes through {@link transition}; a change that is not in
 * {@link TRANSITIONS} throws {@link IllegalTransitionError} and leaves the job untouched.
 */
export type JobTransition =
  /** A trainer replica took the job from the queue (also a redelivery after a replica died). */
  | { type: "claim"; resumeFromCheckpointId?: string }
  /** The worker accepted model, data and hyperparameters and started training. */
  | { type: "start" }
  /** Training finished and the adapter is stored. */
  | { type: "succeed"; adapter: Adapter }
  /** The job failed (user error or system error). */
  | { type: "fail"; failure: Failure }
  /** A user asked to cancel. */
  | { type: "request_cancel" }
  /** The worker stopped after a cancel request (checkpoint saved). */
  | { type: "cancelled" }
  /** The replica running the job shuts down; the job goes back to the queue for another replica. */
  | { type: "requeue"; resumeFromCheckpointId?: string }
  /** ResumeJob: a failed or cancelled job continues from one of its checkpoints. */
  | { type: "resume"; checkpointId: string };

export type JobTransitionType = JobTransition["type"];

/** The only status changes there are: from status → transition → next status. */
export const TRANSITIONS: Readonly<Record<JobStatus, Readonly<Partial<Record<JobTransitionType, JobStatus>>>>> = {
  [JobStatus.UNSPECIFIED]: {},
  [JobStatus.QUEUED]: {
    claim: JobStatus.VALIDATING,
    request_cancel: JobStatus.CANCELLED,
    fail: JobStatus.FAILED,
  },
  [JobStatus.VALIDATING]: {
    claim: JobStatus.VALIDATING,
    start: JobStatus.RUNNING,
    fail: JobStatus.FAILED,
    request_cancel: JobStatus.CANCELLED,
    requeue: JobStatus.QUEUED,
  },
  [JobStatus.RUNNING]: {
    claim: JobStatus.VALIDATING,
    succeed: JobStatus.SUCCEEDED,
    fail: JobStatus.FAILED,
    request_cancel: JobStatus.CANCEL_REQUESTED,
    requeue: JobStatus.QUEUED,
  },
  [JobStatus.CANCEL_REQUESTED]: {
    cancelled: JobStatus.CANCELLED,
    succeed: JobStatus.SUCCEEDED,
    fail: JobStatus.FAILED,
  },
  [JobStatus.SUCCEEDED]: {},
  [JobStatus.FAILED]: { resume: JobStatus.QUEUED },
  [JobStatus.CANCELLED]: { resume: JobStatus.QUEUED },
};

export const TERMINAL_STATUSES: ReadonlySet<JobStatus> = new Set([
  JobStatus.SUCCEEDED,
  JobStatus.FAILED,
  JobStatus.CANCELLED,
]);

export function isTerminal(status: JobStatus): boolean {
  return TERMINAL_STATUSES.has(status);
}

/** Lowercase name of a status for messages and logs, e.g. "cancel_requested". */
export function statusName(status: JobStatus): string {
  return (JobStatus[status] ?? String(status)).toLowerCase();
}

export class IllegalTransitionError extends Error {
  constructor(
    readonly jobId: string,
    readonly from: JobStatus,
    readonly transition: JobTransitionType,
  ) {
    super(`job ${jobId} is ${statusName(from)}; it cannot ${transition.replace("_", " ")}`);
    this.name = "IllegalTransitionError";
  }
}

/** The status `transition` would lead to from `status`, or undefined when the change is not allowed. */
export function nextStatus(status: JobStatus, type: JobTransitionType): JobStatus | undefined {
  return TRANSITIONS[status][type];
}

export function canTransition(job: Job, type: JobTransitionType): boolean {
  return nextStatus(job.status, type) !== undefined;
}

/**
 * Applies one transition to a job and returns the changed copy (the input is not modified).
 * Throws {@link IllegalTransitionError} for a change the table does not allow.
 */
export function transition(job: Job, event: JobTransition, now: Date = new Date()): Job {
  const to = nextStatus(job.status, event.type);
  if (to === undefined) throw new IllegalTransitionError(job.id, job.status, event.type);
  const next = clone(JobSchema, job);
  const ts = timestampFromDate(now);
  next.status = to;
  next.updatedAt = ts;
  switch (event.type) {
    case "claim":
      next.attempt = job.attempt + 1;
      next.startedAt ??= ts;
      if (event.resumeFromCheckpointId !== undefined) next.resumedFromCheckpointId = event.resumeFromCheckpointId;
      break;
    case "start":
      break;
    case "succeed":
      next.adapter = clone(AdapterSchema, event.adapter);
      next.finishedAt = ts;
      next.failure = undefined;
      break;
    case "fail":
      next.failure = clone(FailureSchema, event.failure);
      next.finishedAt = ts;
      break;
    case "request_cancel":
      if (to === JobStatus.CANCELLED) next.finishedAt = ts;
      break;
    case "cancelled":
      next.finishedAt = ts;
      break;
    case "requeue":
      if (event.resumeFromCheckpointId !== undefined) next.resumedFromCheckpointId = event.resumeFromCheckpointId;
      break;
    case "resume":
      next.resumedFromCheckpointId = event.checkpointId;
      next.failure = undefined;
      next.finishedAt = undefined;
      break;
  }
  return next;
}
