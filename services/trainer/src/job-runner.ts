import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type ArtifactStore, type Fence, OwnershipLostError, type Job as QueueMessage, type WorkQueue, retryTransient } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  AdapterFileKind,
  AdapterFileSchema,
  AdapterSchema,
  type Checkpoint,
  CheckpointSchema,
  FailureKind,
  FailureSchema,
  type Job,
  JobCheckpointSavedSchema,
  JobLogEntrySchema,
  JobLogLevel,
  JobMetricsSchema,
  JobProgressSchema,
  JobStatus,
  type TrainerQueueItemSchema,
} from "@ragtune/proto";
import type { DatasetVersionCatalog } from "./dataset-versions.js";
import { restoreDirectory, restoreFile, storeDirectory, storeFile } from "./artifact-files.js";
import type { CheckpointPruner, StoredFile } from "./checkpoint-pruning.js";
import { toWorkerHyperparameters } from "./hyperparameters.js";
import { type JobEventDetail, type JobStore, checkpointId } from "./job-store.js";
import { IllegalTransitionError, isTerminal } from "./job-status.js";
import { type WorkerEvent, type WorkerOutcome, WorkerProcess, type WorkerSpec } from "./worker-process.js";

/** How long a checkpoint or adapter transfer is retried across NATS failures before the attempt fails. */
const ARTIFACT_RETRY_MS = 60_000;

/** The work queue carries internal TrainerQueueItems (a job ID); the job itself lives in the KV bucket. */
export type JobQueue = WorkQueue<typeof TrainerQueueItemSchema>;

type QueueItem = QueueMessage<typeof TrainerQueueItemSchema>;

/**
 * Failed attempts of a job before this delivery of its queue item: the count the item was enqueued with, plus one
 * per earlier delivery (each ended in a worker crash, a replica's death or an error; graceful hand-backs enqueue a
 * new item instead of redelivering this one).
 */
export function failedAttemptsBefore(msg: Pick<QueueItem, "value" | "deliveryCount">): number {
  return msg.value.failedAttempts + Math.max(0, msg.deliveryCount - 1);
}

export interface JobRunnerOptions {
  store: JobStore;
  queue: JobQueue;
  artifacts: ArtifactStore;
  /** Deletes a job's old checkpoints after it stored a new one (TRAINER_KEEP_CHECKPOINTS). */
  pruner: CheckpointPruner;
  python: string;
  workerDir: string;
  workDir: string;
  heartbeatTimeoutMs: number;
  /** Downloads a dataset version's exports for a job that trains on dataset_version_id. */
  datasets?: Pick<DatasetVersionCatalog, "download">;
  /** Where the worker trains (TRAINER_DEVICE): cuda fails a job that finds no GPU. Default auto. */
  device?: "auto" | "cuda" | "cpu";
  /**
   * How long a claim holds the job without renewal (TRAINER_ACK_WAIT): the runner renews it every third of this; a
   * second delivery of the job (a NATS restart can cause one) waits while the lease is live, and a replica that
   * cannot renew stops its worker before the lease lapses, so two workers never train one job.
   */
  leaseMs: number;
  maxAttempts: number;
  concurrency: number;
  replicaId: string;
  logger: Logger;
  /** How long one take() waits for a job before checking for shutdown. Default 2 s. */
  pollMs?: number;
}

/** A worker's life on this replica, for diagnostics and tests. */
export interface WorkerLifecycle {
  jobId: string;
  replicaId: string;
  pid: number | undefined;
  event: "started" | "exited";
  atMs: number;
}

interface Active {
  jobId: string;
  worker?: WorkerProcess;
  shuttingDown: boolean;
  /** This replica's ownership of the job (from the claim); every write of the attempt carries it. */
  fence?: Fence;
  /** Another replica owns the job now: write nothing, ack nothing. */
  lost?: boolean;
}

/** Local path of a base model reference (a path or a file:// URI). */
export function modelPath(baseModel: string): string {
  return baseModel.startsWith("file://") ? new URL(baseModel).pathname : baseModel;
}

function ordinal(n: number): string {
  const suffix = n % 100 >= 11 && n % 100 <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" } as Record<number, string>)[n % 10] ?? "th";
  return `${n}${suffix}`;
}

function log(level: JobLogLevel, message: string): JobEventDetail {
  return { case: "log", value: create(JobLogEntrySchema, { level, message }) };
}

