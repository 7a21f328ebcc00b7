import { readdirSync } from "node:fs";
import { join } from "node:path";
import { AWS_CORPUS_DIR, corpusMarkdownFiles } from "@ragtune/testing";
import { describe, expect, it } from "vitest";
import { ingestChunks as ingest, SAMPLE_DOCS } from "../test/sample-chunks.js";
import type { DatasetExample } from "./example.js";
import { generateExtractiveDataset, type SourceChunk } from "./extractive-generator.js";
import { DEFAULT_REFUSAL, generateNegatives, holdsAnswer, NEGATIVE_DEFAULTS, type NegativeExample } from "./negatives.js";
import { answerCoverage, normalizeForContainment } from "./text-similarity.js";

function example(id: string, chunk: SourceChunk, question: string, answer: string): DatasetExample {
  return {
    id,
    chunkId: chunk.id,
    documentId: chunk.documentId,
    headingPath: chunk.headingPath,
    context: chunk.text,
    question,
    answer,
    kind: "factual",
    answerable: true,
    generator: "llm",
  };
}

const tokens: SourceChunk = {
  id: "ch_tokens",
  documentId: "doc_api",
  headingPath: ["API Reference", "Authentication"],
  text: "Authentication\n\nTokens expire after 15 minutes. A request with an expired or missing token gets status 401 and the error code `unauthenticated`. The token must hold the scope `ledger:write` to create entries and `ledger:read` to read them.",
};
// Same section as `tokens` (a continuation chunk): holds the answer's words and must never be a distractor.
const tokensContinued: SourceChunk = {
  id: "ch_tokens_2",
  documentId: "doc_api",
  headingPath: ["API Reference", "Authentication"],
  text: "When tokens expire after 15 minutes, clients refresh their tokens before every request that may take longer.",
};
// Another document restating the answer: the most similar chunk, but it holds the answer.
const releaseNote: SourceChunk = {
  id: "ch_release",
  documentId: "doc_release",
  headingPath: ["Release Notes", "3.2.0", "Shorter token lifetime"],
  text: "Shorter token lifetime\n\nTokens issued for the audience `acme-ledger` now expire after 15 minutes instead of 60. Clients must refresh their token when they get 401 `unauthenticated`.",
};
// Another document about tokens that does not say how long they live: the distractor to pick.
const signingKeys: SourceChunk = {
  id: "ch_keys",
  documentId: "doc_security",
  headingPath: ["Security", "Authentication", "Signing keys"],
  text: "Signing keys\n\nThe server fetches the identity service's signing keys at start. Tokens signed with an unknown key are rejected with `unauthenticated`, and the failure is counted in the metric `ledger_auth_key_refresh_failures_total`.",
};
const unrelated: SourceChunk = {
  id: "ch_backup",
  documentId: "doc_ops",
  headingPath: ["Operations", "Backups"],
  text: "Backups\n\nThe database is backed up every night at 02:00 UTC. Backups are kept for 35 days in a second region and restored once a quarter as a drill.",
};
const journal: SourceChunk = {
  id: "ch_journal",
  documentId: "doc_overview",
  headingPath: ["Overview", "Core concepts", "Journal entries"],
  text: "Journal entries\n\nA journal entry is a group of postings that must balance: the sum of debits equals the sum of credits, per currency. An entry with fewer than two postings is rejected. Entries are immutable once committed; a mistake is corrected with a reversing entry, never by editing. Every entry records the principal that posted it and the time it was committed.",
};
const collection = [tokens, tokensContinued, releaseNote, signingKeys, unrelated, journal];

const tokenLifetime = example("ex_tokens", tokens, "How long do tokens live before they expire?", "Tokens expire after 15 minutes.");
const journalDefinition = example(
  "ex_journal",
  journal,
  "What is a journal entry?",
  "A journal entry is a group of postings that must balance: the sum of debits equals the sum of credits, per currency.",
);

