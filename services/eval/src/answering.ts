/**
 * The eval client's answering loop: every item put to every model through one LlmClient, `concurrency` requests on
 * the wire at once (a pool of workers pulling the next item × model), each answer scored as it arrives. A request
 * that fails (endpoint down, timeout, 4xx/5xx after the client's retries) becomes the answer's error; cancellation
 * (the signal) ends the loop. Used by the run executor and by tools/bench/eval-client.ts.
 */
import { isLlmError, type LlmClient } from "@ragtune/llm";
import type { EvalItem } from "./eval-items.js";
import { type AnswerOutcome, scoreAnswer, type SuccessRule } from "./metrics.js";
import type { ScoredAnswer, ScoredItem } from "./report.js";

export interface AnsweringOptions {
  endpoint: Pick<LlmClient, "complete" | "chat">;
  items: readonly EvalItem[];
  /** Model names; each item's answers come in this order. */
  models: readonly string[];
  concurrency: number;
  /** The chat format (one user message) instead of completions with the training template. */
  chat: boolean;
  sampling: { temperature: number; maxTokens: number };
  successRule: SuccessRule;
  signal: AbortSignal;
  /** After each answer (in completion order): `done` and `failed` so far. Throwing stops the loop with that error. */
  onAnswer?: (answer: ScoredAnswer, item: EvalItem, progress: { done: number; failed: number }) => void | Promise<void>;
}

export async function answerItems(o: AnsweringOptions): Promise<ScoredItem[]> {
  const slots: ScoredAnswer[][] = o.items.map(() => new Array<ScoredAnswer>(o.models.length));
  const total = o.items.length * o.models.length;
  let next = 0;
  let done = 0;
  let failed = 0;
  const worker = async () => {
    for (;;) {
      if (o.signal.aborted) throw o.signal.reason;
      const index = next++;
      if (index >= total) return;
      const row = Math.floor(index / o.models.length);
      const item = o.items[row]!;
      const answer = await answerOne(o, o.models[index % o.models.length]!, item);
      slots[row]![index % o.models.length] = answer;
      done++;
      if (answer.outcome.error !== undefined) failed++;
      await o.onAnswer?.(answer, item, { done, failed });
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.concurrency, total)) }, worker));
  return o.items.map((item, i) => ({ item, answers: slots[i]! }));
}

async function answerOne(o: AnsweringOptions, model: string, item: EvalItem): Promise<ScoredAnswer> {
  const started = performance.now();
  let outcome: AnswerOutcome;
  let latencyMs: number;
  let completionTokens = 0;
  try {
    const result = o.chat
      ? await o.endpoint.chat({ model, messages: [{ role: "user", content: item.userTurn }], ...o.sampling })
      : await o.endpoint.complete({ model, prompt: item.prompt, ...o.sampling });
    outcome = { text: result.text, finishReason: result.finishReason ?? "" };
    // Time on the wire (the client's own queue excluded: the pool keeps it empty).
    latencyMs = result.latency.totalMs - result.latency.queueMs;
    completionTokens = result.usage.completionTokens;
  } catch (err) {
    if (o.signal.aborted) throw o.signal.reason;
    if (!isLlmError(err) || err.kind === "cancelled") throw err;
    outcome = { text: "", finishReason: "", error: { kind: err.kind, message: err.message } };
    latencyMs = performance.now() - started;
  }
  return { model, outcome, latencyMs, completionTokens, scores: scoreAnswer(item, outcome, o.successRule) };
}
