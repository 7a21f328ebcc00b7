/**
 * A read-through cache of a KV bucket, for values read on every request (the gateway's API keys, collection owners
 * and promotions): a key's first read asks the server, later reads are answered from memory. A watch of the whole
 * bucket, started before the first read, keeps every key known current with every writer's changes (any process,
 * any replica), so a change reaches the cache as fast as the server delivers it — milliseconds, not a TTL. A value
 * is only replaced by a newer revision, so a slow read can never put back what a change replaced. When the watch
 * ends (connection closed), the cache forgets everything and reads go to the server.
 */
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import type { KvValue, TypedKv } from "./kv.js";

export class KvCache<Desc extends DescMessage> {
  /** What is known per key: the value (null: absent) and its revision (0: read as absent). */
  readonly #known = new Map<string, { value: MessageShape<Desc> | null; revision: number }>();
  #watching = false;
  readonly #listeners = new Set<(key: string | undefined) => void>();
  #stop: () => void = () => undefined;

  private constructor(readonly kv: TypedKv<Desc>) {}

  /** Starts the bucket's watch; every change stored after this resolves is reported to the cache. */
  static async open<Desc extends DescMessage>(kv: TypedKv<Desc>): Promise<KvCache<Desc>> {
    const cache = new KvCache(kv);
    const watch = await kv.watch({ updatesOnly: true });
    cache.#watching = true;
    cache.#stop = () => watch.stop();
    void (async () => {
      for await (const c of watch) cache.learn(c.key, c.value, c.revision);
    })()
      .catch(() => undefined)
      .finally(() => {
        cache.#watching = false;
        cache.#known.clear();
        cache.#notify(undefined);
      });
    return cache;
  }

  /** The key's value and revision, or null when absent: from memory after the key's first read. */
  async get(key: string): Promise<KvValue<Desc> | null> {
    if (!this.#watching) return this.kv.get(key);
    let known = this.#known.get(key);
    if (known === undefined) {
      const entry = await this.kv.get(key);
      this.learn(key, entry?.value ?? null, entry?.revision ?? 0);
      known = this.#known.get(key)!;
    }
    return known.value === null ? null : { value: known.value, revision: known.revision };
  }

  /**
   * Tells the cache a value this process wrote (read-your-writes before the watch reports it), or that the watch
   * reported. Ignored when a newer revision is known.
   */
  learn(key: string, value: MessageShape<Desc> | null, revision: number): void {
    if (!this.#watching) return;
    const known = this.#known.get(key);
    if (known !== undefined && known.revision >= revision) return;
    this.#known.set(key, { value, revision });
    this.#notify(key);
  }

  /**
   * Listens to what reads answer from (tests wait on it): the key of which a newer value is now known, or undefined
   * when the watch ended. Returns the unsubscribe function.
   */
  onChange(listener: (key: string | undefined) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Stops the watch; reads then go to the server. */
  stop(): void {
    this.#stop();
  }

  #notify(key: string | undefined): void {
    for (const listener of this.#listeners) listener(key);
  }
}
