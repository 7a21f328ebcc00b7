import { describe, expect, it } from "vitest";
import { HealthRegistry, ServingStatus } from "./health.js";

async function take<T>(it: AsyncIterator<T>): Promise<T> {
  const step = await it.next();
  if (step.done === true) throw new Error("stream ended");
  return step.value;
}

describe("HealthRegistry", () => {
  it("watch yields the current status, each change, and ends after NOT_SERVING on shutdown", async () => {
    const health = new HealthRegistry();
    health.set("svc", ServingStatus.SERVING);
    const watch = health.watch("svc", new AbortController().signal);
    expect(await take(watch)).toBe(ServingStatus.SERVING);
    health.set("svc", ServingStatus.SERVING); // no change, no message
    health.set("svc", ServingStatus.NOT_SERVING);
    expect(await take(watch)).toBe(ServingStatus.NOT_SERVING);
    health.set("svc", ServingStatus.SERVING);
    expect(await take(watch)).toBe(ServingStatus.SERVING);
    health.shutdown();
    expect(await take(watch)).toBe(ServingStatus.NOT_SERVING);
    expect((await watch.next()).done).toBe(true);
    health.set("svc", ServingStatus.SERVING);
    expect(health.get("svc")).toBe(ServingStatus.NOT_SERVING);
  });

  it("an unknown service reads SERVICE_UNKNOWN in watch and undefined in get; abort ends the watch", async () => {
    const health = new HealthRegistry();
    const abort = new AbortController();
    const watch = health.watch("later", abort.signal);
    expect(await take(watch)).toBe(ServingStatus.SERVICE_UNKNOWN);
    expect(health.get("later")).toBeUndefined();
    const next = watch.next();
    abort.abort();
    expect((await next).done).toBe(true);
  });
});
