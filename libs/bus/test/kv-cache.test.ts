import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Bus, KvCache, type KvValue, type TypedKv } from "../src/index.js";
import { startHarness, type Harness } from "./harness.js";

let h: Harness;
let bus: Bus;
let other: Bus;

beforeAll(async () => {
  h = await startHarness();
  bus = await h.connect("kv-cache-test");
  other = await h.connect("kv-cache-other-writer");
});
afterAll(async () => {
  await h?.close();
});

/** The bucket with its `get` counted and, while `gate` is set, held until the gate opens. */
function instrumented(kv: TypedKv<typeof TimestampSchema>) {
  const state = { gets: 0, gate: undefined as Promise<void> | undefined };
  const wrapped: TypedKv<typeof TimestampSchema> = Object.create(kv);
  wrapped.get = async (key: string): Promise<KvValue<typeof TimestampSchema> | null> => {
    state.gets++;
    const read = await kv.get(key);
    if (state.gate !== undefined) await state.gate;
    return read;
  };
  wrapped.watch = (options) => kv.watch(options);
  return { wrapped, state };
}

const changeOf = (cache: KvCache<typeof TimestampSchema>, key: string) =>
  new Promise<void>((resolve) => {
    const off = cache.onChange((k) => {
      if (k === key) {
        off();
        resolve();
      }
    });
  });

describe("KvCache", () => {
  it("reads a key from the server once, then from memory, and follows another writer's changes and deletes", async () => {
    const kv = await bus.kv("cache-a", TimestampSchema);
    const { wrapped, state } = instrumented(kv);
    const cache = await KvCache.open(wrapped);
    const theirs = await other.kv("cache-a", TimestampSchema);
    expect(await cache.get("k")).toBeNull(); // absent is remembered too
    expect(await cache.get("k")).toBeNull();
    expect(state.gets).toBe(1);

    let changed = changeOf(cache, "k");
    const r1 = await theirs.create("k", { seconds: 1n });
    await changed;
    expect(await cache.get("k")).toMatchObject({ revision: r1, value: { seconds: 1n } });
    changed = changeOf(cache, "k");
    await theirs.delete("k");
    await changed;
    expect(await cache.get("k")).toBeNull();
    expect(state.gets).toBe(1);
    cache.stop();
  });

  it("never lets a slow read put back a value that a change replaced", async () => {
    const kv = await bus.kv("cache-b", TimestampSchema);
    await kv.put("k", { seconds: 1n });
    const { wrapped, state } = instrumented(kv);
    const cache = await KvCache.open(wrapped);
    let open!: () => void;
    state.gate = new Promise<void>((resolve) => (open = resolve));
    const slow = cache.get("k"); // reads revision 1, then waits at the gate
    while (state.gets === 0) await new Promise((r) => setImmediate(r));
    const changed = changeOf(cache, "k");
    const r2 = await (await other.kv("cache-b", TimestampSchema)).put("k", { seconds: 2n });
    await changed; // the watch delivered revision 2 while the read of revision 1 is still out
    open();
    expect((await slow)?.revision).toBe(r2);
    expect(await cache.get("k")).toMatchObject({ revision: r2, value: { seconds: 2n } });
    cache.stop();
  });

  it("takes this process's own writes at once, and reads from the server once its watch has ended", async () => {
    const kv = await bus.kv("cache-c", TimestampSchema);
    const { wrapped, state } = instrumented(kv);
    const cache = await KvCache.open(wrapped);
    expect(await cache.get("k")).toBeNull();
    const r1 = await kv.create("k", { seconds: 5n });
    cache.learn("k", await kv.get("k").then((e) => e!.value), r1);
    expect(await cache.get("k")).toMatchObject({ revision: r1 });
    expect(state.gets).toBe(1);
    const ended = new Promise<void>((resolve) => cache.onChange((k) => k === undefined && resolve()));
    cache.stop();
    await ended;
    await cache.get("k");
    await cache.get("k");
    expect(state.gets).toBe(3);
  });
});
