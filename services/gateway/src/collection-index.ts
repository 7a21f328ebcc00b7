/**
 * The gateway's retrieval indexes, one per collection, built from the ingest service's chunk listings and kept
 * current from ingest events without a restart.
 *
 * A collection is loaded on its first question (ListChunks by collection, a page at a time, plus document titles).
 * Every gateway replica reads the ingest events itself, from its start on (libs/bus's followEvents: an ordered,
 * ephemeral JetStream consumer of its own): DocumentChunked refreshes that document's chunks (GetDocument + ListChunks by document),
 * DocumentDeleted removes them, CollectionDeleted drops the collection's index. Work on one collection runs in
 * order (load first, then each change in arrival order), so a change that lands while the collection is loading is
 * applied after the load; a refresh reads the document's current state, so a repeated or late event is harmless.
 * Events of collections never asked about are ignored: their first load reads the current state.
 */
import { create } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { type BusContext, followEvents, onEvent } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  CollectionDeletedSchema,
  DocumentChunkedSchema,
  DocumentDeletedSchema,
  DocumentStatus,
  type IngestService,
  PageRequestSchema,
} from "@ragtune/proto";
import { Bm25Retriever, type IndexedChunk, type Retriever } from "@ragtune/retrieval";

export type IngestClient = Pick<Client<typeof IngestService>, "listChunks" | "listDocuments" | "getDocument">;

/** A loaded collection: its retriever and its documents' titles (for citations). */
export interface CollectionIndex {
  readonly collection: string;
  readonly retriever: Retriever;
  readonly titles: ReadonlyMap<string, string>;
}

/** What changed in an index (tests and logs wait on it). */
export interface IndexUpdate {
  collection: string;
  kind: "loaded" | "document-refreshed" | "document-removed" | "collection-dropped";
  documentId?: string;
  chunks: number;
}

export interface CollectionIndexesOptions {
  ingest: IngestClient;
  logger: Logger;
  createRetriever?: () => Retriever;
  /** Chunks per ListChunks page while loading (the ingest service clamps to 1000). */
  pageSize?: number;
}

interface Entry {
  index: { collection: string; retriever: Retriever; titles: Map<string, string> };
  /** The tail of this collection's work; each step runs after the previous one settled. */
  tail: Promise<void>;
  loaded: Promise<void>;
}

const PAGE_SIZE = 1000;

export class CollectionIndexes {
  readonly #ingest: IngestClient;
  readonly #log: Logger;
  readonly #createRetriever: () => Retriever;
  readonly #pageSize: number;
  readonly #entries = new Map<string, Entry>();
  readonly #listeners = new Set<(update: IndexUpdate) => void>();

  constructor(options: CollectionIndexesOptions) {
    this.#ingest = options.ingest;
    this.#log = options.logger.child({ subsystem: "collection-index" });
    this.#createRetriever = options.createRetriever ?? (() => new Bm25Retriever());
    this.#pageSize = options.pageSize ?? PAGE_SIZE;
  }

