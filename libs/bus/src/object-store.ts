import { createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { type ArtifactRef, ArtifactRefSchema } from "@ragtune/proto";
import { createReadStream, createWriteStream } from "node:fs";
import { rename, rm } from "node:fs/promises";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { StorageType } from "@nats-io/jetstream";
import { headers as natsHeaders, nuid } from "@nats-io/nats-core";
import { Objm, type ObjectInfo, type ObjectStore } from "@nats-io/obj";
import type { BusContext } from "./bus.js";
import { guardStoreFull, STORE_VARIABLES, type StoreLabel } from "./store-limits.js";
import { ensureStream, streamError } from "./streams.js";

/**
 * Content-addressed artifact store on a JetStream object store bucket.
 *
 * Put streams the source into the bucket under a temporary name while hashing it (SHA-256), then
 * renames the object to its hash. A rename only rewrites the object's metadata record: the chunks
 * are stored under the object's nuid, not its name, so nothing is copied and nothing is buffered.
 * If the hash is already stored, the temporary upload is deleted (dedupe). Either way, an object
 * named by a hash always holds exactly the bytes that hash to it, and a half-finished upload is
 * never visible under a hash.
 *
 * Get reads chunks through an ordered pull consumer with a small prefetch window, so a slow reader
 * holds back the server instead of piling chunks up in memory, and verifies size and hash at the end.
 */

export interface ArtifactInfo {
  /** Lowercase hex SHA-256 of the content: the artifact's name. */
  hash: string;
  size: number;
  chunks: number;
  /** When it was stored (ISO 8601). */
  mtime: string;
  contentType: string | undefined;
}

export interface ArtifactPutOptions {
  contentType?: string;
}

/** A Node Readable (binary), an async generator of chunks, or a plain iterable of chunks. */
export type ArtifactSource = Readable | AsyncIterable<Uint8Array | string> | Iterable<Uint8Array>;

export interface ArtifactStoreOptions {
  /**
   * Bucket size limit in bytes (-1 = unlimited); a put past it fails with StoreFullError and stores nothing.
   * Default: the bus's `artifactsMaxBytes` (NATS_ARTIFACTS_MAX_BYTES).
   */
  maxBytes?: number;
  /** Copies across the cluster. Default: the bus's `replicas` (NATS_REPLICAS). */
  replicas?: number;
  /** Chunks pulled ahead of the reader on get. Default 4 (× 128 KiB). */
  readAhead?: number;
}

export interface ArtifactStore {
  readonly bucket: string;
  /** Streams the source in, returns its info (named by its SHA-256). Never buffers the whole content. */
  put(source: ArtifactSource, options?: ArtifactPutOptions): Promise<ArtifactInfo>;
  /** Streams a file in. */
  putFile(path: string, options?: ArtifactPutOptions): Promise<ArtifactInfo>;
  /**
   * Stores content held in memory whose SHA-256 the caller computed (checked here): written under its hash at once,
   * without `put`'s temporary name and rename (for content of one chunk, up to 128 KiB: 2 round trips, with 3
   * requests, instead of 9). Content already stored is not written again.
   */
  putBytes(content: Uint8Array, hash: string, options?: ArtifactPutOptions): Promise<ArtifactInfo>;
  /** The content as a Node stream (verified against its hash when it ends), or null if absent. */
  get(hash: string): Promise<Readable | null>;
  /**
   * Writes the content to `path` (via `path.partial`, renamed when complete and verified). When `signal` aborts, the
   * download stops and its partial file is removed before the returned promise rejects (so a retry can write the same
   * partial file once it settles).
   */
  getToFile(hash: string, path: string, signal?: AbortSignal): Promise<ArtifactInfo>;
  has(hash: string): Promise<boolean>;
  info(hash: string): Promise<ArtifactInfo | null>;
  /** Returns false if it was not there. */
  delete(hash: string): Promise<boolean>;
}

const HASH_RE = /^[0-9a-f]{64}$/;
/** How long a read waits for the next chunk before checking that the object still exists. */
const READ_IDLE_CHECK_MS = 2_000;
const IDLE = Symbol("idle");

/** Resolves to IDLE after `ms`, unless cleared first. */
function idle(ms: number): { promise: Promise<typeof IDLE>; clear(): void } {
  let timer: NodeJS.Timeout | undefined;
  const promise = new Promise<typeof IDLE>((resolve) => {
    timer = setTimeout(() => resolve(IDLE), ms);
  });
  return { promise, clear: () => clearTimeout(timer) };
}
/** Rejects with the signal's reason once it aborts (never without a signal), until cleared. */
function abortOf(signal: AbortSignal | undefined): { promise: Promise<never>; clear(): void } {
  if (signal === undefined) return { promise: new Promise<never>(() => {}), clear: () => {} };
  let listener = () => {};
  const promise = new Promise<never>((_, reject) => {
    listener = () => reject(signal.reason as Error);
    if (signal.aborted) listener();
    else signal.addEventListener("abort", listener, { once: true });
  });
  return { promise, clear: () => signal.removeEventListener("abort", listener) };
}
const TMP_PREFIX = "tmp-upload-";
/** The object store's chunk size (its default), and the most `putBytes` writes as one chunk itself. */
const MAX_CHUNK_BYTES = 128 * 1024;

function assertHash(hash: string): void {
  if (!HASH_RE.test(hash)) throw new Error(`artifact hash ${JSON.stringify(hash)} is invalid: expected 64 lowercase hex digits (SHA-256)`);
}

function toInfo(info: ObjectInfo): ArtifactInfo {
  return {
    hash: info.name,
    size: info.size,
    chunks: info.chunks,
    mtime: info.mtime,
    contentType: info.metadata?.contentType,
  };
}

/** nats' own digest is `SHA-256=<base64url>`; converts it to hex to cross-check ours. */
function natsDigestToHex(digest: string): string {
  const b64 = digest.replace(/^SHA-256=/, "");
  return Buffer.from(b64, "base64url").toString("hex");
}

function asBytes(chunk: Uint8Array | string): Uint8Array {
  if (typeof chunk === "string") throw new Error("artifact source yielded a string; give binary chunks (no setEncoding)");
  return chunk;
}

function iterate(source: ArtifactSource): AsyncIterator<Uint8Array | string> | Iterator<Uint8Array> {
  if (Symbol.asyncIterator in source) return (source as AsyncIterable<Uint8Array | string>)[Symbol.asyncIterator]();
  if (Symbol.iterator in source) return (source as Iterable<Uint8Array>)[Symbol.iterator]();
  throw new Error("artifact source must be a Readable, an async iterable or an iterable of Uint8Array chunks");
}

export async function openArtifactStore(ctx: BusContext, bucket: string, options: ArtifactStoreOptions = {}): Promise<ArtifactStore> {
  if (!/^[A-Za-z0-9_-]+$/.test(bucket)) {
    throw new Error(`artifact bucket name ${JSON.stringify(bucket)} is invalid: use only letters, digits, '_' and '-'`);
  }
  const replicas = options.replicas ?? ctx.stores.replicas;
  const maxBytes = options.maxBytes ?? ctx.stores.artifactsMaxBytes;
  const streamName = `OBJ_${bucket}`;
  const label: StoreLabel = {
    store: `artifact bucket ${bucket}`,
    maxBytes,
    ...(options.maxBytes === undefined ? { variable: STORE_VARIABLES.artifactsMaxBytes } : {}),
  };
  const objm = new Objm(ctx.js);
  let os: ObjectStore;
  try {
    os = await objm.create(bucket, { storage: StorageType.File, replicas, max_bytes: maxBytes });
  } catch (err) {
    throw streamError("create", { name: streamName, num_replicas: replicas, max_bytes: maxBytes }, err, label);
  }
  // An existing bucket is opened as it is: bring its replicas and limit to what is configured now.
  await ensureStream(ctx, { name: streamName, num_replicas: replicas, max_bytes: maxBytes }, label);
  const write = <T>(op: () => Promise<T>) => guardStoreFull(label, op);
  const readAhead = Math.max(1, options.readAhead ?? 4);
  const log = ctx.logger.child({ bucket });

  /** The subject of an object's metadata record (the object store's: its name in padded base64url). */
  const metaSubject = (name: string) => `$O.${bucket}.M.${Buffer.from(name, "utf8").toString("base64").replace(/\+/g, "-").replace(/\//g, "_")}`;

  const present = async (hash: string): Promise<ObjectInfo | null> => {
    assertHash(hash);
    const info = await os.info(hash);
    return info !== null && !info.deleted ? info : null;
  };

  /** The object's chunks, verified at the end; `signal` ends a wait for the next chunk at once (with its reason). */
  async function* chunksOf(info: ObjectInfo, signal?: AbortSignal): AsyncGenerator<Uint8Array> {
    const sha = createHash("sha256");
    let size = 0;
    if (info.size > 0) {
      const oc = await ctx.js.consumers.get(streamName, { filter_subjects: `$O.${bucket}.C.${info.nuid}` });
      const messages = await oc.consume({ max_messages: readAhead });
      const iterator = messages[Symbol.asyncIterator]();
      const abort = abortOf(signal);
      try {
        let pending = iterator.next();
        for (;;) {
          // An object deleted while it is read would leave the consumer waiting for chunks that are gone: when no
          // chunk comes for a while, look whether the object is still there.
          const wait = idle(READ_IDLE_CHECK_MS);
          const next = await Promise.race([pending, wait.promise, abort.promise]).finally(() => wait.clear());
          if (next === IDLE) {
            const now = await present(info.name);
            if (now === null || now.nuid !== info.nuid) {
              throw new Error(`artifact ${bucket}/${info.name} was deleted while it was being read`);
            }
            continue;
          }
          if (next.done) break;
          pending = iterator.next();
          const m = next.value;
          if (m.data.length > 0) {
            sha.update(m.data);
            size += m.data.length;
            yield m.data;
          }
          if (m.info.pending === 0) break;
        }
      } finally {
        abort.clear();
        await messages.close();
      }
    }
    const hash = sha.digest("hex");
    if (size !== info.size || hash !== info.name) {
      throw new Error(`artifact ${bucket}/${info.name} is corrupt: read ${size} bytes hashing to ${hash}, expected ${info.size} bytes`);
    }
  }

  const store: ArtifactStore = {
    bucket,
    async put(source, putOptions = {}) {
      const sha = createHash("sha256");
      const iterator = iterate(source);
      // Pull-driven: the uploader asks for the next chunk only after publishing the previous one.
      const body = new ReadableStream<Uint8Array>(
        {
          async pull(controller) {
            const next = await iterator.next();
            if (next.done) {
              controller.close();
              return;
            }
            const bytes = asBytes(next.value);
            sha.update(bytes);
            controller.enqueue(bytes);
          },
          async cancel() {
            await iterator.return?.();
          },
        },
        { highWaterMark: 0 },
      );
      const tmpName = `${TMP_PREFIX}${nuid.next()}`;
      const metadata = putOptions.contentType ? { contentType: putOptions.contentType } : undefined;
      // A put past the bucket's limit fails here; the object store removes the chunks it had written.
      const uploaded = await write(() => os.put({ name: tmpName, ...(metadata ? { metadata } : {}) }, body));
      const hash = sha.digest("hex");
      if (natsDigestToHex(uploaded.digest) !== hash) {
        await os.delete(tmpName);
        throw new Error(`artifact upload to ${bucket} was corrupted in transit (digest mismatch)`);
      }
      const existing = await present(hash);
      if (existing === null) {
        try {
          await write(() => os.update(tmpName, {
            name: hash,
            description: uploaded.description,
            options: uploaded.options,
            ...(uploaded.metadata ? { metadata: uploaded.metadata } : {}),
          }));
          const stored = await present(hash);
          if (stored !== null) return toInfo(stored);
        } catch (err) {
          // A concurrent put of the same content won the rename: fall through and dedupe.
          log.debug({ err, hash }, "rename to hash lost a race; deduplicating");
        }
      }
      await os.delete(tmpName);
      const winner = await present(hash);
      if (winner === null) throw new Error(`artifact ${bucket}/${hash} vanished while it was being stored`);
      return toInfo(winner);
    },
    async putFile(path, putOptions) {
      return store.put(createReadStream(path), putOptions);
    },
    async putBytes(content, hash, putOptions = {}) {
      assertHash(hash);
      const digest = createHash("sha256").update(content).digest();
      if (digest.toString("hex") !== hash) {
        throw new Error(`artifact content for ${bucket}/${hash} does not hash to that name`);
      }
      const metadata = putOptions.contentType ? { contentType: putOptions.contentType } : undefined;
      const maxChunk = Math.min(MAX_CHUNK_BYTES, ctx.nc.info?.max_payload ?? MAX_CHUNK_BYTES);
      if (content.byteLength === 0 || content.byteLength > maxChunk) {
        const existing = await present(hash);
        if (existing !== null) return toInfo(existing);
        // The object's chunks are written under a fresh nuid and its metadata record last: until then nothing is
        // visible under the hash, and a failed upload leaves no object (the object store removes its chunks).
        const stored = await write(() => os.putBlob({ name: hash, ...(metadata ? { metadata } : {}) }, content));
        if (natsDigestToHex(stored.digest) !== hash) {
          throw new Error(`artifact upload to ${bucket} was corrupted in transit (digest mismatch)`);
        }
        return toInfo(stored);
      }
      // Content of one chunk (a chunk set, a run's inline document) is written as the object store writes it, in two
      // round trips instead of four and without its pure-JS digest: the chunk under a fresh nuid, sent together with
      // the look for the hash; then, once the chunk is stored, the metadata record that makes it visible under the
      // hash (a rollup of the hash's subject, as the object store writes it). Until the record is stored nothing is
      // visible under the hash; content stored already is kept and the new chunk removed.
      const nuidNow = nuid.next();
      const chunkSubject = `$O.${bucket}.C.${nuidNow}`;
      const [existing, chunk] = await Promise.allSettled([present(hash), write(() => ctx.js.publish(chunkSubject, content))]);
      if (existing.status === "rejected" || existing.value !== null) {
        if (chunk.status === "fulfilled") await ctx.jsm.streams.purge(streamName, { filter: chunkSubject });
        if (existing.status === "rejected") throw existing.reason;
        return toInfo(existing.value!);
      }
      if (chunk.status === "rejected") throw chunk.reason;
      const info = {
        name: hash,
        description: "",
        options: { max_chunk_size: maxChunk },
        ...(metadata ? { metadata } : {}),
        bucket,
        nuid: nuidNow,
        size: content.byteLength,
        chunks: 1,
        mtime: new Date().toISOString(),
        digest: `SHA-256=${digest.toString("base64").replace(/\+/g, "-").replace(/\//g, "_")}`,
        deleted: false,
      };
      const h = natsHeaders();
      h.set("Nats-Rollup", "sub");
      await write(() => ctx.js.publish(metaSubject(hash), JSON.stringify(info), { headers: h }));
      return { hash, size: info.size, chunks: 1, mtime: info.mtime, contentType: metadata?.contentType };
    },
    async get(hash) {
      const info = await present(hash);
      if (info === null) return null;
      return Readable.from(chunksOf(info), { objectMode: false, highWaterMark: 0 });
    },
    async getToFile(hash, path, signal) {
      signal?.throwIfAborted();
      const info = await present(hash);
      if (info === null) throw new Error(`artifact ${bucket}/${hash} not found`);
      signal?.throwIfAborted();
      const partial = `${path}.partial`;
      try {
        await pipeline(Readable.from(chunksOf(info, signal), { objectMode: false, highWaterMark: 0 }), createWriteStream(partial), ...(signal === undefined ? [] : [{ signal }]));
        await rename(partial, path);
      } catch (err) {
        await rm(partial, { force: true });
        throw signal?.aborted === true ? signal.reason : err;
      }
      return toInfo(info);
    },
    async has(hash) {
      return (await present(hash)) !== null;
    },
    async info(hash) {
      const info = await present(hash);
      return info === null ? null : toInfo(info);
    },
    async delete(hash) {
      if ((await present(hash)) === null) return false;
      await os.delete(hash);
      return true;
    },
  };
  return store;
}

/** Stores bytes (or UTF-8 text) whole and returns the reference a resource records (named by its SHA-256). */
export async function storeArtifactContent(artifacts: ArtifactStore, content: Uint8Array | string, mediaType: string): Promise<ArtifactRef> {
  const info = await artifacts.put([typeof content === "string" ? Buffer.from(content, "utf8") : Buffer.from(content)], { contentType: mediaType });
  return create(ArtifactRefSchema, { bucket: artifacts.bucket, objectName: info.hash, sha256: info.hash, sizeBytes: BigInt(info.size), mediaType });
}

/** The whole content of a stored artifact (verified against its hash), or null when it is gone. */
export async function readArtifactContent(artifacts: ArtifactStore, hash: string): Promise<Buffer | null> {
  const stream = await artifacts.get(hash);
  if (stream === null) return null;
  const parts: Buffer[] = [];
  for await (const part of stream) parts.push(part as Buffer);
  return Buffer.concat(parts);
}
