import { describe, expect, it } from "vitest";
import { seededRandom } from "@ragtune/testing";
import {
  MinHasher,
  NearDuplicateIndex,
  candidateProbability,
  jaccard,
  lshParams,
  normalizedWords,
  shingleSet,
} from "./minhash.js";

/** A seeded word generator (mulberry32) so the synthetic texts are the same on every run. */
function words(seed: number, n: number): string[] {
  const next = seededRandom(seed);
  return Array.from({ length: n }, () => `w${Math.floor(next() * 50_000)}`);
}

describe("normalizedWords", () => {
  it("folds compatibility forms and case and drops punctuation", () => {
    expect(normalizedWords("Ｆｕｌｌ-width ﬁle, THE End!")).toEqual(["full", "width", "file", "the", "end"]);
    expect(normalizedWords("   ...  ")).toEqual([]);
  });

  it("makes each Chinese or Japanese character a word", () => {
    expect(normalizedWords("数据集 は 便利")).toEqual(["数", "据", "集", "は", "便", "利"]);
  });
});

describe("shingleSet", () => {
  it("gives the same set for texts that differ in case, spacing and punctuation", () => {
    const a = shingleSet("The quick brown fox jumps over the lazy dog.");
    const b = shingleSet("the QUICK   brown fox — jumps over the lazy dog");
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(a.length).toBe(5); // 9 words → 5 distinct 5-grams
  });

  it("makes one shingle of a text shorter than the shingle size and none of an empty one", () => {
    expect(shingleSet("Three words only").length).toBe(1);
    expect(shingleSet("Three words only")).not.toEqual(shingleSet("Three words too"));
    expect(shingleSet("?!").length).toBe(0);
  });

  it("is sorted and distinct", () => {
    const set = shingleSet("a b c d e a b c d e a b c d e f");
    for (let i = 1; i < set.length; i++) expect(set[i]!).toBeGreaterThan(set[i - 1]!);
    expect(set.length).toBe(6); // abcde bcdea cdeab deabc eabcd bcdef
  });
});

describe("jaccard", () => {
  it("is |A ∩ B| / |A ∪ B| of sorted sets", () => {
    expect(jaccard(Uint32Array.of(1, 2, 3, 4), Uint32Array.of(3, 4, 5, 6))).toBeCloseTo(2 / 6);
    expect(jaccard(Uint32Array.of(1, 2), Uint32Array.of(1, 2))).toBe(1);
    expect(jaccard(Uint32Array.of(), Uint32Array.of())).toBe(0);
    expect(jaccard(Uint32Array.of(1), Uint32Array.of())).toBe(0);
  });
});

describe("MinHasher", () => {
  it("is deterministic for a seed and differs across seeds", () => {
    const set = shingleSet(words(1, 80).join(" "));
    expect(Array.from(new MinHasher(128, 7).signature(set))).toEqual(Array.from(new MinHasher(128, 7).signature(set)));
    expect(Array.from(new MinHasher(128, 8).signature(set))).not.toEqual(Array.from(new MinHasher(128, 7).signature(set)));
  });

  it("estimates Jaccard similarity within sampling error", () => {
    const hasher = new MinHasher(128, 42);
    const base = words(2, 200);
    for (const changed of [10, 40, 100]) {
      const other = [...base];
      for (let i = 0; i < changed; i++) other[(i * 7) % other.length] = `x${i}`;
      const a = shingleSet(base.join(" "));
      const b = shingleSet(other.join(" "));
      const exact = jaccard(a, b);
      const sa = hasher.signature(a);
      const sb = hasher.signature(b);
      let equal = 0;
      for (let p = 0; p < 128; p++) if (sa[p] === sb[p]) equal++;
      // standard error √(J(1−J)/128) ≤ 0.045; 3 standard errors
      expect(Math.abs(equal / 128 - exact)).toBeLessThan(0.14);
    }
  });
});