/**
 * One trainer replica's job loop: takes job IDs from the work queue (one at a time per slot), runs the worker,
 * turns its events into job state and events, stores checkpoints and the adapter in the object store, acks when
 * the job ends. A crashed worker's job is nak'ed and resumes from its latest checkpoint on any replica (each
 * redelivery is a failed attempt, up to `maxAttempts`); on shutdown the worker checkpoints and stops, and the job is
 * handed back as a new queue item that keeps the failed-attempt count, so shutdowns never use up attempts.
 */
export class JobRunner {
  private readonly active = new Set<Active>();
  private loops: Promise<void>[] = [];
  private stopping = false;
  private readonly logger: Logger;
  private readonly lifecycle = new Set<(e: WorkerLifecycle) => void>();

  constructor(private readonly o: JobRunnerOptions) {
    this.logger = o.logger.child({ component: "job-runner", replica: o.replicaId });
  }

  start(): void {
    for (let slot = 0; slot < this.o.concurrency; slot++) this.loops.push(this.loop(slot));
  }

  /** Checkpoints and hands back running jobs, then resolves when every slot has stopped. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const a of this.active) {
      a.shuttingDown = true;
      a.worker?.cancel();
    }
    await Promise.all(this.loops);
  }

  /** Calls `listener` when a worker starts or exits on this replica; returns the unsubscribe function. */
  onWorkerLifecycle(listener: (e: WorkerLifecycle) => void): () => void {
    this.lifecycle.add(listener);
    return () => this.lifecycle.delete(listener);
  }

  /** PIDs of the workers running now (for diagnostics and tests). */
  workerPids(): number[] {
    return [...this.active].flatMap((a) => (a.worker?.pid !== undefined ? [a.worker.pid] : []));
  }

  private async loop(slot: number): Promise<void> {
    while (!this.stopping) {
      let msg: QueueItem | null;
      try {
        msg = await this.o.queue.take({ expiresMs: this.o.pollMs ?? 2_000 });
      } catch (err) {
        if (this.stopping) break;
        this.logger.error({ err, slot }, "taking a job from the queue failed; retrying");
        await new Promise((r) => setTimeout(r, 1_000));
        continue;
      }
      if (msg === null) continue;
      if (this.stopping) {
        await this.handBack(msg, msg.value.jobId).catch((err: unknown) => {
          this.logger.error({ err, jobId: msg.value.jobId }, "handing a job back failed; it is redelivered");
          msg.nak(0);
        });
        break;
      }
      const active: Active = { jobId: msg.value.jobId, shuttingDown: false };
      this.active.add(active);
      try {
        await this.runJob(msg, active);
      } catch (err) {
        if (err instanceof OwnershipLostError || active.lost) {
          // Another replica claimed the job (its queue item was redelivered there, e.g. after a NATS restart): the
          // delivery this replica holds is no longer its own, so it neither acks nor naks it.
          msg.stopHeartbeat();
          active.worker?.kill();
          this.logger.warn({ err, jobId: active.jobId }, "another replica owns the job now; stopped this replica's worker");
        } else {
          this.logger.error({ err, jobId: active.jobId }, "running a job failed; handing it back to the queue");
          await this.noteFailedAttempt(active, err);
          msg.nak(5_000);
        }
      } finally {
        this.active.delete(active);
        await rm(join(this.o.workDir, active.jobId), { recursive: true, force: true }).catch(() => {});
      }
    }
  }

