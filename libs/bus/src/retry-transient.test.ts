import { afterEach, describe, expect, it, vi } from "vitest";
import type { OnReconnect } from "./bus.js";
import { retryTransient } from "./resource.js";

/** A reconnect signal the test fires itself, and how many listeners it holds. */
function reconnects() {
  const listeners = new Set<() => void>();
  const onReconnect: OnReconnect = (listener) => {
    listeners.add(listener);
    return () => listeners.delete(listener);
  };
  return {
    onReconnect,
    get listening() {
      return listeners.size;
    },
    fire() {
      const now = [...listeners];
      listeners.clear();
      for (const l of now) l();
    },
  };
}

/** retryTransient in "abort" mode on the test's reconnect signal. */
const retryAborting = <T>(op: (signal?: AbortSignal) => Promise<T>, r: ReturnType<typeof reconnects>) => retryTransient(op, 30_000, undefined, "test", r.onReconnect, "abort");

const transient = () => Object.assign(new Error("timeout"), { name: "TimeoutError" });

afterEach(() => {
  vi.useRealTimers();
});

describe("retryTransient", () => {
  it("abandons an attempt in flight when the connection comes back and tries again at once", async () => {
    const r = reconnects();
    const calls: number[] = [];
    const result = retryTransient(
      () => {
        calls.push(calls.length + 1);
        return calls.length === 1 ? new Promise<string>(() => {}) : Promise.resolve("second");
      },
      30_000,
      undefined,
      "test",
      r.onReconnect,
    );
    await Promise.resolve();
    expect(calls).toEqual([1]);
    r.fire();
    await expect(result).resolves.toBe("second");
    expect(r.listening).toBe(0);
  });

  it("ends a backoff wait when the connection comes back (no timer needs to pass)", async () => {
    vi.useFakeTimers();
    const r = reconnects();
    let calls = 0;
    const result = retryTransient(
      () => {
        calls++;
        return calls <= 6 ? Promise.reject(transient()) : Promise.resolve("back");
      },
      30_000,
      undefined,
      "test",
      r.onReconnect,
    );
    // Five failures and their backoffs (up to 100 ms, 200 ms, … 1.6 s) pass on the fake clock, one timer at a time.
    await vi.advanceTimersByTimeAsync(0);
    while (calls < 6) await vi.advanceTimersToNextTimerAsync();
    expect(calls).toBe(6);
    // The sixth failure waits up to 2 s; the reconnect ends the wait without the clock moving.
    r.fire();
    await expect(result).resolves.toBe("back");
    expect(calls).toBe(7);
    expect(r.listening).toBe(0);
  });

  it("leaves no listener behind: a connection that never drops holds nothing per operation", async () => {
    const r = reconnects();
    for (let i = 0; i < 1_000; i++) await retryTransient(() => Promise.resolve(i), 30_000, undefined, "test", r.onReconnect);
    await expect(retryTransient(() => Promise.reject(new Error("refused")), 30_000, undefined, "test", r.onReconnect)).rejects.toThrow("refused");
    expect(r.listening).toBe(0);
  });

  it('"abort": aborts the attempt in flight at a reconnect and starts the next only once it has stopped', async () => {
    const r = reconnects();
    const events: string[] = [];
    let stopFirst = () => {};
    const result = retryAborting(
      (signal) => {
        const n = events.filter((e) => e.startsWith("start")).length + 1;
        events.push(`start ${n}`);
        if (n > 1) return Promise.resolve(`attempt ${n}`);
        return new Promise<string>((_, reject) => {
          // The first attempt (a download) stops only after its abort is seen and its cleanup, released below, is done.
          signal!.addEventListener("abort", () => {
            events.push("abort seen");
            stopFirst = () => {
              events.push("first stopped");
              reject(signal!.reason as Error);
            };
          });
        });
      },
      r,
    );
    await Promise.resolve();
    r.fire();
    for (let i = 0; i < 5; i++) await Promise.resolve();
    expect(events).toEqual(["start 1", "abort seen"]); // no second attempt while the first still runs
    stopFirst();
    await expect(result).resolves.toBe("attempt 2");
    expect(events).toEqual(["start 1", "abort seen", "first stopped", "start 2"]);
    expect(r.listening).toBe(0);
  });

  it('"abort": an attempt that completes although it was aborted gives its result (no second attempt)', async () => {
    const r = reconnects();
    let calls = 0;
    let finish = (_: string) => {};
    const result = retryAborting(
      () => {
        calls++;
        return new Promise<string>((resolve) => (finish = resolve));
      },
      r,
    );
    await Promise.resolve();
    r.fire();
    finish("done anyway");
    await expect(result).resolves.toBe("done anyway");
    expect(calls).toBe(1);
  });
});

