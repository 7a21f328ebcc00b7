import { busOptionsFromConfig, connectBus } from "@ragtune/bus";
import { llmClientFromConfig } from "@ragtune/llm";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { AdapterPromotedSchema, DatasetService, EvalService, GatewayService, IngestService, TrainerService } from "@ragtune/proto";
import { createClient, type ServiceContext, type ServiceInstance } from "@ragtune/rpc";
import { type AccessControl, ApiKeys, guardService, RateLimiter, Tenancy } from "./access.js";
import { CollectionIndexes, followIngestEvents } from "./collection-index.js";
import type { GatewayConfig } from "./config.js";
import { createGatewayService } from "./gateway-service.js";
import { PromotionStore } from "./promotion-store.js";
import { createReadApis } from "./read-apis.js";
import { dashboardFiles } from "./dashboard-files.js";
import { Promotions } from "./promotions.js";
import { createPipelineApis, Pipelines } from "./pipeline.js";
import { CollectionUpdates } from "./updates.js";

/** Handles of a started gateway (tests reach them). */
export interface GatewayInstance extends ServiceInstance {
  indexes: CollectionIndexes;
  promotions: Promotions;
  promotionStore: PromotionStore;
  access: AccessControl | undefined;
  pipelines: Pipelines;
  updates: CollectionUpdates;
}

/**
 * The gateway: Ask/AskStream over collections' chunks (indexes loaded from the ingest service and kept current from
 * its events), answered by the model endpoint (LLM_*) with each collection's promoted adapter.
 */
export async function startGatewayService({ config, logger, signal }: ServiceContext<GatewayConfig>): Promise<GatewayInstance> {
  const bus = await connectBus(busOptionsFromConfig(config, "gateway", logger));
  let stopEvents: (() => Promise<void>) | undefined;
  let pipelines: Pipelines | undefined;
  let updates: CollectionUpdates | undefined;
  try {
    await bus.ensureEventsStream();
    const upstream = { protocol: "grpc" as const, timeoutMs: 60_000, ...(config.GATEWAY_UPSTREAM_AUTH_TOKEN ? { authToken: config.GATEWAY_UPSTREAM_AUTH_TOKEN } : {}) };
    const ingest = createClient(IngestService, { baseUrl: config.GATEWAY_INGEST_URL, ...upstream });
    const indexes = new CollectionIndexes({ ingest, logger });
    stopEvents = await followIngestEvents(bus, indexes, logger);
    const store = await PromotionStore.open(bus, `${config.GATEWAY_BUCKET_PREFIX}-promotions`);
    const llm = llmClientFromConfig(config, logger, { signal });
    const trainer = createClient(TrainerService, { baseUrl: config.GATEWAY_TRAINER_URL, ...upstream });
    const evals = createClient(EvalService, { baseUrl: config.GATEWAY_EVAL_URL, ...upstream });
    const dataset = createClient(DatasetService, { baseUrl: config.GATEWAY_DATASET_URL, ...upstream });
    const promotions = new Promotions({
      store,
      trainer,
      evals,
      dataset,
      endpoint: llm,
      adapterDir: config.GATEWAY_ADAPTER_DIR,
      loraFormat: config.GATEWAY_LORA_FORMAT,
      maxLoraRank: config.GATEWAY_MAX_LORA_RANK,
      canaryItems: config.GATEWAY_CANARY_ITEMS,
      logger,
      async publish(adapter) {
        const at = adapter.promotedAt === undefined ? Date.now() : Number(adapter.promotedAt.seconds) * 1000 + Math.floor(adapter.promotedAt.nanos / 1e6);
        const eventId = `${adapter.collection}:${adapter.adapterId}:${at}`;
        await bus.publish(AdapterPromotedSchema, create(AdapterPromotedSchema, { eventId, occurredAt: timestampFromDate(new Date(at)), adapter }), { msgId: eventId });
      },
    });
    const access: AccessControl | undefined =
      config.GATEWAY_AUTH === "none"
        ? undefined
        : {
            keys: await ApiKeys.open(bus, `${config.GATEWAY_BUCKET_PREFIX}-api-keys`),
            tenancy: await Tenancy.open(bus, `${config.GATEWAY_BUCKET_PREFIX}-tenancy`),
            limiter: new RateLimiter(config.GATEWAY_RATE_LIMIT, config.GATEWAY_RATE_BURST),
            logger,
          };
    const halt = config.GATEWAY_TEST_HALT_AT;
    const onPipelineStep =
      halt === undefined
        ? undefined
        : async (pipelineRunId: string, step: string) => {
            if (step !== halt) return;
            logger.warn({ pipelineRunId, step }, "pipeline halted here for a crash test (GATEWAY_TEST_HALT_AT)");
            await new Promise<never>(() => undefined);
          };
    pipelines = await Pipelines.open({
      bus,
      prefix: config.GATEWAY_BUCKET_PREFIX,
      ingest,
      dataset,
      trainer,
      evals,
      promotion: promotions,
      promotions: store,
      endpointUrl: config.LLM_BASE_URL,
      servedBaseModel: config.LLM_MODEL,
      baseModel: config.GATEWAY_PIPELINE_BASE_MODEL,
      logger,
      leaseMs: config.GATEWAY_PIPELINE_LEASE,
      ...(onPipelineStep === undefined ? {} : { onStep: onPipelineStep }),
    });
    updates = await CollectionUpdates.open({ bus, prefix: config.GATEWAY_BUCKET_PREFIX, pipelines, dataset, promotions: store, logger });
    if (access === undefined) logger.warn("GATEWAY_AUTH=none: no API keys, every collection open to every caller");
    const handlers = {
      ...createReadApis({ access, ingest, dataset, trainer, evals, promotions: store }),
      ...createPipelineApis(access, pipelines, updates),
      ...createGatewayService({
      access,
      indexes,
      llm,
      promotions: store,
      promotion: promotions,
      baseModel: config.LLM_MODEL,
      limits: { maxQuestionChars: config.GATEWAY_MAX_QUESTION_CHARS },
      }),
    };
    const impl = access === undefined ? handlers : guardService(GatewayService, handlers, access);
    const stop = stopEvents;
    const runs = pipelines;
    const followers = updates;
    await followers.start();
    return {
      indexes,
      promotions,
      promotionStore: store,
      access,
      pipelines: runs,
      updates: followers,
      // Client apps call the gateway with Connect JSON over HTTP/1.1 as well as gRPC over h2c.
      allowHttp1: true,
      httpHandler: dashboardFiles({ logger }),
      register: (router) => router.service(GatewayService, impl),
      // The endpoint may have restarted without the adapters it served: load every collection's promoted one.
      onListening: () => {
        void promotions.reloadServing();
        runs.resume().catch((err: unknown) => logger.error({ err }, "cannot resume the unfinished pipeline runs"));
      },
      async stop() {
        await followers.stop();
        await runs.close();
        await stop().catch((err: unknown) => logger.warn({ err }, "ingest event consumer did not stop cleanly"));
        llm.close();
        await bus.close();
      },
    };
  } catch (err) {
    await updates?.stop().catch(() => undefined);
    await pipelines?.close().catch(() => undefined);
    await stopEvents?.().catch(() => undefined);
    await bus.close().catch(() => undefined);
    throw err;
  }
}
