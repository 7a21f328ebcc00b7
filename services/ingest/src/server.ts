import { busOptionsFromConfig, connectBus, kvBucketMessages, type Bus, type TypedKv } from "@ragtune/bus";
import { ChunkSchema, CollectionSchema, DocumentSchema, IngestService } from "@ragtune/proto";
import { CollectionIndexes } from "./collection-indexes.js";
import type { ServiceContext, ServiceInstance } from "@ragtune/rpc";
import type { IngestConfig } from "./config.js";
import { DocumentPool } from "./document-pool.js";
import { DocumentStore } from "./document-store.js";
import { IngestRunner } from "./ingest-runner.js";
import { createIngestService } from "./ingest-service.js";
import { KeyedLock } from "./keyed-lock.js";
import { RunStore } from "./run-store.js";

/** Names of the JetStream resources the ingest service owns, from its bucket prefix. */
export function ingestResourceNames(prefix: string) {
  return {
    collections: `${prefix}-collections`,
    documents: `${prefix}-documents`,
    /** Chunks by ID, as stores before the chunk index was their only copy wrote them (read and removed, never written). */
    legacyChunks: `${prefix}-chunks`,
    /** Collections whose document index is complete (created with it, or filled once at startup). */
    indexedCollections: `${prefix}-indexed-collections`,
    /** The document index of a collection: one KV bucket per collection. */
    documentIndex: (collection: string) => `${prefix}-document-index-${collection}`,
    /** The chunk index of a collection: one KV bucket per collection. */
    chunkIndex: (collection: string) => `${prefix}-chunk-index-${collection}`,
    runs: `${prefix}-runs`,
    /** The per-document lists of the runs (requested sources, items, results), a page per entry. */
    runPages: `${prefix}-run-pages`,
    chunkSets: `${prefix}-chunk-sets`,
    sources: `${prefix}-sources`,
    runEventsStream: `${prefix.toUpperCase().replace(/-/g, "_")}_RUN_EVENTS`,
    runEventsSubjectPrefix: `${prefix}.run-events`,
  };
}

/** Handles of a started ingest instance (tests read them). */
export interface IngestInstance extends ServiceInstance {
  /** IDs of the unfinished runs this instance picked up once its RPC server listened. */
  readonly resumedRuns: string[];
}

/**
 * The ingest service: its KV buckets, object stores and streams on the bus, the runner and the RPC handlers. Once the
 * RPC server listens it resumes unfinished runs; stopping lets the runner finish its current document (a run in
 * progress stays unfinished in the store and resumes on the next start, here or on another instance), then drains
 * the bus.
 */
export async function startIngestService({ config, logger }: ServiceContext<IngestConfig>): Promise<IngestInstance> {
  const bus = await connectBus(busOptionsFromConfig(config, "ingest", logger));
  try {
    const names = ingestResourceNames(config.INGEST_BUCKET_PREFIX);
    await bus.ensureEventsStream();
    const [collections, documents, indexedCollections, legacyChunks, runs, chunkSets, sources] = await Promise.all([
      bus.kv(names.collections, CollectionSchema),
      bus.kv(names.documents, DocumentSchema),
      bus.kv(names.indexedCollections, CollectionSchema),
      openLegacyChunks(bus, names.legacyChunks),
      RunStore.open(bus, { bucket: names.runs, stream: names.runEventsStream, subjectPrefix: names.runEventsSubjectPrefix, pagesBucket: names.runPages }),
      bus.artifacts(names.chunkSets),
      bus.artifacts(names.sources),
    ]);
    // Per-collection buckets, opened (or created) once on first use.
    const indexes = new CollectionIndexes(bus, names);
    const store = new DocumentStore({
      collections,
      documents,
      indexes,
      indexedCollections,
      legacyChunks,
      chunkSets,
    });
    // Collections ingested before the document index existed: their index is filled once, before any run resumes.
    for (const { collection, added } of await store.backfillDocumentIndexes()) {
      logger.info({ collection, added }, "filled the document index of a collection stored before it");
    }
    const pool = new DocumentPool({
      size: config.INGEST_WORKERS,
      timeoutMs: config.INGEST_DOCUMENT_TIMEOUT,
      logger: logger.child({ component: "document-pool" }),
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
      pool,
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
    const resumedRuns: string[] = [];
    return {
      resumedRuns,
      register: (router) => router.service(IngestService, service),
      async onListening() {
        resumedRuns.push(...(await runner.resume()));
      },
      async stop() {
        await runner.close();
        await pool.close();
        await bus.close();
      },
    };
  } catch (err) {
    await bus.close();
    throw err;
  }
}

/**
 * The by-ID chunk records of an older store, when there are any: this version no longer writes them (the chunk
 * index holds every chunk, and GetChunk finds one there by its ID), so a store without that bucket never gets one.
 */
async function openLegacyChunks(bus: Bus, bucket: string): Promise<TypedKv<typeof ChunkSchema> | undefined> {
  const messages = await kvBucketMessages(bus, bucket);
  return messages !== undefined && messages > 0 ? bus.kv(bucket, ChunkSchema) : undefined;
}
