import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { DeliverPolicy, JetStreamApiCodes, JetStreamApiError, StorageType } from "@nats-io/jetstream";
import { Kvm, type KV, type KvEntry } from "@nats-io/kv";
import { nanos } from "@nats-io/nats-core";
import type { BusContext } from "./bus.js";
import { guardStoreFull, STORE_VARIABLES, type StoreLabel } from "./store-limits.js";
import { ensureStream, streamError } from "./streams.js";

export interface KvOptions {
  /**
   * Revisions kept per key. Default 1. A watcher is told every change of a key only while that many revisions are
   * kept: with 1, a change overwritten before the watcher got it is skipped (the watcher still gets the newer one).
   */
  history?: number;
  /** Expire entries after this long. Default never (0). */
  ttlMs?: number;
  /** Size limit of the bucket (-1 = none); writes past it fail with StoreFullError. Default: the bus's `kvMaxBytes` (NATS_KV_MAX_BYTES). */
  maxBytes?: number;
  /** Copies across the cluster. Default: the bus's `replicas` (NATS_REPLICAS). */
  replicas?: number;
  /** Test hook: runs at the named step (e.g. to write while a watch is being set up). */
  faults?: (step: KvStep) => void | Promise<void>;
}

/** Points where a test can act (`faults`): `watch-start` is after a watch fixed its start, before its consumer exists. */
export type KvStep = "watch-start";

export interface KvValue<Desc extends DescMessage> {
  value: MessageShape<Desc>;
  /** Pass this to `update()` for compare-and-set. */
  revision: number;
}

export interface KvChange<Desc extends DescMessage> {
  key: string;
  /** null when the key was deleted or purged. */
  value: MessageShape<Desc> | null;
  revision: number;
  operation: "PUT" | "DEL" | "PURGE";
}

export interface KvWatch<Desc extends DescMessage> extends AsyncIterable<KvChange<Desc>> {
  stop(): void;
}

export interface KvPage<Desc extends DescMessage> {
  entries: ({ key: string } & KvValue<Desc>)[];
  /** The revision to pass as `fromRevision` for the next page; 0 when the listing is complete. */
  nextRevision: number;
}

/** Thrown when `create` finds the key present or `update` finds another revision. */
export class RevisionConflictError extends Error {
  constructor(
    readonly bucket: string,
    readonly key: string,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "RevisionConflictError";
  }
}

export interface TypedKv<Desc extends DescMessage> {
  readonly bucket: string;
  /** The current value and its revision, or null when the key is absent or deleted. */
  get(key: string): Promise<KvValue<Desc> | null>;
  /** Writes only if the key does not exist yet; else RevisionConflictError. Returns the revision. */
  create(key: string, value: MessageInitShape<Desc>): Promise<number>;
  /** Writes only if the key is still at `revision` (compare-and-set); else RevisionConflictError. */
  update(key: string, value: MessageInitShape<Desc>, revision: number): Promise<number>;
  /**
   * Read-modify-write with retries on conflict: `change` gets the current value (null if absent) and
   * returns the next one. Returns the stored value and its revision.
   */
  modify(key: string, change: (current: MessageShape<Desc> | null) => MessageInitShape<Desc>, maxAttempts?: number): Promise<KvValue<Desc>>;
  /** Unconditional write. Returns the revision. */
  put(key: string, value: MessageInitShape<Desc>): Promise<number>;
  delete(key: string): Promise<void>;
  /** Keys present (optionally matching a subject-style filter such as `jobs.*`). */
  keys(filter?: string): AsyncIterable<string>;
  /** Every present key with its value. */
  entries(filter?: string): AsyncIterable<{ key: string } & KvValue<Desc>>;
  /**
   * Up to `limit` present entries matching `filter`, in the order they were last written, from revision
   * `fromRevision` on (1: from the start), and the revision to continue from (0 when none is left). A page reads only
   * its own entries (one consumer from that revision), so its cost does not grow with the bucket.
   */
  page(filter: string, fromRevision: number, limit: number): Promise<KvPage<Desc>>;
  /**
   * Writes values encoded already (protobuf bytes of the bucket's schema, e.g. made in a worker thread), all in flight
   * at once up to a window, unconditionally as `put`.
   */
  putEncoded(entries: readonly { key: string; bytes: Uint8Array }[]): Promise<void>;
  /**
   * The present value last written to a key matching `pattern` (a subject-style filter such as `*.chunk-1`), or null
   * when there is none or it was deleted: one request to the server whatever the bucket's size.
   */
  lastMatching(pattern: string): Promise<({ key: string } & KvValue<Desc>) | null>;
  /** Deletes the whole bucket (values and history); one that is gone already is fine. Later use of this handle fails. */
  destroy(): Promise<void>;
  /**
   * Changes as they happen, after the current values unless `updatesOnly`. With `updatesOnly`, every change stored
   * after `watch()` was called is reported, even one made before it resolved. Each key's revisions are reported in
   * order; the last one always arrives, earlier ones only while the bucket still keeps them (`history`).
   */
  watch(options?: { key?: string; updatesOnly?: boolean }): Promise<KvWatch<Desc>>;
}

