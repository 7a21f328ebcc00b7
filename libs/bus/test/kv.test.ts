import { StructSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RevisionConflictError, type Bus, type KvChange } from "../src/index.js";
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

  it("modify retries on conflict so concurrent increments all land", async () => {
    const kv = await bus.kv("counters", TimestampSchema);
    const other = await (await h.connect("kv-other")).kv("counters", TimestampSchema);
    const bump = (store: typeof kv) => store.modify("n", (cur) => ({ seconds: (cur?.seconds ?? 0n) + 1n }), 50);
    await Promise.all(Array.from({ length: 10 }, (_, i) => bump(i % 2 === 0 ? kv : other)));
    expect((await kv.get("n"))?.value.seconds).toBe(10n);
  });

  it("watch reports puts and deletes as they happen", async () => {
    const kv = await bus.kv("watched", StructSchema);
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

  it("names the bad bucket", async () => {
    await expect(bus.kv("bad name", TimestampSchema)).rejects.toThrow(/KV bucket name "bad name" is invalid/);
  });
});
