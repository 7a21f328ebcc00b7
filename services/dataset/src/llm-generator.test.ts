import { LlmError, type LlmClient } from "@ragtune/llm";
import { describe, expect, it } from "vitest";
import type { SourceChunk } from "./extractive-generator.js";
import { generateLlmDataset, LlmGenerationError, llmPromptHash, refusalIn } from "./llm-generator.js";

const chunks: SourceChunk[] = ["a", "b", "c", "d"].map((id) => ({
  id: `chunk-${id}`,
  documentId: "doc-1",
  headingPath: ["Guide", `Section ${id}`],
  text: `Section ${id} explains how ledger ${id} balances every payment with two entries.`,
}));

type JsonFn = Pick<LlmClient, "json">["json"];

/** A client stub: `answer` gets the chunk's id and returns the pairs, or throws. */
function stub(answer: (chunkId: string) => { kind: string; question: string; answer: string }[]): Pick<LlmClient, "json"> & { inFlightMax: number } {
  let inFlight = 0;
  const client = {
    inFlightMax: 0,
    json: (async (request: Parameters<JsonFn>[0]) => {
      inFlight++;
      client.inFlightMax = Math.max(client.inFlightMax, inFlight);
      try {
        await Promise.resolve();
        const user = "messages" in request ? request.messages[1]!.content : "";
        const id = /Section (\w)/.exec(user)![1]!;
        const pairs = answer(`chunk-${id}`);
        request.schema.parse({ pairs });
        return { value: { pairs }, text: "", finishReason: "stop", model: "m", usage: { promptTokens: 10, completionTokens: 5, totalTokens: 15 }, latency: {} };
      } finally {
        inFlight--;
      }
    }) as unknown as JsonFn,
  };
  return client;
}

const options = { model: "m", questionsPerChunk: 2, temperature: 0.7, seed: 42, maxConcurrency: 2 };
const grounded = (id: string) => [
  { kind: "factual", question: `How does ledger ${id} balance a payment?`, answer: `Ledger ${id} balances every payment with two entries.` },
  { kind: "conceptual", question: `What does section ${id} explain?`, answer: `It explains how ledger ${id} balances every payment with two entries.` },
];

describe("generateLlmDataset", () => {
  it("turns each chunk's pairs into llm examples in chunk order, at most maxConcurrency chunks at once", async () => {
    const llm = stub((id) => grounded(id.slice(-1)));
    const progress: number[] = [];
    const result = await generateLlmDataset(chunks, options, { llm, progressEvery: 1, onProgress: (p) => progress.push(p.chunksDone) });
    expect(result.examples.map((e) => e.chunkId)).toEqual(["chunk-a", "chunk-a", "chunk-b", "chunk-b", "chunk-c", "chunk-c", "chunk-d", "chunk-d"]);
    expect(result.examples.every((e) => e.generator === "llm" && e.answerable && e.id.startsWith("ex_"))).toBe(true);
    expect(result.examples[0]!.headingPath).toEqual(["Guide", "Section a"]);
    expect(new Set(result.examples.map((e) => e.id)).size).toBe(8);
    expect(llm.inFlightMax).toBe(2);
    expect(progress).toEqual([1, 2, 3, 4]);
    expect(result.failures).toEqual([]);
    expect(result.promptHash).toBe(llmPromptHash(2));
    expect(llmPromptHash(3)).not.toBe(llmPromptHash(2));
  });

  it("reports a malformed chunk and a refusing chunk, keeps the others, and counts the lost pairs", async () => {
    const llm = stub((id) => {
      if (id === "chunk-b") throw new LlmError("malformed_json", "POST /v1/chat/completions: the model's output is not valid JSON (gave up after 5 attempts)");
      if (id === "chunk-c") return grounded("c").map((p) => ({ ...p, answer: "I'm sorry, but I cannot answer that from this passage." }));
      return grounded(id.slice(-1));
    });
    const seen: string[] = [];
    const result = await generateLlmDataset(chunks, options, { llm, onFailure: (f) => seen.push(`${f.chunkId}:${f.reason}`) });
    expect(seen.sort()).toEqual(["chunk-b:malformed_output", "chunk-c:refused"]);
    expect(result.counts.chunksFailed).toMatchObject({ malformed_output: 1, refused: 1 });
    expect(result.counts.pairsLost).toBe(4);
    expect(result.counts.chunksWithExamples).toBe(2);
    expect(new Set(result.examples.map((e) => e.chunkId))).toEqual(new Set(["chunk-a", "chunk-d"]));
  });

  it("stops on an endpoint failure that is not about one chunk (a refused key), naming it", async () => {
    const llm = stub(() => {
      throw new LlmError("unauthorized", "POST /v1/chat/completions: 401 Unauthorized (check LLM_API_KEY)", { status: 401 });
    });
    const error = await generateLlmDataset(chunks, options, { llm }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(LlmGenerationError);
    expect((error as LlmGenerationError).message).toMatch(/unauthorized.*LLM_API_KEY/);
  });

  it("recognises refusals, not ordinary answers", () => {
    expect(refusalIn("I'm sorry, I can't help with that.")).toBeDefined();
    expect(refusalIn("The passage does not mention the retention period.")).toBeDefined();
    expect(refusalIn("As an AI language model, I have no opinion.")).toBeDefined();
    expect(refusalIn("A closed ledger cannot be edited afterwards.")).toBeUndefined();
  });
});
