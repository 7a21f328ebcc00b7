import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { baseServiceSchema, envDuration, envInt } from "@ragtune/config";
import { z } from "zod";

/** services/trainer/worker: the Python worker package next to this service. */
export const DEFAULT_WORKER_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "..", "worker");

/** Environment of the trainer service. */
export const trainerConfigSchema = baseServiceSchema.extend({
  /** Python interpreter of the worker's environment. Default: the project venv's python. */
  TRAINER_PYTHON: z.string().min(1).default(join(DEFAULT_WORKER_DIR, ".venv", "bin", "python")),
  /** The worker package folder (holds ragtune_worker/). */
  TRAINER_WORKER_DIR: z.string().min(1).default(DEFAULT_WORKER_DIR),
  /** Local scratch space for running jobs (checkpoints are also stored in NATS, so this can be ephemeral). */
  TRAINER_WORK_DIR: z.string().min(1).default(join(tmpdir(), "ragtune-trainer")),
  /** Dataset export files given by path must lie under this folder. */
  TRAINER_DATA_ROOT: z.string().min(1).default(process.cwd()),
  /** Base model folders given by path must lie under this folder. */
  TRAINER_MODEL_ROOT: z.string().min(1).default(process.cwd()),
  /** A worker that sends no event for this long is killed and its job fails with a system error. */
  TRAINER_HEARTBEAT_TIMEOUT: envDuration("10m"),
  /** Jobs this replica trains at once. */
  TRAINER_CONCURRENCY: envInt({ min: 1, max: 64, default: 1 }),
  /** Time a replica has to confirm it is still working on a job before another replica gets it. */
  TRAINER_ACK_WAIT: envDuration("30s"),
  /**
   * Failed attempts after which a job fails: attempts whose worker process exited unexpectedly, or whose replica
   * died (its queue item's ack wait ran out). A replica shutting down (SIGTERM) checkpoints and hands the job back
   * as a new queue item that keeps the count, so rolling restarts never use up attempts. ResumeJob starts a new
   * count. The job's `attempt` still counts every start.
   */
  TRAINER_MAX_ATTEMPTS: envInt({ min: 1, max: 100, default: 5 }),
  /**
   * Checkpoints kept per job: after storing a checkpoint, a replica deletes the job's older ones (records and the
   * stored files no kept checkpoint or adapter of any job shares), except one a queued resume still has to restore.
   */
  TRAINER_KEEP_CHECKPOINTS: envInt({ min: 1, max: 1000, default: 3 }),
  /**
   * Where jobs train: `auto` (a CUDA GPU when torch sees one, else the CPU), `cuda` (a job fails with a system error,
   * reason CUDA_UNAVAILABLE, when there is none: GPU deployments never train on the CPU unnoticed) or `cpu`.
   */
  TRAINER_DEVICE: z.enum(["auto", "cuda", "cpu"]).default("auto"),
  /** Replica name in logs and job events. Default: host name and pid. */
  TRAINER_REPLICA_ID: z.string().min(1).optional(),
});

export type TrainerConfig = z.infer<typeof trainerConfigSchema>;
