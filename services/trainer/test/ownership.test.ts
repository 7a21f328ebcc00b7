import { connectBus } from "@ragtune/bus";
import { createLogger } from "@ragtune/logger";
import { JobStatus, TrainerQueueItemSchema } from "@ragtune/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { WorkerLifecycle } from "../src/job-runner.js";
import { TRAINER_QUEUE } from "../src/server.js";
import { type Replica, type TrainerTestbed, logs, startTestbed, statuses, steps, tinyHyperparameters, watch } from "./harness.js";

let bed: TrainerTestbed;
beforeAll(async () => {
  bed = await startTestbed();
}, 180_000);
afterAll(() => bed?.close());

/** Intervals in which each worker of a job lived, from the runners' lifecycle hooks. */
function recordWorkers(replicas: Replica[]) {
  const events: WorkerLifecycle[] = [];
  const off = replicas.map((r) => r.instance.runner.onWorkerLifecycle((e) => events.push(e)));
  return {
    events,
    stop: () => off.forEach((f) => f()),
    intervals(jobId: string) {
      const open = new Map<string, WorkerLifecycle>();
      const out: { replica: string; from: number; to: number }[] = [];
      for (const e of events.filter((x) => x.jobId === jobId)) {
        const key = `${e.replicaId}:${e.pid}`;
        if (e.event === "started") open.set(key, e);
        else {
          const s = open.get(key)!;
          open.delete(key);
          out.push({ replica: e.replicaId, from: s.atMs, to: e.atMs });
        }
      }
      expect(open.size).toBe(0);
      return out;
    },
  };
}

describe("ownership of a training job (real nats-server, real worker)", () => {
  it("never runs one job on two workers: a second delivery waits for the owner, and NATS kill -9/restarts mid-job change nothing", async () => {
    // A lease (TRAINER_ACK_WAIT) longer than a NATS restart, as in production (30 s there).
    const env = { TRAINER_ACK_WAIT: "15s" };
    const serviceLog: string[] = [];
    const a = await bed.startReplica("own-a", { env, logTo: serviceLog });
    const b = await bed.startReplica("own-b", { env, logTo: serviceLog });
    const recorder = recordWorkers([a, b]);
    const bus = await connectBus({ servers: bed.nats.url, name: "ownership-test", logger: createLogger({ svc: "test", level: "silent" }) });
    try {
      const steps_ = 16;
      const hp = tinyHyperparameters({ duration: { case: "maxSteps", value: steps_ }, checkpointIntervalSteps: 4 });
      const { job } = await a.client.createJob(bed.createRequest({ hyperparameters: hp }));
      const jobId = job!.id;
      await watch(a, jobId, (e) => e.event.case === "metrics");

      // Force the interleaving a NATS restart produces: a second delivery of the running job's queue item.
      const queue = await bus.workQueue({ name: TRAINER_QUEUE, schema: TrainerQueueItemSchema, maxDeliver: -1 });
      await queue.enqueue({ jobId }, { msgId: `${jobId}:forced-redelivery` });

      // Then kill -9 and restart nats-server three times while the job trains.
      for (let i = 0; i < 3; i++) {
        const now = await a.client.getJob({ jobId });
        const at = now.job!.progress?.step ?? 0;
        if (at >= steps_ - 2) break;
        await watch(a, jobId, (e) => e.event.case === "metrics" && e.event.value.step > at);
        await bed.nats.kill();
        await bed.nats.restart();
      }

      const events = await watch(b, jobId);
      if (process.env.TEST_VERBOSE) {
        process.stderr.write(`${JSON.stringify(recorder.intervals(jobId))}\n`);
        for (const e of events) process.stderr.write(`${e.sequence} ${e.event.case} ${e.event.case === "log" ? e.event.value.message : e.event.case === "metrics" ? e.event.value.step : e.event.case === "statusChanged" ? JobStatus[e.event.value.status] : ""}\n`);
      }
      // On a failure, the job's history says which attempt started where and why, and why one ended; the replicas'
      // warnings say what they saw.
      const history = `${logs(events).join("\n")}\n--- replicas' warnings and claims:\n${serviceLog.join("\n")}`;
      expect(statuses(events).at(-1), history).toBe("SUCCEEDED");
      expect(steps(events), history).toEqual(Array.from({ length: steps_ }, (_, i) => i + 1));
      const done = (await b.client.getJob({ jobId })).job!;
      expect(done.status, history).toBe(JobStatus.SUCCEEDED);
      // The restarts and the second delivery cost no attempt: the first one trained the job to the end.
      expect(done.attempt, history).toBe(1);

      const intervals = recorder.intervals(jobId);
      expect(intervals.length).toBeGreaterThanOrEqual(1);
      for (const x of intervals) {
        for (const y of intervals) {
          if (x === y) continue;
          // Two workers of the job never lived at the same time.
          expect(x.to <= y.from || y.to <= x.from, `workers overlap: ${JSON.stringify(intervals)}`).toBe(true);
        }
      }
      // Every attempt says where and why it started.
      for (const line of logs(events).filter((l) => l.startsWith("attempt "))) expect(line).toMatch(/^attempt \d+ started on replica own-[ab].* \((claimed|taken over|claimed again)/);
    } finally {
      recorder.stop();
      await bus.close();
      await Promise.all([a.stop(), b.stop()]);
    }
  });
});