  private async runJob(msg: QueueItem, active: Active): Promise<void> {
    const { store } = this.o;
    const jobId = msg.value.jobId;
    const logger = this.logger.child({ jobId, delivery: msg.deliveryCount });
    const job = await store.get(jobId);
    if (job === null) {
      msg.term(`job ${jobId} does not exist`);
      return;
    }
    if (isTerminal(job.status)) {
      await msg.ack();
      return;
    }
    if (job.status === JobStatus.CANCEL_REQUESTED) {
      // The replica that was stopping it died; its last checkpoint is stored.
      await store.transition(jobId, { type: "cancelled" });
      await msg.ack();
      return;
    }
    msg.startHeartbeat();
    const failedBefore = failedAttemptsBefore(msg);
    if (failedBefore >= this.o.maxAttempts) {
      await this.fail(
        jobId,
        FailureKind.SYSTEM_ERROR,
        "ATTEMPTS_EXHAUSTED",
        `the job's worker crashed or its replica died ${failedBefore} times without finishing (TRAINER_MAX_ATTEMPTS=${this.o.maxAttempts}); giving up`,
      );
      await msg.ack();
      return;
    }

    let checkpoint: Checkpoint | null | undefined;
    if (job.status === JobStatus.QUEUED && job.resumedFromCheckpointId !== "") {
      checkpoint = await store.getCheckpoint(job.resumedFromCheckpointId);
    } else if (job.attempt > 0) {
      checkpoint = await store.latestCheckpoint(jobId);
    }
    let claimed: Job;
    try {
      const delivery = msg.deliveryCount > 1 ? `; the queue delivered it for the ${ordinal(msg.deliveryCount)} time` : "";
      const resumes = checkpoint ? `; resumes from checkpoint ${checkpoint.id} at step ${checkpoint.step}` : "";
      const taken = await store.claim(jobId, this.o.replicaId, {
        leaseMs: this.o.leaseMs,
        ...(checkpoint ? { resumeFromCheckpointId: checkpoint.id } : {}),
        describe: (next, reason) => `attempt ${next.attempt} started on replica ${this.o.replicaId}${resumes} (${reason}${delivery})`,
      });
      if (taken === null) {
        const now = await store.resources.get(jobId);
        if (now === null || isTerminal(now.state.status)) {
          await msg.ack(); // finished meanwhile
          return;
        }
        // Another replica holds a live lease: this is a second delivery of a job that is running (a NATS restart
        // redelivers in-flight items). Wait for the owner instead of training the job twice.
        await this.waitForOwner(msg, jobId, now.owner, logger);
        return;
      }
      claimed = taken.job;
      active.fence = taken.fence;
    } catch (err) {
      if (!(err instanceof IllegalTransitionError)) throw err;
      await msg.ack(); // cancelled or finished meanwhile
      return;
    }
    logger.info({ attempt: claimed.attempt, checkpoint: checkpoint?.id, epoch: active.fence.epoch }, "job claimed");

    const attemptDir = join(this.o.workDir, jobId, `attempt-${claimed.attempt}`);
    await mkdir(attemptDir, { recursive: true });
    let resumePath: string | null = null;
    if (checkpoint) {
      const target = join(attemptDir, "resume", `checkpoint-${checkpoint.step}`);
      await this.retryDownload((signal) => restoreDirectory(this.o.artifacts, checkpoint.artifact!, target, signal), "restoring a checkpoint");
      resumePath = target;
    }
    const fence = active.fence;
    if (active.shuttingDown || this.stopping) {
      await this.requeue(jobId, fence);
      await this.handBack(msg, jobId);
      return;
    }

    const spec = await this.workerSpec(claimed, attemptDir, resumePath);
    const worker = WorkerProcess.start({
      python: this.o.python,
      workerDir: this.o.workerDir,
      spec,
      logger,
      heartbeatTimeoutMs: this.o.heartbeatTimeoutMs,
      onEvent: (e) => this.onWorkerEvent(jobId, e, fence),
    });
    active.worker = worker;
    this.emit({ jobId, replicaId: this.o.replicaId, pid: worker.pid, event: "started", atMs: Date.now() });
    void worker.closed.then(() => this.emit({ jobId, replicaId: this.o.replicaId, pid: worker.pid, event: "exited", atMs: Date.now() }));
    if (this.stopping) worker.cancel();
    const lease = this.keepLease(jobId, fence, active, worker, logger);
    const watch = await store.watchJob(jobId);
    void (async () => {
      for await (const change of watch) {
        if (change === null) continue;
        if (change.owner !== fence.owner || change.epoch !== fence.epoch) {
          // Another replica claimed the job: stop at once, so two workers never train it together.
          active.lost = true;
          logger.warn({ owner: change.owner, epoch: change.epoch, myEpoch: fence.epoch }, "another replica claimed the job; killing this replica's worker");
          worker.kill();
          continue;
        }
        if (change.state.status === JobStatus.CANCEL_REQUESTED) worker.cancel();
        if (change.state.status === JobStatus.CANCELLED) worker.kill();
      }
    })().catch((err: unknown) => logger.warn({ err }, "watching the job for cancel failed"));

    let outcome: WorkerOutcome;
    try {
      outcome = await worker.done;
    } catch (err) {
      lease.stop();
      watch.stop();
      if (active.lost) throw new OwnershipLostError("trainer-job", jobId, "another replica claimed it while its worker ran");
      const now = await store.get(jobId);
      if (now !== null && isTerminal(now.status)) {
        await msg.ack();
        return;
      }
      throw err;
    }
    lease.stop();
    watch.stop();
    if (active.lost) throw new OwnershipLostError("trainer-job", jobId, "another replica claimed it while its worker ran");
    await this.finish(msg, active, claimed, outcome, logger);
  }

