/**
 * The report of an eval run from its scored answers: a summary per model, the differences of every adapter to the
 * base model with paired bootstrap intervals, breakdowns by question type, source document and answerable, the
 * promotion gates, and the Markdown rendering. Pure: the same answers and seed give the same report.
 */
import { create } from "@bufbuild/protobuf";
import {
  type EvalBreakdown,
  type EvalCalibration,
  EvalCalibrationSchema,
  type EvalEstimate,
  EvalEstimateSchema,
  EvalBreakdownSchema,
  type EvalDifference,
  EvalDifferenceSchema,
  type EvalGateResult,
  EvalGateResultSchema,
  type EvalItemResult,
  EvalItemResultSchema,
  type EvalModelSummary,
  EvalModelSummarySchema,
  type EvalReport,
  EvalReportSchema,
} from "@ragtune/proto";
import type { EvalItem } from "./eval-items.js";
import type { JudgeVerdict } from "./judge.js";
import type { AnswerOutcome, AnswerScores } from "./metrics.js";
import { bootstrapMean, cohensKappa, mean, pairedBootstrap, percentile } from "./statistics.js";

/** One model's scored answer to one item. */
export interface ScoredAnswer {
  model: string;
  outcome: AnswerOutcome;
  latencyMs: number;
  completionTokens: number;
  scores: AnswerScores;
  judge?: JudgeVerdict;
  /** The verdict came from the deterministic checks, not the judge. */
  judgeDecided?: boolean;
  /** With k > 1 verdicts: the share agreeing with the majority. */
  judgeAgreement?: number;
}

/** An item with every model's answer (in the run's model order). */
export interface ScoredItem {
  item: EvalItem;
  answers: ScoredAnswer[];
}

/** Promotion gates (EVAL_GATE_*), checked on every adapter; an unset gate is not checked. */
export interface GateConfig {
  /** Adapter success rate ≥ base success rate + this. */
  minSuccessGain?: number;
  /** Adapter false-answer rate on unanswerable items ≤ this. */
  maxFalseAnswerRate?: number;
  /** Adapter success rate ≥ this. */
  minSuccessRate?: number;
  /** Adapter truthfulness (−1..1) ≥ base truthfulness + this. */
  minTruthfulnessGain?: number;
}

export interface ReportInput {
  runId: string;
  baseModel: string;
  adapters: readonly string[];
  items: readonly ScoredItem[];
  gates: GateConfig;
  seed: number;
  successRule: string;
}

const answered = (a: ScoredAnswer) => a.outcome.error === undefined && !a.scores.refused && !a.scores.empty;
const num = (b: boolean) => (b ? 1 : 0);
const share = <T>(xs: readonly T[], pick: (x: T) => boolean) => (xs.length === 0 ? 0 : xs.filter(pick).length / xs.length);

function answersOf(items: readonly ScoredItem[], model: string): { item: EvalItem; answer: ScoredAnswer }[] {
  return items.map((s) => {
    const answer = s.answers.find((a) => a.model === model);
    if (answer === undefined) throw new Error(`item ${s.item.id} has no answer of model ${model}`);
    return { item: s.item, answer };
  });
}

/** Refusal calibration of one model: truthfulness and the abstention rates, each with a bootstrap interval. */
export function calibrate(rows: readonly { item: Pick<EvalItem, "answerable">; answer: ScoredAnswer }[], seed: number): EvalCalibration {
  const estimate = (values: number[], offset: number) => {
    const ci = bootstrapMean(values, { seed: seed + offset });
    return create(EvalEstimateSchema, { value: ci.delta, ciLow: ci.low, ciHigh: ci.high, items: ci.n });
  };
  const answerable = rows.filter((r) => r.item.answerable).map((r) => r.answer);
  const unanswerable = rows.filter((r) => !r.item.answerable).map((r) => r.answer);
  const scores = rows.map((r) => r.answer.scores.truthfulness);
  return create(EvalCalibrationSchema, {
    truthfulness: estimate(scores, 0),
    answerRateAnswerable: estimate(answerable.map((a) => num(answered(a))), 1),
    falseAnswerRate: estimate(unanswerable.map((a) => num(answered(a))), 2),
    overRefusalRate: estimate(answerable.map((a) => num(a.outcome.error === undefined && a.scores.refused)), 3),
    correct: scores.filter((t) => t === 1).length,
    abstained: scores.filter((t) => t === 0).length,
    wrong: scores.filter((t) => t === -1).length,
  });
}

