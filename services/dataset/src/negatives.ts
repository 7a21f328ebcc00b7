/**
 * Unanswerable examples: a question of the dataset paired with a context that does not hold its answer, taught to
 * answer with a refusal. They are what makes the fine-tuned model say so instead of making an answer up.
 *
 * Two ways to build the context, both checked the same way (the context holds neither the answer verbatim nor, counting
 * content words, `maxAnswerCoverage` or more of it):
 * - `distractor-chunk`: the chunk most lexically similar to the question (BM25 over the collection's chunks) from
 *   another section or document — what a retriever would plausibly return, so the model learns to read, not to match
 *   words. Chunks of the question's own section (same document and heading path) and chunks under the same heading
 *   path elsewhere are never used.
 * - `answer-removed`: the question's own chunk with the sentences, list items or rows that carry the answer removed,
 *   used only when enough text remains. The hardest case: same topic, same words, answer gone.
 *
 * Pure and deterministic: the same examples, chunks and options give the same negatives, whatever the input order.
 */
import { createHash } from "node:crypto";
import type { DatasetExample } from "./example.js";
import { segmentChunk, splitSentences, type SourceChunk, type TextSpan } from "./extractive-generator.js";
import { Bm25Retriever, type IndexedChunk } from "@ragtune/retrieval";
import { contentTermSet, contentTerms, normalizeForContainment } from "./text-similarity.js";

export const DEFAULT_REFUSAL = "The provided context does not contain sufficient information to answer this question.";

export type NegativeStrategy = "distractor-chunk" | "answer-removed";

export interface NegativeOptions {
  /** Unanswerable examples per answerable example, 0..1 (default 0.15): round(ratio × answerable) negatives. */
  ratio?: number;
  /** Picks the examples that get a negative and the strategy each tries first (default 42). */
  seed?: number;
  /** The answer taught for every unanswerable example (default DEFAULT_REFUSAL). */
  refusal?: string;
  /** Share of negatives that try `answer-removed` before `distractor-chunk`, 0..1 (default 0.25). */
  answerRemovedShare?: number;
  /** A context may hold less than this share of the answer's distinct content words, 0..1 (default 0.5). */
  maxAnswerCoverage?: number;
  /** Content words an answer-removed context must keep outside its headings (default 20). */
  minRemainingWords?: number;
  /** Most similar chunks examined per question for a distractor (default 25). */
  candidates?: number;
}

export const NEGATIVE_DEFAULTS = {
  ratio: 0.15,
  seed: 42,
  refusal: DEFAULT_REFUSAL,
  answerRemovedShare: 0.25,
  maxAnswerCoverage: 0.5,
  minRemainingWords: 20,
  candidates: 25,
} as const satisfies Required<NegativeOptions>;

/** An unanswerable example, with how its context was made. */
export interface NegativeExample extends DatasetExample {
  kind: "unanswerable";
  answerable: false;
  strategy: NegativeStrategy;
  /**
   * The chunk that supplied the context: another chunk for `distractor-chunk`, the question's own chunk (with the
   * answer removed, so `context` differs from its stored text) for `answer-removed`. Equal to chunkId.
   */
  distractorChunkId: string;
  /** The answerable example whose question this is. */
  sourceExampleId: string;
  /** Share of the source answer's content words found in the context (below maxAnswerCoverage). */
  answerCoverage: number;
  /** BM25 score of the distractor chunk for the question; 0 for `answer-removed`. */
  similarity: number;
}

export interface NegativeSkip {
  exampleId: string;
  reason: string;
}

export interface NegativeResult {
  negatives: NegativeExample[];
  /** round(ratio × answerable examples): how many negatives were asked for. */
  target: number;
  /** Examples tried that got no negative, with why (both strategies failed). */
  skipped: NegativeSkip[];
}