  /** Listen to index changes; returns the unsubscribe function. */
  onUpdate(listener: (update: IndexUpdate) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * The loaded index of a collection (loading it on first use). NotFound when the ingest service knows no such
   * collection; a failed load is forgotten, so the next question tries again.
   */
  async get(collection: string): Promise<CollectionIndex> {
    let entry = this.#entries.get(collection);
    if (entry === undefined) {
      const index = { collection, retriever: this.#createRetriever(), titles: new Map<string, string>() };
      const loaded = this.#load(index);
      entry = { index, loaded, tail: loaded.catch(() => undefined) };
      this.#entries.set(collection, entry);
      const current = entry;
      loaded.catch(() => {
        if (this.#entries.get(collection) === current) this.#entries.delete(collection);
      });
    }
    await entry.loaded;
    return entry.index;
  }

  /** Collections loaded now. */
  loadedCollections(): string[] {
    return [...this.#entries.keys()];
  }

  /** A document of a collection was (re-)chunked: read its chunks again if the collection is loaded. */
  documentChanged(collection: string, documentId: string): Promise<void> {
    return this.#enqueue(collection, (index) => this.#refresh(index, documentId));
  }

  documentDeleted(collection: string, documentId: string): Promise<void> {
    return this.#enqueue(collection, async (index) => {
      index.retriever.removeDocument(documentId);
      index.titles.delete(documentId);
      this.#emit({ collection, kind: "document-removed", documentId, chunks: index.retriever.size });
    });
  }

  collectionDeleted(collection: string): Promise<void> {
    const entry = this.#entries.get(collection);
    if (entry === undefined) return Promise.resolve();
    this.#entries.delete(collection);
    this.#emit({ collection, kind: "collection-dropped", chunks: 0 });
    return Promise.resolve();
  }

  #enqueue(collection: string, step: (index: Entry["index"]) => Promise<void>): Promise<void> {
    const entry = this.#entries.get(collection);
    if (entry === undefined) return Promise.resolve(); // never asked about: its first load reads the current state
    const run = entry.tail.then(() => (this.#entries.get(collection) === entry ? step(entry.index) : undefined));
    entry.tail = run.catch((err: unknown) => {
      // The index may now miss this change: drop it, so the next question loads the collection afresh.
      this.#log.warn({ err, collection }, "index update failed; the collection will be reloaded on its next question");
      if (this.#entries.get(collection) === entry) this.#entries.delete(collection);
    });
    return entry.tail;
  }

  async #load(index: Entry["index"]): Promise<void> {
    const started = performance.now();
    let token = "";
    do {
      const res = await this.#ingest.listDocuments({ collection: index.collection, page: create(PageRequestSchema, { pageSize: this.#pageSize, pageToken: token }) });
      for (const d of res.documents) index.titles.set(d.id, d.title || d.sourceName);
      token = res.page?.nextPageToken ?? "";
    } while (token !== "");
    const byDocument = new Map<string, IndexedChunk[]>();
    do {
      const res = await this.#ingest.listChunks({ collection: index.collection, page: create(PageRequestSchema, { pageSize: this.#pageSize, pageToken: token }) });
      for (const c of res.chunks) {
        let list = byDocument.get(c.documentId);
        if (list === undefined) byDocument.set(c.documentId, (list = []));
        list.push({ chunkId: c.id, documentId: c.documentId, headingPath: c.headingPath, text: c.text, ordinal: c.ordinal });
      }
      token = res.page?.nextPageToken ?? "";
    } while (token !== "");
    for (const [documentId, chunks] of byDocument) index.retriever.putDocument(documentId, chunks);
    this.#log.info({ collection: index.collection, chunks: index.retriever.size, ms: Math.round(performance.now() - started) }, "collection index loaded");
    this.#emit({ collection: index.collection, kind: "loaded", chunks: index.retriever.size });
  }

  async #refresh(index: Entry["index"], documentId: string): Promise<void> {
    let document;
    try {
      document = (await this.#ingest.getDocument({ documentId })).document;
    } catch (err) {
      if (!(err instanceof ConnectError && err.code === Code.NotFound)) throw err;
    }
    const chunks: IndexedChunk[] = [];
    if (document !== undefined && document.status === DocumentStatus.READY && document.collection === index.collection) {
      let token = "";
      do {
        const res = await this.#ingest.listChunks({ documentId, page: create(PageRequestSchema, { pageSize: this.#pageSize, pageToken: token }) });
        for (const c of res.chunks) chunks.push({ chunkId: c.id, documentId, headingPath: c.headingPath, text: c.text, ordinal: c.ordinal });
        token = res.page?.nextPageToken ?? "";
      } while (token !== "");
      index.titles.set(documentId, document.title || document.sourceName);
    }
    if (chunks.length === 0) index.titles.delete(documentId);
    index.retriever.putDocument(documentId, chunks);
    this.#emit({ collection: index.collection, kind: chunks.length === 0 ? "document-removed" : "document-refreshed", documentId, chunks: index.retriever.size });
  }

  #emit(update: IndexUpdate): void {
    for (const listener of this.#listeners) {
      try {
        listener(update);
      } catch (err) {
        this.#log.warn({ err }, "index update listener threw");
      }
    }
  }
}

/**
 * Follows the ingest events (every replica all of them, from the events published after the start: libs/bus's
 * followEvents, an ordered consumer of this replica's own). Returns the stop function.
 */
export async function followIngestEvents(bus: BusContext, indexes: CollectionIndexes, logger: Logger): Promise<() => Promise<void>> {
  const follower = await followEvents(bus, {
    name: "gateway-collection-index",
    logger: logger.child({ subsystem: "ingest-events" }),
    events: [
      onEvent(DocumentChunkedSchema, (e) => indexes.documentChanged(e.event.collection, e.event.documentId)),
      onEvent(DocumentDeletedSchema, (e) => indexes.documentDeleted(e.event.collection, e.event.documentId)),
      onEvent(CollectionDeletedSchema, (e) => indexes.collectionDeleted(e.event.collection)),
    ],
  });
  return () => follower.stop();
}
