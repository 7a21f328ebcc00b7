import { createHash } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { TimestampSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type ArtifactStore, type Bus, connectBus } from "@ragtune/bus";
import { createLogger } from "@ragtune/logger";
import { AdapterFileKind, AdapterSchema, type Checkpoint, CheckpointSchema, JobSchema, JobStatus } from "@ragtune/proto";
import { type NatsServerHandle, removeTempDir, startNatsServer, tempDir } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type StoredDirectory, restoreDirectory, storeDirectory, storeFile } from "../src/artifact-files.js";
import { CheckpointPruner, type CheckpointPrunerOptions } from "../src/checkpoint-pruning.js";
import { JobStore, type JobStoreNames, checkpointId } from "../src/job-store.js";

const logger = createLogger({ svc: "pruning-test", level: process.env.TEST_LOG_LEVEL ?? "silent" });

let nats: NatsServerHandle;
let root: string;
const buses: Bus[] = [];

beforeAll(async () => {
  nats = await startNatsServer();
  root = await tempDir("checkpoint-pruning");
});
afterAll(async () => {
  await Promise.all(buses.map((b) => b.close()));
  await nats?.stop();
  if (root) await removeTempDir(root);
});

const sha256 = (content: string) => createHash("sha256").update(content).digest("hex");

/** One replica: its own NATS connection, job store and pruner, on the resources named by `prefix` (one set per test). */
async function replica(prefix: string, keep: number, options: Partial<CheckpointPrunerOptions> = {}) {
  const bus = await connectBus({ servers: nats.url, name: `${prefix}-replica`, logger });
  buses.push(bus);
  const names: JobStoreNames = {
    jobsBucket: `${prefix}-jobs`,
    checkpointsBucket: `${prefix}-checkpoints`,
    pruningBucket: `${prefix}-pruning`,
    historyStream: `HISTORY_${prefix.toUpperCase().replaceAll("-", "_")}`,
    historySubjectPrefix: `history.${prefix}`,
  };
  const store = await JobStore.open(bus, logger, names);
  const artifacts = await bus.artifacts(`${prefix}-artifacts`);
  const pruner = await CheckpointPruner.open(bus, { store, artifacts, keep, logger, ...options });
  return { bus, store, artifacts, pruner, names };
}

/** Writes a checkpoint folder with these files (name → content) and stores it as job `jobId`'s checkpoint at `step`. */
async function storeCheckpoint(
  r: { store: JobStore; artifacts: ArtifactStore },
  jobId: string,
  step: number,
  files: Record<string, string>,
): Promise<{ checkpoint: Checkpoint; dir: string; stored: StoredDirectory }> {
  const dir = join(root, jobId, `checkpoint-${step}`);
  await mkdir(dir, { recursive: true });
  for (const [name, content] of Object.entries(files)) await writeFile(join(dir, name), content);
  const stored = await storeDirectory(r.artifacts, dir);
  const checkpoint = create(CheckpointSchema, { id: checkpointId(jobId, step), jobId, step, artifact: stored.ref, createdAt: timestampFromDate(new Date()) });
  await r.store.putCheckpoint(checkpoint);
  return { checkpoint, dir, stored };
}

async function stepsOf(store: JobStore, jobId: string): Promise<number[]> {
  return (await store.listCheckpoints(jobId)).map((c) => c.step);
}

/** Restores a checkpoint into a fresh folder and reads its files back. */
async function restored(artifacts: ArtifactStore, checkpoint: Checkpoint, files: string[]): Promise<Record<string, string>> {
  const dest = join(root, "restored", `${checkpoint.id}-${Math.random().toString(36).slice(2)}`);
  await restoreDirectory(artifacts, checkpoint.artifact!, dest);
  const out: Record<string, string> = {};
  for (const f of files) out[f] = await readFile(join(dest, f), "utf8");
  return out;
}