function resolveOptions(options: NegativeOptions): Required<NegativeOptions> {
  const defined = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<NegativeOptions>;
  const o = { ...NEGATIVE_DEFAULTS, ...defined };
  const share = (name: string, value: number, min = 0): void => {
    if (!Number.isFinite(value) || value < min || value > 1) throw new RangeError(`${name} must be a number from ${min} to 1, got ${value}`);
  };
  share("ratio", o.ratio);
  share("answerRemovedShare", o.answerRemovedShare);
  share("maxAnswerCoverage", o.maxAnswerCoverage, Number.MIN_VALUE);
  if (!Number.isInteger(o.seed)) throw new RangeError(`seed must be an integer, got ${o.seed}`);
  if (o.refusal.trim().length === 0) throw new RangeError("refusal must not be empty");
  if (!Number.isInteger(o.minRemainingWords) || o.minRemainingWords < 1) {
    throw new RangeError(`minRemainingWords must be a positive integer, got ${o.minRemainingWords}`);
  }
  if (!Number.isInteger(o.candidates) || o.candidates < 1) throw new RangeError(`candidates must be a positive integer, got ${o.candidates}`);
  return o;
}

function hashUnit(...parts: (string | number)[]): number {
  return createHash("sha256").update(parts.join("\u0000")).digest().readUInt32BE(0) / 2 ** 32;
}

/** The content-addressed ID of a negative: the same source example, strategy and context give the same ID. */
export function negativeExampleId(sourceExampleId: string, strategy: NegativeStrategy, contextChunkId: string, context: string): string {
  const key = ["negative-v1", sourceExampleId, strategy, contextChunkId, context].join("\u0000");
  const digest = createHash("sha256").update(key).digest("hex");
  return `ex_${digest.slice(0, 32)}`;
}

function samePath(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((h, i) => h === b[i]);
}

/**
 * Whether `context` holds `answer`: verbatim (case and line wrapping ignored), any of its sentences verbatim, or
 * `maxCoverage` or more of its distinct content words. Returns the coverage for the record.
 */
export function holdsAnswer(
  context: string,
  answer: string,
  maxCoverage: number,
  contextTerms: ReadonlySet<string> = contentTermSet(context),
): { holds: boolean; coverage: number } {
  const wanted = contentTermSet(answer);
  const have = contextTerms;
  let found = 0;
  for (const term of wanted) if (have.has(term)) found++;
  const coverage = wanted.size === 0 ? 0 : found / wanted.size;
  const haystack = normalizeForContainment(context);
  const needle = normalizeForContainment(answer);
  if (needle.length > 0 && haystack.includes(needle)) return { holds: true, coverage };
  for (const span of splitSentences(answer, 0, answer.length)) {
    const sentence = normalizeForContainment(answer.slice(span.start, span.end));
    if (sentence.length >= 20 && haystack.includes(sentence)) return { holds: true, coverage };
  }
  return { holds: coverage >= maxCoverage, coverage };
}

interface Unit extends TextSpan {
  heading: boolean;
  /** Index of the list block of a list item. */
  list?: number;
  /** A sentence ending with ":" that introduces the list right after it (the list block's index). */
  introduces?: number;
}

/** Removable pieces of a chunk: prose sentences, whole list items (marker included), table rows, whole code blocks, headings. */
function unitsOf(chunk: SourceChunk): Unit[] {
  const text = chunk.text;
  const units: Unit[] = [];
  const blocks = segmentChunk(text, chunk.headingPath);
  blocks.forEach((block, b) => {
    switch (block.kind) {
      case "prose":
        block.sentences.forEach((s, i) => {
          const intro = i === block.sentences.length - 1 && blocks[b + 1]?.kind === "list" && text.slice(s.start, s.end).endsWith(":");
          units.push({ ...s, heading: false, ...(intro ? { introduces: b + 1 } : {}) });
        });
        break;
      case "list":
        for (const item of block.items) {
          const lineStart = text.lastIndexOf("\n", item.start - 1) + 1;
          units.push({ start: lineStart, end: item.end, heading: false, list: b });
        }
        break;
      case "heading":
        units.push({ start: block.start, end: block.end, heading: true });
        break;
      case "code":
        units.push({ start: block.start, end: block.end, heading: false });
        break;
      default: {
        let start = block.start;
        for (const line of text.slice(block.start, block.end).split("\n")) {
          if (line.trim().length > 0) units.push({ start, end: start + line.length, heading: false });
          start += line.length + 1;
        }
      }
    }
  });
  return units;
}

