/**
 * The gateway's retrieval indexes, one per collection, built from the ingest service's chunk listings and kept
 * current from ingest events without a restart.
 *
 * A collection is loaded on its first question (ListChunks by collection, a page at a time, plus document titles).
 * Every gateway replica reads the ingest events itself, from its start on (libs/bus's followEvents: an ordered,
 * ephemeral JetStream consumer of its own): DocumentChunked puts the version it announces into the index (ListChunks
 * of the event's chunk set: ingest publishes the event before it writes the document's record, so the record may
 * still name the previous version), DocumentDeleted removes a document, CollectionDeleted drops the collection's
 * index. Work on one collection runs in order (load first, then each change in arrival order), so a change that
 * lands while the collection is loading is applied after the load; a repeated event puts the same chunks again, and
 * the event of a version replaced already is skipped (its successor's event follows).
 * Events of collections never asked about are ignored: their first load reads the current state.
 */
import { create } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { type BusContext, followEvents, onEvent } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import {
  CollectionDeletedSchema,
  type DocumentChunked,
  DocumentChunkedSchema,
  DocumentDeletedSchema,
  type IngestService,
  PageRequestSchema,
} from "@ragtune/proto";
import { Bm25Retriever, type IndexedChunk, type Retriever } from "@ragtune/retrieval";

export type IngestClient = Pick<Client<typeof IngestService>, "listChunks" | "listDocuments">;

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

  /** A document of a collection was (re-)chunked: put the announced version into the index if the collection is loaded. */
  documentChanged(event: DocumentChunked): Promise<void> {
    return this.#enqueue(event.collection, (index) => this.#refresh(index, event));
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

  /**
   * Puts the version a DocumentChunked event announces into the index: the chunk set the event names (ListChunks
   * with its sha256), not the document's record, which ingest writes only after publishing the event. A version
   * that is gone already was replaced by a later one or deleted; that change's own event follows and is applied next.
   */
  async #refresh(index: Entry["index"], event: DocumentChunked): Promise<void> {
    const { documentId } = event;
    const chunks: IndexedChunk[] = [];
    try {
      let token = "";
      do {
        const res = await this.#ingest.listChunks({
          documentId,
          chunkSetSha256: event.chunkSet?.sha256 ?? "",
          page: create(PageRequestSchema, { pageSize: this.#pageSize, pageToken: token }),
        });
        for (const c of res.chunks) chunks.push({ chunkId: c.id, documentId, headingPath: c.headingPath, text: c.text, ordinal: c.ordinal });
        token = res.page?.nextPageToken ?? "";
      } while (token !== "");
    } catch (err) {
      if (!(err instanceof ConnectError && err.code === Code.NotFound)) throw err;
      this.#log.debug({ collection: index.collection, documentId, chunkSet: event.chunkSet?.sha256 }, "announced version replaced already; its successor's event follows");
      return;
    }
    index.titles.set(documentId, event.title || event.sourceName);
    index.retriever.putDocument(documentId, chunks);
    this.#emit({ collection: index.collection, kind: "document-refreshed", documentId, chunks: index.retriever.size });
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
      onEvent(DocumentChunkedSchema, (e) => indexes.documentChanged(e.event)),
      onEvent(DocumentDeletedSchema, (e) => indexes.documentDeleted(e.event.collection, e.event.documentId)),
      onEvent(CollectionDeletedSchema, (e) => indexes.collectionDeleted(e.event.collection)),
    ],
  });
  return () => follower.stop();
}
