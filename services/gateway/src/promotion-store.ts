/**
 * The promotion state of each collection: one KV record per collection (`<prefix>-promotions`, key = collection),
 * its history newest first, the first entry serving. Writes are compare-and-set, so two replicas promoting at once
 * both land, one after the other.
 */
import { create } from "@bufbuild/protobuf";
import { type Bus, KvCache, RevisionConflictError, type TypedKv } from "@ragtune/bus";
import { type PromotedAdapter, type PromotionRecord, PromotionRecordSchema } from "@ragtune/proto";

/** Promotions kept per collection (older ones drop out of the history and can no longer be rolled back to). */
export const HISTORY_LIMIT = 20;

export class PromotionStore {
  private constructor(
    readonly kv: TypedKv<typeof PromotionRecordSchema>,
    /** `current` — read on every Ask — asks the server once per collection; the cache's watch keeps it current. */
    readonly cache: KvCache<typeof PromotionRecordSchema>,
  ) {}

  static async open(bus: Bus, bucket = "gateway-promotions"): Promise<PromotionStore> {
    const kv = await bus.kv(bucket, PromotionRecordSchema);
    return new PromotionStore(kv, await KvCache.open(kv));
  }

  /**
   * Listen to what `current` answers from (tests wait on it): the KV key of a collection whose newer record this
   * replica now knows, or undefined when the watch ended. Returns the unsubscribe function.
   */
  onChange(listener: (key: string | undefined) => void): () => void {
    return this.cache.onChange(listener);
  }

  /** The promoted adapter of a collection, if any (from memory after the collection's first read). */
  async current(collection: string): Promise<PromotedAdapter | undefined> {
    return (await this.cache.get(kvKey(collection)))?.value.history[0];
  }

  async record(collection: string): Promise<PromotionRecord | undefined> {
    return (await this.kv.get(kvKey(collection)))?.value;
  }

  /**
   * Read-modify-write of a collection's history: `change` gets the current history (newest first) and returns the new
   * one, or throws to abort. Retried on a concurrent write.
   */
  async change(collection: string, change: (history: readonly PromotedAdapter[]) => PromotedAdapter[] | Promise<PromotedAdapter[]>): Promise<PromotedAdapter[]> {
    const key = kvKey(collection);
    for (let attempt = 0; ; attempt++) {
      const entry = await this.kv.get(key);
      const history = (await change(entry?.value.history ?? [])).slice(0, HISTORY_LIMIT);
      const record = create(PromotionRecordSchema, { collection, history });
      try {
        const revision = entry === null ? await this.kv.create(key, record) : await this.kv.update(key, record, entry.revision);
        this.cache.learn(key, record, revision); // read-your-writes on this replica, before the watch reports it
        return history;
      } catch (err) {
        if (!(err instanceof RevisionConflictError) || attempt >= 10) throw err;
      }
    }
  }

  /** Every collection's serving adapter. */
  async allCurrent(): Promise<PromotedAdapter[]> {
    const out: PromotedAdapter[] = [];
    for await (const e of this.kv.entries()) if (e.value.history[0] !== undefined) out.push(e.value.history[0]);
    return out;
  }
}

/** KV keys allow [-/_=.a-zA-Z0-9]; collection names are encoded so any name maps to one key. */
export function kvKey(collection: string): string {
  return /^[a-zA-Z0-9_-]+$/.test(collection) ? collection : `b64.${Buffer.from(collection).toString("base64url")}`;
}
