import { create } from "@bufbuild/protobuf";
import { StructSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { headers } from "@nats-io/nats-core";
import { DocumentChunkedSchema, TrainerJobEventKind, TrainerJobEventSchema } from "@ragtune/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventFilterSubject, type Bus, type EventContext } from "../src/index.js";
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

describe("events by schema (the catalog)", () => {
  it("a subscriber by schema receives what a publisher by schema sent, on the declared subject", async () => {
    const got = new Collector<EventContext<typeof DocumentChunkedSchema>>();
    const sub = await bus.subscribe({ durable: "catalog-chunked", schema: DocumentChunkedSchema, handler: (c) => got.push(c) });
    const ack = await bus.publish(
      DocumentChunkedSchema,
      { eventId: "run-1:doc-1:abc", collection: "docs", documentId: "doc-1", addedChunkIds: ["c1", "c2"] },
      { msgId: "run-1:doc-1:abc" },
    );
    expect(ack).toMatchObject({ stream: "RAGTUNE", duplicate: false });
    await got.waitFor(1);
    await sub.stop();
    const [c] = got.items;
    expect(c?.subject).toBe("ragtune.ingest.document.chunked");
    expect(c?.seq).toBe(ack.seq);
    expect(c?.msgId).toBe("run-1:doc-1:abc");
    expect([c?.event.documentId, c?.event.addedChunkIds]).toEqual(["doc-1", ["c1", "c2"]]);
    const ci = await bus.jsm.consumers.info("RAGTUNE", "catalog-chunked");
    expect(ci.config.filter_subject).toBe("ragtune.ingest.document.chunked");
  });

  it("routes a TrainerJobEvent by its kind; a subscriber picks all verbs or one", async () => {
    const job = (kind: TrainerJobEventKind, sequence: number) => ({ eventId: `job-1:${sequence}`, jobId: "job-1", sequence, kind });
    await bus.publish(TrainerJobEventSchema, job(TrainerJobEventKind.QUEUED, 1), { msgId: "job-1:1" });
    await bus.publish(TrainerJobEventSchema, job(TrainerJobEventKind.RUNNING, 2), { msgId: "job-1:2" });
    await bus.publish(TrainerJobEventSchema, job(TrainerJobEventKind.SUCCEEDED, 3), { msgId: "job-1:3" });

    const all = new Collector<[string, number]>();
    const subAll = await bus.subscribe({ durable: "catalog-jobs-all", schema: TrainerJobEventSchema, handler: (c) => all.push([c.subject, c.event.sequence]) });
    await all.waitFor(3);
    await subAll.stop();
    expect(all.items).toEqual([
      ["ragtune.trainer.job.queued", 1],
      ["ragtune.trainer.job.running", 2],
      ["ragtune.trainer.job.succeeded", 3],
    ]);

    // Only the succeeded event reaches a subscriber of that verb: the two before it in the stream are filtered out.
    const done = new Collector<[string, number]>();
    const subDone = await bus.subscribe({
      durable: "catalog-jobs-succeeded",
      schema: TrainerJobEventSchema,
      verb: TrainerJobEventKind.SUCCEEDED,
      handler: (c) => done.push([c.subject, c.event.sequence]),
    });
    await done.waitFor(1);
    await subDone.stop();
    expect(done.items).toEqual([["ragtune.trainer.job.succeeded", 3]]);
    const ci = await bus.jsm.consumers.info("RAGTUNE", "catalog-jobs-succeeded");
    expect(ci.config.filter_subject).toBe(eventFilterSubject(TrainerJobEventSchema, TrainerJobEventKind.SUCCEEDED));
    expect(ci.num_pending).toBe(0);
  });

  it("refuses a TrainerJobEvent without a kind, and stores nothing", async () => {
    const before = (await bus.jsm.streams.info("RAGTUNE")).state.messages;
    await expect(bus.publish(TrainerJobEventSchema, { eventId: "job-2:1", jobId: "job-2", sequence: 1 }, { msgId: "job-2:1" })).rejects.toThrow(
      /TrainerJobEvent\.kind is 0, which names no verb/,
    );
    expect((await bus.jsm.streams.info("RAGTUNE")).state.messages).toBe(before);
  });

  it("accepts a catalog event on an explicit subject only when it is the declared one", async () => {
    const event = { eventId: "job-3:1", jobId: "job-3", sequence: 1, kind: TrainerJobEventKind.FAILED };
    await expect(bus.publish("ragtune.trainer.job.cancelled", TrainerJobEventSchema, event, { msgId: "job-3:1" })).rejects.toThrow(
      "ragtune.events.v1.TrainerJobEvent is published on ragtune.trainer.job.failed (its catalog subject), not ragtune.trainer.job.cancelled",
    );
    const ack = await bus.publish("ragtune.trainer.job.failed", TrainerJobEventSchema, event, { msgId: "job-3:1" });
    expect(ack.duplicate).toBe(false);
    const stored = await bus.jsm.streams.getMessage("RAGTUNE", { seq: ack.seq });
    expect(stored?.subject).toBe("ragtune.trainer.job.failed");
  });

  it("refuses a subscription whose filter contradicts the catalog, or that has no filter at all", async () => {
    await expect(
      bus.subscribe({ durable: "catalog-wrong", schema: DocumentChunkedSchema, filterSubject: "ragtune.ingest.document.deleted", handler: () => {} }),
    ).rejects.toThrow(/DocumentChunked is on ragtune\.ingest\.document\.chunked, so filterSubject "ragtune\.ingest\.document\.deleted" is wrong/);
    await expect(bus.subscribe({ durable: "catalog-none", schema: TimestampSchema, handler: () => {} })).rejects.toThrow(
      /google\.protobuf\.Timestamp is not in the event catalog; give a filterSubject/,
    );
    await expect(bus.jsm.consumers.info("RAGTUNE", "catalog-wrong")).rejects.toThrow(/consumer not found/);
  });
});