/** The checks every negative must pass, whatever the strategy. */
function expectSafe(negative: NegativeExample, source: DatasetExample, chunks: readonly SourceChunk[], refusal = DEFAULT_REFUSAL): void {
  expect(negative.answer).toBe(refusal);
  expect(negative.kind).toBe("unanswerable");
  expect(negative.answerable).toBe(false);
  expect(negative.question).toBe(source.question);
  expect(negative.generator).toBe(source.generator);
  expect(negative.sourceExampleId).toBe(source.id);
  expect(negative.distractorChunkId).toBe(negative.chunkId);
  // The context never holds the answer: not verbatim, not by content words.
  expect(normalizeForContainment(negative.context)).not.toContain(normalizeForContainment(source.answer));
  expect(answerCoverage(source.answer, negative.context)).toBeLessThan(NEGATIVE_DEFAULTS.maxAnswerCoverage);
  expect(answerCoverage(source.answer, negative.context)).toBeCloseTo(negative.answerCoverage, 10);
  const contextChunk = chunks.find((c) => c.id === negative.chunkId)!;
  expect(negative.documentId).toBe(contextChunk.documentId);
  expect(negative.headingPath).toEqual(contextChunk.headingPath);
  if (negative.strategy === "distractor-chunk") {
    // Another section or document, shown as stored.
    expect(negative.chunkId).not.toBe(source.chunkId);
    expect(contextChunk.headingPath).not.toEqual(source.headingPath);
    expect(negative.context).toBe(contextChunk.text);
    expect(negative.distractorSource).toEqual({ chunkId: source.chunkId, documentId: source.documentId });
    expect(negative.similarity).toBeGreaterThan(0);
  } else {
    // The question's own chunk, cut down: what remains is text of that chunk, shorter.
    expect(negative.chunkId).toBe(source.chunkId);
    expect(negative.distractorSource).toBeUndefined();
    expect(negative.context.length).toBeLessThan(contextChunk.text.length);
    for (const line of negative.context.split("\n")) expect(normalizeForContainment(contextChunk.text)).toContain(normalizeForContainment(line.slice(0, 40)));
  }
}

describe("distractor-chunk", () => {
  it("pairs the question with the most similar chunk of another section that does not hold the answer", () => {
    const { negatives, target, skipped } = generateNegatives([tokenLifetime], collection, { ratio: 1, answerRemovedShare: 0 });
    expect(target).toBe(1);
    expect(skipped).toEqual([]);
    expect(negatives).toHaveLength(1);
    const negative = negatives[0]!;
    // Not the same-section continuation, not the release note that restates the answer: the signing keys chunk.
    expect(negative).toMatchObject({ strategy: "distractor-chunk", chunkId: signingKeys.id, distractorChunkId: signingKeys.id, context: signingKeys.text });
    expectSafe(negative, tokenLifetime, collection);
  });

  it("never uses a chunk of the same section or of a section with the same heading path elsewhere", () => {
    const sameHeadingElsewhere: SourceChunk = { ...signingKeys, id: "ch_copy", documentId: "doc_other", headingPath: tokens.headingPath };
    // minRemainingWords out of reach: no answer-removed fallback either.
    const options = { ratio: 1, answerRemovedShare: 0, minRemainingWords: 10_000 };
    const { negatives, skipped } = generateNegatives([tokenLifetime], [tokens, tokensContinued, sameHeadingElsewhere], options);
    expect(negatives).toEqual([]);
    expect(skipped).toHaveLength(1);
    expect(skipped[0]!.reason).toMatch(/distractor-chunk: no chunk of another section/);
  });

  it("skips every candidate that holds the answer, verbatim or by content words, and says so", () => {
    const restated: SourceChunk = { ...releaseNote, id: "ch_restated", text: "Lifetime\n\nEvery token expires after 15 minutes." };
    const options = { ratio: 1, answerRemovedShare: 0, minRemainingWords: 10_000 };
    const { negatives, skipped } = generateNegatives([tokenLifetime], [tokens, releaseNote, restated], options);
    expect(negatives).toEqual([]);
    expect(skipped[0]!.reason).toMatch(/most similar chunks of other sections all hold the answer/);
    expect(skipped[0]!.reason).toMatch(/answer-removed: \d+ content words remain/);
  });
});

