import { describe, expect, it } from "vitest";
import { StopStringFilter } from "./stop-strings.js";

function run(stops: string[], chunks: string[]) {
  const out: string[] = [];
  let stopped = 0;
  const filter = new StopStringFilter(stops, (t) => out.push(t), () => stopped++);
  for (const chunk of chunks) filter.push(chunk);
  return { text: filter.end(), out, stopped, stop: filter.stopString };
}

describe("StopStringFilter", () => {
  it("passes text through at once when nothing could start a stop string", () => {
    expect(run(["###"], ["ab", "cd"])).toEqual({ text: "abcd", out: ["ab", "cd"], stopped: 0, stop: null });
  });

  it("finds a stop string split across chunks and inside a chunk, and drops it and what follows", () => {
    expect(run(["END"], ["abc E", "N", "Dxyz"])).toEqual({ text: "abc ", out: ["abc "], stopped: 1, stop: "END" });
    expect(run(["y We"], ["Eddietiny", " Wednesday"])).toMatchObject({ text: "Eddietin", stop: "y We" });
  });

  it("holds back a possible start and releases it when it turns out not to be one", () => {
    const r = run(["END"], ["abc E", "Nx", "yz"]);
    expect(r).toEqual({ text: "abc ENxyz", out: ["abc ", "ENx", "yz"], stopped: 0, stop: null });
  });

  it("stops at the earliest of several stop strings and ignores chunks after the stop", () => {
    expect(run(["cd", "b"], ["abcd", "more"])).toMatchObject({ text: "a", stop: "b", stopped: 1 });
  });

  it("releases held-back text at the end", () => {
    expect(run(["END"], ["abc EN"])).toEqual({ text: "abc EN", out: ["abc ", "EN"], stopped: 0, stop: null });
  });
});
