import { describe, expect, it } from "vitest";
import { seededRandom } from "@ragtune/testing";
import type { DatasetExample, QuestionKind } from "./example.js";
import { shingleSet, jaccard } from "./minhash.js";
import { SPLITS, groupKeyOf, resolveSplitConfig, splitExamples, type SplitName, type SplitResult } from "./splits.js";

/** Synthetic data that is the same on every run. */
const rng = seededRandom;

function sentence(next: () => number, words: number): string {
  return Array.from({ length: words }, () => `w${Math.floor(next() * 100_000)}`).join(" ");
}

/**
 * Documents of 3–12 chunks, chunks of 1–4 examples: kinds factual 50 %, conceptual 25 %, comparison 10 %,
 * unanswerable 15 % (answerable false, a question borrowed from another chunk).
 */
function synthetic(documents: number, seed = 1): DatasetExample[] {
  const next = rng(seed);
  const out: DatasetExample[] = [];
  for (let d = 0; d < documents; d++) {
    const chunks = 3 + Math.floor(next() * 10);
    for (let c = 0; c < chunks; c++) {
      const perChunk = 1 + Math.floor(next() * 4);
      for (let e = 0; e < perChunk; e++) {
        const r = next();
        const kind: QuestionKind = r < 0.5 ? "factual" : r < 0.75 ? "conceptual" : r < 0.85 ? "comparison" : "unanswerable";
        const answerable = kind !== "unanswerable";
        out.push({
          id: `ex-${d}-${c}-${e}`,
          chunkId: `chunk-${d}-${c}`,
          documentId: `doc-${d}`,
          headingPath: [`Doc ${d}`],
          context: sentence(next, 30),
          question: `${sentence(next, 8)}?`,
          answer: answerable ? sentence(next, 15) : "The provided context does not contain the answer to this question.",
          kind,
          answerable,
          generator: "llm",
          ...(answerable ? {} : { distractorSource: { chunkId: `chunk-${(d + 1) % documents}-0`, documentId: `doc-${(d + 1) % documents}` } }),
        });
      }
    }
  }
  return out;
}

