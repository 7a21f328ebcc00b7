import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { createLogger } from "@ragtune/logger";
import { JobEventSchema, JobLogEntrySchema, JobSchema, JobStatus } from "@ragtune/proto";
import { afterEach, describe, expect, it } from "vitest";
import { LeasedWorkRunner, OwnershipLostError, ResourceStore, WorkCancelledError, type LeasedWork, type ResourceKind } from "../src/index.js";
import { startHarness, type Harness } from "./harness.js";

let h: Harness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const kind: ResourceKind<typeof JobSchema, typeof JobEventSchema, string> = {
  kind: "leased-job",
  stateSchema: JobSchema,
  eventSchema: JobEventSchema,
  stampEvent: (message, { id, sequence, timeMs }) => ({ sequence, jobId: id, time: timestampFromMs(timeMs), event: { case: "log", value: create(JobLogEntrySchema, { message }) } }),
  sequenceOf: (e) => e.sequence,
  isTerminal: (job) => job.status === JobStatus.SUCCEEDED || job.status === JobStatus.CANCELLED,
};

type Store = ResourceStore<typeof JobSchema, typeof JobEventSchema, string>;

/** A runner whose work records each call and waits until the test lets it go (or its signal fires). */
function runner(store: Store, leaseMs: number) {
  const started: { work: LeasedWork<typeof JobSchema>; release: () => void; ended: Promise<unknown> }[] = [];
  let notify = () => {};
  const r = new LeasedWorkRunner({
    store,
    what: "test job",
    idField: "jobId",
    logger: createLogger({ svc: "test", level: "silent" }),
    leaseMs,
    isOpen: (job) => job.status !== JobStatus.SUCCEEDED && job.status !== JobStatus.CANCELLED,
    isCancelled: (job) => job.status === JobStatus.CANCELLED,
    claimChange: (job, previous) => {
      job.status = JobStatus.RUNNING;
      return { state: job, events: previous.epoch > 0 ? [{ body: `restarted: ${previous.claimReason}` }] : [{ body: "started" }] };
    },
    work: (work) => {
      let release = () => {};
      const ended = new Promise<unknown>((resolve) => {
        release = () => resolve("released");
        work.signal.addEventListener("abort", () => resolve(work.signal.reason), { once: true });
      });
      started.push({ work, release, ended });
      notify();
      return ended.then(async (how) => {
        if (how === "released") await store.release(work.id, work.fence, (job) => ({ state: Object.assign(job, { status: JobStatus.SUCCEEDED }), events: [{ body: "done" }] }));
      });
    },
  });
  const nextStart = () => new Promise<void>((resolve) => (notify = resolve));
  return { r, started, nextStart };
}

describe("LeasedWorkRunner (real nats-server)", () => {
  it("claims submitted work once, fires the work's signal on cancel and on shutdown, and leaves a lease that lapses to another replica", async () => {
    h = await startHarness();
    const store = await ResourceStore.open(await h.connect(), kind);
    await store.create("a", create(JobSchema, { id: "a", status: JobStatus.QUEUED }), [{ body: "queued" }]);
    await store.create("b", create(JobSchema, { id: "b", status: JobStatus.QUEUED }), [{ body: "queued" }]);
    const one = runner(store, 600);

    // Submitted twice: worked once. Finishing releases the claim.
    let started = one.nextStart();
    one.r.submit("a");
    one.r.submit("a");
    await started;
    expect(one.started).toHaveLength(1);
    expect((await store.get("a"))!.owner).toBe(one.r.owner);
    started = one.nextStart();
    one.r.submit("b");
    one.started[0]!.release();
    await started; // b only starts after a: one at a time
    expect((await store.get("a"))!.state.status).toBe(JobStatus.SUCCEEDED);
    expect((await store.get("a"))!.owner).toBe("");

    // Cancelled in the store while b runs: the next renewal aborts b's work with a WorkCancelledError.
    await store.modify("b", (job) => ({ state: Object.assign(job, { status: JobStatus.CANCELLED }), events: [{ body: "cancel" }] }));
    expect(await one.started[1]!.ended).toBeInstanceOf(WorkCancelledError);

    // Shutdown aborts running work and keeps its claim; a second replica takes it over once the lease lapsed.
    await store.create("c", create(JobSchema, { id: "c", status: JobStatus.QUEUED }), [{ body: "queued" }]);
    started = one.nextStart();
    one.r.submit("c");
    await started;
    await one.r.close();
    expect(one.r.stopped).toBe(true);
    expect(await one.started[2]!.ended).toBeInstanceOf(Error);
    expect((await store.get("c"))!.owner).toBe(one.r.owner);
    const two = runner(store, 600);
    started = two.nextStart();
    expect(await two.r.resume()).toEqual([]); // the first replica's lease is still live
    await started; // the rescan (every half lease) finds it once the lease lapsed
    expect(two.started[0]!.work.id).toBe("c");
    expect(two.started[0]!.work.resource.claimReason).toMatch(/lease of .* lapsed/);
    two.started[0]!.release();
    await two.r.close();
    expect((await store.get("c"))!.state.status).toBe(JobStatus.SUCCEEDED);
  });

  it("aborts the work of a replica whose claim another replica took (a fence it no longer holds)", async () => {
    h = await startHarness();
    const store = await ResourceStore.open(await h.connect(), kind);
    await store.create("d", create(JobSchema, { id: "d", status: JobStatus.QUEUED }), [{ body: "queued" }]);
    const one = runner(store, 300);
    const started = one.nextStart();
    one.r.submit("d");
    await started;
    // Another owner claims without a lease check (as a replica that found the lease lapsed would): a new epoch.
    expect(await store.claim("d", "usurper")).not.toBeNull();
    expect(await one.started[0]!.ended).toBeInstanceOf(OwnershipLostError);
    await one.r.close();
  });
});