const BUCKET_RE = /^[A-Za-z0-9_-]+$/;
/** Values of one `putEncoded` in flight at once (each a JetStream publish waiting for its ack). */
const PUT_WINDOW = 256;
/** JetStream API error code of a missing stream. */
const STREAM_NOT_FOUND = 10059;

function isMissingStream(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === STREAM_NOT_FOUND;
}

/**
 * How many messages (values, deletions and history) a KV bucket holds, or undefined when it does not exist — without
 * creating it (`openKv` would).
 */
export async function kvBucketMessages(ctx: BusContext, bucket: string): Promise<number | undefined> {
  if (!BUCKET_RE.test(bucket)) throw new Error(`KV bucket name ${JSON.stringify(bucket)} is invalid: use only letters, digits, '_' and '-'`);
  try {
    return (await ctx.jsm.streams.info(`KV_${bucket}`)).state.messages;
  } catch (err) {
    if (isMissingStream(err)) return undefined;
    throw err;
  }
}

function isConflict(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === 10164)
  );
}

/** Opens (creating if missing) a KV bucket whose values are protobuf messages of one schema. */
export async function openKv<Desc extends DescMessage>(
  ctx: BusContext,
  bucket: string,
  schema: Desc,
  options: KvOptions = {},
): Promise<TypedKv<Desc>> {
  if (!BUCKET_RE.test(bucket)) {
    throw new Error(`KV bucket name ${JSON.stringify(bucket)} is invalid: use only letters, digits, '_' and '-'`);
  }
  const replicas = options.replicas ?? ctx.stores.replicas;
  const maxBytes = options.maxBytes ?? ctx.stores.kvMaxBytes;
  const ttlMs = options.ttlMs ?? 0;
  const stream = `KV_${bucket}`;
  const label: StoreLabel = {
    store: `KV bucket ${bucket}`,
    maxBytes,
    ...(options.maxBytes === undefined ? { variable: STORE_VARIABLES.kvMaxBytes } : {}),
  };
  const kvm = new Kvm(ctx.js);
  let kv: KV;
  try {
    kv = await kvm.create(bucket, { history: options.history ?? 1, ttl: ttlMs, storage: StorageType.File, replicas, max_bytes: maxBytes });
  } catch (err) {
    throw streamError("create", { name: stream, num_replicas: replicas, max_bytes: maxBytes }, err, label);
  }
  // An existing bucket is opened as it is: bring its replicas and limits to what is configured now.
  await ensureStream(ctx, { name: stream, num_replicas: replicas, max_bytes: maxBytes, max_age: nanos(ttlMs) }, label);
  const write = <T>(op: () => Promise<T>) => guardStoreFull(label, op);
  const fault = async (step: KvStep) => {
    await options.faults?.(step);
  };

  const decode = (e: KvEntry): MessageShape<Desc> => {
    try {
      return fromBinary(schema, e.value);
    } catch (err) {
      throw new Error(`KV ${bucket}/${e.key} (revision ${e.revision}) is not a valid ${schema.typeName}`, { cause: err });
    }
  };
  const encode = (value: MessageInitShape<Desc>) => toBinary(schema, create(schema, value));
  const present = (e: KvEntry | null): e is KvEntry => e !== null && e.operation === "PUT";

  const api: TypedKv<Desc> = {
    bucket,
    async get(key) {
      const e = await kv.get(key);
      return present(e) ? { value: decode(e), revision: e.revision } : null;
    },
    async create(key, value) {
      try {
        return await write(() => kv.create(key, encode(value)));
      } catch (err) {
        if (isConflict(err)) throw new RevisionConflictError(bucket, key, `KV ${bucket}/${key} already exists`, { cause: err });
        throw err;
      }
    },
    async update(key, value, revision) {
      try {
        return await write(() => kv.update(key, encode(value), revision));
      } catch (err) {
        if (isConflict(err)) {
          throw new RevisionConflictError(bucket, key, `KV ${bucket}/${key} is no longer at revision ${revision}`, { cause: err });
        }
        throw err;
      }
    },
    async modify(key, change, maxAttempts = 10) {
      for (let attempt = 1; ; attempt++) {
        const current = await api.get(key);
        const next = create(schema, change(current?.value ?? null));
        try {
          const revision = current === null ? await api.create(key, next) : await api.update(key, next, current.revision);
          return { value: next, revision };
        } catch (err) {
          if (!(err instanceof RevisionConflictError) || attempt >= maxAttempts) throw err;
        }
      }
    },
    put: (key, value) => write(() => kv.put(key, encode(value))),
    async putEncoded(entries) {
      let next = 0;
      const lane = async (): Promise<void> => {
        while (next < entries.length) {
          const { key, bytes } = entries[next++]!;
          await write(() => ctx.js.publish(`$KV.${bucket}.${key}`, bytes));
        }
      };
      await Promise.all(Array.from({ length: Math.min(PUT_WINDOW, entries.length) }, lane));
    },
    async lastMatching(pattern) {
      const found = await ctx.jsm.direct.getMessage(stream, { last_by_subj: `$KV.${bucket}.${pattern}` });
      if (found === null) return null;
      const operation = found.header?.get("KV-Operation") ?? "";
      if (operation === "DEL" || operation === "PURGE") return null;
      const key = found.subject.slice(`$KV.${bucket}.`.length);
      try {
        return { key, value: fromBinary(schema, found.data), revision: found.seq };
      } catch (err) {
        throw new Error(`KV ${bucket}/${key} (revision ${found.seq}) is not a valid ${schema.typeName}`, { cause: err });
      }
    },
    async destroy() {
      try {
        await ctx.jsm.streams.delete(stream);
      } catch (err) {
        if (!isMissingStream(err)) throw err;
      }
    },
    delete: (key) => write(() => kv.delete(key)),
    async *keys(filter) {
      const iter = await kv.keys(filter ?? ">");
      for await (const k of iter) yield k;
    },
    async *entries(filter) {
      for await (const key of api.keys(filter)) {
        const v = await api.get(key);
        if (v !== null) yield { key, ...v };
      }
    },
    async page(filter, fromRevision, limit) {
      const prefix = `$KV.${bucket}.`;
      const consumer = await ctx.js.consumers.get(stream, {
        // The whole bucket: no filter, which nats-server 2.9 would treat as filtered (its consumer's creation costs
        // a pass over every key) even when it is the stream's own subject.
        ...(filter === ">" ? {} : { filter_subjects: `${prefix}${filter}` }),
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: Math.max(1, fromRevision),
      });
      const entries: ({ key: string } & KvValue<Desc>)[] = [];
      let pending = (await consumer.info(true)).num_pending;
      let next = 0;
      try {
        // Deleted keys leave markers: read on until `limit` present entries are found or nothing is left.
        while (pending > 0 && entries.length < limit) {
          const batch = await consumer.fetch({ max_messages: Math.min(pending, limit - entries.length), expires: 5_000 });
          let got = 0;
          for await (const m of batch) {
            got++;
            pending = m.info.pending;
            next = m.seq + 1;
            const operation = m.headers?.get("KV-Operation") ?? "";
            if (operation === "DEL" || operation === "PURGE") continue;
            const key = m.subject.slice(prefix.length);
            let value: MessageShape<Desc>;
            try {
              value = fromBinary(schema, m.data);
            } catch (err) {
              throw new Error(`KV ${bucket}/${key} (revision ${m.seq}) is not a valid ${schema.typeName}`, { cause: err });
            }
            entries.push({ key, value, revision: m.seq });
          }
          if (got === 0) break;
        }
      } finally {
        // An ordered consumer would otherwise stay on the server for minutes after its last use.
        await consumer.delete().catch(() => {});
      }
      return { entries, nextRevision: pending > 0 ? next : 0 };
    },
    async watch(o = {}) {
      const key = o.key ?? ">";
      let iter: Awaited<ReturnType<KV["watch"]>>;
      if (o.updatesOnly) {
        // Start right after the last revision stored now, rather than at whatever is newest when the server creates
        // the consumer: a change made while the watch is being set up is then reported too. (A start revision also
        // keeps the client's consumer re-creation after a missed heartbeat from replaying the whole bucket.)
        const next = (await kv.status()).streamInfo.state.last_seq + 1;
        await fault("watch-start");
        iter = await kv.watch({ key, include: "updates", resumeFromRevision: next });
      } else {
        iter = await kv.watch({ key, include: "" });
      }
      return {
        stop: () => iter.stop(),
        async *[Symbol.asyncIterator]() {
          for await (const e of iter) {
            yield {
              key: e.key,
              value: e.operation === "PUT" ? decode(e) : null,
              revision: e.revision,
              operation: e.operation,
            };
          }
        },
      };
    },
  };
  return api;
}
