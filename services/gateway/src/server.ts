import { busOptionsFromConfig, connectBus } from "@ragtune/bus";
import { llmClientFromConfig } from "@ragtune/llm";
import { GatewayService, IngestService } from "@ragtune/proto";
import { createClient, type ServiceContext, type ServiceInstance } from "@ragtune/rpc";
import { CollectionIndexes, followIngestEvents } from "./collection-index.js";
import type { GatewayConfig } from "./config.js";
import { createGatewayService } from "./gateway-service.js";
import { PromotionStore } from "./promotion-store.js";

/** Handles of a started gateway (tests reach them). */
export interface GatewayInstance extends ServiceInstance {
  indexes: CollectionIndexes;
  promotions: PromotionStore;
}

/**
 * The gateway: Ask/AskStream over collections' chunks (indexes loaded from the ingest service and kept current from
 * its events), answered by the model endpoint (LLM_*) with each collection's promoted adapter.
 */
export async function startGatewayService({ config, logger, signal }: ServiceContext<GatewayConfig>): Promise<GatewayInstance> {
  const bus = await connectBus(busOptionsFromConfig(config, "gateway", logger));
  let stopEvents: (() => Promise<void>) | undefined;
  try {
    await bus.ensureEventsStream();
    const upstream = { protocol: "grpc" as const, timeoutMs: 60_000, ...(config.GATEWAY_UPSTREAM_AUTH_TOKEN ? { authToken: config.GATEWAY_UPSTREAM_AUTH_TOKEN } : {}) };
    const ingest = createClient(IngestService, { baseUrl: config.GATEWAY_INGEST_URL, ...upstream });
    const indexes = new CollectionIndexes({ ingest, logger });
    stopEvents = await followIngestEvents(bus, indexes, logger);
    const promotions = await PromotionStore.open(bus, `${config.GATEWAY_BUCKET_PREFIX}-promotions`);
    const llm = llmClientFromConfig(config, logger, { signal });
    const impl = createGatewayService({
      indexes,
      llm,
      promotions,
      baseModel: config.LLM_MODEL,
      limits: { maxQuestionChars: config.GATEWAY_MAX_QUESTION_CHARS },
    });
    const stop = stopEvents;
    return {
      indexes,
      promotions,
      // Client apps call the gateway with Connect JSON over HTTP/1.1 as well as gRPC over h2c.
      allowHttp1: true,
      register: (router) => router.service(GatewayService, impl),
      async stop() {
        await stop().catch((err: unknown) => logger.warn({ err }, "ingest event consumer did not stop cleanly"));
        llm.close();
        await bus.close();
      },
    };
  } catch (err) {
    await stopEvents?.().catch(() => undefined);
    await bus.close().catch(() => undefined);
    throw err;
  }
}
