import type { Bus, TypedKv } from "@ragtune/bus";
import { ChunkSchema, DocumentSchema, type Chunk } from "@ragtune/proto";

/** Bucket names of a collection's two indexes. */
export interface CollectionIndexNames {
  /** The document index of a collection: key `<documentId>`. */
  documentIndex: (collection: string) => string;
  /** The chunk index of a collection: key `<documentId>.<chunkId>`. */
  chunkIndex: (collection: string) => string;
}

/**
 * The per-collection index buckets of the ingest service (a KV bucket per collection and index): opened (created if
 * missing) once on first use and kept open; a chunk looked up by its ID alone; both buckets deleted with their
 * collection.
 */
export class CollectionIndexes {
  private readonly documents = new Map<string, Promise<TypedKv<typeof DocumentSchema>>>();
  private readonly chunks = new Map<string, Promise<TypedKv<typeof ChunkSchema>>>();

  constructor(
    private readonly bus: Pick<Bus, "kv">,
    private readonly names: CollectionIndexNames,
  ) {}

  documentIndex(collection: string): Promise<TypedKv<typeof DocumentSchema>> {
    return this.open(this.documents, this.names.documentIndex(collection), collection, DocumentSchema);
  }

  chunkIndex(collection: string): Promise<TypedKv<typeof ChunkSchema>> {
    return this.open(this.chunks, this.names.chunkIndex(collection), collection, ChunkSchema);
  }

  /**
   * The chunk with this ID in a collection's chunk index, or null. One
   * request whatever the collection's size: the chunk index's keys end in the chunk ID, so the server's last message
   * on `*.<chunkId>` is the chunk (or the marker of its deletion). `chunkId` must be one KV key token.
   */
  async findChunk(collection: string, chunkId: string): Promise<Chunk | null> {
    return (await (await this.chunkIndex(collection)).lastMatching(`*.${chunkId}`))?.value ?? null;
  }

  /**
   * Writes chunk records encoded already (protobuf of a Chunk, made by the document's worker) into a collection's
   * chunk index, keys `<documentId>.<chunkId>`, all in flight at once (up to a window).
   */
  async putRecords(collection: string, records: readonly { key: string; record: Uint8Array }[]): Promise<void> {
    if (records.length === 0) return;
    await (await this.chunkIndex(collection)).putEncoded(records.map(({ key, record }) => ({ key, bytes: record })));
  }

  /** Deletes both index buckets of a collection (gone already is fine). */
  async drop(collection: string): Promise<void> {
    const buckets = await Promise.all([this.documentIndex(collection), this.chunkIndex(collection)]);
    this.forget(collection);
    await Promise.all(buckets.map((kv) => kv.destroy()));
  }

  /** Forgets the open buckets of a collection (another instance may have deleted them): the next use opens them again. */
  forget(collection: string): void {
    this.documents.delete(collection);
    this.chunks.delete(collection);
  }

  private open<Desc extends typeof ChunkSchema | typeof DocumentSchema>(
    cache: Map<string, Promise<TypedKv<Desc>>>,
    bucket: string,
    collection: string,
    schema: Desc,
  ): Promise<TypedKv<Desc>> {
    let opened = cache.get(collection);
    if (opened === undefined) {
      opened = this.bus.kv(bucket, schema);
      const mine = opened;
      opened.catch(() => {
        if (cache.get(collection) === mine) cache.delete(collection);
      });
      cache.set(collection, opened);
    }
    return opened;
  }
}
