import { create } from "@bufbuild/protobuf";
import { connectBus, type Bus } from "@ragtune/bus";
import { createLogger } from "@ragtune/logger";
import { PromotedAdapterSchema } from "@ragtune/proto";
import { startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { kvKey, PromotionStore } from "../src/promotion-store.js";

let nats: NatsServerHandle;
const buses: Bus[] = [];
const logger = createLogger({ svc: "gateway-test", level: "silent" });

beforeAll(async () => {
  nats = await startNatsServer();
}, 60_000);
afterAll(async () => {
  await Promise.all(buses.map((b) => b.close()));
  await nats?.stop();
});

async function replica(name: string): Promise<PromotionStore> {
  const bus = await connectBus({ servers: nats.url, name, logger });
  buses.push(bus);
  return PromotionStore.open(bus, "gwtest-store-promotions");
}

/** Resolves when `store` has learnt a newer record of the collection (or, for undefined, when its watch ended). */
const learnt = (store: PromotionStore, collection: string | undefined) =>
  new Promise<void>((resolve) => {
    const off = store.onChange((key) => {
      if (key === (collection === undefined ? undefined : kvKey(collection))) {
        off();
        resolve();
      }
    });
  });

const adapter = (collection: string, adapterId: string) => create(PromotedAdapterSchema, { collection, adapterId, jobId: `job-${adapterId}`, servedName: adapterId });

describe("PromotionStore.current (read on every Ask)", () => {
  it("reads the bucket once per collection, sees its own writes at once and another replica's through the watch", async () => {
    const a = await replica("gateway-a");
    const b = await replica("gateway-b");
    const reads = vi.spyOn(b.kv, "get");
    expect(await b.current("docs")).toBeUndefined();
    expect(await b.current("docs")).toBeUndefined();
    expect(await b.current("other name/with spaces")).toBeUndefined();
    expect(reads).toHaveBeenCalledTimes(2); // once per collection, not once per call

    let bLearnt = learnt(b, "docs");
    await a.change("docs", (history) => [adapter("docs", "adapter-1"), ...history]);
    expect((await a.current("docs"))?.adapterId).toBe("adapter-1"); // the writer's own replica: at once
    await bLearnt; // the other replica, through the watch
    expect((await b.current("docs"))?.adapterId).toBe("adapter-1");

    const aLearnt = learnt(a, "docs");
    bLearnt = learnt(b, "other name/with spaces");
    await b.change("docs", (history) => [adapter("docs", "adapter-2"), ...history]);
    await a.change("other name/with spaces", () => [adapter("other name/with spaces", "adapter-9")]);
    await Promise.all([aLearnt, bLearnt]);
    expect((await a.current("docs"))?.adapterId).toBe("adapter-2");
    expect((await b.current("other name/with spaces"))?.adapterId).toBe("adapter-9");

    // a rollback to none (empty history) is seen as none
    bLearnt = learnt(b, "docs");
    await a.change("docs", () => []);
    await bLearnt;
    expect(await b.current("docs")).toBeUndefined();
    expect(reads).toHaveBeenCalledTimes(2 + 1); // + the read of b's own change(); still none for current()
  });

  it("reads the bucket every time once its connection is gone for good", async () => {
    const bus = await connectBus({ servers: nats.url, name: "gateway-c", logger });
    const c = await PromotionStore.open(bus, "gwtest-store-promotions");
    expect(await c.current("docs")).toBeUndefined();
    const ended = learnt(c, undefined);
    await bus.close();
    await ended; // the watch ends with the connection; from then on no answer from memory, which could be stale
    await expect(c.current("docs")).rejects.toThrow();
  });
});
