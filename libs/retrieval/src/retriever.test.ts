import { describe, expect, it } from "vitest";
import { Bm25Retriever, type IndexedChunk } from "./retriever.js";

const chunk = (chunkId: string, documentId: string, text: string, headingPath: string[] = []): IndexedChunk => ({ chunkId, documentId, text, headingPath, ordinal: 0 });

describe("Bm25Retriever", () => {
  it("ranks the chunk that holds the question's terms first", () => {
    const r = new Bm25Retriever();
    r.putDocument("d1", [chunk("c1", "d1", "Buckets store objects. Versioning keeps every version of an object."), chunk("c2", "d1", "Lifecycle rules expire objects after a number of days.")]);
    r.putDocument("d2", [chunk("c3", "d2", "EC2 instances run in a VPC subnet.", ["Compute", "Networking"])]);
    expect(r.search("How long until lifecycle rules expire objects?", 2)[0]?.chunk.chunkId).toBe("c2");
    expect(r.search("which subnet do instances use", 1)[0]?.chunk.chunkId).toBe("c3");
    expect(r.search("networking", 1)[0]?.chunk.chunkId).toBe("c3"); // heading path is searched
    expect(r.size).toBe(3);
  });

  it("replaces a document's chunks and removes a document", () => {
    const r = new Bm25Retriever();
    r.putDocument("d1", [chunk("c1", "d1", "old text about glaciers")]);
    r.putDocument("d1", [chunk("c2", "d1", "new text about deserts")]);
    expect(r.search("glaciers", 3)).toEqual([]);
    expect(r.search("deserts", 3).map((h) => h.chunk.chunkId)).toEqual(["c2"]);
    r.removeDocument("d1");
    expect(r.size).toBe(0);
    expect(r.search("deserts", 3)).toEqual([]);
  });

  it("answers empty for no match, top_k 0 or an empty index", () => {
    const r = new Bm25Retriever();
    expect(r.search("anything", 4)).toEqual([]);
    r.putDocument("d1", [chunk("c1", "d1", "alpha beta")]);
    expect(r.search("gamma", 4)).toEqual([]);
    expect(r.search("alpha", 0)).toEqual([]);
  });

  it("stays correct after many documents are replaced (postings compacted)", () => {
    const r = new Bm25Retriever();
    for (let round = 0; round < 5; round++) {
      for (let d = 0; d < 40; d++) r.putDocument(`d${d}`, [chunk(`c${d}-${round}`, `d${d}`, `round ${round} topic${d} shared words`)]);
    }
    expect(r.size).toBe(40);
    const hits = r.search("topic7", 3);
    expect(hits[0]?.chunk.chunkId).toBe("c7-4");
    expect(hits.every((h) => h.chunk.chunkId.endsWith("-4"))).toBe(true); // nothing of a replaced round
    expect(r.search("round 3", 5)).toHaveLength(5);
    expect(r.search("round 4 topic9", 1)[0]?.chunk.chunkId).toBe("c9-4");
    // Compacted (200 slots were used for 40 chunks): the same chunks and scores, ties included, as an index built
    // with the last round alone.
    const fresh = new Bm25Retriever();
    for (let d = 0; d < 40; d++) fresh.putDocument(`d${d}`, [chunk(`c${d}-4`, `d${d}`, `round 4 topic${d} shared words`)]);
    for (const q of ["topic7", "round 4", "shared words", "topic12 round", "words"]) {
      expect(r.search(q, 10).map((h) => [h.chunk.chunkId, h.score])).toEqual(fresh.search(q, 10).map((h) => [h.chunk.chunkId, h.score]));
    }
  });

  it("reuses a kept chunk's terms on a re-put only when its text and headings are the same", () => {
    const r = new Bm25Retriever();
    r.putDocument("d", [chunk("a", "d", "alpha beta"), chunk("b", "d", "gamma delta")]);
    r.putDocument("d", [chunk("a", "d", "alpha beta"), chunk("b", "d", "epsilon zeta")]); // "b" under its old ID, new text
    expect(r.search("alpha", 5).map((h) => h.chunk.chunkId)).toEqual(["a"]);
    expect(r.search("gamma", 5)).toEqual([]);
    expect(r.search("epsilon", 5).map((h) => h.chunk.chunkId)).toEqual(["b"]);
    r.putDocument("d", [{ ...chunk("a", "d", "alpha beta"), headingPath: ["Theta"] }]);
    expect(r.search("theta", 5).map((h) => h.chunk.chunkId)).toEqual(["a"]);
    const fresh = new Bm25Retriever();
    fresh.putDocument("d", [{ ...chunk("a", "d", "alpha beta"), headingPath: ["Theta"] }]);
    expect(r.search("alpha theta", 5).map((h) => h.score)).toEqual(fresh.search("alpha theta", 5).map((h) => h.score));
  });

  it("returns the top k best first", () => {
    const r = new Bm25Retriever();
    r.putDocument("d", [chunk("a", "d", "alpha"), chunk("b", "d", "alpha alpha beta"), chunk("c", "d", "alpha beta gamma"), chunk("e", "d", "zeta")]);
    const hits = r.search("alpha beta gamma", 2);
    expect(hits.map((h) => h.chunk.chunkId)).toEqual(["c", "b"]);
    expect(hits[0]!.score).toBeGreaterThan(hits[1]!.score);
  });
});

