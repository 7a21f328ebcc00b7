import { DEFAULT_REFUSAL } from "@ragtune/dataset-service/negatives";
import { describe, expect, it } from "vitest";
import {
  DEFAULT_SUCCESS_RULE,
  exactMatch,
  grounding,
  hasFollowUpQuestion,
  isDegenerate,
  isRefusal,
  rougeL,
  scoreAnswer,
  tokenF1,
} from "./metrics.js";
import { cohensKappa, pairedBootstrap, percentile } from "./statistics.js";

describe("correctness against the reference", () => {
  it("token F1 counts shared normalized words (articles and punctuation dropped)", () => {
    // prediction: [port, is, 8080] (3), reference: [default, port, is, 8080] (4), common 3 → P 1, R 0.75, F1 6/7.
    expect(tokenF1("The port is 8080.", "The default port is 8080")).toBeCloseTo(6 / 7, 10);
    expect(tokenF1("blue green", "red yellow")).toBe(0);
    expect(tokenF1("", "")).toBe(1);
    expect(tokenF1("", "something")).toBe(0);
    // repeated words count at most as often as the reference has them: [yes yes yes] vs [yes no] → common 1, P 1/3, R 1/2.
    expect(tokenF1("yes yes yes", "yes no")).toBeCloseTo(0.4, 10);
  });

  it("ROUGE-L is the F-measure of the longest common subsequence", () => {
    // [restart, service, then, check, logs] vs [check, logs, then, restart, service]: LCS 2 (restart service) → 0.4.
    expect(rougeL("restart the service then check the logs", "check the logs then restart the service")).toBeCloseTo(0.4, 10);
    // [a b c d] vs [a x c d]: LCS 3 → P 3/4, R 3/4.
    expect(rougeL("alpha beta gamma delta", "alpha x gamma delta")).toBeCloseTo(0.75, 10);
    expect(rougeL("same words here", "Same words, here!")).toBe(1);
  });

  it("exact match compares normalized text", () => {
    expect(exactMatch("The answer: 42!", "answer 42")).toBe(true);
    expect(exactMatch("42 or 43", "42")).toBe(false);
  });
});

describe("grounding", () => {
  const context = "Backups run every night at 02:00 and are kept for 30 days in the archive bucket.";
  it("is the share of the answer's content words found in the context", () => {
    expect(grounding("Backups are kept for 30 days.", context)).toBe(1);
    // content words: backup, kept, 30, day, tape → 4 of 5 in the context.
    expect(grounding("Backups are kept for 30 days on tape.", context)).toBeCloseTo(0.8, 10);
    expect(grounding("Snapshots replicate to Mars hourly.", context)).toBe(0);
  });
});

describe("refusal detection", () => {
  it("recognizes the dataset's refusal sentence and its paraphrases", () => {
    for (const text of [
      DEFAULT_REFUSAL,
      "The provided context does not contain sufficient information to answer this question",
      "The context doesn't mention how long backups are kept.",
      "This is not mentioned in the provided context.",
      "There is no information about pricing in the given text.",
      "I cannot answer this question based on the provided context.",
      "I don't know.",
    ]) {
      expect(isRefusal(text), text).toBe(true);
    }
  });
  it("does not take answers for refusals", () => {
    for (const text of ["Backups are kept for 30 days.", "Do not delete the archive bucket; it holds the backups.", "", "The context window is 4096 tokens."]) {
      expect(isRefusal(text), text).toBe(false);
    }
  });
});

describe("format checks", () => {
  it("finds invented follow-up questions", () => {
    expect(hasFollowUpQuestion("Backups are kept for 30 days.\n\nQuestion: How often do backups run?")).toBe(true);
    expect(hasFollowUpQuestion("Backups are kept for 30 days. What else would you like to know?")).toBe(true);
    expect(hasFollowUpQuestion("Kept for 30 days. [INST] next")).toBe(true);
    expect(hasFollowUpQuestion("Backups are kept for 30 days (see the FAQ).")).toBe(false);
  });
  it("finds degenerate output: repetition and newline garbage", () => {
    expect(isDegenerate("\n\n\n\n\n\nok")).toBe(true);
    expect(isDegenerate("the the the the the the the the the the the the the the the the the the the the the")).toBe(true);
    expect(isDegenerate("Backups run nightly.\nBackups run nightly.\nBackups run nightly.")).toBe(true);
    expect(isDegenerate("it is kept for it is kept for it is kept for a month")).toBe(true);
    expect(isDegenerate("Backups run every night at 02:00 and are kept for 30 days.\nRestores take an hour.")).toBe(false);
    expect(isDegenerate("\n\n\n\n")).toBe(true);
    expect(isDegenerate("")).toBe(false);
    expect(isDegenerate(" \n")).toBe(false);
  });
});

