import { create, fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { ArtifactStore, TypedKv } from "@ragtune/bus";
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
} from "@ragtune/proto";

/** Where the ingest service keeps documents, chunks and collections. */
export interface DocumentStoreDeps {
  collections: TypedKv<typeof CollectionSchema>;
  /** Key `<collection>.<documentId>`. */
  documents: TypedKv<typeof DocumentSchema>;
  /** Key `<chunkId>`: every stored chunk, for GetChunk. */
  chunks: TypedKv<typeof ChunkSchema>;
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
  return Buffer.from(JSON.stringify(chunks.map((c) => toJson(ChunkSchema, c))), "utf8");
}

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
    await this.deps.collections.modify(name, (current) => current ?? { name, createdAt: now, updatedAt: now });
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

  async deleteCollectionRecord(name: string): Promise<void> {
    await this.deps.collections.delete(name);
  }

  // ---- documents ----

  async getDocument(collection: string, documentId: string): Promise<Document | null> {
    return (await this.deps.documents.get(docKey(collection, documentId)))?.value ?? null;
  }

  /** Finds a document by ID alone (any collection). */
  async findDocument(documentId: string): Promise<Document | null> {
    if (!/^[A-Za-z0-9_-]+$/.test(documentId)) return null;
    for await (const key of this.deps.documents.keys(`*.${documentId}`)) {
      const found = await this.deps.documents.get(key);
      if (found !== null) return found.value;
    }
    return null;
  }

  /** The documents of a collection in source-name order. */
  async listDocuments(collection: string): Promise<Document[]> {
    const docs: Document[] = [];
    for await (const e of this.deps.documents.entries(`${collection}.*`)) docs.push(e.value);
    return docs.sort((a, b) => (a.sourceName < b.sourceName ? -1 : a.sourceName > b.sourceName ? 1 : 0));
  }

  async putDocument(document: Document): Promise<void> {
    await this.deps.documents.put(docKey(document.collection, document.id), document);
  }

  // ---- chunks ----

  async getChunk(chunkId: string): Promise<Chunk | null> {
    if (!/^[A-Za-z0-9_-]+$/.test(chunkId)) return null;
    return (await this.deps.chunks.get(chunkId))?.value ?? null;
  }

  /** The chunks of a stored document version, in ordinal order. */
  async readChunkSet(ref: ArtifactRef | undefined): Promise<Chunk[]> {
    if (ref === undefined || ref.sha256 === "") return [];
    const stream = await this.deps.chunkSets.get(ref.sha256);
    if (stream === null) throw new Error(`chunk set ${ref.bucket}/${ref.sha256} is missing from the object store`);
    const parts: Buffer[] = [];
    for await (const part of stream) parts.push(part as Buffer);
    const json = JSON.parse(Buffer.concat(parts).toString("utf8")) as JsonValue[];
    return json.map((c) => fromJson(ChunkSchema, c));
  }

  /** Stores a chunk set (idempotent: content-addressed) and returns its reference. */
  /** Stores a chunk set already encoded with `encodeChunkSet` (the caller hashed those bytes to detect "unchanged"). */
  async putChunkSet(encoded: Uint8Array): Promise<ArtifactRef> {
    const info = await this.deps.chunkSets.put([encoded], { contentType: CHUNK_SET_MEDIA_TYPE });
    return create(ArtifactRefSchema, {
      bucket: this.deps.chunkSets.bucket,
      objectName: info.hash,
      sha256: info.hash,
      sizeBytes: BigInt(info.size),
      mediaType: CHUNK_SET_MEDIA_TYPE,
    });
  }

  async putChunks(chunks: readonly Chunk[]): Promise<void> {
    await inBatches(chunks, 64, (c) => this.deps.chunks.put(c.id, c));
  }

  async deleteChunks(ids: readonly string[]): Promise<void> {
    await inBatches(ids, 64, (id) => this.deps.chunks.delete(id));
  }

  async deleteChunkSet(ref: ArtifactRef | undefined): Promise<void> {
    if (ref === undefined || ref.sha256 === "") return;
    await this.deps.chunkSets.delete(ref.sha256);
  }

  /**
   * Removes a document: its chunks, its chunk set and its record. Returns the removed chunk IDs.
   * The record goes last, so an interrupted delete can be repeated.
   */
  async deleteDocument(document: Document): Promise<string[]> {
    const chunks = document.status === DocumentStatus.READY ? await this.readChunkSet(document.chunkSet) : [];
    const ids = chunks.map((c) => c.id);
    await this.deleteChunks(ids);
    await this.deleteChunkSet(document.chunkSet);
    await this.deps.documents.delete(docKey(document.collection, document.id));
    return ids;
  }
}

function docKey(collection: string, documentId: string): string {
  return `${collection}.${documentId}`;
}

async function inBatches<T>(items: readonly T[], size: number, work: (item: T) => Promise<unknown>): Promise<void> {
  for (let i = 0; i < items.length; i += size) {
    await Promise.all(items.slice(i, i + size).map(work));
  }
}
