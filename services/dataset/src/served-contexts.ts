/**
 * Training contexts as serving builds them ("train as served"): the gateway answers from the top-k chunks its
 * retriever returns for the question, sometimes without the chunk that holds the answer. A version with
 * `context_chunks` k > 1 gives every kept example that kind of context, built with the same retriever
 * (libs/retrieval) over the collection's chunks:
 *
 * - With probability `goldShare` (seeded per example) the gold chunk (the one the question was written from) is in the
 *   context, at a seeded position among the k − 1 best other chunks; otherwise the context is the k best chunks
 *   without it.
 * - The target follows from the context, never from the recipe: an answerable question keeps its answer when a
 *   retrieved chunk holds it (the negatives' answerability check: verbatim, a sentence verbatim, or most of its content
 *   words) and becomes a refusal when none does; an unanswerable question (a negative, whose question was written from
 *   another chunk) keeps the refusal unless a retrieved chunk holds its source answer, which then becomes its target.
 *   (Generating an answer from an absent chunk anyway, as RAFT does, teaches memorising, not refusing.)
 * - A row over the token budget loses its lowest-ranked non-gold chunks until it fits; one that does not fit even with
 *   the gold chunk alone is dropped (`served_over_token_budget`).
 *
 * Splits were made before (by source chunk), so contexts never move an example between splits. Pure and deterministic.
 */
import { createHash } from "node:crypto";
import type { IndexedChunk } from "@ragtune/retrieval";
import type { ContextChunk, DatasetExample } from "./example.js";
import { mistralRowTokens } from "./exports.js";
import type { SourceChunk } from "./extractive-generator.js";
import { holdsAnswer, retrieverOver } from "./negatives.js";

export interface ServedContextOptions {
  /** Chunks per context (the gateway's top_k). */
  topK: number;
  /** Share of examples whose context holds their gold chunk, 0..1. */
  goldShare: number;
  seed: number;
  /** The refusal target. */
  refusal: string;
  /** Most tokens of a training row (prompt + completion + EOS). */
  maxSeqLen: number;
  /** The coverage above which a chunk counts as holding an answer (the negatives' threshold). */
  maxAnswerCoverage: number;
}

export interface ServedDrop {
  example: DatasetExample;
  reason: "served_over_token_budget";
  detail: string;
}

export interface ServedContextResult {
  examples: DatasetExample[];
  dropped: ServedDrop[];
  counts: { goldPresent: number; goldAbsent: number; answerableToRefusal: number; refusalToAnswerable: number; trimmed: number };
}

function unit(...parts: (string | number)[]): number {
  return createHash("sha256").update(parts.join("\u0000")).digest().readUInt32BE(0) / 2 ** 32;
}

function toContextChunk(c: IndexedChunk | SourceChunk): ContextChunk {
  return "chunkId" in c
    ? { chunkId: c.chunkId, documentId: c.documentId, headingPath: [...c.headingPath], text: c.text }
    : { chunkId: c.id, documentId: c.documentId, headingPath: [...c.headingPath], text: c.text };
}

/**
 * The examples with served contexts (`contextChunks`), in input order. `sourceAnswerOf(example)` gives an unanswerable
 * example's source answer (the answer of the example its question was taken from), when known.
 */
export function withServedContexts(
  examples: readonly DatasetExample[],
  chunks: readonly SourceChunk[],
  options: ServedContextOptions,
  deps: { tokenizer: { count(text: string): number }; sourceAnswerOf: (example: DatasetExample) => string | undefined },
): ServedContextResult {
  const retriever = retrieverOver(chunks);
  const byId = new Map(chunks.map((c) => [c.id, c]));
  const counts = { goldPresent: 0, goldAbsent: 0, answerableToRefusal: 0, refusalToAnswerable: 0, trimmed: 0 };
  const out: DatasetExample[] = [];
  const dropped: ServedDrop[] = [];
  for (const e of examples) {
    // The gold chunk: the one the question was written from (for a negative, its source chunk).
    const goldId = e.distractorSource?.chunkId ?? e.chunkId;
    const gold = byId.get(goldId);
    const goldIn = e.answerable && gold !== undefined && unit(options.seed, "gold", e.id) < options.goldShare;
    const others = retriever.search(e.question, goldIn ? options.topK - 1 : options.topK, (c) => c.chunkId !== goldId).map((h) => toContextChunk(h.chunk));
    const context = [...others];
    if (goldIn) context.splice(Math.floor(unit(options.seed, "gold-position", e.id) * (others.length + 1)), 0, toContextChunk(gold!));
    if (goldIn) counts.goldPresent++;
    else counts.goldAbsent++;

    // The target follows from what the context holds.
    let answer = e.answer;
    let answerable = e.answerable;
    const text = context.map((c) => c.text).join("\n\n");
    if (e.answerable && !goldIn) {
      if (!holdsAnswer(text, e.answer, options.maxAnswerCoverage).holds) {
        answer = options.refusal;
        answerable = false;
        counts.answerableToRefusal++;
      }
    } else if (!e.answerable) {
      const source = deps.sourceAnswerOf(e);
      if (source !== undefined && holdsAnswer(text, source, options.maxAnswerCoverage).holds) {
        answer = source;
        answerable = true;
        counts.refusalToAnswerable++;
      }
    }

    // Fit the token budget: drop the lowest-ranked chunks that are not gold.
    let served: DatasetExample = { ...e, answer, answerable, contextChunks: context };
    let trimmed = false;
    while (mistralRowTokens(served, deps.tokenizer) > options.maxSeqLen) {
      const last = [...served.contextChunks!].reverse().find((c) => !(goldIn && c.chunkId === goldId));
      if (last === undefined || served.contextChunks!.length === 1) break;
      served = { ...served, contextChunks: served.contextChunks!.filter((c) => c !== last) };
      trimmed = true;
    }
    const tokens = mistralRowTokens(served, deps.tokenizer);
    if (tokens > options.maxSeqLen) {
      dropped.push({ example: served, reason: "served_over_token_budget", detail: `${tokens} tokens with ${served.contextChunks!.length} chunk(s) > ${options.maxSeqLen}` });
      continue;
    }
    if (trimmed) counts.trimmed++;
    // A context that lost chunks may no longer hold an answer it held: check again.
    if (served.answerable && !(goldIn && served.contextChunks!.some((c) => c.chunkId === goldId))) {
      if (!holdsAnswer(served.contextChunks!.map((c) => c.text).join("\n\n"), served.answer, options.maxAnswerCoverage).holds) {
        served = { ...served, answer: options.refusal, answerable: false };
        counts.answerableToRefusal++;
      }
    }
    out.push(served);
  }
  return { examples: out, dropped, counts };
}
