import { hostname } from "node:os";
import { busOptionsFromConfig, connectBus } from "@ragtune/bus";
import { CollectionConfigSchema, DatasetService, IngestRunCompletedSchema, IngestService } from "@ragtune/proto";
import { llmClientFromConfig } from "@ragtune/llm";
import { createClient, type ServiceContext, type ServiceInstance } from "@ragtune/rpc";
import type { DatasetConfig } from "./config.js";
import { createDatasetService, rebuildAfterIngest } from "./dataset-service.js";
import { GenerationQueue } from "./generation-queue.js";
import { VersionBuilder } from "./version-builder.js";
import { isFinished, openVersionStore } from "./version-store.js";

/** Handles of a started dataset service (tests read them). */
export interface DatasetInstance extends ServiceInstance {
  builder: VersionBuilder;
}

/**
 * The dataset service: dataset versions as resources of the shared history, built in this process (one at a time,
 * each build in a child process) from the chunks the ingest service serves; exports and examples in the object
 * store. Once the RPC server listens it resumes unfinished builds; stopping interrupts the running build, which
 * resumes on the next start or on another replica.
 */
export async function startDatasetService({ config, logger }: ServiceContext<DatasetConfig>): Promise<DatasetInstance> {
  const bus = await connectBus(busOptionsFromConfig(config, "dataset", logger));
  try {
    await bus.ensureEventsStream();
    const prefix = config.DATASET_BUCKET_PREFIX;
    const versions = await openVersionStore(bus, prefix);
    const artifacts = await bus.artifacts(`${prefix}-artifacts`);
    const ingest = createClient(IngestService, {
      baseUrl: config.DATASET_INGEST_URL,
      protocol: "grpc",
      timeoutMs: 60_000,
      ...(config.DATASET_INGEST_AUTH_TOKEN ? { authToken: config.DATASET_INGEST_AUTH_TOKEN } : {}),
    });
    const llm =
      config.LLM_BASE_URL === undefined
        ? undefined
        : llmClientFromConfig({ ...config, LLM_BASE_URL: config.LLM_BASE_URL }, logger.child({ component: "llm" }), {
            // A call sleeping before a retry frees its place in the generation workers' intake (GenerationQueue.startWorkers).
            onRetry: () => generation?.retrying(),
          });
    // With a model endpoint, this replica also writes generation batches of any replica's builds.
    const generation: GenerationQueue | undefined =
      llm === undefined
        ? undefined
        : await GenerationQueue.open(bus, {
            prefix,
            logger: logger.child({ component: "generation" }),
            worker: `${hostname()}-${process.pid}`,
            batchChunks: config.DATASET_GENERATION_BATCH_CHUNKS,
            ackWaitMs: config.DATASET_GENERATION_ACK_WAIT,
          });
    const builder = new VersionBuilder({
      versions,
      artifacts,
      ingest,
      tokenizer: config.DATASET_TOKENIZER,
      logger: logger.child({ component: "version-builder" }),
      leaseMs: config.DATASET_BUILD_LEASE,
      buildTimeoutMs: config.DATASET_BUILD_TIMEOUT,
      ...(generation === undefined ? {} : { generation }),
    });
    if (generation !== undefined && llm !== undefined) {
      // Auto: enough batches to fill LLM_CONCURRENCY twice, so as many calls wait in the client's FIFO limiter as are
      // on the wire: requests that end together (a wave: they were sent together and take alike) are replaced at once
      // by waiting calls, not after the pulls, outcome checks and request building of new batches on a busy event loop
      // (with one batch waiting, 24 of 32 slots idled through those after every wave).
      const workers = config.DATASET_GENERATION_WORKERS || Math.ceil((2 * config.LLM_CONCURRENCY) / config.DATASET_GENERATION_BATCH_CHUNKS);
      generation.startWorkers(workers, llm, async (versionId) => {
        const v = await versions.get(versionId);
        return v !== null && !isFinished(v.state.status);
      });
    }
    const collections = await bus.kv(`${prefix}-collections`, CollectionConfigSchema);
    const serviceDeps = { versions, artifacts, builder, logger, llmConfigured: llm !== undefined, collections };
    const service = createDatasetService(serviceDeps);
    // Rebuilds after ingest runs of collections configured for it (one durable consumer shared by the replicas).
    const ingestRuns = await bus.subscribe({
      durable: `${prefix}-rebuild-on-ingest`,
      schema: IngestRunCompletedSchema,
      deliver: "new", // runs from before this service first started are not rebuilt
      handler: async ({ event }) => {
        await rebuildAfterIngest(serviceDeps, event);
      },
    });
    return {
      builder,
      register: (router) => router.service(DatasetService, service),
      async onListening() {
        await builder.resume();
      },
      async stop() {
        await ingestRuns.stop();
        await builder.close();
        await generation?.close();
        llm?.close();
        await bus.close();
      },
    };
  } catch (err) {
    await bus.close();
    throw err;
  }
}
