import { describe, expect, it } from "vitest";
import { renderLossChart } from "./loss-chart.js";

describe("renderLossChart", () => {
  it("puts a falling curve from the top-left to the bottom-right with labelled bounds", () => {
    const train = [1, 2, 3, 4, 5].map((step) => ({ step, loss: 6 - step }));
    const chart = renderLossChart(train, [], { width: 5, height: 5 }).split("\n");
    expect(chart[0]).toBe("5.000 │*    ");
    expect(chart[2]).toBe("3.000 │  *  ");
    expect(chart[4]).toBe("1.000 │    *");
    expect(chart[6]).toContain("step 1");
    expect(chart[6]).toContain("step 5");
  });

  it("marks validation points and shared cells", () => {
    const chart = renderLossChart([{ step: 1, loss: 2 }, { step: 2, loss: 1 }], [{ step: 2, loss: 1 }], { width: 4, height: 3 });
    expect(chart).toContain("@");
    expect(chart).toContain("o validation loss");
  });

  it("handles a flat curve and no points", () => {
    expect(renderLossChart([{ step: 3, loss: 1 }], [], { width: 3, height: 3 })).toContain("*");
    expect(renderLossChart([])).toBe("(no loss values)");
  });
});
