import { connectBus, type Bus } from "@ragtune/bus";
import type { LlmClient } from "@ragtune/llm";
import { createLogger } from "@ragtune/logger";
import { startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { afterEach, describe, expect, it } from "vitest";
import type { SourceChunk } from "../src/extractive-generator.js";
import { GenerationQueue, type GenerationStep } from "../src/generation-queue.js";

const logger = createLogger({ svc: "generation-queue-test", level: "silent" });
let nats: NatsServerHandle | undefined;
const buses: Bus[] = [];
afterEach(async () => {
  for (const b of buses.splice(0)) await b.close();
  await nats?.stop();
  nats = undefined;
});

const chunks: SourceChunk[] = Array.from({ length: 6 }, (_, i) => ({
  id: `ch_${i}`,
  documentId: `doc_${i % 2}`,
  headingPath: ["Guide", `Part ${i}`],
  text: `Part ${i} of the guide explains how ledger number ${i} is closed at midnight every day.`,
}));
const options = { model: "writer", questionsPerChunk: 2, temperature: 0, seed: 42, maxConcurrency: 2 };

/** A stand-in model (unit test): answers each chunk with its own sentence, counting the calls per chunk. */
function fakeModel() {
  const calls = new Map<string, number>();
  const llm: Pick<LlmClient, "json"> = {
    json: (async (request: { messages: { content: string }[] }) => {
      const user = request.messages.at(-1)!.content;
      const text = user.slice(user.indexOf("<<<\n") + 4, user.lastIndexOf("\n>>>"));
      const id = chunks.find((c) => c.text === text)!.id;
      calls.set(id, (calls.get(id) ?? 0) + 1);
      const value = { pairs: [{ kind: "factual", question: `How is ledger ${id} closed?`, answer: text }, { kind: "conceptual", question: `When is ledger ${id} closed?`, answer: text }] };
      return { value, text: JSON.stringify(value), finishReason: "stop", model: "writer", usage: { promptTokens: 10, completionTokens: 5, totalTokens: 15 }, latency: { queueMs: 0, requestMs: 1, backoffMs: 0, totalMs: 1, attempts: 1 } };
    }) as unknown as LlmClient["json"],
  };
  return { llm, calls };
}

async function openQueue(faults?: (step: GenerationStep, batch: { versionId: string; batchKey: string }) => void | Promise<void>) {
  nats ??= await startNatsServer();
  const bus = await connectBus({ servers: nats.url, name: "gen-test", logger });
  buses.push(bus);
  return GenerationQueue.open(bus, { prefix: "gentest", logger, worker: `w${buses.length}`, batchChunks: 2, ackWaitMs: 2_000, ...(faults ? { faults } : {}) });
}

describe("generation queue (real nats-server)", () => {
  it("a worker that stored a batch's outcome and stopped before its ack never makes the model write that batch again", async () => {
    let crashed = false;
    const queue = await openQueue((step) => {
      if (step === "batch-stored" && !crashed) {
        crashed = true;
        throw new Error("worker died between storing the outcome and the ack");
      }
    });
    const model = fakeModel();
    queue.startWorkers(2, model.llm, async () => true);
    const progress: number[] = [];
    const result = await queue.generate("dsv-a", chunks, options, { signal: new AbortController().signal, onProgress: (p) => progress.push(p.chunksDone) });
    await queue.close();
    expect(crashed).toBe(true);
    expect([...model.calls.values()]).toEqual(chunks.map(() => 1)); // the redelivered batch was read back, not rewritten
    expect(result.examples.map((e) => e.chunkId)).toEqual(chunks.flatMap((c) => [c.id, c.id]));
    for (const e of result.examples) expect(e.context).toBe(chunks.find((c) => c.id === e.chunkId)!.text);
    expect(progress.at(-1)).toBe(chunks.length);
    expect(result.progress.promptTokens).toBe(60);
  });

  it("a coordinator that starts again reads finished batches back; a cancelled build's queued batches are dropped unwritten", async () => {
    const queue = await openQueue();
    const model = fakeModel();
    queue.startWorkers(1, model.llm, async () => true);
    await queue.generate("dsv-b", chunks, options, { signal: new AbortController().signal });
    expect(model.calls.size).toBe(6);
    // The same build again (a takeover): every batch is done already; the model is not asked.
    const again = await queue.generate("dsv-b", chunks, options, { signal: new AbortController().signal });
    expect(again.examples).toHaveLength(12);
    expect([...model.calls.values()]).toEqual(chunks.map(() => 1));
    await queue.close();

    // Batches of a build that is no longer active (cancelled) are acknowledged without a model call.
    const other = await openQueue();
    const idle = fakeModel();
    let asked = 0;
    let allAsked = () => {};
    const dropped = new Promise<void>((resolve) => (allAsked = resolve));
    other.startWorkers(1, idle.llm, async (versionId) => {
      if (++asked === 3) allAsked(); // each of the 3 batches was taken and checked
      return versionId !== "dsv-c";
    });
    const cancel = new AbortController();
    // A window of 3 batches: all of them are queued at once.
    const pending = other.generate("dsv-c", chunks, { ...options, maxConcurrency: 6 }, { signal: cancel.signal });
    cancel.abort(new Error("cancelled"));
    await expect(pending).rejects.toThrow(/cancelled/);
    await dropped;
    await other.close();
    expect(idle.calls.size).toBe(0);
  });
});
