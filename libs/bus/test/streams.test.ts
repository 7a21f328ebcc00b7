import type { JetStreamManager, StreamConfig } from "@nats-io/jetstream";
import { afterEach, describe, expect, it } from "vitest";
import { ensureStream } from "../src/index.js";
import { startHarness, type Harness } from "./harness.js";

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe("ensureStream (real nats-server)", () => {
  it("uses the stream another replica created between its check and its create, instead of failing", async () => {
    h = await startHarness();
    const bus = await h.connect("replica-a");
    const other = await h.connect("replica-b");
    // Replica A found no stream; replica B creates it while A's create is in flight, and the server refuses A's the
    // way it did in CI ("subjects overlap with an existing stream": the concurrent creates race inside the server).
    const streams = new Proxy(bus.jsm.streams, {
      get(target, key, receiver) {
        if (key !== "add") return Reflect.get(target, key, receiver) as unknown;
        return async (config: Partial<StreamConfig> & { name: string }) => {
          await other.jsm.streams.add(config);
          throw new Error("subjects overlap with an existing stream");
        };
      },
    });
    const jsm = new Proxy(bus.jsm, { get: (target, key, receiver) => (key === "streams" ? streams : (Reflect.get(target, key, receiver) as unknown)) }) as JetStreamManager;
    const info = await ensureStream({ jsm, stores: bus.stores }, { name: "RACE", subjects: ["race.>"], max_age: 60_000_000_000 });
    expect(info.config.name).toBe("RACE");
    expect(info.config.subjects).toEqual(["race.>"]);
  });
});
