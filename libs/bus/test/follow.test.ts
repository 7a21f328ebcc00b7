import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { headers } from "@nats-io/nats-core";
import { CollectionDeletedSchema, DocumentChunkedSchema, DocumentDeletedSchema, IngestRunCompletedSchema } from "@ragtune/proto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { coveringFilter, followEvents, onEvent, subjectMatches, type Bus, type EventFollower } from "../src/index.js";
import { Collector, startHarness, type Harness } from "./harness.js";

let h: Harness;
let bus: Bus;

beforeAll(async () => {
  h = await startHarness();
  bus = await h.connect("follow-test");
  await bus.ensureEventsStream();
});
afterAll(async () => {
  await h?.close();
});

let ids = 0;
const chunked = (collection: string, documentId: string) =>
  bus.publish(DocumentChunkedSchema, { eventId: `c${++ids}`, collection, documentId }, { msgId: `follow:c${ids}` });
const deleted = (collection: string, documentId: string) =>
  bus.publish(DocumentDeletedSchema, { eventId: `d${++ids}`, collection, documentId }, { msgId: `follow:d${ids}` });
const collectionDeleted = (collection: string) => bus.publish(CollectionDeletedSchema, { eventId: `x${++ids}`, collection }, { msgId: `follow:x${ids}` });
const runCompleted = (collection: string) => bus.publish(IngestRunCompletedSchema, { eventId: `r${++ids}`, collection, ingestRunId: `run${ids}` }, { msgId: `follow:r${ids}` });

/** A follower of the three ingest events a gateway replica follows, recording "kind:collection/document@seq". */
async function ingestFollower(on: Bus, name: string, from?: "new" | "all" | { seq: number }, throwOn?: string) {
  const seen = new Collector<string>();
  const follower = await followEvents(on, {
    name,
    ...(from !== undefined ? { from } : {}),
    events: [
      onEvent(DocumentChunkedSchema, (e) => {
        seen.push(`chunked:${e.event.collection}/${e.event.documentId}@${e.seq}`);
        if (e.event.documentId === throwOn) throw new Error("handler failure");
      }),
      onEvent(DocumentDeletedSchema, (e) => seen.push(`deleted:${e.event.collection}/${e.event.documentId}@${e.seq}`)),
      onEvent(CollectionDeletedSchema, (e) => seen.push(`collection-deleted:${e.event.collection}@${e.seq}`)),
    ],
  });
  return { seen, follower };
}

const stopAll = (followers: EventFollower[]) => Promise.all(followers.map((f) => f.stop()));

describe("subject helpers", () => {
  it("match NATS wildcards and cover several filters with one", () => {
    expect(subjectMatches("ragtune.ingest.>", "ragtune.ingest.document.chunked")).toBe(true);
    expect(subjectMatches("ragtune.ingest.>", "ragtune.ingest")).toBe(false);
    expect(subjectMatches("ragtune.trainer.job.*", "ragtune.trainer.job.succeeded")).toBe(true);
    expect(subjectMatches("ragtune.trainer.job.*", "ragtune.trainer.job.succeeded.x")).toBe(false);
    expect(subjectMatches("ragtune.ingest.document.chunked", "ragtune.ingest.document.deleted")).toBe(false);
    expect(coveringFilter(["ragtune.ingest.document.chunked", "ragtune.ingest.document.deleted", "ragtune.ingest.collection.deleted"])).toBe("ragtune.ingest.>");
    expect(coveringFilter(["ragtune.ingest.document.chunked", "ragtune.ingest.document.deleted"])).toBe("ragtune.ingest.document.>");
    expect(coveringFilter(["ragtune.a.b.c", "ragtune.a.b.c"])).toBe("ragtune.a.b.c");
    expect(coveringFilter(["ragtune.a.b", "ragtune.a.b.c"])).toBe("ragtune.a.>");
    expect(coveringFilter(["ragtune.trainer.job.*", "ragtune.trainer.run.x"])).toBe("ragtune.trainer.>");
  });
});

