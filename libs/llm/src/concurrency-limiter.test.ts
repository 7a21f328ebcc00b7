import { describe, expect, it } from "vitest";
import { ConcurrencyLimiter, type Release } from "./concurrency-limiter.js";

/** Acquires and records the order in which slots are granted. */
function tracker(limiter: ConcurrencyLimiter) {
  const granted: string[] = [];
  const releases = new Map<string, Release>();
  const take = (name: string, options: { signal?: AbortSignal; priority?: boolean } = {}) =>
    limiter.acquire(options.signal, options.priority).then((release) => {
      granted.push(name);
      releases.set(name, release);
    });
  return { granted, releases, take };
}

const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

describe("ConcurrencyLimiter", () => {
  it("grants up to the limit at once and the rest in FIFO order", async () => {
    const limiter = new ConcurrencyLimiter(2);
    const { granted, releases, take } = tracker(limiter);
    for (const name of ["a", "b", "c", "d", "e"]) void take(name);
    await flush();
    expect(granted).toEqual(["a", "b"]);
    expect([limiter.active, limiter.waiting]).toEqual([2, 3]);
    releases.get("b")!();
    await flush();
    expect(granted).toEqual(["a", "b", "c"]);
    releases.get("a")!();
    releases.get("c")!();
    await flush();
    expect(granted).toEqual(["a", "b", "c", "d", "e"]);
    expect([limiter.active, limiter.waiting]).toEqual([2, 0]);
  });

  it("a freed slot goes to the queue, not to a call that arrives at that moment", async () => {
    const limiter = new ConcurrencyLimiter(1);
    const { granted, releases, take } = tracker(limiter);
    void take("a");
    void take("queued");
    await flush();
    releases.get("a")!();
    void take("late");
    await flush();
    expect(granted).toEqual(["a", "queued"]);
  });

  it("priority waiters (retries) go first, FIFO among themselves", async () => {
    const limiter = new ConcurrencyLimiter(1);
    const { granted, releases, take } = tracker(limiter);
    void take("a");
    void take("fresh-1");
    void take("retry-1", { priority: true });
    void take("fresh-2");
    void take("retry-2", { priority: true });
    await flush();
    for (const name of ["a", "retry-1", "retry-2", "fresh-1"]) {
      releases.get(name)!();
      await flush();
    }
    expect(granted).toEqual(["a", "retry-1", "retry-2", "fresh-1", "fresh-2"]);
  });

  it("a waiter whose signal fires leaves the queue; releasing twice frees one slot", async () => {
    const limiter = new ConcurrencyLimiter(1);
    const { granted, releases, take } = tracker(limiter);
    void take("a");
    const controller = new AbortController();
    const gone = take("gone", { signal: controller.signal });
    void take("b");
    await flush();
    controller.abort();
    await expect(gone).rejects.toMatchObject({ kind: "cancelled" });
    expect(limiter.waiting).toBe(1);
    releases.get("a")!();
    releases.get("a")!();
    await flush();
    expect(granted).toEqual(["a", "b"]);
    expect([limiter.active, limiter.waiting]).toEqual([1, 0]);
    releases.get("b")!();
    expect(limiter.active).toBe(0);
  });

  it("tryAcquire grants only a free slot nobody waits for, and never overtakes the queue", async () => {
    const limiter = new ConcurrencyLimiter(1);
    const first = limiter.tryAcquire();
    expect(first).toBeDefined();
    expect(limiter.tryAcquire()).toBeUndefined(); // full
    const queued = limiter.acquire();
    first!();
    // The freed slot went to the waiter, not to a later tryAcquire.
    expect(limiter.tryAcquire()).toBeUndefined();
    const second = await queued;
    second();
    expect([limiter.active, limiter.waiting]).toEqual([0, 0]);
    expect(limiter.tryAcquire()).toBeDefined();
  });

  it("rejects a limit below 1", () => {
    expect(() => new ConcurrencyLimiter(0)).toThrow(RangeError);
  });
});
