/**
 * A grounded answer: the retrieved chunks put into the adapter's training template (the dataset's own export code
 * renders the prompt, so the served prompt is the trained one: with one chunk it is exactly a training row's prompt),
 * the model called through libs/llm, the refusal recognised by the eval's detector, and the answer's citations: the
 * context chunks that hold its content (the eval's grounding measure per chunk).
 */
import { contextBlock, findTemplateMarkup, mistralPrompt } from "@ragtune/dataset-service/exports";
import { grounding, groundingNgrams, isRefusal } from "@ragtune/eval-service/metrics";
import { isLlmError, type LlmError } from "@ragtune/llm";
import { Code, ConnectError } from "@connectrpc/connect";
import type { IndexedChunk, RetrievedHit } from "@ragtune/retrieval";

/**
 * The prompt for a question over retrieved chunks, in the Mistral instruct template the adapters are trained on: the
 * dataset's own rendering of a retrieved context (numbered blocks "[1] Guide > Section\n\n{text}"), exactly what its
 * train-as-served exports hold.
 */
export function renderPrompt(question: string, hits: readonly RetrievedHit[]): string {
  const contextChunks = hits.map((h) => ({ chunkId: h.chunk.chunkId, documentId: h.chunk.documentId, headingPath: h.chunk.headingPath, text: h.chunk.text }));
  return mistralPrompt({ headingPath: [], context: "", question, contextChunks });
}

/** The template markup a question must not hold (it would fake turn boundaries), if any. */
export function questionMarkup(question: string): string | undefined {
  return findTemplateMarkup({ headingPath: [], context: "", question, answer: "" });
}

export interface CitedChunk {
  hit: RetrievedHit;
  support: number;
}

/** Context chunks that support the answer, most support first; none for a refusal or an empty answer. */
export function citationsFor(answer: string, refused: boolean, hits: readonly RetrievedHit[]): CitedChunk[] {
  if (refused || answer.trim() === "") return [];
  const answerNgrams = groundingNgrams(answer);
  return hits
    .map((hit) => ({ hit, support: grounding(answerNgrams, contextNgramsOf(hit.chunk)) }))
    .filter((c) => c.support > 0)
    .sort((a, b) => b.support - a.support);
}

/** Chunks whose content n-grams are kept (most recently cited), so a chunk cited again costs no tokenizing. */
const CACHED_CHUNKS = 4096;
const ngramsByChunk = new Map<IndexedChunk, Set<string>>();

/** The grounding n-grams of a chunk as the prompt shows it (heading path and text), from the cache when cited lately. */
function contextNgramsOf(chunk: IndexedChunk): Set<string> {
  let grams = ngramsByChunk.get(chunk);
  if (grams !== undefined) ngramsByChunk.delete(chunk);
  else grams = groundingNgrams(contextBlock({ headingPath: chunk.headingPath, context: chunk.text }));
  ngramsByChunk.set(chunk, grams);
  if (ngramsByChunk.size > CACHED_CHUNKS) ngramsByChunk.delete(ngramsByChunk.keys().next().value!);
  return grams;
}

export { isRefusal };

/** A failed model call as the Connect error a client can act on. */
export function modelCallError(err: unknown, model: string): ConnectError {
  if (err instanceof ConnectError) return err;
  if (!isLlmError(err)) throw err;
  const e: LlmError = err;
  const detail = e.serverMessage ?? e.message;
  switch (e.kind) {
    case "rate_limited":
      return new ConnectError(`the model endpoint is busy (429) and did not take the request after retries; try again shortly`, Code.ResourceExhausted);
    case "bad_request":
      if (e.status === 404) {
        return new ConnectError(`the model endpoint does not serve "${model}": ${detail}; promote an adapter again or ask with use_base_model`, Code.FailedPrecondition);
      }
      return new ConnectError(`the model endpoint refused the request for "${model}": ${detail}`, Code.FailedPrecondition);
    case "unauthorized":
      return new ConnectError("the gateway's key for the model endpoint was refused; an operator must check LLM_API_KEY", Code.Unavailable);
    case "cancelled":
      return new ConnectError("the call was cancelled", Code.Canceled);
    case "timeout":
      return new ConnectError(`the model endpoint did not answer in time: ${detail}`, Code.DeadlineExceeded);
    default:
      return new ConnectError(`the model endpoint failed: ${detail}`, Code.Unavailable);
  }
}
