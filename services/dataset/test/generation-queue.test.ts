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

async function openQueue(faults?: (step: GenerationStep, batch: { versionId: string; batchKey: string }) => void | Promise<void>, maxDeliver?: number) {
  nats ??= await startNatsServer();
  const bus = await connectBus({ servers: nats.url, name: "gen-test", logger });
  buses.push(bus);
  return GenerationQueue.open(bus, { prefix: "gentest", logger, worker: `w${buses.length}`, batchChunks: 2, ackWaitMs: 2_000, ...(faults ? { faults } : {}), ...(maxDeliver ? { maxDeliver } : {}) });
}

/** A stand-in model that holds every request until it is cancelled; `called` resolves with the first request. */
function heldModel() {
  let signal = () => {};
  const called = new Promise<void>((resolve) => (signal = resolve));
  const llm: Pick<LlmClient, "json"> = {
    json: ((_request: unknown, options: { signal: AbortSignal }) =>
      new Promise((_resolve, reject) => {
        signal();
        options.signal.addEventListener("abort", () => reject(Object.assign(new Error("cancelled"), { kind: "cancelled" })), { once: true });
      })) as unknown as LlmClient["json"],
  };
  return { llm, called };
}

/** Batches of two, as a build that cuts them itself hands them over: each only once `ready` resolved. */
async function* batchesAfter(ready: Promise<unknown>): AsyncGenerator<SourceChunk[]> {
  await ready;
  for (let i = 0; i < chunks.length; i += 2) yield chunks.slice(i, i + 2);
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

  it("writes batches as the build forms them: the first is generated before the next one exists", async () => {
    const queue = await openQueue();
    const model = fakeModel();
    queue.startWorkers(2, model.llm, async () => true);
    let firstWritten = () => {};
    const written = new Promise<void>((resolve) => (firstWritten = resolve));
    async function* formed(): AsyncGenerator<SourceChunk[]> {
      yield chunks.slice(0, 2);
      await written; // the rest of the collection is "still being read" until the first batch is done
      yield chunks.slice(2, 4);
      yield chunks.slice(4, 6);
    }
    const progress: number[] = [];
    const result = await queue.generate("dsv-s", formed(), options, {
      signal: new AbortController().signal,
      onProgress: (p) => {
        progress.push(p.chunksDone);
        firstWritten();
      },
    });
    await queue.close();
    expect(progress[0]).toBe(2); // the first batch finished while the others were not formed yet
    expect(progress.at(-1)).toBe(6);
    expect(result.examples.map((e) => e.chunkId)).toEqual(chunks.flatMap((c) => [c.id, c.id]));
    expect([...model.calls.values()]).toEqual(chunks.map(() => 1));
  });

  it("a chunk sleeping before a retry frees its place: the next batch is taken while it sleeps, not after", async () => {
    const queue = await openQueue();
    const model = fakeModel();
    // ch_1's call "fails and sleeps before its retry" (as the client does: counted as backing off, onRetry called)
    // until ch_2 of the next batch has been asked for; one batch's room only, so without the sleeping chunk's place
    // freed, the next batch would wait for it and it for the next batch.
    let backingOff = 0;
    let secondBatchAsked = () => {};
    const asked = new Promise<void>((resolve) => (secondBatchAsked = resolve));
    const llm: Pick<LlmClient, "json" | "stats"> = {
      json: (async (request: { messages: { content: string }[] }, call: unknown) => {
        const user = request.messages.at(-1)!.content;
        if (user.includes(chunks[2]!.text)) secondBatchAsked();
        if (user.includes(chunks[1]!.text)) {
          backingOff++;
          queue.retrying();
          await asked;
          backingOff--;
        }
        return model.llm.json(request as never, call as never);
      }) as unknown as LlmClient["json"],
      stats: () => ({ backingOff }) as ReturnType<LlmClient["stats"]>,
    };
    queue.startWorkers(1, llm, async () => true);
    const result = await queue.generate("dsv-b", chunks, { ...options, maxConcurrency: 6 }, { signal: new AbortController().signal });
    await queue.close();
    expect(result.examples.map((e) => e.chunkId)).toEqual(chunks.flatMap((c) => [c.id, c.id]));
    expect([...model.calls.values()]).toEqual(chunks.map(() => 1));
  });

  it("a coordinator that starts again reads back outcomes that arrive before it has formed their batches", async () => {
    const seen: string[] = [];
    let allSeen = () => {};
    const replayed = new Promise<void>((resolve) => (allSeen = resolve));
    const queue = await openQueue((step, batch) => {
      if (step !== "outcome-seen" || batch.versionId !== "dsv-e") return;
      seen.push(batch.batchKey);
      if (seen.length === 3) allSeen();
    });
    const model = fakeModel();
    queue.startWorkers(2, model.llm, async () => true);
    await queue.generate("dsv-e", chunks, options, { signal: new AbortController().signal });
    expect(model.calls.size).toBe(6);
    seen.length = 0;
    // A takeover: the stored outcomes are replayed (all three) before the listing hands over the first batch.
    const again = await queue.generate("dsv-e", batchesAfter(replayed), options, { signal: new AbortController().signal });
    await queue.close();
    expect(seen).toHaveLength(3);
    expect(again.examples.map((e) => e.chunkId)).toEqual(chunks.flatMap((c) => [c.id, c.id]));
    expect([...model.calls.values()]).toEqual(chunks.map(() => 1)); // nothing written twice
  });

  it("a stopping replica with several pulls out hands its batch back once, not to its own pulls again and again", async () => {
    const coordinator = await openQueue();
    const first = await openQueue();
    const held = heldModel();
    first.startWorkers(5, held.llm, async () => true); // 5 batches' room: several pulls out at once
    const pending = coordinator.generate("dsv-h", chunks.slice(0, 2), options, { signal: new AbortController().signal });
    await held.called;
    await first.close();
    // Taken by the stopping replica once: a second delivery is fine, a third would count as abandoned here.
    const second = await openQueue(undefined, 2);
    const model = fakeModel();
    second.startWorkers(1, model.llm, async () => true);
    const result = await pending;
    await second.close();
    expect(result.examples.map((e) => e.chunkId)).toEqual(["ch_0", "ch_0", "ch_1", "ch_1"]);
    expect([...model.calls.values()]).toEqual([1, 1]);
  });
});
