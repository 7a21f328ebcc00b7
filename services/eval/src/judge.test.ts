import { describe, expect, it } from "vitest";
import { decidedVerdict, judgeSampled, type JudgeVerdict } from "./judge.js";

const REFUSAL = "The provided context does not contain sufficient information to answer this question.";

/** A judge whose verdicts are scripted per call; records the sampling it was asked for. */
function scriptedJudge(verdicts: JudgeVerdict[]) {
  const calls: { temperature: number; seed: number | undefined }[] = [];
  return {
    calls,
    llm: {
      async json(req: { temperature?: number; seed?: number }) {
        calls.push({ temperature: req.temperature ?? -1, seed: req.seed });
        const v = verdicts[calls.length - 1];
        if (v === undefined) throw new Error("the script ran out of verdicts");
        return { value: v } as never;
      },
    },
  };
}

const input = { context: "Snapshots run nightly at 02:00.", question: "When do snapshots run?", reference: "Nightly at 02:00.", answerable: true, answer: "Every night." };

describe("decidedVerdict", () => {
  it("decides empty answers, refusals and the reference itself, and leaves the rest to the judge", () => {
    expect(decidedVerdict({ ...input, answer: "  " })).toEqual({ grade: "C", hallucination: false });
    expect(decidedVerdict({ ...input, answer: REFUSAL })).toEqual({ grade: "C", hallucination: false });
    expect(decidedVerdict({ ...input, answerable: false, answer: REFUSAL })).toEqual({ grade: "A", hallucination: false });
    expect(decidedVerdict({ ...input, answer: "nightly at 02:00" })).toEqual({ grade: "A", hallucination: false });
    expect(decidedVerdict(input)).toBeUndefined();
    // An answer to an unanswerable item may be a refusal in other words: the judge decides.
    expect(decidedVerdict({ ...input, answerable: false, answer: "I cannot tell from this." })).toBeUndefined();
  });
});

describe("judgeSampled", () => {
  it("asks once at temperature 0 for one sample", async () => {
    const j = scriptedJudge([{ grade: "B", hallucination: false }]);
    expect(await judgeSampled(j.llm, "judge", input, 1)).toEqual({ verdict: { grade: "B", hallucination: false }, agreement: 1 });
    expect(j.calls).toEqual([{ temperature: 0, seed: undefined }]);
  });

  it("takes the majority of k seeded samples and reports how many agree with it", async () => {
    const j = scriptedJudge([
      { grade: "A", hallucination: false },
      { grade: "C", hallucination: true },
      { grade: "A", hallucination: true },
    ]);
    const r = await judgeSampled(j.llm, "judge", input, 3);
    expect(r.verdict).toEqual({ grade: "A", hallucination: true });
    expect(r.agreement).toBeCloseTo(2 / 3, 10);
    expect(j.calls.map((c) => [c.temperature, c.seed])).toEqual([
      [0.7, 1],
      [0.7, 2],
      [0.7, 3],
    ]);
  });

  it("breaks a tie toward the lower grade", async () => {
    const j = scriptedJudge([
      { grade: "A", hallucination: false },
      { grade: "C", hallucination: false },
    ]);
    expect((await judgeSampled(j.llm, "judge", input, 2)).verdict.grade).toBe("C");
  });
});
