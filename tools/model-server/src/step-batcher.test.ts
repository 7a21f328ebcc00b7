import type { BatchItem } from "node-llama-cpp";
import { describe, expect, it } from "vitest";
import { shareBatch, StepBatcher } from "./step-batcher.js";

const item = (tokens: number): BatchItem => ({ tokens: Array.from({ length: tokens }, (_, i) => i as never), logits: [], evaluationPriority: 5 });

describe("StepBatcher", () => {
  it("holds the step while a generation in its token loop has not queued, then decodes all", () => {
    const sizes: number[] = [];
    const batcher = new StepBatcher(10, (tokens) => sizes.push(tokens));
    const a = batcher.generation(8);
    const b = batcher.generation(8);
    // Prompts: nobody is in the loop yet, so they go at once.
    expect(batcher.strategy({ items: [item(5), item(7)], size: 512 })).toHaveLength(2);
    a.token(1);
    b.token(1);
    expect(batcher.inLoop).toBe(2);
    expect(batcher.strategy({ items: [item(1)], size: 512 })).toEqual([]);
    expect(batcher.strategy({ items: [item(1), item(1)], size: 512 })).toHaveLength(2);
    expect(sizes).toEqual([12, 2]);
  });

  it("stops waiting for a generation after its last token or its end, and after maxEmptyTurns", () => {
    const batcher = new StepBatcher(3);
    const a = batcher.generation(2);
    const b = batcher.generation(100);
    a.token(1);
    b.token(1);
    a.token(1); // max_tokens reached: a queues nothing more
    expect(batcher.inLoop).toBe(1);
    expect(batcher.strategy({ items: [item(1)], size: 512 })).toHaveLength(1);
    b.end();
    b.end();
    b.token(1);
    expect(batcher.inLoop).toBe(0);
    const c = batcher.generation(100);
    const d = batcher.generation(100);
    c.token(1);
    d.token(1);
    const items = [item(1)];
    expect([1, 2, 3].map(() => batcher.strategy({ items, size: 512 }))).toEqual([[], [], []]);
    expect(batcher.strategy({ items, size: 512 })).toHaveLength(1); // the fourth turn decodes what is there
    expect(batcher.strategy({ items, size: 512 })).toEqual([]); // and the count starts again
  });
});

describe("shareBatch", () => {
  it("gives each item an equal part of the batch and the rest in queue order", () => {
    const items = [item(300), item(10), item(300)];
    expect(shareBatch(items, 512).map((p) => p.processAmount)).toEqual([300, 10, 202]);
    expect(shareBatch([item(1), item(1)], 512).map((p) => p.processAmount)).toEqual([1, 1]);
    expect(shareBatch([item(3), item(3), item(3)], 2).map((p) => p.processAmount)).toEqual([1, 1]);
    expect(shareBatch([], 512)).toEqual([]);
  });
});