/** The text of a chunk without the removed units, blank runs collapsed. */
function withoutUnits(text: string, removed: readonly TextSpan[]): string {
  const cuts = [...removed].sort((a, b) => a.start - b.start);
  let out = "";
  let at = 0;
  for (const cut of cuts) {
    if (cut.start > at) out += text.slice(at, cut.start);
    // The spaces after a removed sentence go with it.
    let end = cut.end;
    while (end < text.length && (text[end] === " " || text[end] === "\t")) end++;
    at = Math.max(at, end);
  }
  out += text.slice(at);
  return out
    .split("\n")
    .map((line) => line.replace(/[ \t]{2,}/g, " ").replace(/[ \t]+$/, ""))
    .join("\n")
    .replace(/\n{3,}/g, "\n\n")
    .trim();
}

/** Chunks with more removable pieces than this are left to the distractor strategy (hostile or generated input). */
const MAX_UNITS = 2000;

type Attempt = { ok: true; context: string; chunk: SourceChunk; coverage: number; similarity: number } | { ok: false; reason: string };

function removeAnswer(example: DatasetExample, chunk: SourceChunk | undefined, o: Required<NegativeOptions>): Attempt {
  if (chunk === undefined) return { ok: false, reason: "answer-removed: the example's chunk is not in the collection" };
  // A question about the section as a whole ('What does the section "Book bindings" say?', or the FAQ heading itself)
  // is still answered by what remains of that section.
  const leaf = normalizeForContainment(chunk.headingPath.at(-1) ?? "");
  const question = normalizeForContainment(example.question);
  const namesSection = /\b(?:section|introduction|chapter|page|document|guide)\b/.test(question);
  const isHeading = leaf.length > 0 && (question.includes(leaf) || leaf.includes(question.replace(/\?$/, "")));
  if (namesSection || isHeading) {
    return { ok: false, reason: "answer-removed: the question is about the section as a whole" };
  }
  // How-to questions are answered by steps spread over the chunk; what remains would still answer them in part.
  if (/^(?:how (?:do|can|should|would|to)|what (?:steps|should)|which steps)\b/.test(question)) {
    return { ok: false, reason: "answer-removed: a how-to question is answered by more than its answer sentence" };
  }
  const units = unitsOf(chunk);
  if (units.length > MAX_UNITS) return { ok: false, reason: `answer-removed: the chunk has more than ${MAX_UNITS} sentences and lines` };
  const answerTerms = contentTermSet(example.answer);
  if (answerTerms.size === 0) return { ok: false, reason: "answer-removed: the answer has no content words to look for" };
  // Per unit, the answer's words it holds; per answer word, how many kept units hold it.
  const unitAnswerTerms = units.map((u) => [...contentTermSet(chunk.text.slice(u.start, u.end))].filter((t) => answerTerms.has(t)));
  const holders = new Map<string, number>();
  for (const terms of unitAnswerTerms) for (const t of terms) holders.set(t, (holders.get(t) ?? 0) + 1);
  const removed = new Set<number>();
  const remove = (i: number): void => {
    if (removed.has(i)) return;
    removed.add(i);
    for (const t of unitAnswerTerms[i]!) holders.set(t, holders.get(t)! - 1);
  };
  const coverage = (): number => [...holders.values()].filter((n) => n > 0).length / answerTerms.size;
  // Answer-bearing units go first: those overlapping the answer where it stands verbatim in the chunk, and those
  // holding two or more of the answer's words beyond the question's own ("the server keeps the keys for 24 hours"
  // still answers "What happens if a refresh fails?" when only "refresh" and "fails" are taken out).
  const at = chunk.text.indexOf(example.answer);
  const questionTerms = contentTermSet(example.question);
  const needed = Math.min(2, [...answerTerms].filter((t) => !questionTerms.has(t)).length);
  units.forEach((u, i) => {
    const telling = unitAnswerTerms[i]!.filter((t) => !questionTerms.has(t)).length;
    if ((at >= 0 && u.start < at + example.answer.length && at < u.end) || (needed > 0 && telling >= needed)) remove(i);
  });
  if (removed.size === 0 && coverage() < o.maxAnswerCoverage) return { ok: false, reason: "answer-removed: the chunk does not hold the answer" };
  // Then, while the rest still holds too much of the answer, the unit holding most of the answer's words still held.
  while (coverage() >= o.maxAnswerCoverage) {
    let best = -1;
    let bestCount = 0;
    units.forEach((_, i) => {
      if (removed.has(i)) return;
      const count = unitAnswerTerms[i]!.filter((t) => holders.get(t)! > 0).length;
      if (count > bestCount) {
        best = i;
        bestCount = count;
      }
    });
    if (best < 0) return { ok: false, reason: "answer-removed: the answer cannot be removed from the chunk" };
    remove(best);
  }
  // A list intro ("… offers the following features:") goes with its list when every item is gone.
  const items = new Map<number, number[]>();
  units.forEach((u, i) => {
    if (u.list !== undefined) items.set(u.list, [...(items.get(u.list) ?? []), i]);
  });
  units.forEach((u, i) => {
    const list = u.introduces === undefined ? undefined : items.get(u.introduces);
    if (list !== undefined && list.every((j) => removed.has(j))) remove(i);
  });
  const body = units.reduce((n, u, i) => (removed.has(i) || u.heading ? n : n + contentTerms(chunk.text.slice(u.start, u.end)).length), 0);
  if (body < o.minRemainingWords) {
    return { ok: false, reason: `answer-removed: ${body} content words remain, fewer than ${o.minRemainingWords}` };
  }
  // The final word is the same check every negative passes, on the context exactly as the model will see it.
  const context = withoutUnits(chunk.text, units.filter((_, i) => removed.has(i)));
  const check = holdsAnswer(context, example.answer, o.maxAnswerCoverage);
  if (check.holds) return { ok: false, reason: "answer-removed: the answer survives the removal" };
  return { ok: true, context, chunk, coverage: check.coverage, similarity: 0 };
}

