import { StringValueSchema } from "@bufbuild/protobuf/wkt";
import type { NatsConnection } from "@nats-io/nats-core";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { coalesceFlushes, type Bus } from "../src/index.js";
import { startHarness, type Harness } from "./harness.js";

let harness: Harness;
let bus: Bus;
beforeAll(async () => {
  harness = await startHarness();
  bus = await harness.connect();
});
afterAll(async () => {
  await harness.close();
});

/** 200 publishes, each queued after a different number of microtask hops (as requests continuing in their own promise chains are). */
async function publishFromChains(nc: NatsConnection): Promise<void> {
  await Promise.all(
    Array.from({ length: 200 }, async (_, i) => {
      for (let hop = 0; hop < i; hop++) await Promise.resolve();
      nc.publish("coalesce.chains", `m${i}`);
    }),
  );
  await nc.flush();
}

describe("coalesceFlushes", () => {
  it("the client alone writes to its socket about once per microtask hop (the control)", async () => {
    const nc = await connect({ servers: harness.server.url });
    try {
      const protocol = (nc as unknown as { protocol: { flushPending(): void; outbound: { size(): number } } }).protocol;
      const flush = protocol.flushPending.bind(protocol);
      let writes = 0;
      protocol.flushPending = () => {
        if (protocol.outbound.size() > 0) writes++;
        flush();
      };
      await publishFromChains(nc);
      expect(writes).toBeGreaterThan(50);
    } finally {
      await nc.close();
    }
  });

  it("is on for every bus, and writes what one event-loop turn queued with one socket write", async () => {
    const stats = coalesceFlushes(bus.nc);
    expect(stats).toBeDefined();
    expect(coalesceFlushes(bus.nc)).toBe(stats);
    const kv = await bus.kv("coalesce", StringValueSchema);
    let before = stats!.writes;
    await publishFromChains(bus.nc);
    // The 200 publishes in one write, and the flush's PING in another.
    expect(stats!.writes - before).toBeLessThanOrEqual(2);
    // The same for requests waiting on replies (KV puts): every value is stored.
    before = stats!.writes;
    await Promise.all(
      Array.from({ length: 200 }, async (_, i) => {
        for (let hop = 0; hop < i; hop++) await Promise.resolve();
        return kv.put(`k${i}`, { value: `v${i}` });
      }),
    );
    expect(stats!.writes - before).toBeLessThanOrEqual(2);
    const stored = await Promise.all(Array.from({ length: 200 }, (_, i) => kv.get(`k${i}`)));
    expect(stored.map((s) => s?.value.value)).toEqual(Array.from({ length: 200 }, (_, i) => `v${i}`));
  });

  it("writes a buffer past the client's threshold at once, and everything queued before a drain", async () => {
    const stats = coalesceFlushes(bus.nc)!;
    const before = stats.writes;
    const big = "x".repeat(20_000);
    // Two 20 KB publishes in one turn pass the 32 KiB threshold: the first write happens before the turn ends.
    bus.nc.publish("coalesce.big", big);
    bus.nc.publish("coalesce.big", big);
    expect(stats.writes - before).toBe(1);
    const other = await harness.connect("coalesce-drain");
    const got = other.nc.subscribe("coalesce.drained", { max: 1 });
    await other.nc.flush();
    const mine = await harness.connect("coalesce-closing");
    mine.nc.publish("coalesce.drained", "last words");
    await mine.close();
    for await (const m of got) expect(m.string()).toBe("last words");
  });
});