describe("Bm25Retriever scores after changes", () => {
  it("scores an index changed between searches as one built in one go (length norms follow every change)", () => {
    const docs = Array.from({ length: 30 }, (_, d) => [`d${d}`, Array.from({ length: 3 }, (_, i) => chunk(`c${d}-${i}`, `d${d}`, `alpha ${"filler ".repeat((d * 7 + i * 3) % 23)}beta${d % 4} gamma`))] as const);
    const questions = ["alpha beta1", "gamma beta3 filler", "beta0", "alpha gamma"];
    const changing = new Bm25Retriever();
    for (const [d, chunks] of docs) {
      changing.putDocument(d, chunks);
      for (const q of questions) changing.search(q, 3); // norms computed for the index as it was
    }
    for (const [d] of docs.slice(0, 5)) changing.removeDocument(d);
    changing.putDocument("d7", [chunk("c7-new", "d7", "alpha beta1 short")]);
    const fresh = new Bm25Retriever();
    for (const [d, chunks] of docs.slice(5)) if (d !== "d7") fresh.putDocument(d, chunks);
    fresh.putDocument("d7", [chunk("c7-new", "d7", "alpha beta1 short")]); // last, as in the changed index (ties go by position)
    for (const q of questions) {
      const got = changing.search(q, 10).map((h) => [h.chunk.chunkId, h.score]);
      expect(got).toEqual(fresh.search(q, 10).map((h) => [h.chunk.chunkId, h.score]));
      expect(got.length).toBeGreaterThan(0);
    }
  });
});

describe("Bm25Retriever.search with accept", () => {
  it("filters before topK applies and keeps the order of the rest", () => {
    const r = new Bm25Retriever();
    const chunk = (chunkId: string, text: string, ordinal: number) => ({ chunkId, documentId: "d", headingPath: [], text, ordinal });
    r.putDocument("d", [
      chunk("a", "Tokens expire after 15 minutes.", 0),
      chunk("b", "Page tokens stay valid for 24 hours.", 1),
      chunk("c", "The server reloads the TLS certificate on SIGHUP.", 2),
    ]);
    const all = r.search("when do tokens expire", 3).map((h) => h.chunk.chunkId);
    expect(all[0]).toBe("a");
    expect(r.search("when do tokens expire", 1, (c) => c.chunkId !== "a").map((h) => h.chunk.chunkId)).toEqual(["b"]);
    expect(r.search("when do tokens expire", 3, () => false)).toEqual([]);
  });
});

describe("Bm25Retriever rare-first search", () => {
  it("gives the exhaustive search's results (same chunks, same scores up to rounding), with and without accept, as the index changes", () => {
    // A seeded corpus with a Zipf-like vocabulary: a few words in most chunks, many in few.
    let seed = 7;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    const vocabulary = Array.from({ length: 3000 }, (_, i) => `w${i}`);
    const word = () => vocabulary[Math.floor(vocabulary.length * rnd() ** 3)]!;
    const text = (words: number) => Array.from({ length: words }, word).join(" ");
    const docs = Array.from({ length: 300 }, (_, d) =>
      Array.from({ length: 10 }, (_, i) => ({ chunkId: `c${d}-${i}`, documentId: `d${d}`, headingPath: [text(3)], text: text(20 + Math.floor(rnd() * 60)), ordinal: i })),
    );
    const fast = new Bm25Retriever();
    const reference = new Bm25Retriever({ rareFirst: false });
    for (const [d, chunks] of docs.entries()) for (const r of [fast, reference]) r.putDocument(`d${d}`, chunks);
    const compare = () => {
      for (let q = 0; q < 300; q++) {
        const question = text(2 + Math.floor(rnd() * 8));
        const accept = q % 3 === 0 ? (c: { chunkId: string }) => !c.chunkId.endsWith("-0") : undefined;
        for (const k of [1, 5, 20]) {
          const got = fast.search(question, k, accept);
          const want = reference.search(question, k, accept);
          expect(got.length).toBe(want.length);
          for (let i = 0; i < got.length; i++) {
            expect(got[i]!.score).toBeCloseTo(want[i]!.score, 9);
            // A different chunk only where two scores tie up to rounding.
            if (got[i]!.chunk.chunkId !== want[i]!.chunk.chunkId) expect(Math.abs(got[i]!.score - want[i]!.score)).toBeLessThan(1e-9);
          }
        }
      }
    };
    compare();
    for (let d = 0; d < 40; d++) for (const r of [fast, reference]) r.removeDocument(`d${d * 7}`);
    for (const r of [fast, reference]) r.putDocument("d3", docs[5]!.map((c) => ({ ...c, chunkId: `${c.chunkId}-moved`, documentId: "d3" })));
    compare();
    // Both paths were taken: most questions answered from the rarer terms, some by visiting everything.
    expect(fast.searches.rareFirst).toBeGreaterThan(fast.searches.exhaustive);
    expect(fast.searches.exhaustive).toBeGreaterThan(0);
    expect(fast.searches.dropped).toBeGreaterThan(0); // candidates the frequent terms could not lift were dropped
    expect(reference.searches.rareFirst).toBe(0);
  });
});
