import { create } from "@bufbuild/protobuf";
import { StructSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { headers } from "@nats-io/nats-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Bus, EventContext } from "../src/index.js";
import { Collector, startHarness, type Harness } from "./harness.js";

let h: Harness;
let bus: Bus;

beforeAll(async () => {
  h = await startHarness();
  bus = await h.connect("events-test");
  await bus.ensureEventsStream({ duplicateWindowMs: 60_000 });
});
afterAll(async () => {
  await h?.close();
});

const ts = (seconds: number) => create(TimestampSchema, { seconds: BigInt(seconds) });

describe("events", () => {
  it("the events stream is file-backed, captures ragtune.> and dedupes", async () => {
    const info = await bus.jsm.streams.info("RAGTUNE");
    expect(info.config.storage).toBe("file");
    expect(info.config.subjects).toEqual(["ragtune.>"]);
    expect(info.config.duplicate_window).toBe(60_000 * 1_000_000);
    // idempotent
    await bus.ensureEventsStream({ duplicateWindowMs: 60_000 });
  });

  it("delivers each message id exactly once to a durable consumer", async () => {
    const subject = "ragtune.test.once.published";
    const first = await bus.publish(subject, TimestampSchema, ts(1), { msgId: "once:1" });
    const again = await bus.publish(subject, TimestampSchema, ts(1), { msgId: "once:1" });
    const second = await bus.publish(subject, TimestampSchema, ts(2), { msgId: "once:2" });
    expect(first.duplicate).toBe(false);
    expect(again).toMatchObject({ duplicate: true, seq: first.seq });
    expect(second.seq).toBe(first.seq + 1);

    const got = new Collector<EventContext<typeof TimestampSchema>>();
    const sub = await bus.subscribe({ durable: "once", filterSubject: subject, schema: TimestampSchema, handler: (c) => got.push(c) });
    await got.waitFor(2); // the second id comes after the first in the stream, so once it is here, all earlier ones are
    await sub.stop();
    expect(got.items.map((c) => [c.msgId, c.event.seconds, c.subject, c.redelivered])).toEqual([
      ["once:1", 1n, subject, false],
      ["once:2", 2n, subject, false],
    ]);
    const ci = await bus.jsm.consumers.info("RAGTUNE", "once");
    expect(ci.num_pending).toBe(0);
    expect(ci.num_ack_pending).toBe(0);

    // a durable resumes where it left off: a new subscription sees only what came after
    await bus.publish(subject, TimestampSchema, ts(3), { msgId: "once:3" });
    const later = new Collector<bigint>();
    const sub2 = await bus.subscribe({ durable: "once", filterSubject: subject, schema: TimestampSchema, handler: (c) => later.push(c.event.seconds) });
    await later.waitFor(1);
    await sub2.stop();
    expect(later.items).toEqual([3n]);
  });

  it("redelivers after the handler throws, then acks", async () => {
    const subject = "ragtune.test.retry.published";
    await bus.publish(subject, TimestampSchema, ts(7), { msgId: "retry:1" });
    const attempts = new Collector<{ deliveryCount: number; redelivered: boolean }>();
    const sub = await bus.subscribe({
      durable: "retry",
      filterSubject: subject,
      schema: TimestampSchema,
      retryDelayMs: () => 50,
      handler: (c) => {
        attempts.push({ deliveryCount: c.deliveryCount, redelivered: c.redelivered });
        if (c.deliveryCount === 1) throw new Error("transient failure");
      },
    });
    await attempts.waitFor(2);
    await sub.stop();
    expect(attempts.items).toEqual([
      { deliveryCount: 1, redelivered: false },
      { deliveryCount: 2, redelivered: true },
    ]);
    const ci = await bus.jsm.consumers.info("RAGTUNE", "retry");
    expect(ci.num_ack_pending).toBe(0);
    expect(ci.num_redelivered).toBe(0);
    expect(ci.ack_floor.stream_seq).toBe(ci.delivered.stream_seq);
  });

  it("terminates an event of the wrong type instead of retrying it forever", async () => {
    const subject = "ragtune.test.typed.published";
    // a Struct published where Timestamps are expected (type header says so)
    await bus.publish(subject, StructSchema, { fields: {} }, { msgId: "typed:struct" });
    // garbage bytes without a type header
    const hdrs = headers();
    hdrs.set("Nats-Msg-Id", "typed:garbage");
    await bus.js.publish(subject, new Uint8Array([0xff, 0xff, 0xff]), { headers: hdrs });
    await bus.publish(subject, TimestampSchema, ts(9), { msgId: "typed:ok" });
    const got = new Collector<bigint>();
    const sub = await bus.subscribe({ durable: "typed", filterSubject: subject, schema: TimestampSchema, handler: (c) => got.push(c.event.seconds) });
    await got.waitFor(1);
    await sub.stop();
    expect(got.items).toEqual([9n]);
    const ci = await bus.jsm.consumers.info("RAGTUNE", "typed");
    expect(ci.num_ack_pending).toBe(0);
  });

  it("rejects subjects outside ragtune.<area>.<entity>.<verb> and empty ids", async () => {
    await expect(bus.publish("other.thing", TimestampSchema, ts(1), { msgId: "x" })).rejects.toThrow(/ragtune\.<area>\.<entity>\.<verb>/);
    await expect(bus.publish("ragtune.a.b", TimestampSchema, ts(1), { msgId: "x" })).rejects.toThrow(/invalid/);
    await expect(bus.publish("ragtune.a.*.c", TimestampSchema, ts(1), { msgId: "x" })).rejects.toThrow(/invalid/);
    await expect(bus.publish("ragtune.a.b.c", TimestampSchema, ts(1), { msgId: " " })).rejects.toThrow(/msgId/);
  });

  it("refuses to silently change a durable's filter", async () => {
    const sub = await bus.subscribe({ durable: "fixed", filterSubject: "ragtune.test.a.x", schema: TimestampSchema, handler: () => {} });
    await sub.stop();
    await expect(
      bus.subscribe({ durable: "fixed", filterSubject: "ragtune.test.b.x", schema: TimestampSchema, handler: () => {} }),
    ).rejects.toThrow(/filters "ragtune.test.a.x"/);
  });

  it("close() drains a bus whose subscription is still running", async () => {
    const other = await h.connect("drainer");
    const subject = "ragtune.test.drain.published";
    const got = new Collector<bigint>();
    await other.subscribe({ durable: "drain", filterSubject: subject, schema: TimestampSchema, handler: (c) => got.push(c.event.seconds) });
    await other.publish(subject, TimestampSchema, ts(1), { msgId: "drain:1" });
    await got.waitFor(1);
    await other.close();
    expect(other.nc.isClosed()).toBe(true);
    await expect(other.closed()).resolves.toBeUndefined();
    const ci = await bus.jsm.consumers.info("RAGTUNE", "drain");
    expect(ci.ack_floor.stream_seq).toBe(ci.delivered.stream_seq);
  });
});