export function summarize(items: readonly ScoredItem[], model: string, isBase: boolean, seed = 0): EvalModelSummary {
  const rows = answersOf(items, model);
  const all = rows.map((r) => r.answer);
  const ok = all.filter((a) => a.outcome.error === undefined);
  const answerable = rows.filter((r) => r.item.answerable).map((r) => r.answer);
  const unanswerable = rows.filter((r) => !r.item.answerable).map((r) => r.answer);
  const failuresByKind: Record<string, number> = {};
  for (const a of all) if (a.outcome.error !== undefined) failuresByKind[a.outcome.error.kind] = (failuresByKind[a.outcome.error.kind] ?? 0) + 1;
  const latencies = ok.map((a) => a.latencyMs / 1000);
  const seconds = latencies.reduce((x, y) => x + y, 0);
  const tokens = ok.reduce((x, a) => x + a.completionTokens, 0);
  const judged = all.filter((a) => a.judge !== undefined);
  return create(EvalModelSummarySchema, {
    model,
    isBase,
    items: all.length,
    failed: all.length - ok.length,
    failuresByKind,
    successRate: share(all, (a) => a.scores.success),
    tokenF1: mean(answerable.map((a) => a.scores.tokenF1)),
    rougeL: mean(answerable.map((a) => a.scores.rougeL)),
    exactMatch: mean(answerable.map((a) => num(a.scores.exactMatch))),
    grounding: mean(answerable.filter(answered).map((a) => a.scores.grounding)),
    answerRate: share(all, answered),
    falseAnswerRate: share(unanswerable, answered),
    overRefusalRate: share(answerable, (a) => a.outcome.error === undefined && a.scores.refused),
    emptyRate: share(ok, (a) => a.scores.empty),
    lengthCutoffRate: share(ok, (a) => a.scores.lengthCutoff),
    followUpRate: share(ok, (a) => a.scores.followUp),
    degenerateRate: share(ok, (a) => a.scores.degenerate),
    meanAnswerWords: mean(ok.map((a) => a.scores.words)),
    latencyP50: percentile(latencies, 50),
    latencyP95: percentile(latencies, 95),
    latencyP99: percentile(latencies, 99),
    tokensPerSecond: seconds > 0 ? tokens / seconds : 0,
    calibration: calibrate(rows, seed),
    ...(judged.length === 0
      ? {}
      : {
          judgeARate: share(judged, (a) => a.judge!.grade === "A"),
          judgeHallucinationRate: share(judged, (a) => a.judge!.hallucination),
          judgeKappa: cohensKappa(
            judged.map((a) => a.judge!.grade === "A"),
            judged.map((a) => a.scores.success),
          ) ?? 0,
          judgeGraded: judged.filter((a) => a.judgeDecided !== true).length,
          judgeDecided: judged.filter((a) => a.judgeDecided === true).length,
          ...(judged.some((a) => a.judgeAgreement !== undefined)
            ? { judgeAgreement: mean(judged.filter((a) => a.judgeAgreement !== undefined).map((a) => a.judgeAgreement!)) }
            : {}),
        }),
  });
}

/** Per-item values of the compared metrics, and which items each is computed over. */
const DIFFERENCE_METRICS: { metric: string; over: (item: Pick<EvalItem, "answerable">) => boolean; value: (a: ScoredAnswer) => number }[] = [
  { metric: "success_rate", over: () => true, value: (a) => num(a.scores.success) },
  { metric: "truthfulness", over: () => true, value: (a) => a.scores.truthfulness },
  { metric: "answer_rate_answerable", over: (i) => i.answerable, value: (a) => num(answered(a)) },
  { metric: "token_f1", over: (i) => i.answerable, value: (a) => a.scores.tokenF1 },
  { metric: "rouge_l", over: (i) => i.answerable, value: (a) => a.scores.rougeL },
  { metric: "grounding", over: (i) => i.answerable, value: (a) => (answered(a) ? a.scores.grounding : 0) },
  { metric: "false_answer_rate", over: (i) => !i.answerable, value: (a) => num(answered(a)) },
  { metric: "over_refusal_rate", over: (i) => i.answerable, value: (a) => num(a.outcome.error === undefined && a.scores.refused) },
];

