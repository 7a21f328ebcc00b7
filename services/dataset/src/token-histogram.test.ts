import { describe, expect, it } from "vitest";
import { bucketWidth, tokenHistograms } from "./token-histogram.js";

describe("tokenHistograms", () => {
  it("buckets every split over the same edges, from the smallest to the largest count", () => {
    const [train, test] = tokenHistograms([[12, 17, 31, 58], [40, 41]], 6);
    // 12..58 in at most 6 buckets: width 10, buckets [10,20) … [50,60).
    expect(train!.map((b) => [b.lower, b.upper])).toEqual([[10, 20], [20, 30], [30, 40], [40, 50], [50, 60]]);
    expect(train!.map((b) => b.count)).toEqual([2, 0, 1, 0, 1]);
    expect(test!.map((b) => [b.lower, b.upper])).toEqual(train!.map((b) => [b.lower, b.upper]));
    expect(test!.map((b) => b.count)).toEqual([0, 0, 0, 2, 0]);
  });

  it("keeps every count, counts on an edge going to the upper bucket", () => {
    const counts = [100, 200, 200, 299, 300, 1000, 2047];
    const [h] = tokenHistograms([counts]);
    expect(h!.reduce((s, b) => s + b.count, 0)).toBe(counts.length);
    expect(h!.length).toBeLessThanOrEqual(24);
    for (const n of counts) expect(h!.find((b) => b.lower <= n && n < b.upper)!.count).toBeGreaterThan(0);
    const at200 = h!.find((b) => b.lower === 200);
    expect(at200?.count).toBeGreaterThanOrEqual(2);
  });

  it("gives one bucket of width 1 when all counts are equal (an empty split gets the same edges, count 0), none without counts", () => {
    expect(tokenHistograms([[7, 7], []])).toEqual([[{ lower: 7, upper: 8, count: 2 }], [{ lower: 7, upper: 8, count: 0 }]]);
    expect(tokenHistograms([[], []])).toEqual([[], []]);
  });

  it("picks 1-2-5 widths", () => {
    expect(bucketWidth(0, 23, 24)).toBe(1);
    expect(bucketWidth(0, 24, 24)).toBe(2);
    expect(bucketWidth(0, 100, 24)).toBe(5);
    expect(bucketWidth(3, 1500, 24)).toBe(100);
  });
});
