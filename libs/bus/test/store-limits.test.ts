import { StructSchema, TimestampSchema } from "@bufbuild/protobuf/wkt";
import { RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { nanos } from "@nats-io/nats-core";
import { Kvm } from "@nats-io/kv";
import { startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectBus, ensureEventsStream, ensureStream, StoreFullError, type Bus, type ConnectBusOptions } from "../src/index.js";
import { silentLogger } from "./harness.js";

const KiB = 1024;
const MiB = 1024 * KiB;

let server: NatsServerHandle;
const buses: Bus[] = [];
async function connect(stores: ConnectBusOptions["stores"] = {}): Promise<Bus> {
  const bus = await connectBus({ servers: server.url, name: "limits-test", logger: silentLogger, stores });
  buses.push(bus);
  return bus;
}
beforeAll(async () => {
  server = await startNatsServer();
});
afterAll(async () => {
  await Promise.all(buses.map((b) => b.close()));
  await server?.stop();
});

/** 100 KiB of a (not compressible, not dedupable) pattern. */
const blob = (n: number) => new Uint8Array(100 * KiB).map((_, i) => (i * 31 + n) & 0xff);

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error("expected a rejection");
}

describe("replicas from the bus", () => {
  // A single server cannot hold 3 replicas: that it refuses proves each creator asked for NATS_REPLICAS copies.
  it("every creator asks for the bus's replicas, and a server that cannot hold them is a clear error", async () => {
    const bus = await connect({ replicas: 3 });
    const refused = /with 3 replicas \(NATS_REPLICAS\): replicas > 1 not supported in non-clustered mode; run a NATS cluster of at least 3 servers or lower NATS_REPLICAS/;
    await expect(bus.ensureEventsStream({ name: "R3_EVENTS" })).rejects.toThrow(new RegExp(`cannot create stream R3_EVENTS ${refused.source}`));
    await expect(bus.kv("r3-kv", TimestampSchema)).rejects.toThrow(new RegExp(`cannot create KV bucket r3-kv ${refused.source}`));
    await expect(bus.artifacts("r3-obj")).rejects.toThrow(new RegExp(`cannot create artifact bucket r3-obj ${refused.source}`));
    await expect(bus.workQueue({ name: "r3-jobs", schema: TimestampSchema })).rejects.toThrow(/cannot create stream WORK_R3_JOBS with 3 replicas/);
    await expect(bus.ensureWorkQueueStream({ name: "R3_WQ", subjects: ["r3.wq"] })).rejects.toThrow(/cannot create stream R3_WQ with 3 replicas/);
    // A module holding only the bus (or only its jsm) gets the same default.
    await expect(ensureStream(bus, { name: "R3_PLAIN", subjects: ["r3.plain"] })).rejects.toThrow(/cannot create stream R3_PLAIN with 3 replicas/);
    await expect(ensureStream(bus.jsm, { name: "R3_JSM", subjects: ["r3.jsm"] })).rejects.toThrow(/cannot create stream R3_JSM with 3 replicas/);
    await expect(ensureEventsStream(bus.jsm, { name: "R3_HISTORY", subjects: ["r3.history.>"] })).rejects.toThrow(/with 3 replicas/);
    // An explicit option wins over the bus default.
    const one = await bus.ensureEventsStream({ name: "R1_EVENTS", subjects: ["r1.>"], replicas: 1 });
    expect(one.config.num_replicas).toBe(1);
  });

  it("one replica by default", async () => {
    const bus = await connect();
    const kv = await bus.kv("r1-kv", TimestampSchema);
    expect((await bus.jsm.streams.info(`KV_${kv.bucket}`)).config.num_replicas).toBe(1);
    expect((await bus.ensureEventsStream()).config.num_replicas).toBe(1);
  });
});