describe("lshParams", () => {
  it("picks 18 bands of 7 rows for threshold 0.8 with 128 permutations", () => {
    const params = lshParams(0.8, 128);
    expect(params).toEqual({ bands: 18, rows: 7 });
    expect(candidateProbability(0.8, params)).toBeGreaterThan(0.98);
    expect(candidateProbability(0.5, params)).toBeLessThan(0.15);
  });

  it("raises the rows with the threshold and catches pairs at the threshold with probability ≥ 0.95", () => {
    let rows = 0;
    for (const t of [0.5, 0.7, 0.8, 0.9, 0.95]) {
      const params = lshParams(t, 128);
      expect(params.rows).toBeGreaterThan(rows);
      expect(params.bands * params.rows).toBeLessThanOrEqual(128);
      expect(candidateProbability(t, params)).toBeGreaterThanOrEqual(0.95);
      rows = params.rows;
    }
  });

  it("rejects a threshold outside (0, 1]", () => {
    expect(() => lshParams(0, 128)).toThrow(/threshold/);
    expect(() => lshParams(1.5, 128)).toThrow(/threshold/);
  });
});

describe("NearDuplicateIndex", () => {
  it("finds every planted near duplicate (Jaccard 0.9) among unrelated texts", () => {
    const index = new NearDuplicateIndex();
    const originals: string[][] = [];
    for (let i = 0; i < 300; i++) {
      originals.push(words(1000 + i, 100));
      index.add(index.fingerprint(originals[i]!.join(" ")));
    }
    for (let i = 0; i < 300; i++) {
      const copy = [...originals[i]!];
      copy[50] = "changed"; // one word of 100: 5 of 96 shingles differ on each side → J = 91/101 ≈ 0.90
      const match = index.findMatch(index.fingerprint(copy.join(" ")));
      expect(match?.item).toBe(i);
      expect(match?.similarity).toBeCloseTo(91 / 101);
    }
    // unrelated texts are not reported
    for (let i = 0; i < 100; i++) expect(index.findMatch(index.fingerprint(words(9000 + i, 60).join(" ")))).toBeUndefined();
  });

  it("verifies candidates: a pair below the threshold is never reported, even when every band collides", () => {
    // one row per band: nearly every pair sharing a shingle is a candidate
    const index = new NearDuplicateIndex({ threshold: 0.8, bands: 128, rows: 1 });
    const base = words(5, 60);
    index.add(index.fingerprint(base.join(" ")));
    const far = [...base];
    for (let i = 0; i < 60; i += 6) far[i] = `y${i}`; // 10 words changed: J well below 0.8
    const fp = index.fingerprint(far.join(" "));
    expect(jaccard(fp.shingles, index.fingerprint(base.join(" ")).shingles)).toBeLessThan(0.5);
    expect(index.findMatch(fp)).toBeUndefined();
    expect(index.verifications).toBe(1);
  });

  it("returns the lowest-numbered match", () => {
    const index = new NearDuplicateIndex();
    const text = words(6, 40).join(" ");
    index.add(index.fingerprint(words(7, 40).join(" ")));
    index.add(index.fingerprint(text));
    index.add(index.fingerprint(text));
    expect(index.findMatch(index.fingerprint(text))).toEqual({ item: 1, similarity: 1 });
  });

  it("finds all matches at or above the threshold, by item number", () => {
    const index = new NearDuplicateIndex();
    const base = words(8, 100);
    const near = [...base];
    near[50] = "changed";
    index.add(index.fingerprint(words(9, 100).join(" ")));
    index.add(index.fingerprint(near.join(" ")));
    index.add(index.fingerprint(base.join(" ")));
    const matches = index.findAll(index.fingerprint(base.join(" ")));
    expect(matches.map((m) => m.item)).toEqual([1, 2]);
    expect(matches[0]!.similarity).toBeCloseTo(91 / 101);
    expect(matches[1]!.similarity).toBe(1);
    expect(index.findAll(index.fingerprint(words(10, 100).join(" ")))).toEqual([]);
  });

  it("never matches a text without words", () => {
    const index = new NearDuplicateIndex();
    index.add(index.fingerprint("..."));
    expect(index.findMatch(index.fingerprint("!!!"))).toBeUndefined();
    expect(index.size).toBe(1);
  });

  it("rejects banding that needs more hash functions than it has", () => {
    expect(() => new NearDuplicateIndex({ bands: 20, rows: 7 })).toThrow(/numPerm/);
  });
});