describe("answer-removed", () => {
  it("is the fallback when no other section offers a safe distractor", () => {
    const { negatives } = generateNegatives([tokenLifetime], [tokens, tokensContinued, releaseNote], { ratio: 1, answerRemovedShare: 0, minRemainingWords: 10 });
    expect(negatives.map((n) => n.strategy)).toEqual(["answer-removed"]);
    expect(negatives[0]!.context).toBe(
      "Authentication\n\nA request with an expired or missing token gets status 401 and the error code `unauthenticated`. The token must hold the scope `ledger:write` to create entries and `ledger:read` to read them.",
    );
    expectSafe(negatives[0]!, tokenLifetime, collection);
  });

  it("removes the answer-bearing sentences from the question's own chunk and keeps the rest", () => {
    const { negatives } = generateNegatives([journalDefinition], collection, { ratio: 1, answerRemovedShare: 1, minRemainingWords: 10 });
    expect(negatives).toHaveLength(1);
    const negative = negatives[0]!;
    expect(negative.strategy).toBe("answer-removed");
    expect(negative.context).toBe(
      "Journal entries\n\nAn entry with fewer than two postings is rejected. Entries are immutable once committed; a mistake is corrected with a reversing entry, never by editing. Every entry records the principal that posted it and the time it was committed.",
    );
    expectSafe(negative, journalDefinition, collection);
  });

  it("falls back to a distractor when too little would remain", () => {
    const { negatives } = generateNegatives([journalDefinition], collection, { ratio: 1, answerRemovedShare: 1, minRemainingWords: 500 });
    expect(negatives).toHaveLength(1);
    expect(negatives[0]!.strategy).toBe("distractor-chunk");
    expectSafe(negatives[0]!, journalDefinition, collection);
  });

  it("is not used for questions about the whole section or how-to questions", () => {
    const sectionQuestion = example("ex_section", journal, 'What does the section "Journal entries" say?', journalDefinition.answer);
    const howTo = example("ex_howto", journal, "How do you correct a mistake in an entry?", "a mistake is corrected with a reversing entry, never by editing.");
    for (const source of [sectionQuestion, howTo]) {
      const { negatives } = generateNegatives([source], collection, { ratio: 1, answerRemovedShare: 1, minRemainingWords: 5 });
      expect(negatives.map((n) => n.strategy)).toEqual(["distractor-chunk"]);
      expectSafe(negatives[0]!, source, collection);
    }
  });
});

describe("ratio, refusal and determinism", () => {
  const chunks = ingest(SAMPLE_DOCS, readdirSync(SAMPLE_DOCS).sort().map((f) => join(SAMPLE_DOCS, f)), 256);
  const answerable = generateExtractiveDataset(chunks);

  it("makes round(ratio × answerable) negatives, 15% by default, each from a different answerable example", () => {
    expect(answerable.length).toBeGreaterThan(50);
    const byDefault = generateNegatives(answerable, chunks);
    expect(byDefault.target).toBe(Math.round(0.15 * answerable.length));
    expect(byDefault.negatives).toHaveLength(byDefault.target);
    for (const ratio of [0, 0.05, 0.2, 0.5]) {
      const { negatives, target } = generateNegatives(answerable, chunks, { ratio });
      expect(target).toBe(Math.round(ratio * answerable.length));
      expect(negatives).toHaveLength(target);
      expect(new Set(negatives.map((n) => n.sourceExampleId)).size).toBe(negatives.length);
      expect(new Set(negatives.map((n) => n.id)).size).toBe(negatives.length);
    }
  });

  it("counts only answerable examples toward the ratio", () => {
    const withNegatives = [...answerable, ...generateNegatives(answerable, chunks, { ratio: 0.5 }).negatives];
    expect(generateNegatives(withNegatives, chunks).target).toBe(Math.round(0.15 * answerable.length));
  });

  it("teaches exactly the configured refusal", () => {
    const refusal = "Die Dokumente enthalten keine Antwort auf diese Frage.";
    const { negatives } = generateNegatives(answerable, chunks, { ratio: 0.3, refusal });
    expect(negatives.length).toBeGreaterThan(0);
    for (const n of negatives) expect(n.answer).toBe(refusal);
    expect(generateNegatives(answerable, chunks).negatives.every((n) => n.answer === DEFAULT_REFUSAL)).toBe(true);
    expect(DEFAULT_REFUSAL).toBe("The provided context does not contain sufficient information to answer this question.");
  });

  it("is deterministic by seed and independent of input order", () => {
    const a = generateNegatives(answerable, chunks, { seed: 7, ratio: 0.3 });
    const b = generateNegatives([...answerable].reverse(), [...chunks].reverse(), { seed: 7, ratio: 0.3 });
    expect(b).toEqual(a);
    const other = generateNegatives(answerable, chunks, { seed: 8, ratio: 0.3 });
    expect(other.negatives.map((n) => n.sourceExampleId)).not.toEqual(a.negatives.map((n) => n.sourceExampleId));
  });

  it("rejects options out of range with the option's name", () => {
    expect(() => generateNegatives(answerable, chunks, { ratio: 1.5 })).toThrow(/ratio/);
    expect(() => generateNegatives(answerable, chunks, { ratio: Number.NaN })).toThrow(/ratio/);
    expect(() => generateNegatives(answerable, chunks, { seed: 0.5 })).toThrow(/seed/);
    expect(() => generateNegatives(answerable, chunks, { refusal: "  " })).toThrow(/refusal/);
    expect(() => generateNegatives(answerable, chunks, { maxAnswerCoverage: 0 })).toThrow(/maxAnswerCoverage/);
    expect(() => generateNegatives(answerable, chunks, { candidates: 0 })).toThrow(/candidates/);
  });
});

