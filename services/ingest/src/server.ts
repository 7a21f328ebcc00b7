import type { Bus } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import { ChunkSchema, CollectionSchema, DocumentSchema, IngestRunRecordSchema, IngestService } from "@ragtune/proto";
import { startRpcServer, type ConnectRouter, type RpcServer } from "@ragtune/rpc";
import { TokenizerCache } from "./chunking-options.js";
import type { IngestConfig } from "./config.js";
import { DocumentStore } from "./document-store.js";
import { IngestRunner } from "./ingest-runner.js";
import { createIngestService } from "./ingest-service.js";
import { KeyedLock } from "./keyed-lock.js";
import { RunStore } from "./run-store.js";

export interface IngestServer {
  readonly url: string;
  readonly port: number;
  readonly rpc: RpcServer;
  /** IDs of unfinished runs picked up at start. */
  readonly resumedRuns: string[];
  /** Stops the runner (after its current document), then the RPC server. The bus stays open. */
  close(): Promise<void>;
}

/** Names of the JetStream resources the ingest service owns, from its bucket prefix. */
export function ingestResourceNames(prefix: string) {
  return {
    collections: `${prefix}-collections`,
    documents: `${prefix}-documents`,
    chunks: `${prefix}-chunks`,
    runs: `${prefix}-runs`,
    chunkSets: `${prefix}-chunk-sets`,
    sources: `${prefix}-sources`,
    runEventsStream: `${prefix.toUpperCase().replace(/-/g, "_")}_RUN_EVENTS`,
    runEventsSubjectPrefix: `${prefix}.run-events`,
  };
}

/** The ingest service wired to its stores, before (or without) an RPC server. */
export interface IngestApp {
  register(router: ConnectRouter): void;
  /** Queues unfinished runs found in the store; returns their IDs. */
  resume(): Promise<string[]>;
  /** Stops the runner after its current document (unfinished runs resume on the next start). */
  close(): Promise<void>;
}

/**
 * Builds the ingest service on an open bus: its KV buckets, object stores and streams, the runner
 * and the RPC handlers.
 */
export async function createIngestApp(options: { config: IngestConfig; bus: Bus; logger: Logger }): Promise<IngestApp> {
  const { config, bus, logger } = options;
  const names = ingestResourceNames(config.INGEST_BUCKET_PREFIX);
  await bus.ensureEventsStream();
  await RunStore.ensureEventsStream(bus.jsm, names.runEventsStream, names.runEventsSubjectPrefix);
  const [collections, documents, chunks, runsKv, chunkSets, sources] = await Promise.all([
    bus.kv(names.collections, CollectionSchema),
    bus.kv(names.documents, DocumentSchema),
    bus.kv(names.chunks, ChunkSchema),
    bus.kv(names.runs, IngestRunRecordSchema),
    bus.artifacts(names.chunkSets),
    bus.artifacts(names.sources),
  ]);
  const store = new DocumentStore({ collections, documents, chunks, chunkSets });
  const runs = new RunStore({
    runs: runsKv,
    js: bus.js,
    jsm: bus.jsm,
    eventsStream: names.runEventsStream,
    eventsSubjectPrefix: names.runEventsSubjectPrefix,
  });
  const locks = new KeyedLock();
  const chunkingDefaults = {
    tokenizer: config.INGEST_DEFAULT_TOKENIZER,
    chunkSize: config.INGEST_DEFAULT_CHUNK_SIZE,
    overlap: config.INGEST_DEFAULT_CHUNK_OVERLAP,
  };
  const runner = new IngestRunner({
    runs,
    store,
    sources,
    bus,
    tokenizers: new TokenizerCache(),
    locks,
    logger: logger.child({ component: "ingest-runner" }),
    allowedRoot: config.INGEST_ALLOWED_ROOT,
    maxDocumentBytes: config.INGEST_MAX_DOCUMENT_BYTES,
    maxBatchDocuments: config.INGEST_MAX_BATCH_DOCUMENTS,
    chunkingDefaults,
    runLeaseMs: config.INGEST_RUN_LEASE,
    scanIntervalMs: config.INGEST_RUN_SCAN_INTERVAL,
  });
  const service = createIngestService({ store, runs, runner, sources, bus, locks, logger, chunkingDefaults });
  return {
    register: (router) => router.service(IngestService, service),
    resume: () => runner.resume(),
    close: () => runner.close(),
  };
}

/** Starts the ingest service with its own RPC server on an open bus (tests, embedding). */
export async function startIngestServer(options: { config: IngestConfig; bus: Bus; logger: Logger }): Promise<IngestServer> {
  const { config, logger } = options;
  const app = await createIngestApp(options);
  const rpc = await startRpcServer({
    logger,
    host: config.RPC_HOST,
    port: config.RPC_PORT,
    readMaxBytes: config.RPC_READ_MAX_BYTES,
    defaultTimeoutMs: config.RPC_DEADLINE,
    shutdownTimeoutMs: config.SHUTDOWN_TIMEOUT,
    ...(config.RPC_AUTH_TOKEN !== undefined ? { authToken: config.RPC_AUTH_TOKEN } : {}),
    services: (router) => app.register(router),
  });
  const resumedRuns = await app.resume();

  let closed: Promise<void> | undefined;
  return {
    url: rpc.url,
    port: rpc.port,
    rpc,
    resumedRuns,
    close() {
      closed ??= (async () => {
        // The runner first: it stops after its current document, so a run in progress stays
        // unfinished in the store and resumes on the next start.
        await app.close();
        await rpc.close();
      })();
      return closed;
    },
  };
}
