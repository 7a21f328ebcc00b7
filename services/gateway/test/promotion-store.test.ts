import { create } from "@bufbuild/protobuf";
import { connectBus, type Bus } from "@ragtune/bus";
import { createLogger } from "@ragtune/logger";
import { PromotedAdapterSchema } from "@ragtune/proto";
import { startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { PromotionStore } from "../src/promotion-store.js";

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

    await a.change("docs", (history) => [adapter("docs", "adapter-1"), ...history]);
    expect((await a.current("docs"))?.adapterId).toBe("adapter-1"); // the writer's own replica: at once
    await vi.waitFor(async () => expect((await b.current("docs"))?.adapterId).toBe("adapter-1"), { timeout: 10_000, interval: 5 });

    await b.change("docs", (history) => [adapter("docs", "adapter-2"), ...history]);
    await a.change("other name/with spaces", () => [adapter("other name/with spaces", "adapter-9")]);
    await vi.waitFor(async () => expect((await a.current("docs"))?.adapterId).toBe("adapter-2"), { timeout: 10_000, interval: 5 });
    await vi.waitFor(async () => expect((await b.current("other name/with spaces"))?.adapterId).toBe("adapter-9"), { timeout: 10_000, interval: 5 });

    // a rollback to none (empty history) is seen as none
    await a.change("docs", () => []);
    await vi.waitFor(async () => expect(await b.current("docs")).toBeUndefined(), { timeout: 10_000, interval: 5 });
    expect(reads).toHaveBeenCalledTimes(2 + 1); // + the read of b's own change(); still none for current()
  });

  it("reads the bucket every time once its connection is gone for good", async () => {
    const bus = await connectBus({ servers: nats.url, name: "gateway-c", logger });
    const c = await PromotionStore.open(bus, "gwtest-store-promotions");
    expect(await c.current("docs")).toBeUndefined();
    await bus.close();
    // the watch ends with the connection; from then on no answer from memory, which could be stale
    await vi.waitFor(() => expect(c.current("docs")).rejects.toThrow(), { timeout: 10_000, interval: 5 });
  });
});
