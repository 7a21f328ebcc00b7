import { describe, expect, it } from "vitest";
import { answerCoverage, Bm25Index, contentTerms, normalizeForContainment, stem, wordTokens } from "./text-similarity.js";

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

describe("Bm25Index", () => {
  const docs = [
    "Tokens expire after 15 minutes. A request with an expired token gets status 401.",
    "A book holds at most 200 bindings. Bindings grant scopes on a book.",
    "The server reloads the TLS certificate on SIGHUP.",
    "Page tokens stay valid for 24 hours.",
    "Tokens expire after 15 minutes. A request with an expired token gets status 401.",
  ];
  const index = new Bm25Index(docs);

  it("ranks the document sharing the query's rare words first and leaves out documents sharing none", () => {
    const hits = index.search("How many bindings can a book hold?");
    expect(hits[0]!.index).toBe(1);
    expect(hits.map((h) => h.index)).not.toContain(2);
  });

  it("orders equal scores by position, so the result is the same on every run", () => {
    const hits = index.search("When do tokens expire?");
    expect(hits.slice(0, 2).map((h) => h.index)).toEqual([0, 4]);
    expect(hits[0]!.score).toBe(hits[1]!.score);
    expect(index.search("When do tokens expire?")).toEqual(hits);
  });

  it("gives a rare term more weight than a common one", () => {
    expect(index.idf("sighup")).toBeGreaterThan(index.idf("token"));
    expect(index.idf("absent")).toBe(0);
  });

  it("filters with accept before the limit applies", () => {
    const hits = index.search("tokens expire", { accept: (i) => i !== 0, limit: 1 });
    expect(hits.map((h) => h.index)).toEqual([4]);
  });

  it("answers an empty query and an empty collection with no hits", () => {
    expect(index.search("the of and")).toEqual([]);
    expect(new Bm25Index([]).search("tokens")).toEqual([]);
  });
});
