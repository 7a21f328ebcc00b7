import { randomInt } from "node:crypto";
import { equals } from "@bufbuild/protobuf";
import { type Timestamp, TimestampSchema, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { type ArtifactStore, type Bus, RevisionConflictError, type TypedKv, retryTransient } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import { type ArtifactRef, type Checkpoint, type Job, JobStatus } from "@ragtune/proto";
import { type StoredDirectory, readManifest, storeDirectory, storeFile } from "./artifact-files.js";
import type { JobStore } from "./job-store.js";

/**
 * Checkpoint retention. After a job stores a checkpoint, {@link CheckpointPruner.prune} deletes the job's checkpoints
 * older than its last `keep` (TRAINER_KEEP_CHECKPOINTS) — except one that a resume which has not restored yet points
 * at — and then those of their stored objects that nothing kept refers to. Objects are content-addressed, so one
 * object may belong to many checkpoints and jobs (an unchanged file is stored once): an object is deleted only when
 * no checkpoint record of any job and no job's adapter names it.
 *
 * A pass deletes the records first, then reads what is still referenced, then deletes the objects no longer needed;
 * a pass that fails half-way leaves objects behind, never a record without its objects. Passes take turns
 * cluster-wide (the key `pass` of a KV bucket is their lock): a reader of an object that is being deleted would wait
 * forever, and a pass reads the manifests other passes delete. Deleting a deleted record or object is a no-op, so
 * a second replica pruning the same job finds nothing left to do.
 *
 * Writers race with passes: storing a file that is stored already only refers to the existing object, and the
 * writer's record may land just after a pass read the references — that pass then deletes an object the new record
 * names. So a writer, once its record is stored, waits for the pass holding the lock then ({@link CheckpointPruner.settle}) and
 * stores again whatever went missing ({@link CheckpointPruner.ensureDirectory}, {@link CheckpointPruner.ensureFiles}).
 * A pass that takes the lock later reads the new record. A pass deletes only during its first `passMs` after taking
 * the lock, and a writer waits at most `passMs + slackMs` for it, so a replica that died holding the lock delays
 * writers and other passes by that much, no more.
 */

const PASS_KEY = "pass";
/** How long a pass may delete objects after it took the lock. */
const DEFAULT_PASS_MS = 60_000;
/** How much longer than `passMs` others wait for a pass: a delete sent just before its deadline is still in flight. */
const DEFAULT_SLACK_MS = 20_000;
/** Manifests remembered per replica (content-addressed, they never change; a few hundred bytes each). */
const MANIFEST_CACHE_SIZE = 10_000;
const RETRY_MS = 30_000;

/**
 * Points where a test can act (`faults`): `references-read` is after a pass read the references, before it deletes
 * (with the job pruned); `waiting-for-pass` is when a writer or another pass found the lock held and starts waiting.
 */
export type PruneStep = "references-read" | "waiting-for-pass";

export interface CheckpointPrunerOptions {
  store: JobStore;
  artifacts: ArtifactStore;
  /** Checkpoints kept per job (TRAINER_KEEP_CHECKPOINTS), at least 1. */
  keep: number;
  logger: Logger;
  /** How long a pass may delete objects after it took the lock. Default 60 s. */
  passMs?: number;
  /** How much longer than `passMs` writers and other passes wait for a pass before they go on. Default 20 s. */
  slackMs?: number;
  /** Test hook: runs at the named step (to force an interleaving). */
  faults?: (step: PruneStep, jobId: string | undefined) => void | Promise<void>;
}

export interface PruneResult {
  /** IDs of the checkpoints whose records this pass deleted. */
  pruned: string[];
  /** Objects this pass deleted from the artifact store. */
  deletedObjects: string[];
  /** IDs of the job's checkpoints left, oldest first. */
  kept: string[];
}

/** A file stored on its own (an adapter file) and where it came from, to store it again. */
export interface StoredFile {
  artifact: ArtifactRef;
  path: string;
  mediaType: string;
}

/** The checkpoint a job has yet to restore: the one a queued resume (or a claimed one not running yet) points at. */
export function pendingResume(job: Job | null): string | undefined {
  if (job === null || job.resumedFromCheckpointId === "") return undefined;
  return job.status === JobStatus.QUEUED || job.status === JobStatus.VALIDATING ? job.resumedFromCheckpointId : undefined;
}

export class CheckpointPruner {
  private readonly manifests = new Map<string, string[]>();
  private readonly logger: Logger;
  private readonly passMs: number;
  private readonly waitMs: number;

  private constructor(
    private readonly o: CheckpointPrunerOptions,
    private readonly passes: TypedKv<typeof TimestampSchema>,
  ) {
    this.logger = o.logger.child({ component: "checkpoint-pruning" });
    this.passMs = o.passMs ?? DEFAULT_PASS_MS;
    this.waitMs = this.passMs + (o.slackMs ?? DEFAULT_SLACK_MS);
  }

  static async open(bus: Bus, options: CheckpointPrunerOptions): Promise<CheckpointPruner> {
    if (!Number.isInteger(options.keep) || options.keep < 1) {
      throw new Error(`checkpoints kept per job must be a whole number of at least 1 (TRAINER_KEEP_CHECKPOINTS), got ${options.keep}`);
    }
    const slackMs = options.slackMs ?? DEFAULT_SLACK_MS;
    // The lock outlives its pass only when the pass's replica died; then it expires once nobody waits for it.
    const passes = await bus.kv(options.store.names.pruningBucket, TimestampSchema, { ttlMs: (options.passMs ?? DEFAULT_PASS_MS) + slackMs });
    return new CheckpointPruner(options, passes);
  }

  get keep(): number {
    return this.o.keep;
  }

  /** Deletes the job's checkpoints beyond the last `keep` and the objects only they used (see the module comment). */
  async prune(jobId: string): Promise<PruneResult> {
    const { store, artifacts } = this.o;
    const doomedOf = async () => {
      const checkpoints = await store.listCheckpoints(jobId);
      const pinned = pendingResume(await store.get(jobId));
      const doomed = checkpoints.slice(0, Math.max(0, checkpoints.length - this.o.keep)).filter((c) => c.id !== pinned);
      return { doomed, kept: checkpoints.filter((c) => !doomed.includes(c)).map((c) => c.id) };
    };
    const before = await doomedOf();
    if (before.doomed.length === 0) return { pruned: [], deletedObjects: [], kept: before.kept };
    const token = await this.lock();
    const deadline = timestampMs(token);
    try {
      const { doomed, kept } = await doomedOf(); // again under the lock: another replica may have pruned meanwhile
      const candidates = new Set<string>();
      for (const c of doomed) for (const hash of await this.objectsOf(c, "pruned")) candidates.add(hash);
      for (const c of doomed) await store.deleteCheckpoint(c);
      const referenced = await this.referencedObjects();
      await this.o.faults?.("references-read", jobId);
      const deletedObjects: string[] = [];
      for (const hash of candidates) {
        if (referenced.has(hash)) continue;
        const left = deadline - Date.now();
        if (left <= 0) {
          this.logger.warn({ jobId, passMs: this.passMs }, "the pruning pass ran out of time; the rest of the pruned checkpoints' objects stay stored");
          break;
        }
        if (await retryTransient(() => artifacts.delete(hash), left, this.logger, "deleting a pruned checkpoint's object")) deletedObjects.push(hash);
      }
      return { pruned: doomed.map((c) => c.id), deletedObjects, kept };
    } finally {
      await this.unlock(token);
    }
  }

  /**
   * Waits for the pruning pass running now, if any (at most `passMs + slackMs`). Called after a record was stored:
   * a pass that read the references before it may delete objects the record names; a pass that starts later does not.
   */
  async settle(): Promise<void> {
    const outcome = await this.waitForPass();
    if (outcome === "timed-out") this.logger.warn({ waitMs: this.waitMs }, "a pruning pass did not end in time; its replica is presumably gone");
  }

  /**
   * After a checkpoint record naming `stored` (from `dir`) was written: waits for a pass that may have missed the
   * record ({@link settle}), then stores the directory again if any of its objects went missing. Returns whether it
   * had to; throws when the directory cannot be made whole again.
   */
  async ensureDirectory(stored: StoredDirectory, dir: string): Promise<boolean> {
    await this.settle();
    if ((await this.missing(stored.objects)).length === 0) return false;
    this.logger.warn({ manifest: stored.ref.sha256 }, "a pruning pass deleted objects a new checkpoint shares with pruned ones; storing them again");
    const again = await retryTransient(() => storeDirectory(this.o.artifacts, dir), RETRY_MS, this.logger, "storing a checkpoint again", this.o.store.onReconnect);
    if (again.ref.sha256 !== stored.ref.sha256 || (await this.missing(stored.objects)).length > 0) {
      throw new Error(`checkpoint files in ${dir} changed after they were stored; the stored checkpoint ${stored.ref.sha256} cannot be completed`);
    }
    return true;
  }

  private async missing(hashes: string[]): Promise<string[]> {
    const out: string[] = [];
    for (const hash of hashes) {
      if (!(await retryTransient(() => this.o.artifacts.has(hash), RETRY_MS, this.logger, "checking a stored object", this.o.store.onReconnect))) out.push(hash);
    }
    return out;
  }

  /** As {@link ensureDirectory}, for files stored one by one (an adapter's): stores again the ones that went missing. */
  async ensureFiles(files: StoredFile[]): Promise<string[]> {
    await this.settle();
    const { artifacts } = this.o;
    const again: string[] = [];
    for (const file of files) {
      if ((await this.missing([file.artifact.sha256])).length === 0) continue;
      const ref = await retryTransient(() => storeFile(artifacts, file.path, file.mediaType), RETRY_MS, this.logger, "storing a file again", this.o.store.onReconnect);
      if (ref.sha256 !== file.artifact.sha256) throw new Error(`${file.path} changed after it was stored; its stored copy ${file.artifact.sha256} cannot be restored`);
      again.push(file.path);
    }
    if (again.length > 0) this.logger.warn({ files: again }, "a pruning pass deleted objects shared with pruned checkpoints; stored them again");
    return again;
  }

  /**
   * Takes the pass lock: waits for the pass holding it, takes it over from one that did not end in time. Returns the
   * lock's value (the deadline for deletes, with random nanoseconds that make it this pass's own).
   */
  private async lock(): Promise<Timestamp> {
    const mine = (): Timestamp => {
      const t = timestampFromMs(Date.now() + this.passMs);
      t.nanos += randomInt(1_000_000);
      return t;
    };
    for (;;) {
      const token = mine();
      try {
        await retryTransient(() => this.passes.create(PASS_KEY, token), RETRY_MS, this.logger, "starting a pruning pass");
        return token;
      } catch (err) {
        if (!(err instanceof RevisionConflictError)) throw err;
      }
      const holder = await retryTransient(() => this.passes.get(PASS_KEY), RETRY_MS, this.logger, "reading the pruning lock");
      if (holder !== null && equals(TimestampSchema, holder.value, token)) return token; // a retried create whose first try landed
      const outcome = await this.waitForPass();
      if (outcome === "timed-out" && holder !== null) {
        const taken = mine();
        try {
          await this.passes.update(PASS_KEY, taken, holder.revision);
          this.logger.warn({ waitMs: this.waitMs }, "took over the pruning lock from a pass that did not end in time");
          return taken;
        } catch (err) {
          if (!(err instanceof RevisionConflictError)) throw err;
        }
      }
    }
  }

  /** Lets go of the lock if this pass still holds it (a pass that overran its time may have lost it to another). */
  private async unlock(token: Timestamp): Promise<void> {
    try {
      await retryTransient(
        async () => {
          const holder = await this.passes.get(PASS_KEY);
          if (holder !== null && equals(TimestampSchema, holder.value, token)) await this.passes.delete(PASS_KEY);
        },
        RETRY_MS,
        this.logger,
        "ending a pruning pass",
      );
    } catch (err) {
      this.logger.warn({ err }, "could not end the pruning pass; others wait for it until it times out");
    }
  }

  /** Waits until the pass holding the lock now (if any) lets go of it, or `passMs + slackMs` passed. */
  private async waitForPass(): Promise<"none" | "ended" | "timed-out"> {
    const until = Date.now() + this.waitMs;
    for (let look = 1; ; look++) {
      const outcome = await retryTransient(() => this.lookAndWait(until), RETRY_MS, this.logger, "waiting for a pruning pass");
      if (outcome === "none") return look === 1 ? "none" : "ended";
      if (outcome !== "interrupted") return outcome;
    }
  }

  private async lookAndWait(until: number): Promise<"none" | "ended" | "timed-out" | "interrupted"> {
    // Watch first, then look: a release after the look is then seen. (keys() reads the stream leader, never a stale copy.)
    const watch = await this.passes.watch({ key: PASS_KEY, updatesOnly: true });
    let timer: NodeJS.Timeout | undefined;
    try {
      let held = false;
      for await (const _ of this.passes.keys(PASS_KEY)) held = true;
      if (!held) return "none";
      await this.o.faults?.("waiting-for-pass", undefined);
      let timedOut = false;
      timer = setTimeout(() => {
        timedOut = true;
        watch.stop();
      }, Math.max(0, until - Date.now()));
      // Any change ends the pass that held the lock: its release, or a takeover (a pass that started after the look).
      for await (const _ of watch) return "ended";
      return timedOut ? "timed-out" : "interrupted"; // the watch ended on its own (NATS went away): look again
    } finally {
      clearTimeout(timer);
      watch.stop();
    }
  }

  /** Every object a kept checkpoint (of any job) or an adapter (of any job) names. */
  private async referencedObjects(): Promise<Set<string>> {
    const referenced = new Set<string>();
    for (const c of await this.o.store.allCheckpoints()) {
      for (const hash of await this.objectsOf(c, "kept")) referenced.add(hash);
    }
    for (const job of await this.o.store.list()) {
      for (const file of job.adapter?.files ?? []) if (file.artifact) referenced.add(file.artifact.sha256);
    }
    return referenced;
  }

  /** The objects of a checkpoint: its manifest and the files the manifest lists. */
  private async objectsOf(c: Checkpoint, role: "pruned" | "kept"): Promise<string[]> {
    const manifest = c.artifact?.sha256;
    if (!manifest) return [];
    let files = this.manifests.get(manifest);
    if (files === undefined) {
      const read = await retryTransient(() => readManifest(this.o.artifacts, manifest), RETRY_MS, this.logger, "reading a checkpoint manifest");
      if (read === null) {
        // A pruned one: another replica pruned it already. A kept one: it is broken; nothing can restore it.
        if (role === "kept") this.logger.warn({ checkpoint: c.id, manifest }, "a kept checkpoint's manifest is missing from the object store");
        return [manifest];
      }
      files = read.files.map((f) => f.sha256);
      if (this.manifests.size >= MANIFEST_CACHE_SIZE) this.manifests.delete(this.manifests.keys().next().value!);
      this.manifests.set(manifest, files);
    }
    return [manifest, ...files];
  }
}