/** Differences model − baseline per metric on paired items (same item IDs), with seeded bootstrap intervals. */
export function differences(
  pairs: readonly { item: Pick<EvalItem, "answerable">; baseline: ScoredAnswer; other: ScoredAnswer }[],
  model: string,
  baseline: string,
  seed: number,
): EvalDifference[] {
  return DIFFERENCE_METRICS.map(({ metric, over, value }, index) => {
    const used = pairs.filter((p) => over(p.item));
    const ci = pairedBootstrap(
      used.map((p) => value(p.baseline)),
      used.map((p) => value(p.other)),
      { seed: seed + index },
    );
    return create(EvalDifferenceSchema, { model, baseline, metric, delta: ci.delta, ciLow: ci.low, ciHigh: ci.high, items: ci.n });
  });
}

const DIMENSIONS: { name: string; of: (item: EvalItem) => string }[] = [
  { name: "answerable", of: (i) => (i.answerable ? "answerable" : "unanswerable") },
  { name: "question_type", of: (i) => i.questionType || "unknown" },
  { name: "source_document", of: (i) => i.sourceDocument || "unknown" },
];

export function breakdowns(input: Pick<ReportInput, "items" | "baseModel" | "adapters" | "seed">): EvalBreakdown[] {
  const out: EvalBreakdown[] = [];
  const models = [input.baseModel, ...input.adapters];
  for (const dim of DIMENSIONS) {
    const values = [...new Set(input.items.map((s) => dim.of(s.item)))].sort();
    for (const value of values) {
      const slice = input.items.filter((s) => dim.of(s.item) === value);
      const base = answersOf(slice, input.baseModel).map((r) => r.answer);
      for (const model of models) {
        const rows = answersOf(slice, model);
        const answers = rows.map((r) => r.answer);
        const b: EvalBreakdown = create(EvalBreakdownSchema, {
          dimension: dim.name,
          value,
          model,
          items: rows.length,
          successRate: share(answers, (a) => a.scores.success),
          tokenF1: mean(rows.filter((r) => r.item.answerable).map((r) => r.answer.scores.tokenF1)),
          answerRate: share(answers, answered),
        });
        if (model !== input.baseModel) {
          const ci = pairedBootstrap(base.map((a) => num(a.scores.success)), answers.map((a) => num(a.scores.success)), { seed: input.seed });
          b.deltaSuccess = ci.delta;
          b.deltaCiLow = ci.low;
          b.deltaCiHigh = ci.high;
        }
        out.push(b);
      }
    }
  }
  return out;
}

export function checkGates(summaries: readonly EvalModelSummary[], gates: GateConfig): EvalGateResult[] {
  const base = summaries.find((s) => s.isBase);
  const out: EvalGateResult[] = [];
  for (const s of summaries) {
    if (s.isBase) continue;
    if (gates.minSuccessGain !== undefined && base !== undefined) {
      const value = s.successRate - base.successRate;
      out.push(create(EvalGateResultSchema, { name: "success_gain", model: s.model, rule: `success_rate ≥ base (${fmt(base.successRate)}) + ${gates.minSuccessGain}`, value, threshold: gates.minSuccessGain, passed: value >= gates.minSuccessGain - 1e-12 }));
    }
    if (gates.maxFalseAnswerRate !== undefined) {
      out.push(create(EvalGateResultSchema, { name: "false_answer_rate", model: s.model, rule: `false_answer_rate ≤ ${gates.maxFalseAnswerRate}`, value: s.falseAnswerRate, threshold: gates.maxFalseAnswerRate, passed: s.falseAnswerRate <= gates.maxFalseAnswerRate + 1e-12 }));
    }
    if (gates.minTruthfulnessGain !== undefined && base !== undefined) {
      const value = (s.calibration?.truthfulness?.value ?? 0) - (base.calibration?.truthfulness?.value ?? 0);
      out.push(create(EvalGateResultSchema, { name: "truthfulness_gain", model: s.model, rule: `truthfulness ≥ base (${fmt(base.calibration?.truthfulness?.value ?? 0)}) + ${gates.minTruthfulnessGain}`, value, threshold: gates.minTruthfulnessGain, passed: value >= gates.minTruthfulnessGain - 1e-12 }));
    }
    if (gates.minSuccessRate !== undefined) {
      out.push(create(EvalGateResultSchema, { name: "success_rate", model: s.model, rule: `success_rate ≥ ${gates.minSuccessRate}`, value: s.successRate, threshold: gates.minSuccessRate, passed: s.successRate >= gates.minSuccessRate - 1e-12 }));
    }
  }
  return out;
}