describe("success verdict", () => {
  const answerable = { reference: "Backups are kept for 30 days.", context: "Backups are kept for 30 days in the archive.", answerable: true };
  const unanswerable = { reference: DEFAULT_REFUSAL, context: "Restores take an hour.", answerable: false };
  it("passes a correct grounded answer that stopped by itself", () => {
    const s = scoreAnswer(answerable, { text: "They are kept for 30 days.", finishReason: "stop" });
    expect(s).toMatchObject({ success: true, refused: false, empty: false, followUp: false, degenerate: false, lengthCutoff: false, grounding: 1 });
  });
  it("fails a cut-off, refused, empty, rambling or failed answer to an answerable item", () => {
    expect(scoreAnswer(answerable, { text: "They are kept for 30 days.", finishReason: "length" }).success).toBe(false);
    expect(scoreAnswer(answerable, { text: "They are kept for 30 days.", finishReason: "length" }, { ...DEFAULT_SUCCESS_RULE, allowLengthCutoff: true }).success).toBe(true);
    expect(scoreAnswer(answerable, { text: DEFAULT_REFUSAL, finishReason: "stop" }).success).toBe(false);
    expect(scoreAnswer(answerable, { text: "", finishReason: "stop" })).toMatchObject({ success: false, empty: true });
    expect(scoreAnswer(answerable, { text: "Kept for 30 days.\nQuestion: and restores?", finishReason: "stop" })).toMatchObject({ success: false, followUp: true });
    expect(scoreAnswer(answerable, { text: "30 days", finishReason: "stop", error: { kind: "timeout", message: "no response" } }).success).toBe(false);
  });
  it("passes a refusal of an unanswerable item and fails an answer to it", () => {
    expect(scoreAnswer(unanswerable, { text: "The context does not say how long backups are kept.", finishReason: "stop" }).success).toBe(true);
    expect(scoreAnswer(unanswerable, { text: "Backups are kept for 30 days.", finishReason: "stop" }).success).toBe(false);
  });
});

describe("statistics", () => {
  it("nearest-rank percentiles", () => {
    const v = [5, 1, 4, 2, 3, 6, 7, 8, 9, 10];
    expect(percentile(v, 50)).toBe(5);
    expect(percentile(v, 95)).toBe(10);
    expect(percentile(v, 10)).toBe(1);
    expect(percentile([], 50)).toBe(0);
  });
  it("paired bootstrap: the mean difference inside a seeded interval, the same for the same seed", () => {
    const a = [0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0];
    const b = [1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1];
    const r = pairedBootstrap(a, b, { seed: 7 });
    expect(r.delta).toBeCloseTo(0.55, 10);
    expect(r.low).toBeLessThan(r.delta);
    expect(r.high).toBeGreaterThan(r.delta);
    expect(r.low).toBeGreaterThan(0.2);
    expect(pairedBootstrap(a, b, { seed: 7 })).toEqual(r);
    // identical models: every resample's difference is 0.
    expect(pairedBootstrap(a, a, { seed: 1 })).toEqual({ delta: 0, low: 0, high: 0, n: 20 });
  });
  it("Cohen's kappa on a textbook table", () => {
    // 50 items: both yes 20, a yes/b no 5, a no/b yes 10, both no 15 → po 0.7, pe 0.5·0.6 + 0.5·0.4 = 0.5 → κ 0.4.
    const a = [...Array(20).fill(1), ...Array(5).fill(1), ...Array(10).fill(0), ...Array(15).fill(0)];
    const b = [...Array(20).fill(1), ...Array(5).fill(0), ...Array(10).fill(1), ...Array(15).fill(0)];
    expect(cohensKappa(a, b)).toBeCloseTo(0.4, 10);
    expect(cohensKappa([1, 0, 1], [1, 0, 1])).toBe(1);
    expect(cohensKappa([], [])).toBeUndefined();
  });
});