  private async finish(
    msg: QueueItem,
    active: Active,
    claimed: Job,
    outcome: WorkerOutcome,
    logger: Logger,
  ): Promise<void> {
    const { store } = this.o;
    const jobId = claimed.id;
    const fence = active.fence!;
    const current = await store.get(jobId);
    if (current === null || isTerminal(current.status)) {
      await msg.ack();
      return;
    }
    switch (outcome.type) {
      case "finished": {
        const { adapter, stored } = await this.storeAdapter(current, outcome.event);
        await store.transition(jobId, { type: "succeed", adapter }, undefined, fence);
        await this.o.pruner.ensureFiles(stored).catch((err: unknown) => {
          logger.error({ err }, "an adapter file deleted by a concurrent checkpoint pruning could not be stored again");
        });
        break;
      }
      case "cancelled":
        if (current.status === JobStatus.CANCEL_REQUESTED) {
          await store.transition(jobId, { type: "cancelled" }, undefined, fence);
        } else {
          // Only a shutdown cancels without a user's request: hand the job to another replica.
          await this.requeue(jobId, fence);
          await this.handBack(msg, jobId);
          return;
        }
        break;
      case "failed":
        if (current.status === JobStatus.CANCEL_REQUESTED && outcome.crashed) {
          await store.transition(jobId, { type: "cancelled" }, undefined, fence);
        } else if (outcome.crashed && active.shuttingDown) {
          await this.requeue(jobId, fence);
          await this.handBack(msg, jobId);
          return;
        } else if (outcome.reason === "WORKER_EXITED" && failedAttemptsBefore(msg) + 1 < this.o.maxAttempts) {
          logger.warn(
            { attempt: current.attempt, failedAttempts: failedAttemptsBefore(msg) + 1 },
            "worker crashed; the job goes back to the queue to resume from its latest checkpoint",
          );
          await store.modify(
            jobId,
            (j) => ({ job: j, event: log(JobLogLevel.WARNING, `${outcome.message}; retrying from the latest checkpoint`) }),
            fence,
          );
          await store.resources.release(jobId, fence); // the next delivery claims at once
          msg.nak(1_000);
          return;
        } else {
          const kind = outcome.kind === "user_error" ? FailureKind.USER_ERROR : FailureKind.SYSTEM_ERROR;
          await this.fail(jobId, kind, outcome.reason, outcome.message, fence, outcome.field);
        }
        break;
    }
    await msg.ack();
  }

  /**
   * A graceful hand-back (this replica stops): a new queue item with the failed attempts so far, then the old item is
   * acked, so the shutdown does not count as an attempt. The new item is enqueued first, so the job is never without
   * one; its message ID (from the old item's stream sequence) makes a retried hand-back a no-op. Only if the replica
   * dies between the two steps is the old item redelivered as well (counted as a failed attempt).
   */
  private async handBack(msg: QueueItem, jobId: string): Promise<void> {
    await this.o.queue.enqueue({ jobId, failedAttempts: failedAttemptsBefore(msg) }, { msgId: `${jobId}:handback-${msg.seq}` });
    await msg.ack();
  }

  private async requeue(jobId: string, fence: Fence): Promise<void> {
    const latest = await this.o.store.latestCheckpoint(jobId);
    await this.o.store.transition(jobId, { type: "requeue", ...(latest ? { resumeFromCheckpointId: latest.id } : {}) }, undefined, fence);
    await this.o.store.resources.release(jobId, fence);
  }

