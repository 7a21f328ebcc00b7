import { readdirSync } from "node:fs";
import { join } from "node:path";
import { loadTokenizer } from "@ragtune/text";
import { describe, expect, it } from "vitest";
import { ingestChunks, SAMPLE_DOCS } from "../test/sample-chunks.js";
import { buildDataset, exportSplit, type DatasetBuildSettings } from "./dataset-builder.js";
import { mistralRowTokens } from "./exports.js";
import { DEFAULT_REFUSAL, holdsAnswer } from "./negatives.js";

const chunks = ingestChunks(SAMPLE_DOCS, readdirSync(SAMPLE_DOCS).sort().map((f) => join(SAMPLE_DOCS, f)), 512);
const tokenizer = loadTokenizer("mistral");
const base: DatasetBuildSettings = { generation: {}, negatives: {}, quality: {}, splits: {} };
const textOf = (e: { contextChunks?: readonly { text: string }[] }) => e.contextChunks!.map((c) => c.text).join("\n\n");

describe("retrieved ('as served') contexts on the sample docs", () => {
  const gold = buildDataset(chunks, base, { tokenizer });
  const served = buildDataset(chunks, { ...base, served: { topK: 4, goldShare: 0.8 } }, { tokenizer });
  const all = [...served.splits.train, ...served.splits.val, ...served.splits.test];
  const originals = new Map([...gold.splits.train, ...gold.splits.val, ...gold.splits.test].map((e) => [e.id, e]));

  it("gives every example up to top_k distinct chunks, the gold chunk in about gold_share of the answerable ones", () => {
    expect(all.length).toBeGreaterThan(50);
    for (const e of all) {
      const ids = e.contextChunks!.map((c) => c.chunkId);
      expect(ids.length).toBeGreaterThan(0);
      expect(ids.length).toBeLessThanOrEqual(4);
      expect(new Set(ids).size).toBe(ids.length);
    }
    const answerableOrigin = all.filter((e) => originals.get(e.id)?.answerable);
    const withGold = answerableOrigin.filter((e) => e.contextChunks!.some((c) => c.chunkId === e.chunkId));
    expect(withGold.length / answerableOrigin.length).toBeGreaterThan(0.65);
    expect(withGold.length / answerableOrigin.length).toBeLessThan(0.95);
    // The gold chunk is not always first: its position is drawn.
    expect(new Set(withGold.map((e) => e.contextChunks!.findIndex((c) => c.chunkId === e.chunkId))).size).toBeGreaterThan(1);
    expect(served.counts.served!.goldPresent + served.counts.served!.goldAbsent).toBe(all.length + served.dropped.served.length);
  });

  it("targets the refusal exactly when no chunk of the context holds the answer", () => {
    let refusedForAbsentGold = 0;
    for (const e of all) {
      const original = originals.get(e.id);
      if (e.answerable) {
        expect(e.answer).not.toBe(DEFAULT_REFUSAL);
        expect(holdsAnswer(textOf(e), e.answer, 0.5).holds).toBe(true);
      } else {
        expect(e.answer).toBe(DEFAULT_REFUSAL);
        if (original?.answerable) {
          refusedForAbsentGold++;
          expect(holdsAnswer(textOf(e), original.answer, 0.5).holds).toBe(false);
        }
      }
    }
    expect(refusedForAbsentGold).toBeGreaterThan(0);
    expect(served.counts.served!.answerableToRefusal).toBeGreaterThanOrEqual(refusedForAbsentGold);
  });

  it("keeps examples in the split of their source chunk and every row within the token budget", () => {
    for (const split of ["train", "val", "test"] as const) {
      const goldIds = new Set(gold.splits[split].map((e) => e.id));
      for (const e of served.splits[split]) expect(goldIds.has(e.id)).toBe(true);
      for (const e of served.splits[split]) expect(mistralRowTokens(e, tokenizer)).toBeLessThanOrEqual(1024);
    }
    const tight = buildDataset(chunks, { ...base, quality: { maxSeqLen: 700 }, served: { topK: 6, goldShare: 1 } }, { tokenizer });
    expect(tight.counts.served!.trimmed + tight.dropped.served.length).toBeGreaterThan(0);
    for (const e of [...tight.splits.train, ...tight.splits.val, ...tight.splits.test]) expect(mistralRowTokens(e, tokenizer)).toBeLessThanOrEqual(700);
  });

  it("renders the numbered context blocks in the training rows, and is deterministic", () => {
    const rows = exportSplit(served, "train", "mistral-instruct").trimEnd().split("\n").map((l) => JSON.parse(l) as { prompt: string });
    for (const r of rows) expect(r.prompt).toMatch(/^\[INST\] \[1\] /);
    expect(rows.some((r) => r.prompt.includes("\n\n[2] "))).toBe(true);
    const again = buildDataset([...chunks].reverse(), { ...base, served: { topK: 4, goldShare: 0.8 } }, { tokenizer });
    expect(exportSplit(again, "train", "mistral-instruct")).toBe(exportSplit(served, "train", "mistral-instruct"));
  });
});