describe("retention from the bus", () => {
  it("applies the bus's limits to events streams, KV buckets and artifact buckets; options override them", async () => {
    const bus = await connect({ eventsMaxAgeMs: 3_600_000, eventsMaxBytes: 8 * MiB, kvMaxBytes: 2 * MiB, artifactsMaxBytes: 16 * MiB });
    const events = await bus.ensureEventsStream({ name: "RET_EVENTS", subjects: ["ret.>"] });
    expect(events.config).toMatchObject({ max_age: nanos(3_600_000), max_bytes: 8 * MiB, discard: "old" });
    await bus.kv("ret-kv", TimestampSchema);
    expect((await bus.jsm.streams.info("KV_ret-kv")).config.max_bytes).toBe(2 * MiB);
    await bus.artifacts("ret-obj");
    expect((await bus.jsm.streams.info("OBJ_ret-obj")).config.max_bytes).toBe(16 * MiB);

    // a max age below the 2-minute dedupe window shortens the window (the server refuses a longer one)
    const own = await bus.ensureEventsStream({ name: "RET_OWN", subjects: ["own.>"], maxAgeMs: 60_000, maxBytes: -1 });
    expect(own.config).toMatchObject({ max_age: nanos(60_000), max_bytes: -1, duplicate_window: nanos(60_000) });
    await bus.kv("ret-kv-own", TimestampSchema, { maxBytes: MiB, ttlMs: 60_000 });
    expect((await bus.jsm.streams.info("KV_ret-kv-own")).config).toMatchObject({ max_bytes: MiB, max_age: nanos(60_000) });
    await bus.artifacts("ret-obj-own", { maxBytes: -1 });
    expect((await bus.jsm.streams.info("OBJ_ret-obj-own")).config.max_bytes).toBe(-1);
    await bus.workQueue({ name: "ret-jobs", schema: TimestampSchema, maxBytes: MiB, maxMessages: 10 });
    expect((await bus.jsm.streams.info("WORK_RET_JOBS")).config).toMatchObject({ max_bytes: MiB, max_msgs: 10, discard: "new" });
  });

  it("brings a bucket or stream made before the limits were configured up to them", async () => {
    const before = await connect();
    await before.kv("old-kv", TimestampSchema, { history: 3 });
    await before.artifacts("old-obj");
    await before.ensureEventsStream({ name: "OLD_EVENTS", subjects: ["old.>"] });
    const after = await connect({ eventsMaxAgeMs: 86_400_000, kvMaxBytes: MiB, artifactsMaxBytes: 4 * MiB });
    await after.kv("old-kv", TimestampSchema, { history: 3 });
    await after.artifacts("old-obj");
    await after.ensureEventsStream({ name: "OLD_EVENTS", subjects: ["old.>"] });
    expect((await after.jsm.streams.info("KV_old-kv")).config).toMatchObject({ max_bytes: MiB, max_msgs_per_subject: 3 });
    expect((await after.jsm.streams.info("OBJ_old-obj")).config.max_bytes).toBe(4 * MiB);
    expect((await after.jsm.streams.info("OLD_EVENTS")).config.max_age).toBe(nanos(86_400_000));
  });
});