/** The report (without its stored artifacts) and the per-item results. */
export function buildReport(input: ReportInput): { report: EvalReport; results: EvalItemResult[] } {
  const models = [input.baseModel, ...input.adapters];
  const summaries = models.map((m) => summarize(input.items, m, m === input.baseModel, input.seed));
  const diffs = input.adapters.flatMap((adapter) =>
    differences(
      input.items.map((s) => ({ item: s.item, baseline: s.answers.find((a) => a.model === input.baseModel)!, other: s.answers.find((a) => a.model === adapter)! })),
      adapter,
      input.baseModel,
      input.seed,
    ),
  );
  const gates = checkGates(summaries, input.gates);
  const answerable = input.items.filter((s) => s.item.answerable).length;
  const report = create(EvalReportSchema, {
    evalRunId: input.runId,
    models: summaries,
    differences: diffs,
    breakdowns: breakdowns(input),
    gates,
    gatesPassed: input.adapters.length > 0 && gates.length > 0 && gates.every((g) => g.passed),
    items: input.items.length,
    answerable,
    unanswerable: input.items.length - answerable,
    successRule: input.successRule,
  });
  const results = input.items.map((s) =>
    create(EvalItemResultSchema, {
      itemId: s.item.id,
      question: s.item.question,
      reference: s.item.reference,
      answerable: s.item.answerable,
      questionType: s.item.questionType,
      sourceDocument: s.item.sourceDocument,
      answers: s.answers.map((a) => ({
        model: a.model,
        text: a.outcome.text,
        finishReason: a.outcome.finishReason,
        error: a.outcome.error === undefined ? "" : `${a.outcome.error.kind}: ${a.outcome.error.message}`,
        latencySeconds: a.latencyMs / 1000,
        completionTokens: a.completionTokens,
        tokenF1: a.scores.tokenF1,
        rougeL: a.scores.rougeL,
        exactMatch: a.scores.exactMatch,
        grounding: a.scores.grounding,
        refused: a.scores.refused,
        empty: a.scores.empty,
        followUp: a.scores.followUp,
        degenerate: a.scores.degenerate,
        success: a.scores.success,
        judgeGrade: a.judge?.grade ?? "",
        judgeHallucination: a.judge?.hallucination ?? false,
      })),
    }),
  );
  return { report, results };
}

function fmt(x: number, digits = 3): string {
  return Number.isFinite(x) ? x.toFixed(digits) : String(x);
}
const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
const signedPct = (x: number) => `${x >= 0 ? "+" : ""}${(x * 100).toFixed(1)}`;

