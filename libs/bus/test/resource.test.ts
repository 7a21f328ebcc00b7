import { create } from "@bufbuild/protobuf";
import { TimestampSchema, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { JobEventSchema, JobLogEntrySchema, JobSchema, JobStatus, type Job, type JobEvent } from "@ragtune/proto";
import { afterEach, describe, expect, it } from "vitest";
import {
  OwnershipLostError,
  ResourceExistsError,
  ResourceStore,
  type AppendStep,
  type Bus,
  type ResourceKind,
  type ResourceStoreOptions,
} from "../src/index.js";
import { Collector, startHarness, type Harness } from "./harness.js";

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** Test kind: trainer Jobs as state, JobEvents with a log line as history. */
const kind: ResourceKind<typeof JobSchema, typeof JobEventSchema, string> = {
  kind: "test-job",
  stateSchema: JobSchema,
  eventSchema: JobEventSchema,
  stampEvent: (message, { id, sequence, timeMs }) => ({
    sequence,
    jobId: id,
    time: timestampFromMs(timeMs),
    event: { case: "log", value: create(JobLogEntrySchema, { message }) },
  }),
  sequenceOf: (e) => e.sequence,
  isTerminal: (job) => job.status === JobStatus.SUCCEEDED || job.status === JobStatus.FAILED,
  onCommit: (job, last) => {
    job.lastSequence = last;
  },
};

const catalogSubject = "ragtune.test.job.logged";

async function open(bus: Bus, options: ResourceStoreOptions = {}) {
  await bus.ensureEventsStream({ name: "RAGTUNE_TEST", subjects: ["ragtune.test.>"] });
  return ResourceStore.open(bus, kind, options);
}

function newJob(id: string): Job {
  return create(JobSchema, { id, status: JobStatus.RUNNING });
}

/** Appends one log event (and its catalog announcement). */
function append(store: ResourceStore<typeof JobSchema, typeof JobEventSchema, string>, id: string, text: string, finish = false) {
  return store.modify(id, (job) => {
    if (finish) job.status = JobStatus.SUCCEEDED;
    return {
      state: job,
      events: [{ body: text, announce: [{ subject: catalogSubject, schema: TimestampSchema, value: create(TimestampSchema, { seconds: 1n }) }] }],
    };
  });
}

async function collect(store: ResourceStore<typeof JobSchema, typeof JobEventSchema, string>, id: string, fromSequence = 1): Promise<JobEvent[]> {
  const out: JobEvent[] = [];
  for await (const e of store.watch(id, { fromSequence })) out.push(e);
  return out;
}

const sequences = (events: JobEvent[]) => events.map((e) => e.sequence);
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

class Crash extends Error {}

describe("resource history", () => {
  it("stores state and events; a watcher gets the history, then live events, and ends after the terminal event", async () => {
    h = await startHarness();
    const store = await open(await h.connect());
    await store.create("j1", newJob("j1"), [{ body: "created" }]);
    await expect(store.create("j1", newJob("j1"))).rejects.toBeInstanceOf(ResourceExistsError);
    await append(store, "j1", "two");

    const live = new Collector<JobEvent>();
    const watching = (async () => {
      for await (const e of store.watch("j1")) live.push(e);
    })();
    await live.waitFor(2);
    await append(store, "j1", "three");
    await append(store, "j1", "done", true);
    await watching;
    expect(sequences(live.items)).toEqual([1, 2, 3, 4]);
    expect(live.items.map((e) => (e.event.case === "log" ? e.event.value.message : ""))).toEqual(["created", "two", "three", "done"]);

    const r = await store.get("j1");
    expect(r?.lastSequence).toBe(4);
    expect(r?.state.lastSequence).toBe(4);
    // Late watchers of a finished resource get the stored history (from a sequence) and end.
    expect(sequences(await collect(store, "j1", 3))).toEqual([3, 4]);
    expect(await collect(store, "j1", 5)).toEqual([]);
  });

  it("a watcher of a reopened resource (a failed job resumed) reads past the old terminal event", async () => {
    h = await startHarness();
    const store = await open(await h.connect());
    await store.create("j7", newJob("j7"), [{ body: "created" }]);
    await append(store, "j7", "failed", true);
    expect(sequences(await collect(store, "j7"))).toEqual([1, 2]);
    await store.modify("j7", (job) => {
      job.status = JobStatus.RUNNING;
      return { state: job, events: [{ body: "resumed" }] };
    });
    const live = new Collector<number>();
    const watching = (async () => {
      for await (const e of store.watch("j7")) live.push(e.sequence);
    })();
    await live.waitFor(3);
    await append(store, "j7", "done", true);
    await watching;
    expect(live.items).toEqual([1, 2, 3, 4]);
  });

  it("keeps the history gap-free and exactly-once under concurrent writers on separate connections", async () => {
    h = await startHarness();
    const stores = await Promise.all([0, 1, 2].map(async (i) => open(await h!.connect(`w${i}`))));
    await stores[0]!.create("j2", newJob("j2"));
    await Promise.all(stores.map(async (s, w) => {
      for (let i = 0; i < 15; i++) await append(s, "j2", `w${w}-${i}`);
    }));
    await append(stores[0]!, "j2", "end", true);
    const events = await collect(stores[1]!, "j2");
    expect(sequences(events)).toEqual(range(1, 46));
    expect(new Set(events.map((e) => (e.event.case === "log" ? e.event.value.message : ""))).size).toBe(46);
  });

  /** Appends `n` log events in one write. */
  const appendMany = (store: ResourceStore<typeof JobSchema, typeof JobEventSchema, string>, id: string, n: number, prefix: string) =>
    store.modify(id, (job) => ({ state: job, events: Array.from({ length: n }, (_, i) => ({ body: `${prefix}${i}` })) }));
  const texts = (events: JobEvent[]) => events.map((e) => (e.event.case === "log" ? e.event.value.message : ""));

  it("a write of many events publishes them together; a writer killed in the middle and two repairers at once leave them once and in order", async () => {
    h = await startHarness();
    const dying = await open(await h.connect("dying"), {
      faults: (s, _id, sequence) => {
        if (s === "after-history-publish" && sequence === 6) throw new Crash("killed after the 6th event");
      },
    });
    await dying.create("j8", newJob("j8"), [{ body: "created" }]);
    await expect(appendMany(dying, "j8", 20, "a")).rejects.toBeInstanceOf(Crash);
    const [r1, r2] = await Promise.all([open(await h.connect("r1")), open(await h.connect("r2"))]);
    await Promise.all([r1.repair("j8"), r2.repair("j8"), appendMany(r1, "j8", 30, "b")]);
    await append(r2, "j8", "end", true);
    const events = await collect(r1, "j8");
    expect(sequences(events)).toEqual(range(1, 52));
    expect(texts(events)).toEqual(["created", ...range(0, 19).map((i) => `a${i}`), ...range(0, 29).map((i) => `b${i}`), "end"]);
  });

  it("events sent together after another writer stored them are not stored twice: the refusal is noticed and the history read again", async () => {
    h = await startHarness();
    const other = await open(await h.connect("other"));
    let raced = false;
    const racing = await open(await h.connect("racing"), {
      faults: async (s, id, sequence) => {
        // Between reading the history's end and sending its 10 events, another replica publishes them itself.
        if (s === "before-history-publish" && sequence === 2 && !raced) {
          raced = true;
          await other.repair(id);
        }
      },
    });
    await racing.create("j9", newJob("j9"), [{ body: "created" }]);
    await appendMany(racing, "j9", 10, "c");
    expect(raced).toBe(true);
    await append(racing, "j9", "end", true);
    const events = await collect(other, "j9");
    expect(sequences(events)).toEqual(range(1, 12));
    expect(texts(events)).toEqual(["created", ...range(0, 9).map((i) => `c${i}`), "end"]);
  });

  const steps: AppendStep[] = ["before-write", "after-write", "after-catalog-publish", "before-history-publish", "after-history-publish"];
  for (const step of steps) {
    it(`a writer killed at ${step} leaves no gap and no duplicate: the next writer or a watcher completes the append`, async () => {
      h = await startHarness();
      const crashAt = 3;
      const dying = await open(await h.connect("dying"), {
        faults: (s, _id, sequence) => {
          if (s === step && sequence === crashAt) throw new Crash(`killed at ${s}`);
        },
      });
      const healthy = await open(await h.connect("healthy"));

      await dying.create("j3", newJob("j3"), [{ body: "one" }]);
      await append(dying, "j3", "two");
      const early = collect(healthy, "j3");
      await expect(append(dying, "j3", "three")).rejects.toBeInstanceOf(Crash);

      // Nobody writes for a while: a watcher alone must see event 3 once the writer committed it.
      const watcherOnly = new Collector<number>();
      const controller = new AbortController();
      const watching = (async () => {
        for await (const e of healthy.watch("j3", { signal: controller.signal })) watcherOnly.push(e.sequence);
      })();
      const committed = step !== "before-write";
      await watcherOnly.waitFor(committed ? 3 : 2);
      controller.abort();
      await watching;
      expect(watcherOnly.items).toEqual(committed ? [1, 2, 3] : [1, 2]);

      // Then another replica continues.
      await append(healthy, "j3", "four");
      await append(healthy, "j3", "five", true);
      const total = committed ? 5 : 4;
      expect(sequences(await early)).toEqual(range(1, total));
      expect(sequences(await collect(healthy, "j3"))).toEqual(range(1, total));
      const texts = (await collect(healthy, "j3")).map((e) => (e.event.case === "log" ? e.event.value.message : ""));
      expect(texts).toEqual(committed ? ["one", "two", "three", "four", "five"] : ["one", "two", "four", "five"]);
    });
  }

  it("announces each history event on its catalog subject at least once, even when the writer dies before its history publish", async () => {
    h = await startHarness();
    const bus = await h.connect();
    const dying = await open(bus, {
      faults: (s, _id, sequence) => {
        if (s === "after-catalog-publish" && sequence === 2) throw new Crash("killed");
      },
    });
    const healthy = await open(await h.connect("healthy"));
    const seen = new Collector<string>();
    const sub = await bus.subscribe({
      durable: "catalog-reader",
      stream: "RAGTUNE_TEST",
      filterSubject: catalogSubject,
      schema: TimestampSchema,
      handler: (c) => {
        if (!seen.items.includes(c.msgId!)) seen.push(c.msgId!);
      },
    });
    await dying.create("j4", newJob("j4"));
    await append(dying, "j4", "one");
    await expect(append(dying, "j4", "two")).rejects.toBeInstanceOf(Crash);
    await append(healthy, "j4", "three", true);
    await seen.waitFor(3);
    expect([...seen.items].sort()).toEqual(["j4:1", "j4:2", "j4:3"]);
    await sub.stop();
  });

  it("fences a replica that lost the work: its next write fails and writes nothing", async () => {
    h = await startHarness();
    const a = await open(await h.connect("a"));
    const b = await open(await h.connect("b"));
    await a.create("j5", newJob("j5"));
    const first = await a.claim("j5", "replica-a");
    expect(first?.fence).toEqual({ owner: "replica-a", epoch: 1 });
    await a.modify("j5", (job) => ({ state: job, events: [{ body: "a works" }] }), { fence: first!.fence });

    // The work is redelivered to b (a replica death, a NATS restart): b takes over at epoch 2.
    const second = await b.claim("j5", "replica-b", {
      change: (job, _prev, reason) => ({ state: job, events: [{ body: reason }] }),
    });
    expect(second?.fence.epoch).toBe(2);
    const stale = a.modify("j5", (job) => ({ state: job, events: [{ body: "a still works" }] }), { fence: first!.fence });
    await expect(stale).rejects.toBeInstanceOf(OwnershipLostError);
    await expect(stale).rejects.toThrow(/replica-b holds it at epoch 2/);
    await b.modify("j5", (job) => {
      job.status = JobStatus.SUCCEEDED;
      return { state: job, events: [{ body: "b done" }] };
    }, { fence: second!.fence });
    const texts = (await collect(b, "j5")).map((e) => (e.event.case === "log" ? e.event.value.message : ""));
    expect(texts).toEqual(["a works", "taken over by replica-b from replica-a (its work was redelivered: the replica died, stalled or lost NATS)", "b done"]);
  });

  it("grants a lease to one owner at a time and lets another take over once it lapses, saying why", async () => {
    h = await startHarness();
    const store = await open(await h.connect());
    await store.create("r1", newJob("r1"));
    const a = await store.claim("r1", "a", { leaseMs: 60_000 });
    expect(a).not.toBeNull();
    expect(await store.claim("r1", "b", { leaseMs: 60_000 })).toBeNull();
    // a renews with a lease that has already lapsed (a stalled replica).
    await store.renew("r1", a!.fence, -1);
    const b = await store.claim("r1", "b", { leaseMs: 60_000 });
    expect(b?.fence.epoch).toBe(2);
    expect(b?.resource.claimReason).toMatch(/^taken over by b: the lease of a lapsed \d+ ms ago$/);
    await expect(store.renew("r1", a!.fence, 60_000)).rejects.toBeInstanceOf(OwnershipLostError);
    await store.release("r1", b!.fence);
    expect((await store.claim("r1", "c", { leaseMs: 1_000 }))?.fence.epoch).toBe(3);
  });

  it("a live watcher resumes within seconds after nats-server is killed and restarted, and bus.onReconnect tells of it", async () => {
    h = await startHarness();
    const bus = await h.connect();
    const store = await open(bus);
    await store.create("j6", newJob("j6"), [{ body: "before" }]);
    const got = new Collector<JobEvent>();
    const watching = (async () => {
      for await (const e of store.watch("j6")) got.push(e);
    })();
    await got.waitFor(1);
    // bus.onReconnect (what retryTransient waits on) tells of the reconnect; an unsubscribed listener is not called.
    const reconnected = new Promise<void>((resolve) => bus.onReconnect(resolve));
    let dropped = 0;
    const off = bus.onReconnect(() => dropped++);
    off();
    await h.server.kill();
    await h.server.restart();
    await reconnected;
    expect(dropped).toBe(0);
    const appendedAt = Date.now();
    await append(store, "j6", "after", true);
    if (process.env.TEST_VERBOSE) process.stderr.write(`append took ${Date.now() - appendedAt} ms\n`);
    await got.waitFor(2);
    const latencyMs = Date.now() - appendedAt;
    if (process.env.TEST_VERBOSE) process.stderr.write(`watch resumed in ${latencyMs} ms\n`);
    await watching;
    expect(sequences(got.items)).toEqual([1, 2]);
    // Before the fix a watcher stalled ~30 s (the default pull expiry) across a restart.
    expect(latencyMs).toBeLessThan(10_000);
  });
});

