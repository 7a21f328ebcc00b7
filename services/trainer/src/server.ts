import { mkdir } from "node:fs/promises";
import { hostname } from "node:os";
import { busOptionsFromConfig, connectBus } from "@ragtune/bus";
import { TrainerQueueItemSchema, TrainerService } from "@ragtune/proto";
import type { ServiceContext, ServiceInstance } from "@ragtune/rpc";
import { CheckpointPruner } from "./checkpoint-pruning.js";
import type { TrainerConfig } from "./config.js";
import { DatasetVersionCatalog } from "./dataset-versions.js";
import { JobRunner } from "./job-runner.js";
import { JobStore } from "./job-store.js";
import { createTrainerService } from "./trainer-service.js";

export const TRAINER_QUEUE = "trainer-jobs";
export const ARTIFACTS_BUCKET = "trainer-artifacts";

/** Handles of a started trainer (tests reach the runner through it). */
export interface TrainerInstance extends ServiceInstance {
  runner: JobRunner;
  store: JobStore;
}

/**
 * The trainer service: the TrainerService API over the job store, and a job runner taking jobs from the
 * work queue (TRAINER_CONCURRENCY at a time). Stopping checkpoints running jobs and hands them back to the queue.
 */
export async function startTrainerService({ config, logger }: ServiceContext<TrainerConfig>): Promise<TrainerInstance> {
  const replicaId = config.TRAINER_REPLICA_ID ?? `${hostname()}-${process.pid}`;
  await mkdir(config.TRAINER_WORK_DIR, { recursive: true });
  const bus = await connectBus(busOptionsFromConfig(config, `trainer-${replicaId}`, logger));
  try {
    const store = await JobStore.open(bus, logger);
    const queue = await bus.workQueue({
      name: TRAINER_QUEUE,
      schema: TrainerQueueItemSchema,
      ackWaitMs: config.TRAINER_ACK_WAIT,
      // Attempts are counted on the job (TRAINER_MAX_ATTEMPTS); redeliveries after shutdowns must not run out.
      maxDeliver: -1,
    });
    const artifacts = await bus.artifacts(ARTIFACTS_BUCKET);
    const datasets = await DatasetVersionCatalog.open(bus, logger);
    const pruner = await CheckpointPruner.open(bus, { store, artifacts, keep: config.TRAINER_KEEP_CHECKPOINTS, logger });
    const runner = new JobRunner({
      store,
      queue,
      artifacts,
      pruner,
      python: config.TRAINER_PYTHON,
      workerDir: config.TRAINER_WORKER_DIR,
      workDir: config.TRAINER_WORK_DIR,
      heartbeatTimeoutMs: config.TRAINER_HEARTBEAT_TIMEOUT,
      leaseMs: config.TRAINER_ACK_WAIT,
      datasets,
      device: config.TRAINER_DEVICE,
      maxAttempts: config.TRAINER_MAX_ATTEMPTS,
      concurrency: config.TRAINER_CONCURRENCY,
      replicaId,
      logger,
    });
    const impl = createTrainerService({
      bus,
      store,
      queue,
      artifacts,
      datasets,
      dataRoot: config.TRAINER_DATA_ROOT,
      modelRoot: config.TRAINER_MODEL_ROOT,
      logger,
    });
    return {
      runner,
      store,
      register: (router) => router.service(TrainerService, impl),
      onListening: () => runner.start(),
      async stop() {
        await runner.stop();
        await datasets.close();
        await bus.close();
      },
    };
  } catch (err) {
    await bus.close();
    throw err;
  }
}
