import { createHash } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { connectBus } from "@ragtune/bus";
import { createLogger } from "@ragtune/logger";
import { DatasetSplit, DatasetVersionBuiltSchema, type JobEvent, JobStatus, PromptTemplate, TrainerService } from "@ragtune/proto";
import { expectCode, grpcJsUnary } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FIXTURES, type Replica, type TrainerTestbed, startTestbed, statuses, steps, tinyHyperparameters, watch } from "./harness.js";

let bed: TrainerTestbed;
let root: string;
let modelDir: string;
const startReplica: TrainerTestbed["startReplica"] = (name, opts) => bed.startReplica(name, opts);
const createRequest: TrainerTestbed["createRequest"] = (overrides) => bed.createRequest(overrides);

beforeAll(async () => {
  bed = await startTestbed();
  root = bed.root;
  modelDir = bed.modelDir;
}, 180_000);

afterAll(async () => {
  await bed?.close();
});

describe("trainer service (real nats-server, real worker on the tiny model)", () => {
  let r1: Replica;
  let r1Running = true;
  let reference: { jobId: string; finalLoss: number; events: JobEvent[] };

  beforeAll(async () => {
    r1 = await startReplica("r1", { env: { TRAINER_KEEP_CHECKPOINTS: "2" } });
  });

  it("runs a job to succeeded; early and late watchers see the same ordered events; the adapter downloads", async () => {
    const { job } = await r1.client.createJob(createRequest({ displayName: "reference", collection: "docs" }));
    expect(job!.status).toBe(JobStatus.QUEUED);
    expect(job!.hyperparameters!.alpha).toBe(16); // defaults filled in
    const early = await watch(r1, job!.id);
    const late = await watch(r1, job!.id);
    expect(late).toEqual(early);
    expect(early.map((e) => e.sequence)).toEqual(early.map((_, i) => i + 1));
    expect(statuses(early)).toEqual(["QUEUED", "VALIDATING", "RUNNING", "SUCCEEDED"]);
    expect(steps(early)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(early.filter((e) => e.event.case === "checkpointSaved").map((e) => e.event.value && "checkpoint" in e.event.value ? e.event.value.checkpoint?.step : 0)).toEqual([2, 4, 6]);
    // TRAINER_KEEP_CHECKPOINTS=2: the first checkpoint was pruned when the third was stored.
    expect((await r1.client.listCheckpoints({ jobId: job!.id })).checkpoints.map((c) => c.step)).toEqual([4, 6]);
    // From the middle: the rest of the history.
    const tail = await watch(r1, job!.id, undefined, 5);
    expect(tail).toEqual(early.slice(4));

    const { job: done } = await r1.client.getJob({ jobId: job!.id });
    expect(done!.status).toBe(JobStatus.SUCCEEDED);
    expect(done!.adapter!.files.map((f) => f.fileName).sort()).toEqual(["adapter.gguf", "adapter_config.json", "adapter_model.safetensors"]);

    const files = new Map<string, { hash: ReturnType<typeof createHash>; size: bigint; sha256: string; total: bigint }>();
    for await (const piece of r1.client.downloadAdapter({ jobId: job!.id })) {
      const f = files.get(piece.fileName) ?? { hash: createHash("sha256"), size: 0n, sha256: piece.sha256, total: piece.totalSizeBytes };
      expect(piece.offset).toBe(f.size);
      f.hash.update(piece.data);
      f.size += BigInt(piece.data.length);
      files.set(piece.fileName, f);
    }
    expect([...files.keys()].sort()).toEqual(["adapter.gguf", "adapter_config.json", "adapter_model.safetensors"]);
    for (const [name, f] of files) {
      expect(f.hash.digest("hex"), name).toBe(f.sha256);
      expect(f.size, name).toBe(f.total);
      const stored = done!.adapter!.files.find((x) => x.fileName === name)!;
      expect(f.sha256).toBe(stored.artifact!.sha256);
    }
    reference = { jobId: job!.id, finalLoss: done!.adapter!.finalProgress!.trainLoss!, events: early };
    expect(Number.isFinite(reference.finalLoss)).toBe(true);
  });

  it("answers GetJob to a @grpc/grpc-js client over a real socket", async () => {
    const res = await grpcJsUnary(`127.0.0.1:${r1.port}`, TrainerService.method.getJob, { jobId: reference.jobId });
    expect(res.job!.id).toBe(reference.jobId);
    expect(res.job!.status).toBe(JobStatus.SUCCEEDED);
  });

  it("warm-starts a job from the reference job's adapter: its rank taken over, its first loss below the fresh start's on the same batch", async () => {
    const trainLosses = (events: JobEvent[]) => events.flatMap((e) => (e.event.case === "metrics" ? [e.event.value.trainLoss] : []));
    const hyperparameters = tinyHyperparameters({ duration: { case: "maxSteps", value: 2 } });
    hyperparameters.rank = undefined; // taken from the adapter it continues
    const { job } = await r1.client.createJob(createRequest({ displayName: "warm", hyperparameters, initAdapterJobId: reference.jobId }));
    expect(job!.initAdapterJobId).toBe(reference.jobId);
    expect(job!.hyperparameters!.rank).toBe(4);
    const events = await watch(r1, job!.id);
    expect(statuses(events).at(-1)).toBe("SUCCEEDED");
    // Same seed and data: the first batch is the reference's first, which the reference's adapter has trained on.
    expect(trainLosses(events)[0]!).toBeLessThan(trainLosses(reference.events)[0]!);

    await expectCode(r1.client.createJob(createRequest({ initAdapterJobId: reference.jobId, hyperparameters: tinyHyperparameters({ rank: 8 }) })), Code.InvalidArgument, /^hyperparameters.rank: is 8, but the adapter of job .* has 4/);
    await expectCode(r1.client.createJob(createRequest({ initAdapterJobId: "job-nope" })), Code.InvalidArgument, /init_adapter_job_id.*"job-nope" not found/);
    const queued = await r1.client.createJob(createRequest({ displayName: "not done", hyperparameters: tinyHyperparameters({ duration: { case: "maxSteps", value: 1 } }) }));
    await expectCode(r1.client.createJob(createRequest({ initAdapterJobId: queued.job!.id })), Code.FailedPrecondition, /has no adapter to start from; a warm start needs a succeeded job/);
    await watch(r1, queued.job!.id);
  });

  it("trains on a dataset version the dataset service announced: its train export, downloaded from the object store", async () => {
    const unknown = createRequest({ dataset: { case: "datasetVersionId", value: "dsv-announced" } });
    await expectCode(r1.client.createJob(unknown), Code.FailedPrecondition, /dataset version "dsv-announced" is unknown to the trainer/);
    // What the dataset service does when a version is READY: exports in its artifact bucket, then the event.
    const bus = await connectBus({ servers: bed.nats.url, name: "dataset-stand-in", logger: createLogger({ svc: "test", level: "silent" }) });
    try {
      const store = await bus.artifacts("dataset-artifacts");
      const ref = async (file: string) => {
        const info = await store.putFile(join(FIXTURES, file));
        return { bucket: store.bucket, objectName: info.hash, sha256: info.hash, sizeBytes: BigInt(info.size), mediaType: "application/jsonl" };
      };
      const exports = [
        { split: DatasetSplit.TRAIN, template: PromptTemplate.MISTRAL_INSTRUCT, artifact: await ref("train.jsonl"), rows: 36 },
        { split: DatasetSplit.VAL, template: PromptTemplate.MISTRAL_INSTRUCT, artifact: await ref("val.jsonl"), rows: 4 },
      ];
      // The trainer learns of it through its durable consumer, which stores it in the trainer's KV bucket.
      const known = await bus.kv("trainer-dataset-versions", DatasetVersionBuiltSchema);
      const watcher = await known.watch({ key: "dsv-announced" });
      await bus.publish(DatasetVersionBuiltSchema, { eventId: "dsv-announced:built", datasetVersionId: "dsv-announced", collection: "docs", exports }, { msgId: "dsv-announced:built" });
      for await (const change of watcher) if (change.value !== null) break;
      watcher.stop();
      const created = await r1.client.createJob(unknown);
      expect(created.job!.dataset.case).toBe("datasetVersionId");
      const events = await watch(r1, created.job!.id);
      expect(statuses(events).at(-1)).toBe("SUCCEEDED");
      expect(events.some((e) => e.event.case === "log" && /validated: 36 training rows/.test(e.event.value.message))).toBe(true);
    } finally {
      await bus.close();
    }
  });

  it("cancels a running job: cancel_requested, a checkpoint, then cancelled", async () => {
    const { job } = await r1.client.createJob(createRequest({ hyperparameters: tinyHyperparameters({ duration: { case: "maxSteps", value: 200 }, checkpointIntervalSteps: 0 }) }));
    await watch(r1, job!.id, (e) => e.event.case === "metrics");
    const { job: stopping } = await r1.client.cancelJob({ jobId: job!.id });
    expect([JobStatus.CANCEL_REQUESTED, JobStatus.CANCELLED]).toContain(stopping!.status);
    const events = await watch(r1, job!.id);
    expect(statuses(events)).toEqual(["QUEUED", "VALIDATING", "RUNNING", "CANCEL_REQUESTED", "CANCELLED"]);
    const { checkpoints } = await r1.client.listCheckpoints({ jobId: job!.id });
    expect(checkpoints.length).toBe(1);
    expect(checkpoints[0]!.step).toBeGreaterThanOrEqual(1);
    expect(checkpoints[0]!.step).toBeLessThan(200);
    await expectCode(r1.client.cancelJob({ jobId: job!.id }), Code.FailedPrecondition, /already finished \(cancelled\)/);
    await expectCode(r1.client.downloadAdapter({ jobId: job!.id })[Symbol.asyncIterator]().next(), Code.FailedPrecondition, /no adapter/);
    // Resume from a checkpoint of another job is refused; nothing changes.
    const { checkpoints: refCheckpoints } = await r1.client.listCheckpoints({ jobId: reference.jobId });
    await expectCode(r1.client.resumeJob({ jobId: job!.id, checkpointId: refCheckpoints[0]!.id }), Code.InvalidArgument, /belongs to job/);
    await expectCode(
      r1.client.resumeJob({ jobId: job!.id, checkpointId: `${job!.id}-ckpt-999` }),
      Code.NotFound,
      `its checkpoints are ${checkpoints[0]!.id} (each job keeps only its last TRAINER_KEEP_CHECKPOINTS checkpoints)`,
    );
    await expectCode(r1.client.resumeJob({ jobId: reference.jobId }), Code.FailedPrecondition, /succeeded/);
    expect((await r1.client.getJob({ jobId: job!.id })).job!.status).toBe(JobStatus.CANCELLED);
  });

  it("resumes a job on another replica after kill -9 of its worker: same steps, final loss within 1%, no duplicate steps", async () => {
    const { job } = await r1.client.createJob(createRequest());
    await watch(r1, job!.id, (e) => e.event.case === "checkpointSaved");
    const pids = r1.instance.runner.workerPids();
    expect(pids.length).toBe(1);
    process.kill(pids[0]!, "SIGKILL");
    r1Running = false;
    await r1.stop(); // this replica goes away; the job is back in the queue with its checkpoint
    const r2 = await startReplica("r2");
    try {
      const events = await watch(r2, job!.id);
      expect(statuses(events).at(-1)).toBe("SUCCEEDED");
      expect(steps(events)).toEqual([1, 2, 3, 4, 5, 6]);
      const resumedLog = events.find((e) => e.event.case === "log" && /resumes from checkpoint/.test(e.event.value.message));
      expect(resumedLog).toBeDefined();
      const { job: done } = await r2.client.getJob({ jobId: job!.id });
      expect(done!.attempt).toBeGreaterThanOrEqual(2);
      expect(done!.resumedFromCheckpointId).toMatch(/-ckpt-\d+$/);
      const loss = done!.adapter!.finalProgress!.trainLoss!;
      expect(Math.abs(loss - reference.finalLoss) / reference.finalLoss).toBeLessThan(0.01);
      expect(done!.adapter!.finalProgress!.step).toBe(6);
    } finally {
      await r2.stop();
    }
  });

  it("two replicas share a queue of three jobs", async () => {
    const a = await startReplica("share-a");
    const b = await startReplica("share-b");
    try {
      const hp = tinyHyperparameters({ duration: { case: "maxSteps", value: 2 }, checkpointIntervalSteps: 0 });
      const ids = [];
      for (let i = 0; i < 3; i++) ids.push((await a.client.createJob(createRequest({ hyperparameters: hp, displayName: `shared-${i}` }))).job!.id);
      const replicas = new Set<string>();
      for (const id of ids) {
        const events = await watch(b, id);
        expect(statuses(events)).toEqual(["QUEUED", "VALIDATING", "RUNNING", "SUCCEEDED"]);
        for (const e of events) {
          const m = e.event.case === "log" ? /on replica (\S+)/.exec(e.event.value.message) : null;
          if (m) replicas.add(m[1]!);
        }
      }
      expect([...replicas].sort()).toEqual(["share-a", "share-b"]);
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
  });

  it("loses no job across a trainer restart: SIGTERM checkpoints and hands the job back; a nats-server restart too", async () => {
    if (r1Running) {
      r1Running = false;
      await r1.stop(); // only this test's replicas take jobs
    }
    const first = await startReplica("before-restart");
    const before = (await first.client.listJobs({})).page!.totalSize;
    const { job } = await first.client.createJob(createRequest());
    const { job: queued } = await first.client.createJob(createRequest({ hyperparameters: tinyHyperparameters({ duration: { case: "maxSteps", value: 2 } }) }));
    await watch(first, job!.id, (e) => e.event.case === "metrics" && e.event.value.step >= 3);
    await first.stop(); // the shutdown path: the worker checkpoints and stops, the job goes back to the queue
    await bed.nats.restart();
    const next = await startReplica("after-restart");
    try {
      const events = await watch(next, job!.id);
      expect(statuses(events)).toEqual(["QUEUED", "VALIDATING", "RUNNING", "QUEUED", "VALIDATING", "RUNNING", "SUCCEEDED"]);
      expect(steps(events)).toEqual([1, 2, 3, 4, 5, 6]);
      const { checkpoints } = await next.client.listCheckpoints({ jobId: job!.id });
      expect(checkpoints.map((c) => c.step)).toContain(6);
      expect(statuses(await watch(next, queued!.id)).at(-1)).toBe("SUCCEEDED");
      const list = await next.client.listJobs({});
      expect(list.page!.totalSize).toBe(before + 2);
      expect(list.jobs[0]!.id).toBe(queued!.id); // newest first
      const succeeded = await next.client.listJobs({ statuses: [JobStatus.SUCCEEDED], page: { pageSize: 2 } });
      expect(succeeded.jobs.length).toBe(2);
      expect(succeeded.page!.nextPageToken).not.toBe("");
      expect(succeeded.jobs.every((j) => j.status === JobStatus.SUCCEEDED)).toBe(true);
    } finally {
      await next.stop();
    }
  });

  it("hands a job back across more shutdowns than TRAINER_MAX_ATTEMPTS; a worker crash still uses an attempt", async () => {
    if (r1Running) {
      r1Running = false;
      await r1.stop(); // only this test's replicas take jobs
    }
    const env = { TRAINER_MAX_ATTEMPTS: "1" };
    const hp = tinyHyperparameters({ duration: { case: "maxSteps", value: 20 }, checkpointIntervalSteps: 0 });
    let replica = await startReplica("handback-1", { env });
    const { job } = await replica.client.createJob(createRequest({ hyperparameters: hp }));
    // Two graceful hand-backs, each after a step of its attempt: more than the one attempt allowed.
    for (const attempt of [1, 2]) {
      let running = false;
      await watch(replica, job!.id, (e) => {
        if (e.event.case === "statusChanged" && e.event.value.status === JobStatus.RUNNING && e.event.value.attempt === attempt) running = true;
        return running && e.event.case === "metrics";
      });
      await replica.stop(); // SIGTERM: checkpoint, hand back
      replica = await startReplica(`handback-${attempt + 1}`, { env });
    }
    try {
      const events = await watch(replica, job!.id);
      expect(statuses(events)).toEqual(["QUEUED", "VALIDATING", "RUNNING", "QUEUED", "VALIDATING", "RUNNING", "QUEUED", "VALIDATING", "RUNNING", "SUCCEEDED"]);
      expect(steps(events)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      const { job: done } = await replica.client.getJob({ jobId: job!.id });
      expect(done!.attempt).toBe(3);
      expect(done!.failure).toBeUndefined();

      // A crash is a failed attempt: with one allowed, the job fails instead of retrying.
      const { job: crashing } = await replica.client.createJob(createRequest({ hyperparameters: hp, displayName: "crashing" }));
      await watch(replica, crashing!.id, (e) => e.event.case === "metrics");
      const pids = replica.instance.runner.workerPids();
      expect(pids.length).toBe(1);
      process.kill(pids[0]!, "SIGKILL");
      expect(statuses(await watch(replica, crashing!.id)).at(-1)).toBe("FAILED");
      const { job: failed } = await replica.client.getJob({ jobId: crashing!.id });
      expect(failed!.failure!.reason).toBe("WORKER_EXITED");
      expect(failed!.attempt).toBe(1);
    } finally {
      await replica.stop();
    }
  });

  describe("bad input", () => {
    let r: Replica;
    beforeAll(async () => {
      r = await startReplica("bad-input", { runJobs: false });
    });
    afterAll(() => r.stop());

    it("rejects each with a clear Connect error and stores nothing", async () => {
      const before = (await r.client.listJobs({})).page!.totalSize;
      await expectCode(r.client.createJob(createRequest({ dataset: { case: "datasetVersionId", value: "dsv-unknown" } })), Code.FailedPrecondition, /dataset version "dsv-unknown" is unknown/);
      await expectCode(r.client.createJob(createRequest({ baseModel: join(root, "models", "nope") })), Code.InvalidArgument, /base_model.*does not exist/);
      await mkdir(join(root, "models", "empty"), { recursive: true });
      await expectCode(r.client.createJob(createRequest({ baseModel: join(root, "models", "empty") })), Code.InvalidArgument, /no config.json/);
      await expectCode(r.client.createJob(createRequest({ baseModel: FIXTURES })), Code.InvalidArgument, /outside the allowed model root/);
      await expectCode(r.client.createJob(createRequest({ baseModel: "https://huggingface.co/mistralai/Mistral-7B-v0.1" })), Code.InvalidArgument, /never downloaded/);
      await expectCode(
        r.client.createJob(createRequest({ dataset: { case: "datasetFiles", value: { trainPath: join(FIXTURES, "missing.jsonl"), valPath: "" } } })),
        Code.InvalidArgument,
        /dataset_files.train_path.*does not exist/,
      );
      await expectCode(
        r.client.createJob(createRequest({ dataset: { case: "datasetFiles", value: { trainPath: join(modelDir, "config.json"), valPath: "" } } })),
        Code.InvalidArgument,
        /outside the allowed data root/,
      );
      await expectCode(r.client.createJob(createRequest({ dataset: { case: undefined } })), Code.InvalidArgument, /dataset/);
      await expectCode(r.client.createJob(createRequest({ hyperparameters: tinyHyperparameters({ rank: 0 }) })), Code.InvalidArgument, /^hyperparameters.rank: /);
      await expectCode(r.client.createJob(createRequest({ hyperparameters: tinyHyperparameters({ learningRate: 5 }) })), Code.InvalidArgument, /^hyperparameters.learning_rate: /);
      await expectCode(r.client.createJob(createRequest({ hyperparameters: tinyHyperparameters({ maxSeqLen: 4 }) })), Code.InvalidArgument, /^hyperparameters.max_seq_len: /);
      await expectCode(r.client.getJob({ jobId: "job-does-not-exist" }), Code.NotFound, /job-does-not-exist/);
      await expectCode(r.client.getJob({ jobId: "../etc" }), Code.NotFound);
      await expectCode(r.client.cancelJob({ jobId: "job-does-not-exist" }), Code.NotFound);
      await expectCode(r.client.watchJob({ jobId: "job-does-not-exist" })[Symbol.asyncIterator]().next(), Code.NotFound);
      await expectCode(r.client.listJobs({ page: { pageToken: "garbage" } }), Code.InvalidArgument, /page_token/);
      expect((await r.client.listJobs({})).page!.totalSize).toBe(before);
      // A retried create with the same client_request_id returns the first job.
      const first = await r.client.createJob(createRequest({ clientRequestId: "req-1" }));
      const again = await r.client.createJob(createRequest({ clientRequestId: "req-1" }));
      expect(again.job!.id).toBe(first.job!.id);
      expect((await r.client.listJobs({})).page!.totalSize).toBe(before + 1);
      await r.client.cancelJob({ jobId: first.job!.id }); // queued: cancelled at once
      expect((await r.client.getJob({ jobId: first.job!.id })).job!.status).toBe(JobStatus.CANCELLED);
    });
  });
});
