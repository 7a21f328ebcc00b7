import { create, fromJson, type JsonValue } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { RevisionConflictError, type ArtifactStore, type TypedKv } from "@ragtune/bus";
import {
  ArtifactRefSchema,
  ChunkSchema,
  CollectionSchema,
  DocumentSchema,
  DocumentStatus,
  type ArtifactRef,
  type Chunk,
  type Collection,
  type Document,
  TokenizerKindSchema,
} from "@ragtune/proto";
import type { CollectionIndexes } from "./collection-indexes.js";

/** Where the ingest service keeps documents, chunks and collections. */
export interface DocumentStoreDeps {
  collections: TypedKv<typeof CollectionSchema>;
  /**
   * Key `<collection>.<documentId>`: document records as stores before the document index wrote them (every write
   * went here and to the index). Read once per collection to fill its document index (`backfillDocumentIndexes`) and
   * removed with their document; never written.
   */
  documents: TypedKv<typeof DocumentSchema>;
  /**
   * The per-collection buckets (CollectionIndexes): a collection's document index, key `<documentId>` — the one
   * record of each document, so a page of a collection's documents reads only its own entries (a filter on a shared
   * bucket would cost the server a pass over every document of every collection when the page's consumer is made) —
   * and its chunk index, key `<documentId>.<chunkId>`: every stored chunk, once. A page of a collection's chunks reads
   * only its own entries, a document's chunks are known without its chunk set, and a chunk is found by its ID alone.
   */
  indexes: Pick<CollectionIndexes, "documentIndex" | "chunkIndex" | "putRecords" | "findChunk" | "drop" | "forget">;
  /**
   * Key `<collection>`: the collections whose document index is known to be complete (created with the index, or
   * filled from `documents` once, see `backfillDocumentIndexes`); the value names the collection.
   */
  indexedCollections: TypedKv<typeof CollectionSchema>;
  /**
   * Chunks by ID (key `<chunkId>`), as stores before the chunk index was the only copy wrote them: read by GetChunk
   * and removed with their chunks, never written. Undefined when the store has none.
   */
  legacyChunks?: TypedKv<typeof ChunkSchema> | undefined;
  /** Chunk sets (JSON array of chunks of one document version), content-addressed. */
  chunkSets: ArtifactStore;
}

export const CHUNK_SET_MEDIA_TYPE = "application/json";

const COLLECTION_RE = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** Checks a collection name (1–63 of [a-z0-9_-], starting with a letter or digit); returns a problem or undefined. */
export function collectionNameProblem(name: string): string | undefined {
  if (COLLECTION_RE.test(name)) return undefined;
  return `"${name}" is not a valid collection name: use 1–63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit`;
}

/** Encodes a document's chunks as its chunk set (deterministic JSON: same chunks, same bytes, same hash). */
export function encodeChunkSet(chunks: readonly Chunk[]): Uint8Array {
  return Buffer.from(JSON.stringify(chunks.map(chunkJson)), "utf8");
}

/** Proto names of the tokenizer kinds, as the JSON mapping writes an enum. */
const TOKENIZER_NAMES = new Map(TokenizerKindSchema.values.map((v) => [v.number, v.name]));

/**
 * A chunk's proto3 JSON, key for key what `toJson(ChunkSchema, chunk)` gives (fields in declaration order, defaults
 * left out, the enum by its name) — so a chunk set hashes as before — without the reflection, which was most of the
 * cost of encoding a chunk set in the document workers. A test holds the two equal.
 */
function chunkJson(c: Chunk): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  if (c.id !== "") o["id"] = c.id;
  if (c.documentId !== "") o["documentId"] = c.documentId;
  if (c.collection !== "") o["collection"] = c.collection;
  if (c.headingPath.length > 0) o["headingPath"] = c.headingPath;
  if (c.text !== "") o["text"] = c.text;
  if (c.tokenCount !== 0) o["tokenCount"] = c.tokenCount;
  if (c.charStart !== 0) o["charStart"] = c.charStart;
  if (c.charEnd !== 0) o["charEnd"] = c.charEnd;
  if (c.ordinal !== 0) o["ordinal"] = c.ordinal;
  if (c.tokenizer !== 0) o["tokenizer"] = TOKENIZER_NAMES.get(c.tokenizer) ?? c.tokenizer;
  return o;
}

