import { describe, expect, it } from "vitest";
import { offAbort, onAbort } from "./abort-fanout.js";
import { ConcurrencyLimiter } from "./concurrency-limiter.js";
import { sleep } from "./retry-policy.js";

describe("abort fan-out", () => {
  it("calls every listener present when the signal aborts, once, and none that was taken off", () => {
    const controller = new AbortController();
    const calls: string[] = [];
    const a = () => calls.push("a");
    const b = () => calls.push("b");
    const c = () => calls.push("c");
    onAbort(controller.signal, a);
    onAbort(controller.signal, b);
    onAbort(controller.signal, c);
    offAbort(controller.signal, b);
    controller.abort();
    controller.abort();
    expect(calls).toEqual(["a", "c"]);
  });

  it("lets 100 waits share one signal without a listener-leak warning, and one abort ends them all", async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on("warning", onWarning);
    try {
      const controller = new AbortController();
      const limiter = new ConcurrencyLimiter(1);
      const held = await limiter.acquire();
      const waits = [
        ...Array.from({ length: 50 }, () => sleep(60_000, controller.signal)),
        ...Array.from({ length: 50 }, () => limiter.acquire(controller.signal)),
      ];
      const settled = Promise.allSettled(waits);
      // Node reports the warning on the next tick after the 11th listener.
      await new Promise((resolve) => setImmediate(resolve));
      controller.abort(new Error("shutting down"));
      const results = await settled;
      expect(results.every((r) => r.status === "rejected")).toBe(true);
      expect(limiter.waiting).toBe(0);
      held();
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings).not.toContain("MaxListenersExceededWarning");
    } finally {
      process.off("warning", onWarning);
    }
  });
});