  /**
   * Object-store downloads ride out a NATS restart: retried (content-addressed, so a retry is idempotent), and one in
   * flight at a reconnect is aborted (its partial file removed) and retried as soon as it has stopped, rather than
   * after its request timeout (10 s with nothing moving): two must not write the same file.
   */
  private retryDownload<T>(op: (signal?: AbortSignal) => Promise<T>, what: string): Promise<T> {
    return retryTransient(op, ARTIFACT_RETRY_MS, this.logger, what, this.o.store.onReconnect, "abort");
  }

  /**
   * As {@link retryDownload}, for uploads: one in flight at a reconnect is left to finish or fail and retried at once.
   * The abandoned upload stores under a temporary name of its own, so at worst it also finishes as the same content.
   */
  private retryUpload<T>(op: () => Promise<T>, what: string): Promise<T> {
    return retryTransient(op, ARTIFACT_RETRY_MS, this.logger, what, this.o.store.onReconnect);
  }

  private storeFile(path: string, contentType: string) {
    return this.retryUpload(() => storeFile(this.o.artifacts, path, contentType), "storing an adapter file");
  }

  /** Says in the history why an attempt ended early (a storage or NATS error) before its job goes back to the queue. */
  private async noteFailedAttempt(active: Active, err: unknown): Promise<void> {
    if (active.fence === undefined) return;
    const fence = active.fence;
    const message = `attempt stopped on replica ${this.o.replicaId} by a system error (${(err as Error).message ?? String(err)}); the job goes back to the queue and resumes from its latest checkpoint`;
    try {
      await this.o.store.modify(active.jobId, (j) => ({ job: j, event: log(JobLogLevel.WARNING, message) }), fence);
      await this.o.store.resources.release(active.jobId, fence);
    } catch (e) {
      this.logger.warn({ err: e, jobId: active.jobId }, "could not record the failed attempt");
    }
  }

  private emit(e: WorkerLifecycle): void {
    for (const listener of this.lifecycle) listener(e);
  }

  /**
   * Renews the claim's lease every third of its length while the worker runs. Another owner (OwnershipLostError)
   * or a lease this replica could not renew in time (NATS unreachable for longer than the lease) kills the worker
   * before another replica may take the job over.
   */
  private keepLease(jobId: string, fence: Fence, active: Active, worker: WorkerProcess, logger: Logger): { stop(): void } {
    const leaseMs = this.o.leaseMs;
    let deadline = Date.now() + leaseMs;
    let renewedAt = Date.now();
    // Renewals run on a timer and may overlap: one stuck in a request lost to a NATS restart (it times out only
    // after the request timeout) must not hold back the next attempt.
    let inFlight = 0;
    const lose = (why: string, err?: unknown) => {
      if (active.lost) return;
      active.lost = true;
      logger.warn({ err }, `${why}; killing this replica's worker so the job never runs twice`);
      worker.kill();
    };
    const timer = setInterval(() => {
      if (Date.now() >= deadline - Math.min(1_000, leaseMs / 6)) {
        lose(`could not renew the job's lease within ${leaseMs} ms`);
        return;
      }
      if (inFlight >= 3) return;
      inFlight += 1;
      const started = Date.now();
      this.o.store.resources
        .renew(jobId, fence, leaseMs)
        .then(() => {
          const gap = Date.now() - renewedAt;
          renewedAt = Date.now();
          if (gap > leaseMs / 2) logger.warn({ gapMs: gap, leaseMs }, "the job's lease was renewed late (NATS was unreachable or slow); its worker is stopped if a lease passes without one");
          deadline = Math.max(deadline, started + leaseMs);
        })
        .catch((err: unknown) => {
          if (err instanceof OwnershipLostError) lose("another replica claimed the job", err);
          else logger.warn({ err }, "renewing the job's lease failed; retrying");
        })
        .finally(() => {
          inFlight -= 1;
        });
    }, Math.max(50, Math.floor(leaseMs / 6)));
    timer.unref();
    return { stop: () => clearInterval(timer) };
  }

