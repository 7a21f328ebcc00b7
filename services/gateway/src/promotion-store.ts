/**
 * The promotion state of each collection: one KV record per collection (`<prefix>-promotions`, key = collection),
 * its history newest first, the first entry serving. Writes are compare-and-set, so two replicas promoting at once
 * both land, one after the other.
 */
import { create } from "@bufbuild/protobuf";
import { type Bus, RevisionConflictError, type TypedKv } from "@ragtune/bus";
import { type PromotedAdapter, type PromotionRecord, PromotionRecordSchema } from "@ragtune/proto";

/** Promotions kept per collection (older ones drop out of the history and can no longer be rolled back to). */
export const HISTORY_LIMIT = 20;

export class PromotionStore {
  /**
   * The newest record known per key (null: none) and its revision, from this store's reads and writes and a watch of
   * the bucket's changes (every replica's), so `current` — read on every Ask — asks the server once per collection.
   */
  readonly #known = new Map<string, { record: PromotionRecord | null; revision: number }>();
  /** False once the watch has ended: `current` then reads the bucket every time. */
  #watching = false;
  readonly #listeners = new Set<(key: string | undefined) => void>();

  private constructor(readonly kv: TypedKv<typeof PromotionRecordSchema>) {}

  static async open(bus: Bus, bucket = "gateway-promotions"): Promise<PromotionStore> {
    const store = new PromotionStore(await bus.kv(bucket, PromotionRecordSchema));
    // Every change stored after this point is reported, so a value read after it is never newer than what follows.
    const watch = await store.kv.watch({ updatesOnly: true });
    store.#watching = true;
    void (async () => {
      for await (const c of watch) store.#learn(c.key, c.value, c.revision);
    })()
      .catch(() => undefined)
      .finally(() => {
        store.#watching = false;
        store.#known.clear();
        store.#notify(undefined);
      });
    return store;
  }

  #learn(key: string, record: PromotionRecord | null, revision: number): void {
    const known = this.#known.get(key);
    if (known !== undefined && known.revision >= revision) return;
    this.#known.set(key, { record, revision });
    this.#notify(key);
  }

  /**
   * Listen to what `current` answers from (tests wait on it): the KV key of a collection whose newer record this
   * replica now knows, or undefined when the watch ended. Returns the unsubscribe function.
   */
  onChange(listener: (key: string | undefined) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #notify(key: string | undefined): void {
    for (const listener of this.#listeners) listener(key);
  }

  /** The promoted adapter of a collection, if any (from memory after the collection's first read; see `#known`). */
  async current(collection: string): Promise<PromotedAdapter | undefined> {
    if (!this.#watching) return (await this.record(collection))?.history[0];
    const key = kvKey(collection);
    let known = this.#known.get(key);
    if (known === undefined) {
      const entry = await this.kv.get(key);
      this.#learn(key, entry?.value ?? null, entry?.revision ?? 0);
      known = this.#known.get(key)!;
    }
    return known.record?.history[0];
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
        this.#learn(key, record, revision); // read-your-writes on this replica, before the watch reports it
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
