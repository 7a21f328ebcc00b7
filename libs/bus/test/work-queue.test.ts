import { create } from "@bufbuild/protobuf";
import { TimestampSchema } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Bus, WorkQueue } from "../src/index.js";
import { workQueueNames } from "../src/index.js";
import { startHarness, type Harness } from "./harness.js";

let h: Harness;
let busA: Bus;
let busB: Bus;

beforeAll(async () => {
  h = await startHarness();
  [busA, busB] = await Promise.all([h.connect("worker-a"), h.connect("worker-b")]);
});
afterAll(async () => {
  await h?.close();
});

const job = (n: number) => create(TimestampSchema, { seconds: BigInt(n) });

describe("work queue", () => {
  it("maps names to a workqueue stream", async () => {
    expect(workQueueNames("trainer-jobs")).toEqual({ stream: "WORK_TRAINER_JOBS", subject: "work.trainer-jobs" });
    expect(() => workQueueNames("Trainer Jobs")).toThrow(/kebab-case/);
    await busA.workQueue({ name: "naming", schema: TimestampSchema });
    const info = await busA.jsm.streams.info("WORK_NAMING");
    expect(info.config.retention).toBe("workqueue");
    expect(info.config.storage).toBe("file");
  });

  it("two workers sharing the queue split the work, each job processed once", async () => {
    const qA = await busA.workQueue({ name: "split", schema: TimestampSchema });
    const qB = await busB.workQueue({ name: "split", schema: TimestampSchema });
    const total = 40;
    for (let i = 1; i <= total; i++) await qA.enqueue(job(i), { msgId: `split:${i}` });
    // a repeated enqueue of the same job id is dropped
    expect((await qA.enqueue(job(1), { msgId: "split:1" })).duplicate).toBe(true);
    expect(await qA.size()).toBe(total);

    // Each worker holds its first job until the other has taken one too: that proves the two really
    // share the queue (a job held by one is not handed to the other) and both get work.
    let release!: () => void;
    let arrivals = 0;
    const bothHaveOne = new Promise<void>((resolve) => (release = resolve));
    const done: bigint[] = [];
    const work = async (q: WorkQueue<typeof TimestampSchema>) => {
      const mine: bigint[] = [];
      for (;;) {
        const j = await q.take({ expiresMs: 1_000 });
        if (j === null) return mine;
        if (mine.length === 0) {
          if (++arrivals === 2) release();
          await bothHaveOne;
        }
        mine.push(j.value.seconds);
        done.push(j.value.seconds);
        await j.ack();
      }
    };
    const [a, b] = await Promise.all([work(qA), work(qB)]);
    expect(a.length).toBeGreaterThan(0);
    expect(b.length).toBeGreaterThan(0);
    expect(a.length + b.length).toBe(total);
    expect([...done].sort((x, y) => Number(x - y))).toEqual(Array.from({ length: total }, (_, i) => BigInt(i + 1)));
    expect(await qA.size()).toBe(0); // acked jobs leave a workqueue stream
  });

  it("nak with delay hands the job out again; term drops it", async () => {
    const q = await busA.workQueue({ name: "retry", schema: TimestampSchema });
    await q.enqueue(job(1), { msgId: "retry:1" });
    await q.enqueue(job(2), { msgId: "retry:2" });
    const first = await q.take({ expiresMs: 2_000 });
    expect(first?.value.seconds).toBe(1n);
    first!.nak(100);
    const second = await q.take({ expiresMs: 2_000 });
    expect(second?.value.seconds).toBe(2n);
    second!.term("bad job");
    const again = await q.take({ expiresMs: 3_000 });
    expect(again).toMatchObject({ seq: first!.seq, deliveryCount: 2, redelivered: true, msgId: "retry:1" });
    await again!.ack();
    expect(await q.take({ expiresMs: 1_000 })).toBeNull();
  });

  it("a heartbeat keeps a long job from going to another worker", async () => {
    const qA = await busA.workQueue({ name: "heartbeat", schema: TimestampSchema, ackWaitMs: 1_000 });
    const qB = await busB.workQueue({ name: "heartbeat", schema: TimestampSchema, ackWaitMs: 1_000 });
    await qA.enqueue(job(1), { msgId: "hb:1" });
    const held = await qA.take({ expiresMs: 2_000 });
    expect(held).not.toBeNull();
    held!.startHeartbeat(200);
    // for 2.5 ack-waits, the other worker sees nothing
    expect(await qB.take({ expiresMs: 2_500 })).toBeNull();
    held!.stopHeartbeat();
    // once the heartbeat stops, the job times out and goes to the other worker
    const taken = await qB.take({ expiresMs: 5_000 });
    expect(taken).toMatchObject({ seq: held!.seq, deliveryCount: 2 });
    await taken!.ack();
  });
});