  /**
   * This delivery found the job leased by `owner`: hold the delivery (heartbeats keep it) until the job ends (ack),
   * or the owner lets go or its lease lapses (hand the delivery back at once so a replica claims the job anew).
   */
  private async waitForOwner(msg: QueueItem, jobId: string, owner: string, logger: Logger): Promise<void> {
    logger.info({ owner }, "job is running on another replica; this delivery waits for it instead of training it twice");
    const watch = await this.o.store.watchJob(jobId);
    let leaseTimer: NodeJS.Timeout | undefined;
    try {
      const outcome = await new Promise<"ended" | "retry">((resolve, reject) => {
        void (async () => {
          for await (const r of watch) {
            clearTimeout(leaseTimer);
            if (r === null || isTerminal(r.state.status)) return resolve("ended");
            if (r.owner === "" || this.stopping) return resolve("retry");
            leaseTimer = setTimeout(() => resolve("retry"), Math.max(0, r.leaseExpiresAtMs - Date.now()) + 100);
          }
        })().catch(reject);
      });
      if (outcome === "ended") await msg.ack();
      else msg.nak(0);
    } finally {
      clearTimeout(leaseTimer);
      watch.stop();
    }
  }

  private async fail(jobId: string, kind: FailureKind, reason: string, message: string, fence?: Fence, field = ""): Promise<void> {
    await this.o.store.transition(jobId, { type: "fail", failure: create(FailureSchema, { kind, reason, message, field }) }, undefined, fence);
  }

  private async workerSpec(job: Job, attemptDir: string, resumePath: string | null): Promise<WorkerSpec> {
    const hp = toWorkerHyperparameters(job.hyperparameters!);
    let files: { trainPath: string; valPath: string };
    if (job.dataset.case === "datasetFiles") {
      files = job.dataset.value;
    } else if (job.dataset.case === "datasetVersionId") {
      if (this.o.datasets === undefined) throw new Error(`job ${job.id} trains on a dataset version, but this replica has no dataset catalog`);
      const dir = join(attemptDir, "dataset");
      await mkdir(dir, { recursive: true });
      files = await this.o.datasets.download(job.dataset.value, dir);
    } else {
      throw new Error(`job ${job.id} has no dataset`);
    }
    let initAdapter: string | null = null;
    if (job.initAdapterJobId !== "") initAdapter = await this.restoreInitAdapter(job, join(attemptDir, "init-adapter"));
    return {
      ...hp,
      job_id: job.id,
      model_dir: modelPath(job.baseModel),
      train_file: files.trainPath,
      val_file: files.valPath !== "" && (job.hyperparameters?.evalIntervalSteps ?? 0) > 0 ? files.valPath : null,
      output_dir: join(attemptDir, "output"),
      resume_from_checkpoint: resumePath,
      init_adapter: initAdapter,
      device: this.o.device ?? "auto",
    };
  }

  /** The PEFT files of the adapter a warm-started job continues, from the object store into `dir`. */
  private async restoreInitAdapter(job: Job, dir: string): Promise<string> {
    const from = await this.o.store.get(job.initAdapterJobId);
    const files = from?.adapter?.files.filter((f) => f.kind === AdapterFileKind.PEFT_CONFIG || f.kind === AdapterFileKind.PEFT_WEIGHTS) ?? [];
    if (files.length < 2) throw new Error(`job ${job.id} starts from the adapter of job ${job.initAdapterJobId}, which is no longer stored`);
    await mkdir(dir, { recursive: true });
    for (const file of files) {
      const ref = file.artifact!;
      await this.retryDownload((signal) => restoreFile(this.o.artifacts, ref.sha256, ref.sizeBytes, join(dir, file.fileName), signal), "restoring the adapter a warm start continues");
    }
    return dir;
  }

