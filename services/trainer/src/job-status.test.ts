import { create } from "@bufbuild/protobuf";
import { AdapterSchema, FailureKind, FailureSchema, JobSchema, JobStatus } from "@ragtune/proto";
import { describe, expect, it } from "vitest";
import {
  IllegalTransitionError,
  type JobTransition,
  TRANSITIONS,
  isTerminal,
  transition,
} from "./job-status.js";

const queued = () => create(JobSchema, { id: "job-1", status: JobStatus.QUEUED });
const failure = create(FailureSchema, { kind: FailureKind.SYSTEM_ERROR, message: "worker crashed" });
const adapter = create(AdapterSchema, { id: "adapter-1", jobId: "job-1" });

function run(...events: JobTransition[]) {
  return events.reduce((job, e) => transition(job, e), queued());
}

describe("job status machine", () => {
  it("walks the happy path and counts attempts", () => {
    const job = run({ type: "claim" }, { type: "start" }, { type: "succeed", adapter });
    expect(job.status).toBe(JobStatus.SUCCEEDED);
    expect(job.attempt).toBe(1);
    expect(job.adapter?.id).toBe("adapter-1");
    expect(job.finishedAt).toBeDefined();
    expect(job.startedAt).toBeDefined();
  });

  it("does not modify the input job", () => {
    const job = queued();
    const next = transition(job, { type: "claim" });
    expect(job.status).toBe(JobStatus.QUEUED);
    expect(job.attempt).toBe(0);
    expect(next.status).toBe(JobStatus.VALIDATING);
  });

  it("cancels a queued job at once and a running one through cancel_requested", () => {
    expect(run({ type: "request_cancel" }).status).toBe(JobStatus.CANCELLED);
    const stopping = run({ type: "claim" }, { type: "start" }, { type: "request_cancel" });
    expect(stopping.status).toBe(JobStatus.CANCEL_REQUESTED);
    expect(stopping.finishedAt).toBeUndefined();
    expect(transition(stopping, { type: "cancelled" }).status).toBe(JobStatus.CANCELLED);
    // The worker may finish the last step before it sees the cancel.
    expect(transition(stopping, { type: "succeed", adapter }).status).toBe(JobStatus.SUCCEEDED);
  });

  it("records the failure", () => {
    const job = run({ type: "claim" }, { type: "fail", failure });
    expect(job.status).toBe(JobStatus.FAILED);
    expect(job.failure?.message).toBe("worker crashed");
  });

  it("re-queues on replica shutdown and counts the next claim as a new attempt", () => {
    const job = run({ type: "claim" }, { type: "start" }, { type: "requeue", resumeFromCheckpointId: "ckpt-4" });
    expect(job.status).toBe(JobStatus.QUEUED);
    expect(job.resumedFromCheckpointId).toBe("ckpt-4");
    expect(transition(job, { type: "claim" }).attempt).toBe(2);
  });

  it("lets a redelivered running job be claimed again", () => {
    const job = run({ type: "claim" }, { type: "start" }, { type: "claim" });
    expect(job.status).toBe(JobStatus.VALIDATING);
    expect(job.attempt).toBe(2);
  });

  it("resumes failed and cancelled jobs, clearing the failure", () => {
    const failed = run({ type: "claim" }, { type: "fail", failure });
    const resumed = transition(failed, { type: "resume", checkpointId: "ckpt-2" });
    expect(resumed.status).toBe(JobStatus.QUEUED);
    expect(resumed.failure).toBeUndefined();
    expect(resumed.finishedAt).toBeUndefined();
    expect(resumed.resumedFromCheckpointId).toBe("ckpt-2");
    const cancelled = run({ type: "request_cancel" });
    expect(transition(cancelled, { type: "resume", checkpointId: "c" }).status).toBe(JobStatus.QUEUED);
  });

  it("rejects every change the table does not list, naming the job and status", () => {
    const succeeded = run({ type: "claim" }, { type: "start" }, { type: "succeed", adapter });
    expect(() => transition(succeeded, { type: "request_cancel" })).toThrow(IllegalTransitionError);
    expect(() => transition(succeeded, { type: "request_cancel" })).toThrow(/job job-1 is succeeded/);
    expect(() => transition(succeeded, { type: "resume", checkpointId: "x" })).toThrow(IllegalTransitionError);
    expect(() => transition(queued(), { type: "start" })).toThrow(IllegalTransitionError);
    expect(() => transition(queued(), { type: "succeed", adapter })).toThrow(IllegalTransitionError);
    expect(() => transition(queued(), { type: "cancelled" })).toThrow(IllegalTransitionError);
  });

  it("has no way out of a terminal status except resume", () => {
    for (const status of [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]) {
      expect(isTerminal(status)).toBe(true);
      expect(Object.keys(TRANSITIONS[status]).filter((t) => t !== "resume")).toEqual([]);
    }
    expect(isTerminal(JobStatus.CANCEL_REQUESTED)).toBe(false);
  });
});
