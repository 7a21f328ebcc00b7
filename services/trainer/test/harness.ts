import { spawn } from "node:child_process";
import { mkdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { Writable } from "node:stream";
import { type MessageInitShape, create } from "@bufbuild/protobuf";
import {
  ComputeDtype,
  type CreateJobRequestSchema,
  type Hyperparameters,
  HyperparametersSchema,
  type JobEvent,
  JobStatus,
  TrainerService,
} from "@ragtune/proto";
import { type ServiceDefinition, type createClient, startTestService } from "@ragtune/rpc";
import { type NatsServerHandle, removeTempDir, startNatsServer, tempDir } from "@ragtune/testing";
import { DEFAULT_WORKER_DIR, trainerConfigSchema } from "../src/config.js";
import { type TrainerInstance, startTrainerService } from "../src/server.js";

/** The worker's test fixtures (train.jsonl, val.jsonl, …). */
export const FIXTURES = resolve(DEFAULT_WORKER_DIR, "tests", "fixtures");
export const PYTHON = join(DEFAULT_WORKER_DIR, ".venv", "bin", "python");

/** What services/trainer/src/main.ts hands to runService. */
export const TRAINER: ServiceDefinition<typeof trainerConfigSchema, TrainerInstance> = {
  name: "trainer",
  schema: trainerConfigSchema,
  start: startTrainerService,
};
/** The same trainer, except that its job runner never starts (that is its onListening): jobs stay queued. */
export const TRAINER_WITHOUT_RUNNER: typeof TRAINER = {
  ...TRAINER,
  start: async (context) => ({ ...(await startTrainerService(context)), onListening: undefined }),
};

/** Tiny settings: a few steps of seq ≤ 64 on the tiny model, a checkpoint every 2 steps. */
export function tinyHyperparameters(overrides: MessageInitShape<typeof HyperparametersSchema> = {}): Hyperparameters {
  return create(HyperparametersSchema, {
    rank: 4,
    duration: { case: "maxSteps", value: 6 },
    maxSeqLen: 64,
    microBatchSize: 2,
    gradientAccumulationSteps: 1,
    checkpointIntervalSteps: 2,
    evalIntervalSteps: 0,
    warmupSteps: 1,
    learningRate: 1e-3,
    computeDtype: ComputeDtype.FLOAT32,
    gradientCheckpointing: false,
    ...overrides,
  });
}

export interface Replica {
  name: string;
  instance: TrainerInstance;
  port: number;
  client: ReturnType<typeof createClient<typeof TrainerService>>;
  /** Shuts the replica down as SIGTERM does. */
  stop(): Promise<void>;
}

/** A real nats-server, a temp root and the tiny model (random weights, real tokenizer), made once per test file. */
export interface TrainerTestbed {
  nats: NatsServerHandle;
  root: string;
  modelDir: string;
  /** `logTo`: the replica's warning and error lines (and its claims) are kept there, for a failing test to show. */
  startReplica(name: string, opts?: { runJobs?: boolean; env?: Record<string, string>; logTo?: string[] }): Promise<Replica>;
  createRequest(overrides?: MessageInitShape<typeof CreateJobRequestSchema>): MessageInitShape<typeof CreateJobRequestSchema>;
  close(): Promise<void>;
}

export async function startTestbed(): Promise<TrainerTestbed> {
  const root = await tempDir("trainer-it");
  const modelDir = join(root, "models", "tiny");
  await mkdir(join(root, "models"), { recursive: true });
  const nats = await startNatsServer();
  await new Promise<void>((ok, fail) => {
    const child = spawn(PYTHON, ["-m", "ragtune_worker.tiny_model", "--out", modelDir, "--no-gguf"], {
      cwd: DEFAULT_WORKER_DIR,
      env: { ...process.env, PYTHONPATH: DEFAULT_WORKER_DIR },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.once("exit", (code) => (code === 0 ? ok() : fail(new Error(`tiny_model failed (${code}):\n${stderr}`))));
  });
  return {
    nats,
    root,
    modelDir,
    async startReplica(name, opts = {}) {
      const workDir = join(root, "work", name);
      await mkdir(workDir, { recursive: true });
      const logTo = opts.logTo;
      const service = await startTestService({
        definition: (opts.runJobs ?? true) ? TRAINER : TRAINER_WITHOUT_RUNNER,
        nats,
        env: {
          TRAINER_WORK_DIR: workDir,
          TRAINER_DATA_ROOT: FIXTURES,
          TRAINER_MODEL_ROOT: join(root, "models"),
          TRAINER_ACK_WAIT: "5s",
          TRAINER_REPLICA_ID: name,
          ...(logTo !== undefined && process.env.TEST_LOG_LEVEL === undefined ? { LOG_LEVEL: "info" } : {}),
          ...opts.env,
        },
        ...(logTo !== undefined
          ? {
              logDestination: new Writable({
                write(chunk: Buffer, _enc, done) {
                  for (const line of chunk.toString("utf8").split("\n")) {
                    if (/"level":"(warn|error|fatal)"|"msg":"job claimed"/.test(line)) logTo.push(`${name} ${line.slice(0, 600)}`);
                  }
                  done();
                },
              }),
            }
          : {}),
      });
      return { name, instance: service.instance, port: service.port, client: service.client(TrainerService), stop: service.stop };
    },
    createRequest(overrides = {}) {
      return {
        baseModel: modelDir,
        dataset: { case: "datasetFiles", value: { trainPath: join(FIXTURES, "train.jsonl"), valPath: join(FIXTURES, "val.jsonl") } },
        hyperparameters: tinyHyperparameters(),
        ...overrides,
      };
    },
    async close() {
      await nats.stop();
      await removeTempDir(root);
    },
  };
}

/** Watches a job from `from` until the stream ends (terminal) or `until` says stop. */
export async function watch(r: Replica, jobId: string, until?: (e: JobEvent) => boolean, from = 1): Promise<JobEvent[]> {
  const events: JobEvent[] = [];
  const controller = new AbortController();
  try {
    for await (const res of r.client.watchJob({ jobId, fromSequence: from }, { signal: controller.signal })) {
      events.push(res.event!);
      if (until?.(res.event!)) break;
    }
  } finally {
    controller.abort();
  }
  return events;
}

export const statuses = (events: JobEvent[]) =>
  events.flatMap((e) => (e.event.case === "statusChanged" ? [JobStatus[e.event.value.status]] : []));
export const steps = (events: JobEvent[]) => events.flatMap((e) => (e.event.case === "metrics" ? [e.event.value.step] : []));
export const logs = (events: JobEvent[]) => events.flatMap((e) => (e.event.case === "log" ? [e.event.value.message] : []));
