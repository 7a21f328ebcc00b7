import { describe, expect, it } from "vitest";
import { type EvalItem, parseEvalFile, sampleItems } from "./eval-items.js";
import { DEFAULT_SUCCESS_RULE, scoreAnswer } from "./metrics.js";
import { buildReport, checkGates, renderMarkdown, type ScoredAnswer, type ScoredItem } from "./report.js";

const REFUSAL = "The provided context does not contain sufficient information to answer this question.";

function item(id: string, answerable: boolean, questionType = "factual"): EvalItem {
  const reference = answerable ? `Value ${id} is stored for ten days.` : REFUSAL;
  return {
    id,
    question: `How long is value ${id} stored?`,
    reference,
    answerable,
    context: answerable ? `${reference} Nothing else.` : "Nothing about it.",
    questionType,
    sourceDocument: `${id.slice(0, 1)}.md`,
    prompt: "",
    userTurn: "",
  };
}

function answer(model: string, it: EvalItem, text: string): ScoredAnswer {
  const outcome = { text, finishReason: "stop" };
  return { model, outcome, latencyMs: 100, completionTokens: 10, scores: scoreAnswer(it, outcome, DEFAULT_SUCCESS_RULE) };
}

// 10 items, 8 answerable: the adapter answers 7 right and refuses both unanswerable ones; the base answers 3 right
// and answers one unanswerable item.
const items = [..."abcdefgh"].map((c) => item(c, true)).concat([item("x", false, "unanswerable"), item("y", false, "unanswerable")]);
const scored: ScoredItem[] = items.map((it, i) => ({
  item: it,
  answers: [
    answer("base", it, it.answerable ? (i < 3 ? it.reference : "") : i === 8 ? "It is stored for a year." : REFUSAL),
    answer("adapter", it, it.answerable ? (i < 7 ? it.reference : REFUSAL) : REFUSAL),
  ],
}));

