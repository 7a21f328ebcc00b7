import { busOptionsFromConfig, connectBus } from "@ragtune/bus";
import { DatasetService, IngestService } from "@ragtune/proto";
import { llmClientFromConfig } from "@ragtune/llm";
import { createClient, type ServiceContext, type ServiceInstance } from "@ragtune/rpc";
import type { DatasetConfig } from "./config.js";
import { createDatasetService } from "./dataset-service.js";
import { VersionBuilder } from "./version-builder.js";
import { openVersionStore } from "./version-store.js";

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
        : llmClientFromConfig({ ...config, LLM_BASE_URL: config.LLM_BASE_URL }, logger.child({ component: "llm" }));
    const builder = new VersionBuilder({
      versions,
      artifacts,
      ingest,
      tokenizer: config.DATASET_TOKENIZER,
      logger: logger.child({ component: "version-builder" }),
      leaseMs: config.DATASET_BUILD_LEASE,
      buildTimeoutMs: config.DATASET_BUILD_TIMEOUT,
      ...(llm === undefined ? {} : { llm }),
    });
    const service = createDatasetService({ versions, artifacts, builder, logger, llmConfigured: llm !== undefined });
    return {
      builder,
      register: (router) => router.service(DatasetService, service),
      async onListening() {
        await builder.resume();
      },
      async stop() {
        await builder.close();
        llm?.close();
        await bus.close();
      },
    };
  } catch (err) {
    await bus.close();
    throw err;
  }
}
