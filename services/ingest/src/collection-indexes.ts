import { fromBinary } from "@bufbuild/protobuf";
import { storeFullError, STORE_VARIABLES, type Bus, type TypedKv } from "@ragtune/bus";
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
    private readonly bus: Pick<Bus, "kv" | "jsm" | "js" | "stores">,
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
    const bucket = this.names.chunkIndex(collection);
    // Opened first (once per process; created when missing): a direct get from a stream that does not exist waits
    // for its timeout.
    await this.chunkIndex(collection);
    const found = await this.bus.jsm.direct.getMessage(`KV_${bucket}`, { last_by_subj: `$KV.${bucket}.*.${chunkId}` });
    if (found === null) return null;
    const operation = found.header?.get("KV-Operation") ?? "";
    if (operation === "DEL" || operation === "PURGE") return null;
    try {
      return fromBinary(ChunkSchema, found.data);
    } catch (err) {
      throw new Error(`KV ${bucket}/${found.subject} (revision ${found.seq}) is not a valid ${ChunkSchema.typeName}`, { cause: err });
    }
  }

  /**
   * Writes chunk records encoded already (protobuf of a Chunk) into a collection's chunk index, keys
   * `<documentId>.<chunkId>`, all in flight at once (up to a window): the same JetStream publishes `TypedKv.put`
   * makes, without encoding on this thread.
   */
  async putRecords(collection: string, records: readonly { key: string; record: Uint8Array }[]): Promise<void> {
    if (records.length === 0) return;
    const bucket = this.names.chunkIndex(collection);
    await this.chunkIndex(collection);
    const label = { store: `KV bucket ${bucket}`, maxBytes: this.bus.stores.kvMaxBytes, variable: STORE_VARIABLES.kvMaxBytes };
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < records.length) {
        const { key, record } = records[next++]!;
        try {
          await this.bus.js.publish(`$KV.${bucket}.${key}`, record);
        } catch (err) {
          throw storeFullError(err, label) ?? err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(WRITE_WINDOW, records.length) }, lane));
  }

  /** Deletes both index buckets of a collection (gone already is fine). */
  async drop(collection: string): Promise<void> {
    this.forget(collection);
    await Promise.all(
      [this.names.documentIndex(collection), this.names.chunkIndex(collection)].map(async (bucket) => {
        try {
          await this.bus.jsm.streams.delete(`KV_${bucket}`);
        } catch (err) {
          if (!isMissingStream(err)) throw err;
        }
      }),
    );
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

/** Chunk records of one document in flight at once (each a JetStream publish waiting for its ack). */
const WRITE_WINDOW = 256;

/** Whether a JetStream request failed because its stream does not exist (a direct get then finds no responder). */
function isMissingStream(err: unknown): boolean {
  const e = err as { code?: unknown; isNoResponders?: () => boolean } | null;
  if (e === null || typeof e !== "object") return false;
  // JetStreamApiError 10059 (stream not found) from the API; a RequestError caused by "no responders" from a direct get.
  return e.code === STREAM_NOT_FOUND || (typeof e.isNoResponders === "function" && e.isNoResponders());
}

/** JetStream API error code of a missing stream. */
const STREAM_NOT_FOUND = 10059;
