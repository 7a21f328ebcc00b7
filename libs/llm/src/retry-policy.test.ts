import { describe, expect, it } from "vitest";
import { LlmError } from "./errors.js";
import { backoffDelay, isQuickFailure, retryAfterMs, sleep } from "./retry-policy.js";

describe("backoffDelay", () => {
  const options = { baseMs: 100, capMs: 1000 };
  it("draws from [0, base·2^(retry-1)), capped", () => {
    expect([1, 2, 3, 4, 5, 10].map((retry) => backoffDelay(retry, options, () => 0.999999))).toEqual([99, 199, 399, 799, 999, 999]);
    expect(backoffDelay(3, options, () => 0)).toBe(0);
    expect(backoffDelay(3, options, () => 0.5)).toBe(200);
  });
  it("spreads retries out (full jitter)", () => {
    const delays = Array.from({ length: 1000 }, () => backoffDelay(4, options));
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...delays)).toBeLessThan(800);
    expect(new Set(delays).size).toBeGreaterThan(100);
  });
});

describe("retryAfterMs", () => {
  const now = Date.parse("2025-01-01T00:00:00Z");
  it("reads retry-after-ms first, then Retry-After seconds or an HTTP date", () => {
    expect(retryAfterMs(new Headers({ "retry-after-ms": "250", "retry-after": "5" }), now)).toBe(250);
    expect(retryAfterMs(new Headers({ "retry-after": "2" }), now)).toBe(2000);
    expect(retryAfterMs(new Headers({ "retry-after": "0.5" }), now)).toBe(500);
    expect(retryAfterMs(new Headers({ "retry-after": "Wed, 01 Jan 2025 00:00:30 GMT" }), now)).toBe(30_000);
    expect(retryAfterMs(new Headers({ "retry-after": "Tue, 31 Dec 2024 23:00:00 GMT" }), now)).toBe(0);
  });
  it("ignores absent or unreadable values", () => {
    expect(retryAfterMs(new Headers(), now)).toBeUndefined();
    expect(retryAfterMs(new Headers({ "retry-after": "soon" }), now)).toBeUndefined();
    expect(retryAfterMs(new Headers({ "retry-after-ms": "-3", "retry-after": "1" }), now)).toBe(1000);
  });
});

describe("sleep", () => {
  it("ends early with a cancelled error when the signal fires", async () => {
    const controller = new AbortController();
    const sleeping = sleep(60_000, controller.signal);
    controller.abort();
    await expect(sleeping).rejects.toMatchObject({ kind: "cancelled" });
    await expect(sleep(10, AbortSignal.abort())).rejects.toBeInstanceOf(LlmError);
    await expect(sleep(1)).resolves.toBeUndefined();
  });
});

describe("quick first retry", () => {
  const options = { baseMs: 200, capMs: 1000, quickBaseMs: 20, quickFailureMs: 50 };
  it("draws the first retry from [0, quickBase) and the later ones as usual", () => {
    expect([1, 2, 3].map((retry) => backoffDelay(retry, options, () => 0.999999, true))).toEqual([19, 399, 799]);
    expect(backoffDelay(1, options, () => 0.999999, false)).toBe(199);
    // Never above the usual base (a client configured with a tiny base keeps it).
    expect(backoffDelay(1, { baseMs: 5, capMs: 20 }, () => 0.999999, true)).toBe(4);
  });
  it("counts 5xx and connection failures answered at once, and malformed output at any time", () => {
    const quick = (kind: LlmError["kind"], ms: number) => isQuickFailure(new LlmError(kind, "x"), ms, options);
    expect([quick("server_error", 3), quick("connection", 49), quick("malformed_json", 5000)]).toEqual([true, true, true]);
    expect([quick("server_error", 50), quick("connection", 300), quick("timeout", 1), quick("rate_limited", 1)]).toEqual([false, false, false, false]);
  });
});
