import { StructSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { kvBucketMessages, RevisionConflictError, type Bus, type KvChange, type TypedKv } from "../src/index.js";
import { startHarness, type Harness } from "./harness.js";

let h: Harness;
let bus: Bus;

beforeAll(async () => {
  h = await startHarness();
  bus = await h.connect("kv-test");
});
afterAll(async () => {
  await h?.close();
});

describe("typed KV", () => {
  it("writes encoded values, finds the last value of a key pattern in one request, counts and deletes a bucket", async () => {
    const { toBinary, create } = await import("@bufbuild/protobuf");
    expect(await kvBucketMessages(bus, "encoded")).toBeUndefined(); // not created by asking
    const kv = await bus.kv("encoded", TimestampSchema);
    const bytes = (seconds: bigint) => toBinary(TimestampSchema, create(TimestampSchema, { seconds }));
    await kv.putEncoded(Array.from({ length: 300 }, (_, i) => ({ key: `doc${i % 3}.chunk${i}`, bytes: bytes(BigInt(i)) })));
    expect((await kv.get("doc2.chunk5"))?.value.seconds).toBe(5n);
    expect(await kvBucketMessages(bus, "encoded")).toBe(300);
    const found = await kv.lastMatching("*.chunk7");
    expect(found).toMatchObject({ key: "doc1.chunk7", value: { seconds: 7n } });
    await kv.delete("doc1.chunk7");
    expect(await kv.lastMatching("*.chunk7")).toBeNull(); // deleted
    expect(await kv.lastMatching("*.nothing")).toBeNull();
    await kv.destroy();
    expect(await kvBucketMessages(bus, "encoded")).toBeUndefined();
    await kv.destroy(); // gone already: fine
  });

  it("round-trips protobuf values with revisions and compare-and-set", async () => {
    const kv = await bus.kv("jobs", TimestampSchema);
    expect(await kv.get("job-1")).toBeNull();
    const r1 = await kv.create("job-1", { seconds: 10n });
    await expect(kv.create("job-1", { seconds: 11n })).rejects.toBeInstanceOf(RevisionConflictError);

    const got = await kv.get("job-1");
    expect(got).toMatchObject({ revision: r1, value: { seconds: 10n } });

    const r2 = await kv.update("job-1", { seconds: 20n }, r1);
    expect(r2).toBeGreaterThan(r1);
    // a writer still holding the old revision loses
    const stale = kv.update("job-1", { seconds: 30n }, r1);
    await expect(stale).rejects.toBeInstanceOf(RevisionConflictError);
    await expect(stale).rejects.toThrow(/jobs\/job-1 is no longer at revision/);
    expect((await kv.get("job-1"))?.value.seconds).toBe(20n);

    await kv.put("job-2", { seconds: 2n });
    await kv.put("other.x", { seconds: 3n });
    const keys: string[] = [];
    for await (const k of kv.keys()) keys.push(k);
    expect(keys.sort()).toEqual(["job-1", "job-2", "other.x"]);
    const entries: [string, bigint][] = [];
    for await (const e of kv.entries()) entries.push([e.key, e.value.seconds]);
    expect(entries.sort()).toEqual([["job-1", 20n], ["job-2", 2n], ["other.x", 3n]]);
    const filtered: string[] = [];
    for await (const k of kv.keys("other.*")) filtered.push(k);
    expect(filtered).toEqual(["other.x"]);

    await kv.delete("job-2");
    expect(await kv.get("job-2")).toBeNull();
    // a deleted key can be created again
    await kv.create("job-2", { seconds: 5n });
    expect((await kv.get("job-2"))?.value.seconds).toBe(5n);
  });

  it("page lists a filter's present entries in write order, a page at a time, skipping deleted keys", async () => {
    const kv = await bus.kv("paged", TimestampSchema);
    for (let i = 0; i < 7; i++) await kv.put(`a.k${i}`, { seconds: BigInt(i) });
    await kv.put("b.other", { seconds: 99n });
    await kv.delete("a.k2");
    await kv.put("a.k0", { seconds: 10n }); // rewritten: moves to the end
    const seen: [string, bigint][] = [];
    let from = 1;
    let pages = 0;
    do {
      const page = await kv.page("a.*", from, 3);
      expect(page.entries.length).toBeLessThanOrEqual(3);
      for (const e of page.entries) seen.push([e.key, e.value.seconds]);
      from = page.nextRevision;
      pages++;
    } while (from !== 0);
    expect(seen).toEqual([["a.k1", 1n], ["a.k3", 3n], ["a.k4", 4n], ["a.k5", 5n], ["a.k6", 6n], ["a.k0", 10n]]);
    expect(pages).toBe(2);
    expect(await kv.page("none.*", 1, 3)).toEqual({ entries: [], nextRevision: 0 });
    // Every page's consumer is gone from the server.
    expect((await bus.jsm.streams.info("KV_paged")).state.consumer_count).toBe(0);
  });

  it("modify retries on conflict so concurrent increments all land", async () => {
    const kv = await bus.kv("counters", TimestampSchema);
    const other = await (await h.connect("kv-other")).kv("counters", TimestampSchema);
    const bump = (store: typeof kv) => store.modify("n", (cur) => ({ seconds: (cur?.seconds ?? 0n) + 1n }), 50);
    await Promise.all(Array.from({ length: 10 }, (_, i) => bump(i % 2 === 0 ? kv : other)));
    expect((await kv.get("n"))?.value.seconds).toBe(10n);
  });

  it("watch reports puts and deletes as they happen", async () => {
    // Two revisions per key: the watcher is told both changes of "a" even when the delete lands before the server
    // has sent it the put (with history 1 the put would be gone by then; see the next tests).
    const kv = await bus.kv("watched", StructSchema, { history: 2 });
    await kv.put("before", { fields: {} });
    const w = await kv.watch({ updatesOnly: true });
    const seen: KvChange<typeof StructSchema>[] = [];
    const reading = (async () => {
      for await (const c of w) {
        seen.push(c);
        if (seen.length === 2) break;
      }
    })();
    await kv.put("a", { fields: { k: { kind: { case: "stringValue", value: "v" } } } });
    await kv.delete("a");
    await reading;
    w.stop();
    expect(seen.map((c) => [c.key, c.operation])).toEqual([["a", "PUT"], ["a", "DEL"]]);
    expect(seen[0]!.value?.fields.k?.kind).toEqual({ case: "stringValue", value: "v" });
    expect(seen[1]!.value).toBeNull();
  });

  it("an updates-only watch reports a change made while it is being set up", async () => {
    // The change lands after watch() was called but before its server-side consumer exists: the window in which a
    // watch that starts at "whatever is newest when the consumer is created" loses it.
    let during: number | undefined;
    let kv!: TypedKv<typeof TimestampSchema>;
    kv = await bus.kv("watch-setup", TimestampSchema, {
      faults: async (step) => {
        if (step === "watch-start") during = await kv.put("k", { seconds: 1n });
      },
    });
    await kv.put("k", { seconds: 0n });
    const w = await kv.watch({ updatesOnly: true });
    expect(during).toBeGreaterThan(1);
    await kv.put("end", { seconds: 2n });
    const seen: [string, number, bigint | undefined][] = [];
    for await (const c of w) {
      seen.push([c.key, c.revision, c.value?.seconds]);
      if (c.key === "end") break;
    }
    w.stop();
    expect(seen).toEqual([
      ["k", during, 1n],
      ["end", during! + 1, 2n],
    ]);
  });

  it("with one revision per key, a change overwritten before the watcher got it is skipped and the newest arrives", async () => {
    // Forced interleaving: put and delete both land before the watch's consumer exists. The bucket keeps only the
    // delete, so that is what the watcher reports, and the put before it is never reported.
    let kv!: TypedKv<typeof TimestampSchema>;
    kv = await bus.kv("watch-history-1", TimestampSchema, {
      faults: async (step) => {
        if (step !== "watch-start") return;
        await kv.put("k", { seconds: 1n });
        await kv.delete("k");
      },
    });
    const w = await kv.watch({ updatesOnly: true });
    await kv.put("end", { seconds: 2n });
    const seen: [string, string][] = [];
    for await (const c of w) {
      seen.push([c.key, c.operation]);
      if (c.key === "end") break;
    }
    w.stop();
    expect(seen).toEqual([["k", "DEL"], ["end", "PUT"]]);
  });

  it("a change right after watch() resolves is never missed (many rounds)", async () => {
    const kv = await bus.kv("watch-rounds", TimestampSchema, { history: 2 });
    for (let round = 1; round <= 100; round++) {
      const w = await kv.watch({ updatesOnly: true, key: "k" });
      const put = await kv.put("k", { seconds: BigInt(round) });
      await kv.delete("k");
      const it = w[Symbol.asyncIterator]();
      const got = [(await it.next()).value, (await it.next()).value];
      w.stop();
      expect(got.map((c) => [c?.operation, c?.revision === put ? "put" : "later"]), `round ${round}`).toEqual([
        ["PUT", "put"],
        ["DEL", "later"],
      ]);
    }
  });

  it("names the bad bucket", async () => {
    await expect(bus.kv("bad name", TimestampSchema)).rejects.toThrow(/KV bucket name "bad name" is invalid/);
  });
});
