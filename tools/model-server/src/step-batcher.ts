/**
 * How the server fills node-llama-cpp's decode batches: every generation that is in its token loop takes part in
 * every decoding step.
 *
 * node-llama-cpp decodes a context's queued items in a loop: it decodes a batch, samples each sequence's next token
 * (on the thread pool), hands the tokens back and, as soon as the last one is sampled, checks the queue for the next
 * batch. The sequence whose token came last is still on its way to queueing its next decode then (its generator
 * resumes some microtasks behind the loop), so it misses the batch and waits a step: with 8 generations every step
 * decodes 7, and each sequence sits out one step in 8, so a generation takes 8/7 as many steps. A step has a fixed
 * cost besides its rows (the tiny model, 1 thread, CPU per step: 1 row 2.7 ms, 7 rows 13.7–15.9 ms, 8 rows
 * 16.0–16.7 ms), so full steps also save a few percent of the decoding CPU.
 *
 * The prioritization strategy below (the context's `batching.itemPrioritizationStrategy`) returns no items while
 * fewer single-token decodes are queued than generations are in their token loop. The loop then checks again after a
 * few microtasks, in which the late sequence queues its token, and the step decodes all of them. A generation that
 * ends without queueing another decode (an end-of-sequence token, a stop string, a cancel) is waited for at most
 * `maxEmptyTurns` times, microtasks only: nothing in a turn waits for I/O or a timer.
 */
import type { BatchItem, CustomBatchingPrioritizationStrategy, PrioritizedBatchItem } from "node-llama-cpp";

/** One generation's part in the count: call `token` for its tokens as they come and `end` once it is over. */
export interface BatchedGeneration {
  token(count: number): void;
  end(): void;
}

export class StepBatcher {
  /** Generations between their first token and their last: each queues its next one-token decode after a step. */
  #inLoop = 0;
  #emptyTurns = 0;

  constructor(
    /** Empty turns, in a row, after which the queued items are decoded even though a generation is missing. */
    readonly maxEmptyTurns = 256,
    /** Called for each batch the strategy forms: its tokens and how many sequences it serves. */
    readonly onBatch?: (tokens: number, sequences: number) => void,
  ) {}

  get inLoop(): number {
    return this.#inLoop;
  }

  /** Tracks one generation of at most `maxTokens` tokens (after its last one it queues no decode). */
  generation(maxTokens: number): BatchedGeneration {
    let tokens = 0;
    let state: "prompt" | "loop" | "ended" = "prompt";
    const leave = () => {
      if (state === "loop") this.#inLoop--;
      state = "ended";
    };
    return {
      token: (count) => {
        if (state === "ended") return;
        tokens += count;
        if (tokens >= maxTokens) leave();
        else if (state === "prompt") {
          state = "loop";
          this.#inLoop++;
        }
      },
      end: leave,
    };
  }

  readonly strategy: CustomBatchingPrioritizationStrategy = ({ items, size }) => {
    let waiting = 0;
    for (const item of items) if (item.tokens.length === 1) waiting++;
    if (waiting < this.#inLoop && this.#emptyTurns < this.maxEmptyTurns) {
      this.#emptyTurns++;
      return [];
    }
    this.#emptyTurns = 0;
    const batch = shareBatch(items, size);
    this.onBatch?.(batch.reduce((n, b) => n + b.processAmount, 0), batch.length);
    return batch;
  };
}

/**
 * node-llama-cpp's "maximumParallelism" sharing: each item gets an equal part of the batch (up to its tokens), and
 * what is left goes to the items that still have tokens, in queue order.
 */
export function shareBatch(items: readonly BatchItem[], size: number): PrioritizedBatchItem[] {
  if (items.length === 0) return [];
  const share = Math.max(1, Math.floor(size / items.length));
  const out: PrioritizedBatchItem[] = [];
  let left = size;
  for (const item of items) {
    if (left <= 0) break;
    const amount = Math.min(item.tokens.length, share, left);
    out.push({ item, processAmount: amount });
    left -= amount;
  }
  for (const entry of out) {
    if (left <= 0) break;
    const more = Math.min(entry.item.tokens.length - entry.processAmount, left);
    entry.processAmount += more;
    left -= more;
  }
  return out;
}