describe("report", () => {
  const { report, results } = buildReport({ runId: "eval-1", baseModel: "base", adapters: ["adapter"], items: scored, gates: { minSuccessGain: 0.2, maxFalseAnswerRate: 0.05 }, seed: 42, successRule: "rule" });

  it("summarizes each model over the items it should", () => {
    const [b, a] = report.models;
    expect(b).toMatchObject({ model: "base", successRate: 0.4, answerRate: 0.4, falseAnswerRate: 0.5, overRefusalRate: 0, emptyRate: 0.5 });
    expect(a).toMatchObject({ model: "adapter", successRate: 0.9, answerRate: 0.7, falseAnswerRate: 0, overRefusalRate: 0.125, emptyRate: 0 });
    expect(a!.tokenF1).toBeCloseTo(7 / 8, 10);
    expect(a!.tokensPerSecond).toBeCloseTo(100, 10);
    expect(report).toMatchObject({ items: 10, answerable: 8, unanswerable: 2 });
    expect(results[8]!.answers.map((x) => [x.model, x.success])).toEqual([
      ["base", false],
      ["adapter", true],
    ]);
  });

  it("calibrates refusals: CRAG truthfulness (+1 correct, 0 abstained, −1 wrong) and the abstention rates, with intervals", () => {
    const [b, a] = report.models.map((m) => m.calibration!);
    // base: 3 right, 5 empty, one unanswerable item answered, one refused → (3 + 1 − 1) / 10
    expect(b!.truthfulness!.value).toBeCloseTo(0.3, 10);
    expect([b!.correct, b!.abstained, b!.wrong]).toEqual([4, 5, 1]);
    expect(b!.answerRateAnswerable!.value).toBeCloseTo(3 / 8, 10);
    expect(b!.falseAnswerRate!.value).toBeCloseTo(0.5, 10);
    // adapter: 7 right, one answerable refused (0, not a success and not a missing value), both unanswerable refused
    expect(a!.truthfulness!.value).toBeCloseTo(0.9, 10);
    expect([a!.correct, a!.abstained, a!.wrong]).toEqual([9, 1, 0]);
    expect(a!.overRefusalRate!.value).toBeCloseTo(1 / 8, 10);
    for (const c of [a!, b!]) {
      for (const e of [c.truthfulness!, c.answerRateAnswerable!, c.falseAnswerRate!, c.overRefusalRate!]) {
        expect(e.ciLow).toBeLessThanOrEqual(e.value + 1e-12);
        expect(e.ciHigh).toBeGreaterThanOrEqual(e.value - 1e-12);
      }
    }
    expect(b!.truthfulness!.ciLow).toBeGreaterThanOrEqual(-1);
    expect(a!.truthfulness!.ciHigh).toBeLessThanOrEqual(1);
    const diff = report.differences.find((d) => d.metric === "truthfulness")!;
    expect(diff.delta).toBeCloseTo(0.6, 10);
    expect(diff.ciLow).toBeGreaterThan(0); // the adapter is better beyond the interval on these fixtures
    expect(report.differences.find((d) => d.metric === "answer_rate_answerable")).toMatchObject({ items: 8 });
    const gated = checkGates(report.models, { minTruthfulnessGain: 0.5 });
    expect(gated).toEqual([expect.objectContaining({ name: "truthfulness_gain", model: "adapter", passed: true })]);
    expect(checkGates(report.models, { minTruthfulnessGain: 0.7 })[0]!.passed).toBe(false);
    expect(renderMarkdown(report, { endpointUrl: "http://x", source: "file" })).toMatch(/## Refusal calibration[\s\S]*\| adapter \| 0\.900 \[/);
  });

  it("gives the differences with intervals that hold them, and the gates", () => {
    const success = report.differences.find((d) => d.metric === "success_rate")!;
    expect(success.delta).toBeCloseTo(0.5, 10);
    expect(success.ciLow).toBeLessThanOrEqual(0.5);
    expect(success.ciHigh).toBeGreaterThanOrEqual(0.5);
    expect(report.differences.find((d) => d.metric === "false_answer_rate")).toMatchObject({ delta: -0.5, items: 2 });
    expect(report.gates.map((g) => [g.name, g.passed, Number(g.value.toFixed(3))])).toEqual([
      ["success_gain", true, 0.5],
      ["false_answer_rate", true, 0],
    ]);
    expect(report.gatesPassed).toBe(true);
    expect(report.breakdowns.filter((x) => x.dimension === "answerable").map((x) => [x.value, x.model, x.items])).toEqual([
      ["answerable", "base", 8],
      ["answerable", "adapter", 8],
      ["unanswerable", "base", 2],
      ["unanswerable", "adapter", 2],
    ]);
  });

  it("fails a gate that is missed, and passes nothing without adapters", () => {
    expect(checkGates(report.models, { minSuccessGain: 0.6 }).map((g) => g.passed)).toEqual([false]);
    expect(buildReport({ runId: "eval-2", baseModel: "base", adapters: [], items: scored, gates: { minSuccessGain: 0.2 }, seed: 1, successRule: "rule" }).report.gatesPassed).toBe(false);
  });

  it("renders Markdown with the models, the differences and the gates", () => {
    const md = renderMarkdown(report, { endpointUrl: "http://x/v1", source: "eval file f" });
    expect(md).toContain("| base (base) | 40.0% |");
    expect(md).toContain("| adapter | success_rate | +50.0 |");
    expect(md).toContain("## Promotion gates: PASSED");
  });
});

describe("eval items", () => {
  it("samples deterministically and keeps input order", () => {
    const a = sampleItems(items, 4, 7).map((i) => i.id);
    expect(a).toHaveLength(4);
    expect(sampleItems(items, 4, 7).map((i) => i.id)).toEqual(a);
    expect([...a].sort()).toEqual(a);
    expect(sampleItems(items, 20, 7)).toHaveLength(10);
  });

  it("renders an uploaded item's prompt in the training template, or takes the one it carries", () => {
    const [rendered, given] = parseEvalFile(
      new TextEncoder().encode(
        [
          JSON.stringify({ id: "1", question: "Q?", reference: "A.", answerable: true, context: "C.", heading_path: ["H1", "H2"] }),
          JSON.stringify({ id: "2", question: "Q?", answer: "A.", answerable: false, context: "C.", prompt: "[INST] custom [/INST]" }),
        ].join("\n"),
      ),
    );
    expect(rendered).toMatchObject({ prompt: "[INST] H1 > H2\n\nC.\n\nQuestion: Q? [/INST]", userTurn: "H1 > H2\n\nC.\n\nQuestion: Q?", context: "H1 > H2\n\nC.", questionType: "answerable" });
    expect(given).toMatchObject({ prompt: "[INST] custom [/INST]", reference: "A.", questionType: "unanswerable" });
  });
});
