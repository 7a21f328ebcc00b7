import { connectBus, type Bus } from "@ragtune/bus";
import { createLogger } from "@ragtune/logger";
import { IngestRunStatus, IngestService } from "@ragtune/proto";
import { startTestService, type TestService } from "@ragtune/rpc";
import { startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { ingestConfigSchema } from "../../ingest/src/config.js";
import { startIngestService } from "../../ingest/src/server.js";
import { datasetConfigSchema } from "../src/config.js";
import { startDatasetService } from "../src/server.js";

export type DatasetTestService = TestService<ReturnType<typeof datasetConfigSchema.parse>>;

/** A real nats-server, the real ingest service and the dataset service reading chunks from it over gRPC. */
export interface DatasetTestbed {
  nats: NatsServerHandle;
  /** A bus of the test's own, to read what the services stored and published. */
  bus: Bus;
  ingest: TestService<ReturnType<typeof ingestConfigSchema.parse>>;
  dataset: DatasetTestService;
  /** Starts another dataset instance on the same NATS and ingest (a second replica); the caller stops it. */
  startDataset(env?: Record<string, string>): Promise<DatasetTestService>;
  /** Ingests documents (file name → bytes) into a collection through the ingest API and waits until the run succeeded. */
  ingestDocuments(collection: string, documents: Iterable<[string, Uint8Array]>): Promise<void>;
  close(): Promise<void>;
}

export async function startDatasetTestbed(env: Record<string, string> = {}): Promise<DatasetTestbed> {
  const nats = await startNatsServer();
  const bus = await connectBus({ servers: nats.url, name: "dataset-test", logger: createLogger({ svc: "dataset-test", level: "silent" }) });
  const ingest = await startTestService({ definition: { name: "ingest", schema: ingestConfigSchema, start: startIngestService }, nats });
  const startDataset = (extra: Record<string, string> = {}) =>
    startTestService({
      definition: { name: "dataset", schema: datasetConfigSchema, start: startDatasetService },
      nats,
      env: { DATASET_INGEST_URL: ingest.url, ...env, ...extra },
    });
  const dataset = await startDataset();
  return {
    nats,
    bus,
    ingest,
    dataset,
    startDataset,
    async ingestDocuments(collection, documents) {
      const client = ingest.client(IngestService);
      const sources = [...documents].map(([filename, content]) => ({ source: { case: "inline" as const, value: { filename, mediaType: "", content } } }));
      const { run } = await client.ingestDocuments({ collection, sources });
      for await (const res of client.watchIngestRun({ runId: run!.id })) void res;
      const status = (await client.getIngestRun({ runId: run!.id })).run!.status;
      if (status !== IngestRunStatus.SUCCEEDED) throw new Error(`ingest run ${run!.id} ended ${IngestRunStatus[status]}`);
    },
    async close() {
      await dataset.stop();
      await ingest.stop();
      await bus.close();
      await nats.stop();
    },
  };
}