/** A retriever over the collection's chunks, one document at a time (as the gateway indexes them). */
export function retrieverOver(chunks: readonly SourceChunk[]): Bm25Retriever {
  const retriever = new Bm25Retriever();
  const byDocument = new Map<string, IndexedChunk[]>();
  // A fixed order, so retrieval ties do not depend on how the chunks were passed.
  [...chunks]
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    .forEach((c, ordinal) => {
      const list = byDocument.get(c.documentId) ?? [];
      list.push({ chunkId: c.id, documentId: c.documentId, headingPath: c.headingPath, text: c.text, ordinal });
      byDocument.set(c.documentId, list);
    });
  for (const [documentId, list] of byDocument) retriever.putDocument(documentId, list);
  return retriever;
}

class DistractorFinder {
  /** The retriever the gateway answers with (libs/retrieval), so distractors are what serving would retrieve. */
  readonly #retriever: Bm25Retriever;
  readonly #byId = new Map<string, SourceChunk>();
  readonly #terms = new Map<string, Set<string>>();
  constructor(chunks: readonly SourceChunk[]) {
    for (const c of chunks) this.#byId.set(c.id, c);
    this.#retriever = retrieverOver(chunks);
  }

  find(example: DatasetExample, o: Required<NegativeOptions>): Attempt {
    const leaf = example.headingPath.at(-1)?.trim().toLowerCase();
    const eligible = (c: IndexedChunk): boolean => {
      if (c.chunkId === example.chunkId || samePath(c.headingPath, example.headingPath)) return false;
      // A section of the same name elsewhere ("Breaking changes" of another release) answers a question about "the
      // section 'Breaking changes'" as well as the original would.
      return leaf === undefined || c.headingPath.at(-1)?.trim().toLowerCase() !== leaf;
    };
    const hits = this.#retriever.search(example.question, o.candidates, eligible);
    if (hits.length === 0) return { ok: false, reason: "distractor-chunk: no chunk of another section shares a word with the question" };
    for (const hit of hits) {
      const chunk = this.#byId.get(hit.chunk.chunkId)!;
      let terms = this.#terms.get(chunk.id);
      if (terms === undefined) this.#terms.set(chunk.id, (terms = contentTermSet(chunk.text)));
      const check = holdsAnswer(chunk.text, example.answer, o.maxAnswerCoverage, terms);
      if (!check.holds) return { ok: true, context: chunk.text, chunk, coverage: check.coverage, similarity: hit.score };
    }
    return { ok: false, reason: `distractor-chunk: the ${hits.length} most similar chunks of other sections all hold the answer` };
  }
}

