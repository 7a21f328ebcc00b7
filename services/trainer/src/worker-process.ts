import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { delimiter } from "node:path";
import { createInterface } from "node:readline";
import type { Logger } from "@ragtune/logger";
import { requestFieldOfWorkerField, type WorkerHyperparameters } from "./hyperparameters.js";

/** The `spec` of the worker's train command (see services/trainer/worker/ragtune_worker/spec.py). */
export interface WorkerSpec extends WorkerHyperparameters {
  job_id: string;
  model_dir: string;
  train_file: string;
  val_file: string | null;
  output_dir: string;
  resume_from_checkpoint: string | null;
  /** Warm start: the PEFT adapter folder whose weights the job starts from. */
  init_adapter: string | null;
  /** Where to train (TRAINER_DEVICE): "cuda" fails the job when no GPU is visible instead of training on the CPU. */
  device: "auto" | "cuda" | "cpu";
}

interface Seq {
  seq: number;
  job_id?: string;
}
export type WorkerValidated = Seq & {
  type: "validated";
  rows: number;
  val_rows: number;
  steps_planned: number;
  trainable_params?: number;
  total_params?: number;
};
export type WorkerStarted = Seq & { type: "started"; steps_planned: number };
/** Step metrics; a step with a validation loss may arrive as one event or as a train and a val event. */
export type WorkerMetrics = Seq & {
  type: "metrics";
  step: number;
  epoch: number;
  train_loss?: number;
  val_loss?: number;
  learning_rate?: number;
  tokens_per_second?: number;
  peak_memory_bytes?: number;
  grad_norm?: number;
};
export type WorkerCheckpoint = Seq & { type: "checkpoint"; step: number; path: string };
export type WorkerFinished = Seq & {
  type: "finished";
  steps: number;
  final_loss: number | null;
  adapter_dir: string;
  gguf_path?: string;
};
export type WorkerFailed = Seq & {
  type: "failed";
  kind: "user_error" | "system_error";
  message: string;
  /** UPPER_SNAKE_CASE, e.g. INVALID_UTF8, INVALID_JSON, MISSING_FIELD, ROW_TOO_LONG, NAN_LOSS, MISSING_PACKAGE. */
  reason?: string;
  /** The spec field to blame (`train_file`, `lora_r`, `target_modules[1]`), when there is one. */
  field?: string;
  /** 1-based line of that field's file. */
  line?: number;
};
export type WorkerCancelled = Seq & { type: "cancelled"; checkpoint_path: string | null; step: number };

export type WorkerEvent =
  | WorkerValidated
  | WorkerStarted
  | WorkerMetrics
  | WorkerCheckpoint
  | WorkerFinished
  | WorkerFailed
  | WorkerCancelled;

/** How a worker run ended. */
export type WorkerOutcome =
  | { type: "finished"; event: WorkerFinished }
  | { type: "cancelled"; event: WorkerCancelled }
  | {
      type: "failed";
      kind: "user_error" | "system_error";
      message: string;
      /**
       * UPPER_SNAKE_CASE reason for the job's Failure: the worker's own (INVALID_UTF8, ROW_TOO_LONG, ...;
       * WORKER_REPORTED from a worker that gave none), or WORKER_EXITED, HEARTBEAT_TIMEOUT, SPAWN_FAILED.
       */
      reason: string;
      /**
       * The request field to blame for the Failure's `field` (`hyperparameters.rank`, `dataset_files.train_path`),
       * or "" when none is (see {@link requestFieldOfSpecField}).
       */
      field: string;
      /** True when the worker died or hung without reporting: running it again from a checkpoint may work. */
      crashed: boolean;
    };

/** Worker spec fields that come from the CreateJob request but are not hyperparameters. */
const REQUEST_FIELD_OF_SPEC_FIELD: Readonly<Record<string, string>> = {
  model_dir: "base_model",
  train_file: "dataset_files.train_path",
  val_file: "dataset_files.val_path",
};

/**
 * The CreateJob request field of a worker spec field (`lora_r` → `hyperparameters.rank`, `train_file` →
 * `dataset_files.train_path`); "" for fields the service fills in itself (output_dir, resume_from_checkpoint)
 * and for anything unknown, so a Failure never blames a field the user did not send.
 */
export function requestFieldOfSpecField(specField: string | undefined): string {
  if (specField === undefined || specField === "") return "";
  return REQUEST_FIELD_OF_SPEC_FIELD[specField] ?? requestFieldOfWorkerField(specField) ?? "";
}

export interface WorkerProcessOptions {
  /** The Python interpreter of the worker's environment. */
  python: string;
  /** The worker package folder (services/trainer/worker); it is the cwd and on PYTHONPATH. */
  workerDir: string;
  spec: WorkerSpec;
  logger: Logger;
  /** Kill the worker and fail the run when no event arrives for this long. */
  heartbeatTimeoutMs: number;
  /**
   * Called for each event in order; the next event waits until the returned promise settles. A handler that
   * throws kills the worker and makes `done` reject with that error.
   */
  onEvent: (event: WorkerEvent) => void | Promise<void>;
  /** Extra environment for the worker. */
  env?: Record<string, string>;
}

/** A worker's failure reason as the job's Failure carries it (anything else becomes WORKER_REPORTED). */
const REASON = /^[A-Z][A-Z0-9_]{0,63}$/;
const EVENT_TYPES = new Set(["validated", "started", "metrics", "checkpoint", "finished", "failed", "cancelled"]);
const STDERR_TAIL = 30;

function parseEvent(line: string): WorkerEvent | undefined {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  const event = value as { type?: unknown; seq?: unknown };
  if (typeof event.type !== "string" || !EVENT_TYPES.has(event.type) || typeof event.seq !== "number") return undefined;
  return value as WorkerEvent;
}

