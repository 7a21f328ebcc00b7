/**
 * Scores of one answer, pure and deterministic: correctness against the reference (SQuAD-style token F1 and exact
 * match, ROUGE-L), grounding in the context (the dataset quality gate's content n-grams, reused), refusal detection
 * (the dataset's refusal sentence and its paraphrases), and format checks (empty, invented follow-up questions,
 * degenerate repetition or newline garbage). Aggregates (percentiles, paired bootstrap intervals, Cohen's kappa) are
 * in statistics.ts.
 */
import { DEFAULT_REFUSAL } from "@ragtune/dataset-service/negatives";
import { contentWords, DEFAULT_QUALITY_GATE, groundingSupport, ngrams } from "@ragtune/dataset-service/quality-gate";

/** Lowercased words without punctuation and English articles (the SQuAD answer normalization). */
export function answerTokens(text: string): string[] {
  return (
    text
      .normalize("NFKC")
      .toLowerCase()
      .replace(/[\p{P}\p{S}]+/gu, " ")
      .match(/[\p{L}\p{N}_]+/gu)
      ?.filter((w) => w !== "a" && w !== "an" && w !== "the") ?? []
  );
}

/** Token-level F1 of a prediction against a reference (bag of normalized words). Both empty: 1. */
export function tokenF1(prediction: string, reference: string): number {
  const p = answerTokens(prediction);
  const r = answerTokens(reference);
  if (p.length === 0 || r.length === 0) return p.length === r.length ? 1 : 0;
  const counts = new Map<string, number>();
  for (const w of r) counts.set(w, (counts.get(w) ?? 0) + 1);
  let common = 0;
  for (const w of p) {
    const left = counts.get(w) ?? 0;
    if (left > 0) {
      common++;
      counts.set(w, left - 1);
    }
  }
  if (common === 0) return 0;
  const precision = common / p.length;
  const recall = common / r.length;
  return (2 * precision * recall) / (precision + recall);
}

/** Whether the normalized prediction equals the normalized reference. */
export function exactMatch(prediction: string, reference: string): boolean {
  return answerTokens(prediction).join(" ") === answerTokens(reference).join(" ");
}

/** Length of the longest common subsequence of two word lists (O(n·m) time, O(m) memory). */
function lcsLength(a: readonly string[], b: readonly string[]): number {
  const row = new Uint32Array(b.length + 1);
  for (let i = 1; i <= a.length; i++) {
    let diagonal = 0;
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!;
      row[j] = a[i - 1] === b[j - 1] ? diagonal + 1 : Math.max(above, row[j - 1]!);
      diagonal = above;
    }
  }
  return row[b.length]!;
}

/** ROUGE-L F-measure (β = 1) over normalized words. Both empty: 1. */
export function rougeL(prediction: string, reference: string): number {
  const p = answerTokens(prediction);
  const r = answerTokens(reference);
  if (p.length === 0 || r.length === 0) return p.length === r.length ? 1 : 0;
  const lcs = lcsLength(p, r);
  if (lcs === 0) return 0;
  const precision = lcs / p.length;
  const recall = lcs / r.length;
  return (2 * precision * recall) / (precision + recall);
}

/**
 * Share of the answer's distinct content n-grams that occur in the context (the dataset quality gate's grounding
 * check, with its n-gram size); 0 for an answer without content words. Answer and context are texts or their
 * `groundingNgrams` (made once for an answer or context compared more than once).
 */
export function grounding(answer: string | ReadonlySet<string>, context: string | ReadonlySet<string>, n = DEFAULT_QUALITY_GATE.groundingNgram): number {
  return groundingSupport(answer, typeof context === "string" ? groundingNgrams(context, n) : context, n);
}

/** The content n-grams of a text (an answer or a context) that `grounding` compares (to compute once per text). */
export function groundingNgrams(text: string, n = DEFAULT_QUALITY_GATE.groundingNgram): Set<string> {
  return ngrams(contentWords(text), n);
}

/**
 * Phrasings of "the context does not hold the answer": the dataset's own refusal sentence (what adapters are trained
 * to say) and the paraphrases models use instead.
 */