/**
 * Unanswerable examples for round(ratio × answerable) of the answerable examples, each answered with the refusal.
 * Examples are taken in an order fixed by the seed and their IDs; each gets at most one negative, questions already
 * used are not used again, and an example for which neither strategy finds a safe context is skipped (and the next
 * one tried), so the target is met whenever enough examples allow it.
 */
export function generateNegatives(
  examples: readonly DatasetExample[],
  chunks: readonly SourceChunk[],
  options: NegativeOptions = {},
): NegativeResult {
  const o = resolveOptions(options);
  const answerable = examples.filter((e) => e.answerable);
  const target = Math.round(o.ratio * answerable.length);
  const negatives: NegativeExample[] = [];
  const skipped: NegativeSkip[] = [];
  if (target === 0) return { negatives, target, skipped };

  const byId = new Map<string, SourceChunk>();
  for (const c of chunks) if (!byId.has(c.id)) byId.set(c.id, c);
  // The collection in a fixed order, so retrieval ties do not depend on how the chunks were passed.
  const ordered = [...byId.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  let finder: DistractorFinder | undefined;
  const order = answerable
    .map((e) => ({ e, key: hashUnit(o.seed, "negative-order", e.id) }))
    .sort((a, b) => a.key - b.key || (a.e.id < b.e.id ? -1 : a.e.id > b.e.id ? 1 : 0));
  const usedQuestions = new Set<string>();

  for (const { e } of order) {
    if (negatives.length >= target) break;
    const questionKey = e.question.toLowerCase().replace(/\s+/g, " ").trim();
    if (usedQuestions.has(questionKey)) continue;
    if (e.answer.trim() === "") {
      // Nothing to keep out of the context: no context could be shown not to hold the answer.
      skipped.push({ exampleId: e.id, reason: "the example has no answer to keep out of a context" });
      continue;
    }
    const removedFirst = hashUnit(o.seed, "negative-strategy", e.id) < o.answerRemovedShare;
    const strategies: NegativeStrategy[] = removedFirst ? ["answer-removed", "distractor-chunk"] : ["distractor-chunk", "answer-removed"];
    const reasons: string[] = [];
    let made: NegativeExample | undefined;
    for (const strategy of strategies) {
      let attempt: Attempt;
      if (strategy === "answer-removed") {
        attempt = removeAnswer(e, byId.get(e.chunkId), o);
      } else {
        finder ??= new DistractorFinder(ordered);
        attempt = finder.find(e, o);
      }
      if (!attempt.ok) {
        reasons.push(attempt.reason);
        continue;
      }
      const { chunk, context } = attempt;
      made = {
        id: negativeExampleId(e.id, strategy, chunk.id, context),
        chunkId: chunk.id,
        documentId: chunk.documentId,
        headingPath: [...chunk.headingPath],
        context,
        question: e.question,
        answer: o.refusal,
        kind: "unanswerable",
        answerable: false,
        generator: e.generator,
        ...(strategy === "distractor-chunk" ? { distractorSource: { chunkId: e.chunkId, documentId: e.documentId } } : {}),
        strategy,
        distractorChunkId: chunk.id,
        sourceExampleId: e.id,
        answerCoverage: attempt.coverage,
        similarity: attempt.similarity,
      };
      break;
    }
    if (made === undefined) {
      skipped.push({ exampleId: e.id, reason: reasons.join("; ") });
      continue;
    }
    usedQuestions.add(questionKey);
    negatives.push(made);
  }
  return { negatives, target, skipped };
}