/** The report as Markdown: models side by side, differences with intervals, gates, breakdowns. */
export function renderMarkdown(report: EvalReport, run: { endpointUrl: string; source: string }): string {
  const lines: string[] = [];
  lines.push(`# Eval run ${report.evalRunId}`, "");
  lines.push(`Source: ${run.source}; endpoint ${run.endpointUrl}; ${report.items} items (${report.answerable} answerable, ${report.unanswerable} unanswerable).`, "");
  lines.push(`Success rule: ${report.successRule}.`, "");
  const header = ["model", "success", "token F1", "ROUGE-L", "exact", "grounding", "answer rate", "false answer", "over-refusal", "empty", "cut off", "follow-up", "degenerate", "words", "p50 s", "p95 s", "p99 s", "tok/s", "failed"];
  lines.push(`| ${header.join(" | ")} |`, `|${header.map(() => "---").join("|")}|`);
  for (const m of report.models) {
    const failed = m.failed === 0 ? "0" : `${m.failed} (${Object.entries(m.failuresByKind).map(([k, n]) => `${k} ${n}`).join(", ")})`;
    lines.push(
      `| ${m.model}${m.isBase ? " (base)" : ""} | ${pct(m.successRate)} | ${fmt(m.tokenF1)} | ${fmt(m.rougeL)} | ${fmt(m.exactMatch)} | ${fmt(m.grounding)} | ${pct(m.answerRate)} | ${pct(m.falseAnswerRate)} | ${pct(m.overRefusalRate)} | ${pct(m.emptyRate)} | ${pct(m.lengthCutoffRate)} | ${pct(m.followUpRate)} | ${pct(m.degenerateRate)} | ${fmt(m.meanAnswerWords, 1)} | ${fmt(m.latencyP50)} | ${fmt(m.latencyP95)} | ${fmt(m.latencyP99)} | ${fmt(m.tokensPerSecond, 1)} | ${failed} |`,
    );
  }
  lines.push(
    "",
    "## Refusal calibration (95% bootstrap intervals)",
    "",
    "Truthfulness: +1 correct (answerable answered successfully, unanswerable refused), 0 abstained (answerable refused or empty, failed request), −1 wrong (wrong answer, or an answer to an unanswerable item).",
    "",
    "| model | truthfulness | answer rate (answerable) | false answer (unanswerable) | over-refusal (answerable) | correct / abstained / wrong |",
    "|---|---|---|---|---|---|",
  );
  const est = (e: EvalEstimate | undefined, asPct: boolean) => (e === undefined ? "–" : asPct ? `${pct(e.value)} [${pct(e.ciLow)}, ${pct(e.ciHigh)}]` : `${fmt(e.value)} [${fmt(e.ciLow)}, ${fmt(e.ciHigh)}]`);
  for (const m of report.models) {
    const c = m.calibration;
    lines.push(`| ${m.model}${m.isBase ? " (base)" : ""} | ${est(c?.truthfulness, false)} | ${est(c?.answerRateAnswerable, true)} | ${est(c?.falseAnswerRate, true)} | ${est(c?.overRefusalRate, true)} | ${c?.correct ?? 0} / ${c?.abstained ?? 0} / ${c?.wrong ?? 0} |`);
  }
  const judged = report.models.filter((m) => m.judgeARate !== undefined);
  if (judged.length > 0) {
    lines.push(
      "",
      "## Judge",
      "",
      "| model | graded A | hallucination | κ (A vs rule success) | by the judge | by the checks | judge agreement |",
      "|---|---|---|---|---|---|---|",
    );
    for (const m of judged) {
      const agreement = m.judgeAgreement === undefined ? "–" : pct(m.judgeAgreement);
      lines.push(`| ${m.model} | ${pct(m.judgeARate!)} | ${pct(m.judgeHallucinationRate ?? 0)} | ${fmt(m.judgeKappa ?? 0)} | ${m.judgeGraded ?? 0} | ${m.judgeDecided ?? 0} | ${agreement} |`);
    }
  }
  if (report.differences.length > 0) {
    lines.push("", "## Differences to the base model (95% paired bootstrap interval, points)", "", "| model | metric | Δ | interval | items |", "|---|---|---|---|---|");
    for (const d of report.differences) lines.push(`| ${d.model} | ${d.metric} | ${signedPct(d.delta)} | [${signedPct(d.ciLow)}, ${signedPct(d.ciHigh)}] | ${d.items} |`);
  }
  lines.push("", `## Promotion gates: ${report.gatesPassed ? "PASSED" : "NOT PASSED"}`, "");
  if (report.gates.length === 0) lines.push("No gate applies (no adapter, or no gate configured).");
  else {
    lines.push("| model | gate | rule | value | verdict |", "|---|---|---|---|---|");
    for (const g of report.gates) lines.push(`| ${g.model} | ${g.name} | ${g.rule} | ${fmt(g.value)} | ${g.passed ? "pass" : "FAIL"} |`);
  }
  lines.push("", "## Breakdowns (success rate; Δ to base with interval)", "", "| dimension | value | model | items | success | token F1 | answer rate | Δ success |", "|---|---|---|---|---|---|---|---|");
  for (const b of report.breakdowns) {
    const delta = b.deltaSuccess === undefined ? "" : `${signedPct(b.deltaSuccess)} [${signedPct(b.deltaCiLow ?? 0)}, ${signedPct(b.deltaCiHigh ?? 0)}]`;
    lines.push(`| ${b.dimension} | ${b.value} | ${b.model} | ${b.items} | ${pct(b.successRate)} | ${fmt(b.tokenF1)} | ${pct(b.answerRate)} | ${delta} |`);
  }
  return `${lines.join("\n")}\n`;
}