/** A promise and the function that resolves it. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => (open = resolve));
  return { promise, open };
}

describe("checkpoint pruning (real nats-server)", () => {
  it("keeps each job's last 2 checkpoints and a queued resume's; deletes the rest and exactly the objects nothing kept shares", async () => {
    const r = await replica("keep", 2);
    // Job B waits to resume from its first checkpoint; job C succeeded with an adapter file that job A also stored.
    await r.store.create(create(JobSchema, { id: "job-a", status: JobStatus.RUNNING }));
    await r.store.create(create(JobSchema, { id: "job-b", status: JobStatus.QUEUED, resumedFromCheckpointId: checkpointId("job-b", 2) }));
    const adapterFile = join(root, "adapter_model.safetensors");
    await writeFile(adapterFile, "adapter-weights");
    const adapterArtifact = await storeFile(r.artifacts, adapterFile, "application/octet-stream");
    await r.store.create(
      create(JobSchema, {
        id: "job-c",
        status: JobStatus.SUCCEEDED,
        adapter: create(AdapterSchema, { id: "adapter-job-c", jobId: "job-c", files: [{ kind: AdapterFileKind.PEFT_WEIGHTS, fileName: "adapter_model.safetensors", artifact: adapterArtifact }] }),
      }),
    );

    const steps = [2, 4, 6, 8, 10];
    const filesA = (step: number): Record<string, string> => ({
      "adapter_config.json": "config shared by every checkpoint of both jobs",
      "adapter_model.safetensors": step === 4 ? "adapter-weights" : `weights a${step}`, // a4's = job C's adapter
      "optimizer.pt": step === 2 ? "optimizer shared with b10" : `optimizer a${step}`,
      "tokenizer.json": step <= 6 ? "tokenizer of a's pruned checkpoints only" : "tokenizer of a's kept checkpoints",
      "rng_state.pth": step === 6 || step === 10 ? "rng shared by a6 and a10" : `rng a${step}`,
    });
    const filesB = (step: number): Record<string, string> => ({
      "adapter_config.json": "config shared by every checkpoint of both jobs",
      "adapter_model.safetensors": `weights b${step}`,
      "optimizer.pt": step === 10 ? "optimizer shared with b10" : `optimizer b${step}`,
    });
    const a = new Map<number, Checkpoint>();
    const b = new Map<number, Checkpoint>();
    for (const step of steps) {
      a.set(step, (await storeCheckpoint(r, "job-a", step, filesA(step))).checkpoint);
      b.set(step, (await storeCheckpoint(r, "job-b", step, filesB(step))).checkpoint);
    }
    const manifest = (c: Map<number, Checkpoint>, step: number) => c.get(step)!.artifact!.sha256;
    const everyObject = new Set([
      ...steps.flatMap((s) => [manifest(a, s), manifest(b, s), ...Object.values(filesA(s)).map(sha256), ...Object.values(filesB(s)).map(sha256)]),
      adapterArtifact.sha256,
    ]);
    const gone = new Set<string>();
    const expectStored = async () => {
      for (const hash of everyObject) expect(await r.artifacts.has(hash), hash).toBe(!gone.has(hash));
    };
    await expectStored();

    const resultA = await r.pruner.prune("job-a");
    expect(resultA.pruned).toEqual(["job-a-ckpt-2", "job-a-ckpt-4", "job-a-ckpt-6"]);
    expect(resultA.kept).toEqual(["job-a-ckpt-8", "job-a-ckpt-10"]);
    const deletedA = [
      manifest(a, 2),
      manifest(a, 4),
      manifest(a, 6),
      sha256("weights a2"),
      sha256("weights a6"),
      sha256("optimizer a4"),
      sha256("optimizer a6"),
      sha256("tokenizer of a's pruned checkpoints only"),
      sha256("rng a2"),
      sha256("rng a4"),
    ];
    expect(resultA.deletedObjects.sort()).toEqual([...deletedA].sort());
    for (const hash of deletedA) gone.add(hash);
    await expectStored(); // the shared config, b10's optimizer, job C's adapter, a10's rng state survive
    expect(await stepsOf(r.store, "job-a")).toEqual([8, 10]);
    expect(await stepsOf(r.store, "job-b")).toEqual(steps); // another job's checkpoints are its own business
    expect(await r.store.getCheckpoint("job-a-ckpt-4")).toBeNull();

    const resultB = await r.pruner.prune("job-b");
    expect(resultB.pruned).toEqual(["job-b-ckpt-4", "job-b-ckpt-6"]);
    expect(resultB.kept).toEqual(["job-b-ckpt-2", "job-b-ckpt-8", "job-b-ckpt-10"]); // b2: the queued resume's
    const deletedB = [manifest(b, 4), manifest(b, 6), sha256("weights b4"), sha256("weights b6"), sha256("optimizer b4"), sha256("optimizer b6")];
    expect(resultB.deletedObjects.sort()).toEqual([...deletedB].sort());
    for (const hash of deletedB) gone.add(hash);
    await expectStored();
    expect(await stepsOf(r.store, "job-b")).toEqual([2, 8, 10]);

    // Every kept checkpoint restores whole; pruning again changes nothing.
    for (const [c, files] of [
      ...[8, 10].map((s) => [a.get(s)!, filesA(s)] as const),
      ...[2, 8, 10].map((s) => [b.get(s)!, filesB(s)] as const),
    ]) {
      expect(await restored(r.artifacts, c, Object.keys(files))).toEqual(files);
    }
    expect(await r.pruner.prune("job-a")).toEqual({ pruned: [], deletedObjects: [], kept: ["job-a-ckpt-8", "job-a-ckpt-10"] });
    await expectStored();
  });

  it("two replicas pruning at once, the same job or two jobs sharing objects: both finish and nothing is left behind", async () => {
    const one = await replica("twice", 1);
    const two = await replica("twice", 1);
    const files = (job: string, step: number) => ({ "shared.bin": step === 2 ? "shared by d2 and e2" : "shared by d4 and e4", "own.bin": `${job}${step}` });
    const stored: Checkpoint[] = [];
    for (const job of ["job-d", "job-e"]) for (const step of [2, 4]) stored.push((await storeCheckpoint(one, job, step, files(job, step))).checkpoint);

    const [d1, d2, e] = await Promise.all([one.pruner.prune("job-d"), two.pruner.prune("job-d"), two.pruner.prune("job-e")]);
    // Passes take turns: whichever pruned job D first did it all, the other found nothing left.
    expect([d1.pruned, d2.pruned].sort()).toEqual([[], ["job-d-ckpt-2"]]);
    expect(e.pruned).toEqual(["job-e-ckpt-2"]);
    expect(await stepsOf(one.store, "job-d")).toEqual([4]);
    expect(await stepsOf(one.store, "job-e")).toEqual([4]);
    // d2 and e2 shared a file: the second pass saw the first one's record gone and deleted it.
    const pruned = [stored[0]!, stored[2]!];
    for (const c of pruned) expect(await one.artifacts.has(c.artifact!.sha256)).toBe(false);
    for (const hash of ["shared by d2 and e2", "job-d2", "job-e2"].map(sha256)) expect(await one.artifacts.has(hash)).toBe(false);
    for (const c of [stored[1]!, stored[3]!]) {
      expect(await restored(one.artifacts, c, ["shared.bin", "own.bin"])).toEqual(files(c.jobId, 4));
    }
  });

  it("a checkpoint stored while a pass deletes an object it shares: the writer waits for the pass, then stores the object again", async () => {
    const paused = gate();
    const resume = gate();
    const waiting = gate();
    const pass = await replica("race", 1, {
      faults: async (step, jobId) => {
        if (step === "references-read" && jobId === "job-f") {
          paused.open();
          await resume.promise;
        }
      },
    });
    const writer = await replica("race", 1, { faults: (step) => (step === "waiting-for-pass" ? waiting.open() : undefined) });
    await storeCheckpoint(pass, "job-f", 2, { "tokenizer.json": "tokenizer f2 and g2 share", "weights.bin": "f2" });
    await storeCheckpoint(pass, "job-f", 4, { "tokenizer.json": "tokenizer f4", "weights.bin": "f4" });

    // The pass has read the references (job G has no checkpoint yet) and is about to delete f2's tokenizer.
    const pruning = pass.pruner.prune("job-f");
    await paused.promise;
    // Job G stores a checkpoint with the same tokenizer: its bytes are stored already, so G's manifest just names them.
    const { checkpoint, dir, stored } = await storeCheckpoint(writer, "job-g", 2, { "tokenizer.json": "tokenizer f2 and g2 share", "weights.bin": "g2" });
    const ensuring = writer.pruner.ensureDirectory(stored, dir);
    await Promise.race([waiting.promise, ensuring]); // the writer found the pass running
    resume.open();
    expect((await pruning).deletedObjects).toContain(sha256("tokenizer f2 and g2 share")); // the pass did delete it
    expect(await ensuring).toBe(true); // and the writer stored it again after the pass, not before
    expect(await restored(writer.artifacts, checkpoint, ["tokenizer.json", "weights.bin"])).toEqual({ "tokenizer.json": "tokenizer f2 and g2 share", "weights.bin": "g2" });
    // With no pass running, a writer finds its checkpoint whole and stores nothing.
    expect(await writer.pruner.ensureDirectory(stored, dir)).toBe(false);
  });

  it("a pass whose replica died holding the lock delays the next pass and writers by passMs + slackMs, no more", async () => {
    const r = await replica("dead", 1, { passMs: 300, slackMs: 200 });
    await storeCheckpoint(r, "job-h", 2, { "weights.bin": "h2" });
    await storeCheckpoint(r, "job-h", 4, { "weights.bin": "h4" });
    const lock = await r.bus.kv(r.names.pruningBucket, TimestampSchema);
    await lock.create("pass", timestampFromDate(new Date())); // a pass that never ends
    await r.pruner.settle();
    const result = await r.pruner.prune("job-h");
    expect(result.pruned).toEqual(["job-h-ckpt-2"]);
    expect(await r.artifacts.has(sha256("h2"))).toBe(false);
    expect(await stepsOf(r.store, "job-h")).toEqual([4]);
    expect(await lock.get("pass")).toBeNull(); // the pass that took the lock over let go of it
  });

  it("a checkpoint whose first store landed but whose reply was lost (a NATS restart) still counts as new; one stored again does not", async () => {
    const r = await replica("lost-reply", 2);
    const kv = (r.store as unknown as { checkpoints: { create: (...a: unknown[]) => Promise<unknown> } }).checkpoints;
    const realCreate = kv.create.bind(kv);
    let creates = 0;
    // Fault hook: the first create is written, then its reply is "lost" as a timeout, so the store retries it.
    kv.create = async (...args: unknown[]) => {
      creates += 1;
      const result = await realCreate(...args);
      if (creates === 1) throw Object.assign(new Error("timeout"), { name: "TimeoutError" });
      return result;
    };
    const dir = join(root, "job-l", "checkpoint-2");
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "weights.bin"), "l2");
    const stored = await storeDirectory(r.artifacts, dir);
    const checkpoint = create(CheckpointSchema, { id: checkpointId("job-l", 2), jobId: "job-l", step: 2, artifact: stored.ref, createdAt: timestampFromDate(new Date()) });
    expect(await r.store.putCheckpoint(checkpoint)).toBe(true);
    expect(creates).toBe(2); // the retry found the first try's record
    // A resumed attempt storing the same step again (its own record, made later) is not new.
    const again = create(CheckpointSchema, { ...checkpoint, createdAt: timestampFromDate(new Date(Date.now() + 1_000)) });
    expect(await r.store.putCheckpoint(again)).toBe(false);
    expect(await stepsOf(r.store, "job-l")).toEqual([2]);
  });
});
