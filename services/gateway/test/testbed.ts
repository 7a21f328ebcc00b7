import { connectBus, type Bus } from "@ragtune/bus";
import { createLogger } from "@ragtune/logger";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type ChunkingOptionsSchema, GatewayService, IngestRunStatus, IngestService } from "@ragtune/proto";
import { startTestService, type TestService } from "@ragtune/rpc";
import { startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { ingestConfigSchema } from "../../ingest/src/config.js";
import { startIngestService } from "../../ingest/src/server.js";
import { gatewayConfigSchema, type GatewayConfig } from "../src/config.js";
import { startGatewayService, type GatewayInstance } from "../src/server.js";
import type { IndexUpdate } from "../src/collection-index.js";
import { type Answer, type ModelEndpoint, startModelEndpoint } from "./model-endpoint.js";

export const BASE_MODEL = "base-model";

/** What services/gateway/src/main.ts hands to runService. */
export const GATEWAY = { name: "gateway", schema: gatewayConfigSchema, start: startGatewayService };

export type GatewayTestService = TestService<GatewayConfig, GatewayInstance>;

/** A real nats-server, the real ingest service, a loopback vLLM-style model endpoint and the gateway over them. */
export interface GatewayTestbed {
  nats: NatsServerHandle;
  bus: Bus;
  ingest: TestService<ReturnType<typeof ingestConfigSchema.parse>>;
  model: ModelEndpoint;
  gateway: GatewayTestService;
  /** Starts another gateway on the same NATS, ingest and model endpoint; the caller stops it. */
  startGateway(env?: Record<string, string>): Promise<GatewayTestService>;
  /** Ingests documents (file name → text) into a collection and waits until the run succeeded; returns document IDs by file name. */
  ingestDocuments(collection: string, documents: Record<string, string>, chunking?: MessageInitShape<typeof ChunkingOptionsSchema>): Promise<Map<string, string>>;
  /** Resolves on the first index update of `gateway` that matches. */
  nextUpdate(gateway: GatewayTestService, match: (u: IndexUpdate) => boolean): Promise<IndexUpdate>;
  close(): Promise<void>;
}

export async function startGatewayTestbed(answer: Answer, env: Record<string, string> = {}): Promise<GatewayTestbed> {
  const nats = await startNatsServer();
  const bus = await connectBus({ servers: nats.url, name: "gateway-test", logger: createLogger({ svc: "gateway-test", level: "silent" }) });
  const ingest = await startTestService({ definition: { name: "ingest", schema: ingestConfigSchema, start: startIngestService }, nats });
  const model = await startModelEndpoint(BASE_MODEL, answer);
  const startGateway = (extra: Record<string, string> = {}) =>
    startTestService({
      definition: GATEWAY,
      nats,
      env: { GATEWAY_AUTH: "none", GATEWAY_INGEST_URL: ingest.url, LLM_BASE_URL: model.url, LLM_MODEL: BASE_MODEL, LLM_MAX_RETRIES: "0", ...env, ...extra },
    });
  const gateway = await startGateway();
  return {
    nats,
    bus,
    ingest,
    model,
    gateway,
    startGateway,
    async ingestDocuments(collection, documents, chunking) {
      const client = ingest.client(IngestService);
      const sources = Object.entries(documents).map(([filename, text]) => ({
        source: { case: "inline" as const, value: { filename, mediaType: "", content: new TextEncoder().encode(text) } },
      }));
      const { run } = await client.ingestDocuments({ collection, sources, ...(chunking === undefined ? {} : { chunking }) });
      for await (const res of client.watchIngestRun({ runId: run!.id })) void res;
      const done = (await client.getIngestRun({ runId: run!.id })).run!;
      if (done.status !== IngestRunStatus.SUCCEEDED) throw new Error(`ingest run ${run!.id} ended ${IngestRunStatus[done.status]}`);
      return new Map(done.documents.map((d) => [d.sourceName, d.documentId]));
    },
    nextUpdate(gw, match) {
      return new Promise((resolve) => {
        const off = gw.instance.indexes.onUpdate((u) => {
          if (!match(u)) return;
          off();
          resolve(u);
        });
      });
    },
    async close() {
      await gateway.stop();
      await ingest.stop();
      await model.close();
      await bus.close();
      await nats.stop();
    },
  };
}

export { GatewayService };