  private async onWorkerEvent(jobId: string, e: WorkerEvent, fence: Fence): Promise<void> {
    const { store } = this.o;
    switch (e.type) {
      case "validated":
        await store.modify(jobId, (job) => {
          job.progress ??= create(JobProgressSchema);
          job.progress.totalSteps = e.steps_planned;
          return {
            job,
            event: log(JobLogLevel.INFO, `validated: ${e.rows} training rows, ${e.val_rows} validation rows, ${e.steps_planned} steps`),
          };
        }, fence);
        break;
      case "started":
        await store.transition(jobId, { type: "start" }, undefined, fence);
        break;
      case "metrics":
        await store.modify(jobId, (job) => {
          if (job.status !== JobStatus.RUNNING && job.status !== JobStatus.CANCEL_REQUESTED) return null;
          const progress = (job.progress ??= create(JobProgressSchema));
          if (e.step <= progress.step) {
            // A resumed attempt repeats steps after its checkpoint: each step is recorded once.
            if (e.step === progress.step && e.val_loss !== undefined && e.train_loss === undefined) {
              progress.valLoss = e.val_loss;
              return { job };
            }
            return null;
          }
          progress.step = e.step;
          progress.epoch = e.epoch;
          if (e.train_loss !== undefined) progress.trainLoss = e.train_loss;
          if (e.val_loss !== undefined) progress.valLoss = e.val_loss;
          const metrics = create(JobMetricsSchema, {
            step: e.step,
            totalSteps: progress.totalSteps,
            epoch: e.epoch,
            trainLoss: e.train_loss ?? 0,
            ...(e.val_loss !== undefined ? { valLoss: e.val_loss } : {}),
            learningRate: e.learning_rate ?? 0,
            tokensPerSecond: e.tokens_per_second ?? 0,
            peakMemoryBytes: BigInt(Math.round(e.peak_memory_bytes ?? 0)),
            ...(e.grad_norm !== undefined ? { gradNorm: e.grad_norm } : {}),
          });
          return { job, event: { case: "metrics", value: metrics } };
        }, fence);
        break;
      case "checkpoint": {
        const stored = await this.retryUpload(() => storeDirectory(this.o.artifacts, e.path), "storing a checkpoint");
        const current = await store.get(jobId);
        const checkpoint = create(CheckpointSchema, {
          id: checkpointId(jobId, e.step),
          jobId,
          step: e.step,
          epoch: current?.progress?.epoch ?? 0,
          artifact: stored.ref,
          createdAt: timestampFromDate(new Date()),
        });
        const isNew = await store.putCheckpoint(checkpoint);
        // A file already stored was only referred to: a pruning pass that missed this record may have deleted it.
        await this.o.pruner.ensureDirectory(stored, e.path);
        if (isNew) {
          await store.modify(jobId, (job) => ({ job, event: { case: "checkpointSaved", value: create(JobCheckpointSavedSchema, { checkpoint }) } }), fence);
        }
        await this.pruneCheckpoints(jobId);
        break;
      }
      default:
        break; // finished / failed / cancelled are handled from the outcome once the worker exited
    }
  }

  /**
   * Deletes the job's checkpoints beyond the last TRAINER_KEEP_CHECKPOINTS. Never fails the job: what a failed pass
   * leaves is pruned with the job's next checkpoint (or stays).
   */
  private async pruneCheckpoints(jobId: string): Promise<void> {
    try {
      const result = await this.o.pruner.prune(jobId);
      if (result.pruned.length > 0) {
        this.logger.info({ jobId, pruned: result.pruned, deletedObjects: result.deletedObjects.length, kept: result.kept }, "pruned old checkpoints");
      }
    } catch (err) {
      this.logger.warn({ err, jobId }, "pruning old checkpoints failed; the job goes on and they stay stored for now");
    }
  }

  /** Stores the adapter's files; returns the Adapter and where each stored file came from. */
  private async storeAdapter(job: Job, e: Extract<WorkerEvent, { type: "finished" }>) {
    const sources: { kind: AdapterFileKind; fileName: string; path: string; mediaType: string }[] = [
      { kind: AdapterFileKind.PEFT_CONFIG, fileName: "adapter_config.json", path: join(e.adapter_dir, "adapter_config.json"), mediaType: "application/json" },
      {
        kind: AdapterFileKind.PEFT_WEIGHTS,
        fileName: "adapter_model.safetensors",
        path: join(e.adapter_dir, "adapter_model.safetensors"),
        mediaType: "application/octet-stream",
      },
    ];
    if (e.gguf_path) sources.push({ kind: AdapterFileKind.GGUF, fileName: "adapter.gguf", path: e.gguf_path, mediaType: "application/octet-stream" });
    const files = [];
    const stored: StoredFile[] = [];
    for (const source of sources) {
      const artifact = await this.storeFile(source.path, source.mediaType);
      files.push(create(AdapterFileSchema, { kind: source.kind, fileName: source.fileName, artifact }));
      stored.push({ artifact, path: source.path, mediaType: source.mediaType });
    }
    const progress = create(JobProgressSchema, job.progress ?? {});
    progress.step = Math.max(progress.step, e.steps);
    if (e.final_loss !== null) progress.trainLoss = e.final_loss;
    const adapter = create(AdapterSchema, { id: `adapter-${job.id}`, jobId: job.id, baseModel: job.baseModel, files, finalProgress: progress });
    return { adapter, stored };
  }
}
