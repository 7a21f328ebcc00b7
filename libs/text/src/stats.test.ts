import { describe, expect, it } from "vitest";
import { tokenDistribution } from "./stats.js";

describe("tokenDistribution", () => {
  it("computes min/mean/median/max and the share in 75–100% of the budget", () => {
    expect(tokenDistribution([100, 400, 500, 512, 600], 512)).toEqual({
      chunks: 5,
      totalTokens: 2112,
      min: 100,
      mean: 422.4,
      median: 500,
      max: 600,
      shareNearBudget: 0.6,
      overBudget: 1,
    });
    expect(tokenDistribution([1, 3], 4).median).toBe(2);
    expect(tokenDistribution([], 4)).toMatchObject({ chunks: 0, min: 0, mean: 0, median: 0, max: 0, shareNearBudget: 0 });
  });
});