describe("a full store", () => {
  it("a KV bucket at NATS_KV_MAX_BYTES refuses writes with an error naming the bucket and the variable", async () => {
    const bus = await connect({ kvMaxBytes: 256 * KiB });
    const kv = await bus.kv("tiny-kv", StructSchema);
    const value = (n: number) => ({ fields: { b: { kind: { case: "stringValue" as const, value: Buffer.from(blob(n)).toString("base64") } } } });
    let stored = 0;
    const err = await rejection(
      (async () => {
        for (let n = 0; n < 100; n++) {
          await kv.put(`k${n}`, value(n));
          stored++;
        }
      })(),
    );
    expect(stored).toBeGreaterThan(0);
    expect(err).toBeInstanceOf(StoreFullError);
    expect(err.message).toBe(
      "KV bucket tiny-kv is full: it holds its limit of 256 KiB (maximum bytes exceeded); raise NATS_KV_MAX_BYTES or delete data from it",
    );
    expect(err).toMatchObject({ store: "KV bucket tiny-kv", variable: "NATS_KV_MAX_BYTES" });
    // create and update are refused the same way; reads still work
    await expect(kv.create("new", value(1))).rejects.toBeInstanceOf(StoreFullError);
    await expect(kv.update("k0", value(2), (await kv.get("k0"))!.revision)).rejects.toThrow(/tiny-kv is full/);
    expect(await kv.get("k0")).not.toBeNull();
  });

  it("an artifact bucket at NATS_ARTIFACTS_MAX_BYTES refuses a put, naming the bucket and the variable, and keeps nothing of it", async () => {
    const bus = await connect({ artifactsMaxBytes: 512 * KiB });
    const store = await bus.artifacts("tiny-obj");
    const small = await store.put([blob(1)]);
    const err = await rejection(store.put([blob(2), blob(3), blob(4), blob(5), blob(6), blob(7)]));
    expect(err).toBeInstanceOf(StoreFullError);
    expect(err.message).toMatch(/^artifact bucket tiny-obj is full: it holds its limit of 512 KiB \(maximum bytes exceeded\); raise NATS_ARTIFACTS_MAX_BYTES/);
    expect(await store.has(small.hash)).toBe(true);
    const info = await bus.jsm.streams.info("OBJ_tiny-obj");
    expect(info.state.bytes).toBeLessThan(200 * KiB); // the small artifact; the refused one left no chunks behind
  });

  it("a limit given as an option (not from the configuration) asks for that option to be raised", async () => {
    const bus = await connect({ kvMaxBytes: 64 * MiB });
    const kv = await bus.kv("own-limit", StructSchema, { maxBytes: 128 * KiB });
    const value = { fields: { b: { kind: { case: "stringValue" as const, value: "x".repeat(100 * KiB) } } } };
    await kv.put("a", value);
    const err = await rejection(kv.put("b", value));
    expect(err.message).toBe("KV bucket own-limit is full: it holds its limit of 128 KiB (maximum bytes exceeded); raise its size limit or delete data from it");
    expect((err as StoreFullError).variable).toBeUndefined();
  });

  it("a work queue past its size refuses enqueue", async () => {
    const bus = await connect();
    const q = await bus.workQueue({ name: "tiny-jobs", schema: StructSchema, maxBytes: 150 * KiB });
    const job = { fields: { b: { kind: { case: "stringValue" as const, value: "x".repeat(100 * KiB) } } } };
    await q.enqueue(job, { msgId: "j1" });
    const err = await rejection(q.enqueue(job, { msgId: "j2" }));
    expect(err).toBeInstanceOf(StoreFullError);
    expect(err.message).toMatch(/^work queue tiny-jobs \(stream WORK_TINY_JOBS\) is full: it holds its limit of 150 KiB/);
  });
});

describe("a NATS server out of storage", () => {
  let small: NatsServerHandle;
  let bus: Bus;
  beforeAll(async () => {
    small = await startNatsServer({ maxFileStore: 2 * MiB });
    bus = await connectBus({ servers: small.url, name: "full-test", logger: silentLogger, stores: { kvMaxBytes: 64 * MiB } });
  });
  afterAll(async () => {
    await bus?.close();
    await small?.stop();
  });

  it("a limit larger than the server's storage fails at creation, naming the variable to lower", async () => {
    const err = await rejection(bus.kv("too-big", TimestampSchema));
    expect(err).toBeInstanceOf(StoreFullError);
    expect(err.message).toMatch(
      /^cannot reserve the size limit of 64 MiB for KV bucket too-big: the NATS servers have less JetStream storage left \(insufficient storage resources available\); lower NATS_KV_MAX_BYTES or give JetStream more storage$/,
    );
  });

  it("publishing into a full server fails with an error that says so, instead of a bare JetStream code", async () => {
    await ensureStream(bus, { name: "FILLER", subjects: ["ragtune.fill.>"], storage: StorageType.File, retention: RetentionPolicy.Limits });
    const err = await rejection(
      (async () => {
        for (let n = 0; n < 100; n++) await bus.publish("ragtune.fill.data.added", StructSchema, { fields: { b: { kind: { case: "stringValue", value: "y".repeat(100 * KiB) } } } }, { msgId: `f${n}` });
      })(),
    );
    expect(err).toBeInstanceOf(StoreFullError);
    expect(err.message).toMatch(
      /^cannot write to the events stream \(ragtune\.fill\.data\.added\): the NATS servers' JetStream storage is full \(insufficient resources\); give JetStream more storage or lower the retention \(NATS_EVENTS_MAX_AGE, NATS_EVENTS_MAX_BYTES, NATS_KV_MAX_BYTES, NATS_ARTIFACTS_MAX_BYTES\)/,
    );
  });
});

it("StoreFullError leaves other JetStream errors alone", async () => {
  const bus = await connect();
  const kv = await new Kvm(bus.js).create("plain-kv");
  await kv.put("a", "1");
  // a compare-and-set conflict is not a full store
  const typed = await bus.kv("plain-kv", TimestampSchema);
  await expect(typed.update("a", { seconds: 1n }, 999)).rejects.not.toBeInstanceOf(StoreFullError);
});