describe("followEvents", () => {
  it("gives every follower (one per replica) every event from its start on, in stream order, only of the kinds it follows", async () => {
    await chunked("before", "old"); // published before the followers start: not theirs
    const replicaA = await h.connect("follow-replica-a");
    const replicaB = await h.connect("follow-replica-b");
    const a = await ingestFollower(replicaA, "gateway-index");
    const b = await ingestFollower(replicaB, "gateway-index"); // the same name on another replica: its own consumer

    const seqs = [
      (await chunked("c1", "d1")).seq,
      (await runCompleted("c1")).seq, // in the ingest area, but not followed
      (await deleted("c1", "d1")).seq,
      (await chunked("c2", "d2")).seq,
      (await collectionDeleted("c1")).seq,
    ];
    const expected = [`chunked:c1/d1@${seqs[0]}`, `deleted:c1/d1@${seqs[2]}`, `chunked:c2/d2@${seqs[3]}`, `collection-deleted:c1@${seqs[4]}`];
    await Promise.all([a.seen.waitFor(4), b.seen.waitFor(4)]);
    // One more event after them: once it is in, nothing else (the old one, the run event, a repeat) came before it.
    const last = (await chunked("c3", "d3")).seq;
    await Promise.all([a.seen.waitFor(5), b.seen.waitFor(5)]);
    expect(a.seen.items).toEqual([...expected, `chunked:c3/d3@${last}`]);
    expect(b.seen.items).toEqual(a.seen.items);
    // lastSeq moves once the handler's promise settled, a step after it pushed: stop() lets the event in hand finish.
    await stopAll([a.follower, b.follower]);
    expect(a.follower.lastSeq).toBe(last);
  });

  it("starts from a stream sequence, or from the first stored event", async () => {
    const first = (await chunked("replay", "r1")).seq;
    const second = (await deleted("replay", "r1")).seq;
    const fromSeq = await ingestFollower(bus, "from-seq", { seq: second });
    const all = await ingestFollower(bus, "from-all", "all");
    const marker = (await chunked("replay", "r2")).seq;
    await fromSeq.seen.waitFor(2);
    expect(fromSeq.seen.items).toEqual([`deleted:replay/r1@${second}`, `chunked:replay/r2@${marker}`]);
    await all.seen.waitFor(1);
    expect(all.seen.items[0]).toMatch(/^chunked:.*@1$/); // the stream's first event
    while (!all.seen.items.includes(`chunked:replay/r2@${marker}`)) await all.seen.waitFor(all.seen.items.length + 1);
    expect(all.seen.items).toContain(`chunked:replay/r1@${first}`);
    const order = all.seen.items.map((s) => Number(s.split("@")[1]));
    expect(order).toEqual([...order].sort((x, y) => x - y));
    await stopAll([fromSeq.follower, all.follower]);
    await expect(followEvents(bus, { name: "bad-seq", from: { seq: 0 }, events: [onEvent(DocumentChunkedSchema, () => undefined)] })).rejects.toThrow(/from\.seq/);
  });

  it("goes on after a handler throws and past an event it cannot decode", async () => {
    const f = await ingestFollower(bus, "survivor", "new", "boom");
    const failing = (await chunked("s", "boom")).seq;
    // A message on a followed subject that is not a DocumentChunked (wrong type header).
    const h2 = headers();
    h2.set("Ragtune-Type", "google.protobuf.Timestamp");
    await bus.js.publish("ragtune.ingest.document.chunked", new Uint8Array([8, 1]), { headers: h2, msgID: "follow:bad" });
    const after = (await chunked("s", "fine")).seq;
    await f.seen.waitFor(2);
    expect(f.seen.items).toEqual([`chunked:s/boom@${failing}`, `chunked:s/fine@${after}`]);
    await f.follower.stop();
    expect(f.follower.lastSeq).toBe(after);
  });

  it("follows a message outside the catalog by its subject, and refuses a subject for a catalog event", async () => {
    const seen = new Collector<bigint>();
    const f = await followEvents(bus, { name: "plain", events: [onEvent(TimestampSchema, (e) => seen.push(e.event.seconds), { subject: "ragtune.test.follow.tick" })] });
    await bus.publish("ragtune.test.follow.tick", TimestampSchema, { seconds: 5n }, { msgId: "follow:tick5" });
    await seen.waitFor(1);
    expect(seen.items).toEqual([5n]);
    await f.stop();
    expect(() => onEvent(DocumentChunkedSchema, () => undefined, { subject: "ragtune.ingest.document.chunked" })).toThrow(/comes from its declaration/);
    expect(() => onEvent(TimestampSchema, () => undefined)).toThrow(/not in the event catalog/);
    await expect(followEvents(bus, { name: "no.dots", events: [onEvent(DocumentChunkedSchema, () => undefined)] })).rejects.toThrow(/follower name/);
    await expect(followEvents(bus, { name: "nothing", events: [] })).rejects.toThrow(/at least one/);
  });

  it("misses nothing and replays nothing across a server restart, even before its first event", async () => {
    const replica = await h.connect("follow-restart");
    const publish = (documentId: string) =>
      replica.publish(DocumentChunkedSchema, { eventId: `restart-${documentId}`, collection: "restart", documentId }, { msgId: `follow:restart-${documentId}` });
    const restart = async () => {
      const reconnected = new Promise<void>((resolve) => {
        void (async () => {
          for await (const s of replica.nc.status()) if (s.type === "reconnect") return resolve();
        })();
      });
      await h.server.restart(); // the follower's consumer (in memory) is gone; nats.js recreates it after the reconnect
      await reconnected;
    };
    await publish("older"); // stored before the follower starts: must not come back when its consumer is recreated
    const f = await ingestFollower(replica, "restart");
    await restart(); // before the follower's first event
    const first = (await publish("a1")).seq;
    await f.seen.waitFor(1);
    await restart(); // after it
    const second = (await publish("a2")).seq;
    await f.seen.waitFor(2);
    expect(f.seen.items).toEqual([`chunked:restart/a1@${first}`, `chunked:restart/a2@${second}`]);
    await f.follower.stop();
  });
});