const REFUSAL_PATTERNS: readonly RegExp[] = [
  /\b(?:context|text|passage|document|documentation|information provided|provided information)\b[^.?!\n]{0,60}\b(?:does not|doesn't|do not|don't|did not|fails to)\b[^.?!\n]{0,40}\b(?:contain|include|provide|mention|say|state|specify|cover|answer|address|describe|explain|give)/,
  /\b(?:not|never) (?:mentioned|specified|stated|provided|covered|described|given|addressed|included|found|available)\b[^.?!\n]{0,30}\b(?:context|text|passage|document|documentation)\b/,
  /\b(?:no|not enough|insufficient|no relevant) (?:information|details|data)\b[^.?!\n]{0,60}\b(?:context|text|passage|provided|given|available)\b/,
  /\b(?:cannot|can not|can't|unable to|not able to) (?:answer|determine|tell|find|say)\b[^.?!\n]{0,60}\b(?:context|text|passage|information|provided|given|based on)\b/,
  /^(?:i (?:do not|don't) know|unknown|not (?:specified|mentioned|stated)|n\/a)\b/,
];

const REFUSAL_TEXT = DEFAULT_REFUSAL.toLowerCase();

/** Whether an answer declines to answer because the context lacks the information. */
export function isRefusal(answer: string): boolean {
  const text = answer.normalize("NFKC").toLowerCase().replace(/[\u2018\u2019\u02bc]/g, "'").replace(/\s+/g, " ").trim();
  if (text === "") return false;
  if (text.includes(REFUSAL_TEXT.slice(0, -1))) return true;
  return REFUSAL_PATTERNS.some((p) => p.test(text));
}

/** Markers of a new turn the model invented after its answer (it kept writing the prompt format). */
const TURN_MARKER = /(?:^|\n)\s*(?:#+\s*)?(?:question|q|user|human|instruction|context)\s*\d*\s*[:：]|\[\/?INST\]|<\/?s>|<\|[a-z_]+\|>/i;

/**
 * Whether the answer goes on with questions of its own: a turn marker ("Question:", "User:", "[INST]") or a sentence
 * ending in a question mark. A grounded answer states; it does not ask.
 */
export function hasFollowUpQuestion(answer: string): boolean {
  if (TURN_MARKER.test(answer)) return true;
  return /[\p{L}\p{N})\]"'][ \t]*\?(?:\s|$)/u.test(answer);
}

/**
 * Whether the output is degenerate: newline or whitespace garbage (three or more line breaks and nothing else, mostly
 * blank lines, or a third of the text whitespace), a line repeated three or more times, a word 4-gram repeated three or more times, or (for 20+ words)
 * fewer than a third distinct words.
 */
export function isDegenerate(answer: string): boolean {
  const trimmed = answer.trim();
  // Nothing but three or more line breaks is newline garbage; anything less is empty output.
  if (trimmed === "") return (answer.match(/\n/g) ?? []).length >= 3;
  const lines = answer.split("\n");
  const blank = lines.filter((l) => l.trim() === "").length;
  if (lines.length >= 4 && blank / lines.length > 0.5) return true;
  if (/\n\s*\n\s*\n\s*\n/.test(trimmed)) return true;
  const whitespace = (answer.match(/\s/g) ?? []).length;
  if (answer.length >= 20 && whitespace / answer.length > 0.35) return true;
  const lineCounts = new Map<string, number>();
  for (const l of lines) {
    const key = l.trim().toLowerCase();
    if (key.length < 3) continue;
    const n = (lineCounts.get(key) ?? 0) + 1;
    if (n >= 3) return true;
    lineCounts.set(key, n);
  }
  const words = trimmed.toLowerCase().split(/\s+/);
  const grams = new Map<string, number>();
  for (let i = 0; i + 4 <= words.length; i++) {
    const key = words.slice(i, i + 4).join(" ");
    const n = (grams.get(key) ?? 0) + 1;
    if (n >= 3) return true;
    grams.set(key, n);
  }
  return words.length >= 20 && new Set(words).size / words.length < 1 / 3;
}

/** Words of an answer (whitespace-separated), for its length. */
export function wordCount(text: string): number {
  const t = text.trim();
  return t === "" ? 0 : t.split(/\s+/).length;
}

/** The configurable success rule (EVAL_SUCCESS_* variables). */
export interface SuccessRule {
  /** An answerable item succeeds when max(token F1, ROUGE-L) reaches this. */
  minCorrectness: number;
  /** ... and its grounding reaches this (0: not checked). */
  minGrounding: number;
  /** Whether an answer cut off at max_tokens may still succeed. */
  allowLengthCutoff: boolean;
}

export const DEFAULT_SUCCESS_RULE: Readonly<SuccessRule> = Object.freeze({ minCorrectness: 0.5, minGrounding: 0, allowLengthCutoff: false });

/** The rule in words, for reports. */
export function describeSuccessRule(rule: SuccessRule): string {
  const answerable = [
    "not refused, not empty, no invented follow-up question, not degenerate",
    ...(rule.allowLengthCutoff ? [] : ["ended by itself (finish_reason stop)"]),
    `max(token F1, ROUGE-L) ≥ ${rule.minCorrectness}`,
    ...(rule.minGrounding > 0 ? [`grounding ≥ ${rule.minGrounding}`] : []),
  ];
  return `answerable: ${answerable.join(", ")}; unanswerable: refused, no invented follow-up question, not degenerate; a failed request never succeeds`;
}

/** What the endpoint returned for one item and model. */
export interface AnswerOutcome {
  text: string;
  finishReason: string;
  /** Set when the request failed: the error kind and message. */
  error?: { kind: string; message: string };
}

/** The item facts scoring needs. */
export interface ScoredItem {
  reference: string;
  context: string;
  answerable: boolean;
}

export interface AnswerScores {
  tokenF1: number;
  rougeL: number;
  exactMatch: boolean;
  grounding: number;
  refused: boolean;
  empty: boolean;
  followUp: boolean;
  degenerate: boolean;
  lengthCutoff: boolean;
  words: number;
  success: boolean;
  /** CRAG-style: +1 correct, 0 abstained (answerable item refused or empty, or a failed request), −1 wrong. */
  truthfulness: 1 | 0 | -1;
}

/**
 * CRAG-style truthfulness of one answer: +1 a success (answerable: a correct answer; unanswerable: a refusal), 0 an
 * abstention (a failed request, an empty answer, or a refusal of an answerable item), −1 anything else (a wrong answer,
 * or an answer to an unanswerable item).
 */
export function truthfulnessOf(a: { success: boolean; failed: boolean; answerable: boolean; refused: boolean; empty: boolean }): 1 | 0 | -1 {
  if (a.success) return 1;
  if (a.failed || a.empty || (a.answerable && a.refused)) return 0;
  return -1;
}

/** Every per-answer score and the success verdict. A failed request scores as empty and unsuccessful. */
export function scoreAnswer(item: ScoredItem, answer: AnswerOutcome, rule: SuccessRule = DEFAULT_SUCCESS_RULE): AnswerScores {
  const text = answer.error === undefined ? answer.text : "";
  const refused = isRefusal(text);
  const followUp = hasFollowUpQuestion(text);
  const degenerate = isDegenerate(text);
  const empty = text.trim() === "" && !degenerate;
  const lengthCutoff = answer.error === undefined && answer.finishReason === "length";
  const f1 = tokenF1(text, item.reference);
  const rl = rougeL(text, item.reference);
  const ground = empty ? 0 : grounding(text, item.context);
  const clean = answer.error === undefined && !followUp && !degenerate;
  const success = item.answerable
    ? clean && !refused && !empty && (rule.allowLengthCutoff || !lengthCutoff) && Math.max(f1, rl) >= rule.minCorrectness && ground >= rule.minGrounding
    : clean && refused;
  return {
    tokenF1: f1,
    rougeL: rl,
    exactMatch: exactMatch(text, item.reference),
    grounding: ground,
    refused,
    empty,
    followUp,
    degenerate,
    lengthCutoff,
    words: wordCount(text),
    success,
    truthfulness: truthfulnessOf({ success, failed: answer.error !== undefined, answerable: item.answerable, refused, empty }),
  };
}