/**
 * One run of the Python trainer worker (`python -m ragtune_worker`): writes the train command, turns its
 * stdout JSON lines into typed events, logs its stderr, enforces the heartbeat timeout and forwards cancel.
 */
export class WorkerProcess {
  readonly done: Promise<WorkerOutcome>;
  /** Resolves when the worker process has exited (before `done`, which also waits for the event handlers). */
  readonly closed: Promise<void>;
  private readonly child: ChildProcessWithoutNullStreams;
  private readonly logger: Logger;
  private cancelSent = false;
  private timedOut = false;

  private constructor(options: WorkerProcessOptions) {
    this.logger = options.logger.child({ component: "worker", jobId: options.spec.job_id });
    const pythonPath = [options.workerDir, process.env.PYTHONPATH].filter(Boolean).join(delimiter);
    this.child = spawn(options.python, ["-m", "ragtune_worker"], {
      cwd: options.workerDir,
      env: { ...process.env, ...options.env, PYTHONPATH: pythonPath, PYTHONUNBUFFERED: "1" },
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.closed = new Promise((resolve) => this.child.once("close", () => resolve()));
    this.done = this.supervise(options);
  }

  /** Starts the worker and sends it the job spec. */
  static start(options: WorkerProcessOptions): WorkerProcess {
    return new WorkerProcess(options);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Asks the worker to stop at the next step boundary and save a checkpoint (idempotent). */
  cancel(): void {
    if (this.cancelSent || this.exited) return;
    this.cancelSent = true;
    this.logger.info("asking the worker to checkpoint and stop");
    this.child.stdin.write(`${JSON.stringify({ type: "cancel" })}\n`);
  }

  /** Kills the worker at once (SIGKILL). */
  kill(): void {
    if (!this.exited) this.child.kill("SIGKILL");
  }

  private get exited(): boolean {
    return this.child.exitCode !== null || this.child.signalCode !== null;
  }

  private async supervise(options: WorkerProcessOptions): Promise<WorkerOutcome> {
    const { child, logger } = this;
    const stderrTail: string[] = [];
    let terminal: WorkerEvent | undefined;
    let handlerError: unknown;
    let chain: Promise<void> = Promise.resolve();

    child.stdin.on("error", (err) => logger.debug({ err }, "worker stdin closed"));
    const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));
    const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once("close", (code, signal) => resolve({ code, signal })),
    );

    let timer: NodeJS.Timeout | undefined;
    const armHeartbeat = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        this.timedOut = true;
        logger.error({ timeoutMs: options.heartbeatTimeoutMs }, "worker sent no event within the heartbeat timeout; killing it");
        child.kill("SIGKILL");
      }, options.heartbeatTimeoutMs);
    };
    armHeartbeat();

    createInterface({ input: child.stderr }).on("line", (line) => {
      stderrTail.push(line);
      if (stderrTail.length > STDERR_TAIL) stderrTail.shift();
      logger.debug({ worker: line }, "worker log");
    });
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (line.trim() === "") return;
      const event = parseEvent(line);
      if (event === undefined) {
        logger.warn({ line: line.slice(0, 500) }, "ignoring a worker stdout line that is not a protocol event");
        return;
      }
      armHeartbeat();
      if (event.type === "finished" || event.type === "failed" || event.type === "cancelled") terminal = event;
      chain = chain.then(async () => {
        if (handlerError !== undefined) return;
        try {
          await options.onEvent(event);
        } catch (err) {
          handlerError = err;
          logger.error({ err, event: event.type }, "handling a worker event failed; killing the worker");
          child.kill("SIGKILL");
        }
      });
    });

    child.stdin.write(`${JSON.stringify({ type: "train", spec: options.spec })}\n`);
    logger.info({ pid: child.pid }, "worker started");

    const first = await Promise.race([exit.then((e) => ({ exit: e })), spawnError.then((err) => ({ err }))]);
    clearTimeout(timer);
    if ("err" in first) {
      return {
        type: "failed",
        kind: "system_error",
        reason: "SPAWN_FAILED",
        field: "",
        crashed: false,
        message: `cannot start the trainer worker with ${options.python}: ${first.err.message}; check TRAINER_PYTHON`,
      };
    }
    await chain;
    if (handlerError !== undefined) throw handlerError;
    const { code, signal } = first.exit;
    logger.info({ code, signal }, "worker exited");

    if (terminal?.type === "finished") return { type: "finished", event: terminal };
    if (terminal?.type === "cancelled") return { type: "cancelled", event: terminal };
    if (terminal?.type === "failed") {
      return {
        type: "failed",
        kind: terminal.kind,
        message: terminal.message,
        reason: typeof terminal.reason === "string" && REASON.test(terminal.reason) ? terminal.reason : "WORKER_REPORTED",
        field: requestFieldOfSpecField(typeof terminal.field === "string" ? terminal.field : undefined),
        crashed: false,
      };
    }
    if (this.timedOut) {
      return {
        type: "failed",
        kind: "system_error",
        reason: "HEARTBEAT_TIMEOUT",
        field: "",
        crashed: true,
        message: `the trainer worker sent no event for ${Math.round(options.heartbeatTimeoutMs / 1000)} s and was stopped`,
      };
    }
    logger.error({ code, signal, stderr: stderrTail }, "worker exited without reporting an outcome");
    return {
      type: "failed",
      kind: "system_error",
      reason: "WORKER_EXITED",
      field: "",
      crashed: true,
      message: `the trainer worker exited unexpectedly (${signal !== null ? `signal ${signal}` : `exit code ${code}`}) before the job ended`,
    };
  }
}
