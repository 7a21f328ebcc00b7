import { create } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { afterEach, describe, expect, it } from "vitest";
import { Collector, startHarness, type Harness } from "./harness.js";

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const ts = (n: number) => create(TimestampSchema, { seconds: BigInt(n) });
const subject = "ragtune.test.restart.published";

describe("server restart", () => {
  for (const mode of ["restart", "kill"] as const) {
    it(`loses no acknowledged event when the server ${mode === "kill" ? "is killed and restarted" : "restarts"} mid-stream`, async () => {
      h = await startHarness();
      const bus = await h.connect("restart-test");
      await bus.ensureEventsStream();
      const reconnected = new Promise<void>((resolve) => {
        void (async () => {
          for await (const s of bus.nc.status()) if (s.type === "reconnect") return resolve();
        })();
      });

      const got = new Collector<string>(); // distinct message ids
      let deliveries = 0;
      const sub = await bus.subscribe({
        durable: "survivor",
        filterSubject: subject,
        schema: TimestampSchema,
        handler: (c) => {
          deliveries++;
          // at-least-once: an ack lost in the outage brings a message back; count distinct ids
          if (!got.items.includes(c.msgId!)) got.push(c.msgId!);
        },
      });

      // 1..20 are published (acked by the server) and consumed before the outage
      for (let i = 1; i <= 20; i++) await bus.publish(subject, TimestampSchema, ts(i), { msgId: `r:${i}` });
      await got.waitFor(20);
      // 21..40 are acked by the server but the consumer may not have seen them yet
      for (let i = 21; i <= 40; i++) await bus.publish(subject, TimestampSchema, ts(i), { msgId: `r:${i}` });

      if (mode === "kill") {
        await h.server.kill();
        await h.server.restart();
      } else {
        await h.server.restart();
      }
      await reconnected; // the client found the server again by itself

      // 41..60 after the restart, on the same connection
      for (let i = 41; i <= 60; i++) await bus.publish(subject, TimestampSchema, ts(i), { msgId: `r:${i}` });
      await got.waitFor(60);
      expect(deliveries).toBeGreaterThanOrEqual(60);
      await sub.stop();

      const expected = Array.from({ length: 60 }, (_, i) => `r:${i + 1}`);
      expect(new Set(got.items)).toEqual(new Set(expected));
      const info = await bus.jsm.streams.info("RAGTUNE");
      expect(info.state.messages).toBe(60);
      const ci = await bus.jsm.consumers.info("RAGTUNE", "survivor");
      expect(ci.num_pending).toBe(0); // nothing left undelivered
    });
  }
});
