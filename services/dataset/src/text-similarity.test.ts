import { describe, expect, it } from "vitest";
import { answerCoverage, contentTerms, normalizeForContainment, stem, wordTokens } from "./text-similarity.js";

describe("wordTokens", () => {
  it("keeps numbers, versions and snake_case whole and splits on punctuation and Markdown", () => {
    expect(wordTokens("A book accepts 2,000 entries; `max_postings_per_entry` is 500 since 3.2.1 (see **Limits**).")).toEqual([
      "a", "book", "accepts", "2000", "entries", "max_postings_per_entry", "is", "500", "since", "3.2.1", "see", "limits",
    ]);
  });

  it("keeps contractions and possessives as one token and splits a sentence end without a space", () => {
    expect(wordTokens("Don't use the bucket's name.Next")).toEqual(["don't", "use", "the", "bucket's", "name", "next"]);
  });
});

describe("stem", () => {
  it("folds plurals and possessives and nothing else", () => {
    expect(["entries", "buckets", "classes", "matches", "bucket's", "status", "access", "analysis", "gets", "running"].map(stem)).toEqual([
      "entry", "bucket", "class", "match", "bucket", "status", "access", "analysis", "get", "running",
    ]);
  });
});

describe("contentTerms", () => {
  it("drops function words and question words, single characters, and stems the rest", () => {
    expect(contentTerms("What is the maximum number of postings in a journal entry?")).toEqual(["maximum", "number", "posting", "journal", "entry"]);
  });
});

describe("answerCoverage", () => {
  it("is the share of the answer's content words present in the text", () => {
    const answer = "An entry may hold at most 500 postings.";
    expect(answerCoverage(answer, "An entry holds 500 postings at most")).toBe(1);
    expect(answerCoverage(answer, "postings per entry | 500")).toBe(0.75);
    expect(answerCoverage(answer, "Entries are immutable once committed.")).toBe(0.25);
    expect(answerCoverage(answer, "Tokens expire after 15 minutes.")).toBe(0);
    expect(answerCoverage("the and of", "anything")).toBe(0);
  });
});

describe("normalizeForContainment", () => {
  it("ignores case and line wrapping", () => {
    expect(normalizeForContainment("Tokens  expire\nafter 15 MINUTES.")).toBe("tokens expire after 15 minutes.");
  });
});