function shuffled<T>(items: readonly T[], seed: number): T[] {
  const next = rng(seed);
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

function idsBySplit(result: SplitResult): Record<SplitName, string[]> {
  return { train: result.train.map((e) => e.id), val: result.val.map((e) => e.id), test: result.test.map((e) => e.id) };
}

function splitOfKey(result: SplitResult, key: (e: DatasetExample) => string): Map<string, Set<SplitName>> {
  const out = new Map<string, Set<SplitName>>();
  for (const split of SPLITS) {
    for (const example of result[split]) {
      const k = key(example);
      if (!out.has(k)) out.set(k, new Set());
      out.get(k)!.add(split);
    }
  }
  return out;
}

const data = synthetic(500); // ≈ 5,700 examples in ≈ 3,700 chunks

describe("splitExamples", () => {
  it("works on a few thousand examples", () => {
    expect(data.length).toBeGreaterThan(4000);
  });

  it("never puts one chunk in two splits", () => {
    const result = splitExamples(data);
    const byChunk = splitOfKey(result, (e) => e.chunkId);
    expect(byChunk.size).toBe(new Set(data.map((e) => e.chunkId)).size);
    expect([...byChunk.values()].filter((splits) => splits.size > 1)).toEqual([]);
    expect(result.train.length + result.val.length + result.test.length + result.dropped.length).toBe(data.length);
  });

  it("by document, never puts one document in two splits", () => {
    const result = splitExamples(data, { groupBy: "document" });
    const byDocument = splitOfKey(result, (e) => e.documentId);
    expect(byDocument.size).toBe(500);
    expect([...byDocument.values()].filter((splits) => splits.size > 1)).toEqual([]);
    expect(result.stats.train.groups + result.stats.val.groups + result.stats.test.groups).toBe(500);
  });

  it("is deterministic across runs and input orders, and the seed changes it", () => {
    const first = idsBySplit(splitExamples(data));
    expect(idsBySplit(splitExamples(data))).toEqual(first);
    expect(idsBySplit(splitExamples(shuffled(data, 7)))).toEqual(first);
    expect(idsBySplit(splitExamples([...data].reverse()))).toEqual(first);
    const reseeded = idsBySplit(splitExamples(data, { seed: 43 }));
    expect(reseeded).not.toEqual(first);
    expect(reseeded.train.length).toBeGreaterThan(0);
  });

  it("hits 60/20/20 within 1 % by chunk and 3 % by document", () => {
    for (const [groupBy, tolerance] of [["chunk", 0.01], ["document", 0.03]] as const) {
      const result = splitExamples(data, { groupBy, dropNearDuplicatesFromTrain: false });
      expect(Math.abs(result.train.length / data.length - 0.6)).toBeLessThan(tolerance);
      expect(Math.abs(result.val.length / data.length - 0.2)).toBeLessThan(tolerance);
      expect(Math.abs(result.test.length / data.length - 0.2)).toBeLessThan(tolerance);
    }
  });

  it("honours other ratios, including an empty split", () => {
    const result = splitExamples(data, { ratios: { train: 0.8, val: 0.2, test: 0 } });
    expect(result.test).toEqual([]);
    expect(Math.abs(result.train.length / data.length - 0.8)).toBeLessThan(0.01);
    expect(result.stats.test).toEqual({ examples: 0, answerable: 0, unanswerable: 0, byKind: { factual: 0, conceptual: 0, comparison: 0, unanswerable: 0 }, groups: 0 });
  });

  it("splits every stratum (question kind × answerable) in the ratios", () => {
    const result = splitExamples(data, { dropNearDuplicatesFromTrain: false });
    const strata = new Map<string, Record<SplitName, number>>();
    for (const split of SPLITS) {
      for (const e of result[split]) {
        const key = `${e.kind}/${e.answerable}`;
        if (!strata.has(key)) strata.set(key, { train: 0, val: 0, test: 0 });
        strata.get(key)![split]++;
      }
    }
    expect([...strata.keys()].sort()).toEqual(["comparison/true", "conceptual/true", "factual/true", "unanswerable/false"]);
    for (const [stratum, counts] of strata) {
      const total = counts.train + counts.val + counts.test;
      expect(total, stratum).toBeGreaterThan(500);
      expect(Math.abs(counts.train / total - 0.6), stratum).toBeLessThan(0.02);
      expect(Math.abs(counts.val / total - 0.2), stratum).toBeLessThan(0.02);
      expect(Math.abs(counts.test / total - 0.2), stratum).toBeLessThan(0.02);
    }
    // the stats agree with the examples
    for (const split of SPLITS) {
      expect(result.stats[split].unanswerable).toBe(result[split].filter((e) => !e.answerable).length);
      expect(result.stats[split].byKind.comparison).toBe(result[split].filter((e) => e.kind === "comparison").length);
    }
  });

  it("stratifies a rare stratum that a plain hash split would leave lopsided", () => {
    // 20 comparison questions, one per chunk, among 3,000 factual ones: 12 / 4 / 4
    const next = rng(3);
    const examples: DatasetExample[] = [];
    for (let i = 0; i < 3020; i++) {
      const kind: QuestionKind = i < 20 ? "comparison" : "factual";
      examples.push({ ...data[0]!, id: `r-${i}`, chunkId: `rc-${i}`, question: sentence(next, 8), answer: sentence(next, 15), kind, answerable: true });
    }
    const result = splitExamples(examples);
    expect(SPLITS.map((s) => result.stats[s].byKind.comparison)).toEqual([12, 4, 4]);
  });

  it("returns each split sorted by id", () => {
    const result = splitExamples(shuffled(data, 9));
    for (const split of SPLITS) {
      const ids = result[split].map((e) => e.id);
      expect(ids).toEqual([...ids].sort());
    }
  });

  it("drops train examples that nearly repeat a val or test example, and only those", () => {
    // 300 pairs of chunks holding the same question and answer up to one word: boilerplate on two pages
    const next = rng(11);
    const planted: DatasetExample[] = [];
    for (let p = 0; p < 300; p++) {
      const question = `${sentence(next, 10)}?`;
      const answer = sentence(next, 60); // 70 words with the question: one changed word → Jaccard 61/71 ≈ 0.86
      const twin = answer.split(" ");
      twin[30] = "changed";
      planted.push({ ...data[0]!, id: `p-${p}-a`, chunkId: `pa-${p}`, documentId: `pd-${p}-a`, question, answer });
      planted.push({ ...data[0]!, id: `p-${p}-b`, chunkId: `pb-${p}`, documentId: `pd-${p}-b`, question, answer: twin.join(" ") });
    }
    const input = [...data, ...planted];
    const without = splitExamples(input, { dropNearDuplicatesFromTrain: false });
    const result = splitExamples(input);
    const splitOf = new Map<string, SplitName>();
    for (const split of SPLITS) for (const e of without[split]) splitOf.set(e.id, split);

    // the same assignment, minus the drops
    expect(result.val).toEqual(without.val);
    expect(result.test).toEqual(without.test);
    const expectedDrops: string[] = [];
    for (let p = 0; p < 300; p++) {
      const [a, b] = [splitOf.get(`p-${p}-a`)!, splitOf.get(`p-${p}-b`)!];
      if (a === "train" && b !== "train") expectedDrops.push(`p-${p}-a`);
      if (b === "train" && a !== "train") expectedDrops.push(`p-${p}-b`);
    }
    expect(expectedDrops.length).toBeGreaterThan(50); // ≈ 2 × 0.6 × 0.4 × 300 = 144
    expect(result.dropped.map((d) => d.example.id)).toEqual(expectedDrops.sort());
    for (const drop of result.dropped) {
      expect(drop.reason).toBe("near_duplicate_of_eval");
      expect(drop.duplicateOf).toBe(drop.example.id.endsWith("-a") ? drop.example.id.replace(/-a$/, "-b") : drop.example.id.replace(/-b$/, "-a"));
      expect(splitOf.get(drop.duplicateOf)).not.toBe("train");
    }
    expect(result.train.length).toBe(without.train.length - expectedDrops.length);

    // no train example left is a near duplicate of an eval example (brute force over the planted ones)
    const evalPlanted = [...result.val, ...result.test].filter((e) => e.id.startsWith("p-"));
    for (const t of result.train.filter((e) => e.id.startsWith("p-"))) {
      const a = shingleSet(`${t.question}\n${t.answer}`);
      for (const v of evalPlanted) expect(jaccard(a, shingleSet(`${v.question}\n${v.answer}`))).toBeLessThan(0.8);
    }
    expect(result.stats.train.examples).toBe(result.train.length);
  });

  it("handles no examples", () => {
    const result = splitExamples([]);
    expect(idsBySplit(result)).toEqual({ train: [], val: [], test: [] });
    expect(result.dropped).toEqual([]);
  });

  it("refuses duplicate ids and bad settings, naming the field", () => {
    expect(() => splitExamples([data[0]!, data[0]!])).toThrow(/example id "ex-0-0-0" occurs twice/);
    expect(() => resolveSplitConfig({ ratios: { train: 0.6, val: 0.3, test: 0.3 } })).toThrow(/split ratios must sum to 1, got 0.6 \+ 0.3 \+ 0.3/);
    expect(() => resolveSplitConfig({ ratios: { train: 1.2, val: -0.1, test: -0.1 } })).toThrow(/ratios.train must be in \[0, 1\]/);
    expect(() => resolveSplitConfig({ seed: -1 })).toThrow(/seed/);
    expect(() => resolveSplitConfig({ groupBy: "page" as "chunk" })).toThrow(/groupBy/);
    expect(() => resolveSplitConfig({ nearDuplicateThreshold: 0 })).toThrow(/nearDuplicateThreshold/);
  });

  it("keys groups by chunk or document", () => {
    expect(groupKeyOf(data[0]!, "chunk")).toBe("chunk-0-0");
    expect(groupKeyOf(data[0]!, "document")).toBe("doc-0");
  });
});