/** The chunks of an encoded chunk set, in ordinal order. */
export function decodeChunkSet(encoded: Uint8Array): Chunk[] {
  const json = JSON.parse(Buffer.from(encoded.buffer, encoded.byteOffset, encoded.byteLength).toString("utf8")) as JsonValue[];
  return json.map((c) => fromJson(ChunkSchema, c));
}

/** A page of a listing: the items and where the next page starts (0: none left). */
export interface StorePage<T> {
  items: T[];
  next: number;
}

/** KV writes of one document in flight at once (each is a JetStream publish waiting for its ack). */
const WRITE_WINDOW = 256;

/**
 * Documents, their chunks and collections over JetStream KV (metadata) and the object store
 * (chunk sets). Callers serialize writes per collection (see KeyedLock).
 */
export class DocumentStore {
  constructor(private readonly deps: DocumentStoreDeps) {}

  get chunkSetBucket(): string {
    return this.deps.chunkSets.bucket;
  }

  // ---- collections ----

  async getCollection(name: string): Promise<Collection | null> {
    return (await this.deps.collections.get(name))?.value ?? null;
  }

  /** Creates the collection record if missing. */
  async ensureCollection(name: string): Promise<void> {
    if ((await this.deps.collections.get(name)) !== null) return;
    const now = timestampNow();
    // A new collection's document index is complete from its first document on. Its index buckets are opened
    // again: a collection of this name deleted by another instance took its buckets with it.
    this.deps.indexes.forget(name);
    await this.deps.indexedCollections.put(name, { name, createdAt: now, updatedAt: now });
    await this.deps.collections.modify(name, (current) => current ?? { name, createdAt: now, updatedAt: now });
  }

  /**
   * Fills the document index of every collection not yet known to have a complete one from the records in
   * `documents` (collections ingested before the index existed listed no documents until re-ingested), then marks
   * it complete. Run at startup, before this instance writes documents; a record the index has already is kept
   * (create only), so a newer version written meanwhile by another instance is never overwritten.
   */
  async backfillDocumentIndexes(): Promise<{ collection: string; added: number }[]> {
    const names: string[] = [];
    for await (const name of this.deps.collections.keys()) names.push(name);
    const marks = await Promise.all(names.map((name) => this.deps.indexedCollections.get(name)));
    const filled: { collection: string; added: number }[] = [];
    for (const [i, collection] of names.entries()) {
      if (marks[i] !== null || collectionNameProblem(collection) !== undefined) continue;
      const index = await this.deps.indexes.documentIndex(collection);
      let added = 0;
      for await (const { value } of this.deps.documents.entries(`${collection}.*`)) {
        try {
          await index.create(value.id, value);
          added++;
        } catch (err) {
          if (!(err instanceof RevisionConflictError)) throw err;
        }
      }
      const now = timestampNow();
      await this.deps.indexedCollections.put(collection, { name: collection, createdAt: now, updatedAt: now });
      filled.push({ collection, added });
    }
    return filled;
  }