describe("holdsAnswer", () => {
  it("finds the answer verbatim across line wraps and case, by one of its sentences, or by content words", () => {
    expect(holdsAnswer("TOKENS expire\nafter 15 minutes. More text.", "Tokens expire after 15 minutes.", 0.5).holds).toBe(true);
    expect(holdsAnswer("x. Entries are immutable once committed. y", "No. Entries are immutable once committed.", 0.99).holds).toBe(true);
    expect(holdsAnswer("An entry holds 500 postings at most.", "An entry may hold at most 500 postings.", 0.5)).toEqual({ holds: true, coverage: 1 });
    expect(holdsAnswer("Backups are kept for 35 days.", "An entry may hold at most 500 postings.", 0.5)).toEqual({ holds: false, coverage: 0 });
  });
});

describe("on real documentation", () => {
  const sample = ingest(SAMPLE_DOCS, readdirSync(SAMPLE_DOCS).sort().map((f) => join(SAMPLE_DOCS, f)), 256);
  const aws = ingest(AWS_CORPUS_DIR, corpusMarkdownFiles(AWS_CORPUS_DIR).filter((_, i) => i % 3 === 0), 512);

  for (const [name, chunks] of [["the sample docs", sample], ["the AWS corpus slice", aws]] as const) {
    it(`${name}: both strategies, every context free of its answer, every distractor from another section`, () => {
      const answerable = generateExtractiveDataset(chunks);
      const { negatives, target } = generateNegatives(answerable, chunks, { ratio: 0.5, answerRemovedShare: 0.5 });
      expect(negatives).toHaveLength(target);
      const sources = new Map(answerable.map((e) => [e.id, e]));
      for (const n of negatives) expectSafe(n, sources.get(n.sourceExampleId)!, chunks);
      const strategies = new Set(negatives.map((n) => n.strategy));
      expect(strategies).toEqual(new Set(["distractor-chunk", "answer-removed"]));
    });
  }
});

describe("hostile input", () => {
  it("handles empty collections, empty answers, a huge chunk and a chunk of one enormous token", () => {
    expect(generateNegatives([], [])).toEqual({ negatives: [], target: 0, skipped: [] });
    const huge: SourceChunk = { id: "ch_huge", documentId: "doc_huge", headingPath: ["Huge"], text: "Tokens expire after 15 minutes. ".repeat(30_000) };
    const token: SourceChunk = { id: "ch_token", documentId: "doc_token", headingPath: ["Token"], text: "x".repeat(200_000) };
    const sources = [tokenLifetime, example("ex_empty", tokens, "What is nothing?", ""), example("ex_huge", huge, "How long do tokens live?", "Tokens expire after 15 minutes.")];
    const chunks = [...collection, huge, token];
    const { negatives, skipped } = generateNegatives(sources, chunks, { ratio: 1, answerRemovedShare: 1 });
    expect(negatives.length + skipped.length).toBe(3);
    for (const n of negatives) expectSafe(n, sources.find((s) => s.id === n.sourceExampleId)!, chunks);
  });
});