  async listCollections(): Promise<Collection[]> {
    const all: Collection[] = [];
    for await (const e of this.deps.collections.entries()) all.push(e.value);
    return all.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /** Recomputes a collection's counts from its documents. */
  async refreshCollection(name: string): Promise<void> {
    const docs = await this.listDocuments(name);
    let chunkCount = 0;
    let totalTokens = 0;
    for (const d of docs) {
      chunkCount += d.chunkCount;
      totalTokens += d.tokenStats?.totalTokens ?? 0;
    }
    const now = timestampNow();
    await this.deps.collections.modify(name, (current) => ({
      name,
      documentCount: docs.length,
      chunkCount,
      totalTokens,
      createdAt: current?.createdAt ?? now,
      updatedAt: now,
    }));
  }

  /** Removes a collection's record and its index buckets (its documents are removed before). */
  async deleteCollectionRecord(name: string): Promise<void> {
    await this.deps.indexes.drop(name);
    await this.deps.collections.delete(name);
    await this.deps.indexedCollections.delete(name);
  }

  // ---- documents ----

  /** A document's record, from its collection's document index (complete since startup, see backfillDocumentIndexes). */
  async getDocument(collection: string, documentId: string): Promise<Document | null> {
    if (collectionNameProblem(collection) !== undefined) return null;
    return (await (await this.deps.indexes.documentIndex(collection)).get(documentId))?.value ?? null;
  }

  /** Finds a document by ID alone: one request per collection (to its document index), all at once. */
  async findDocument(documentId: string): Promise<Document | null> {
    if (!/^[A-Za-z0-9_-]+$/.test(documentId)) return null;
    const collections: string[] = [];
    for await (const name of this.deps.collections.keys()) collections.push(name);
    const found = await Promise.all(collections.map((c) => this.getDocument(c, documentId)));
    return found.find((d) => d !== null) ?? null;
  }

  /** The documents of a collection in source-name order (read a page at a time; for whole-collection work). */
  async listDocuments(collection: string): Promise<Document[]> {
    const docs: Document[] = [];
    for (let from = 1; from !== 0; ) {
      const page = await this.pageDocuments(collection, from, 1000);
      docs.push(...page.items);
      from = page.next;
    }
    return docs.sort((a, b) => (a.sourceName < b.sourceName ? -1 : a.sourceName > b.sourceName ? 1 : 0));
  }

  /** Up to `limit` documents of a collection in the order they were last written, from position `from` (1: start). */
  async pageDocuments(collection: string, from: number, limit: number): Promise<StorePage<Document>> {
    const page = await (await this.deps.indexes.documentIndex(collection)).page(">", from, limit);
    return { items: page.entries.map((e) => e.value), next: page.nextRevision };
  }

  /** Stores a document record in its collection's document index (one write: the record a re-ingest compares against). */
  async putDocument(document: Document): Promise<void> {
    await (await this.deps.indexes.documentIndex(document.collection)).put(document.id, document);
  }

  // ---- chunks ----

  /**
   * Finds a chunk by its ID alone: one request per collection (to its chunk index, whatever its size), all at once,
   * and one to the by-ID records of an older store.
   */
  async getChunk(chunkId: string): Promise<Chunk | null> {
    if (!/^[A-Za-z0-9_-]+$/.test(chunkId)) return null;
    const collections: string[] = [];
    for await (const name of this.deps.collections.keys()) collections.push(name);
    const found = await Promise.all([
      ...collections.filter((c) => collectionNameProblem(c) === undefined).map((c) => this.deps.indexes.findChunk(c, chunkId)),
      this.deps.legacyChunks?.get(chunkId).then((v) => v?.value ?? null) ?? null,
    ]);
    return found.find((c) => c !== null) ?? null;
  }

  /** The chunks of a stored document version, in ordinal order. */
  async readChunkSet(ref: ArtifactRef | undefined): Promise<Chunk[]> {
    if (ref === undefined || ref.sha256 === "") return [];
    const encoded = await this.readChunkSetBytes(ref.sha256);
    if (encoded === null) throw new Error(`chunk set ${ref.bucket}/${ref.sha256} is missing from the object store`);
    return decodeChunkSet(encoded);
  }

  /** The encoded chunk set of a stored document version, or null when it is missing from the object store. */
  async readChunkSetBytes(sha256: string): Promise<Uint8Array | null> {
    const stream = await this.deps.chunkSets.get(sha256);
    if (stream === null) return null;
    const parts: Buffer[] = [];
    for await (const part of stream) parts.push(part as Buffer);
    return Buffer.concat(parts);
  }

  /**
   * The chunks of a document as the chunk index holds them (any order): what is stored even when the document's
   * chunk set is gone.
   */
  async indexedChunks(collection: string, documentId: string): Promise<Chunk[]> {
    const chunks: Chunk[] = [];
    for (let from = 1; from !== 0; ) {
      const page = await (await this.deps.indexes.chunkIndex(collection)).page(`${documentId}.*`, from, 1000);
      for (const e of page.entries) chunks.push(e.value);
      from = page.nextRevision;
    }
    return chunks;
  }

  /** Whether the chunk index holds these chunks of a document (a cheap check that a stored version is complete). */
  async hasIndexed(collection: string, documentId: string, chunkIds: readonly string[]): Promise<boolean> {
    const index = await this.deps.indexes.chunkIndex(collection);
    const found = await Promise.all(chunkIds.map((id) => index.get(indexKey(documentId, id))));
    return found.every((f) => f !== null);
  }

  /** Up to `limit` chunks of a collection in the order they were last written, from position `from` (1: start). */
  async pageCollectionChunks(collection: string, from: number, limit: number): Promise<StorePage<Chunk>> {
    const page = await (await this.deps.indexes.chunkIndex(collection)).page(">", from, limit);
    return { items: page.entries.map((e) => e.value), next: page.nextRevision };
  }

  /**
   * Stores a chunk set already encoded with `encodeChunkSet`, whose SHA-256 the caller computed to detect "unchanged"
   * (idempotent: content-addressed), and returns its reference.
   */
  async putChunkSet(encoded: Uint8Array, sha256: string): Promise<ArtifactRef> {
    const info = await this.deps.chunkSets.putBytes(encoded, sha256, { contentType: CHUNK_SET_MEDIA_TYPE });
    return create(ArtifactRefSchema, {
      bucket: this.deps.chunkSets.bucket,
      objectName: info.hash,
      sha256: info.hash,
      sizeBytes: BigInt(info.size),
      mediaType: CHUNK_SET_MEDIA_TYPE,
    });
  }

  /**
   * Writes chunks into the chunk index (all of one document) as the worker encoded them (PreparedDocument.records):
   * the main thread only sends bytes.
   */
  async putEncodedChunks(collection: string, documentId: string, chunks: readonly { id: string; record: Uint8Array }[]): Promise<void> {
    if (chunks.length === 0) return;
    await this.deps.indexes.putRecords(
      collection,
      chunks.map(({ id, record }) => ({ key: indexKey(documentId, id), record })),
    );
  }

  /** Removes chunks of one document from the chunk index (and their by-ID records of an older store). */
  async deleteChunks(collection: string, documentId: string, ids: readonly string[]): Promise<void> {
    if (ids.length === 0) return;
    const index = await this.deps.indexes.chunkIndex(collection);
    const legacy = this.deps.legacyChunks;
    await inWindow(ids, WRITE_WINDOW, (id) =>
      Promise.all([
        index.delete(indexKey(documentId, id)),
        // Only where a record is (a delete of an absent key would still write a marker).
        legacy?.get(id).then((found) => (found !== null ? legacy.delete(id) : undefined)),
      ]),
    );
  }

  /** Removes a chunk set; one already gone is fine. */
  async deleteChunkSet(ref: ArtifactRef | undefined): Promise<void> {
    if (ref === undefined || ref.sha256 === "") return;
    await this.deps.chunkSets.delete(ref.sha256);
  }

  /**
   * Removes a document: its chunks, its chunk set and its record. Returns the removed chunk IDs. The chunks are those
   * of the chunk index and of the chunk set, so a document whose chunk set is lost is still removed completely. The
   * record goes last, so an interrupted delete can be repeated.
   */
  async deleteDocument(document: Document): Promise<string[]> {
    const ids = new Set((await this.indexedChunks(document.collection, document.id)).map((c) => c.id));
    if (document.status === DocumentStatus.READY && document.chunkSet !== undefined && document.chunkSet.sha256 !== "") {
      const encoded = await this.readChunkSetBytes(document.chunkSet.sha256);
      if (encoded !== null) for (const c of decodeChunkSet(encoded)) ids.add(c.id);
    }
    await this.deleteChunks(document.collection, document.id, [...ids]);
    await this.deleteChunkSet(document.chunkSet);
    await (await this.deps.indexes.documentIndex(document.collection)).delete(document.id);
    // A record of an older store (a delete of an absent key would still write a marker).
    const legacy = docKey(document.collection, document.id);
    if ((await this.deps.documents.get(legacy)) !== null) await this.deps.documents.delete(legacy);
    return [...ids];
  }
}

function docKey(collection: string, documentId: string): string {
  return `${collection}.${documentId}`;
}

function indexKey(documentId: string, chunkId: string): string {
  return `${documentId}.${chunkId}`;
}

/** Runs `work` over `items` with at most `window` in flight. */
async function inWindow<T>(items: readonly T[], window: number, work: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < items.length) await work(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(window, items.length) }, lane));
}
