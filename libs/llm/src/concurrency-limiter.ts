import { cancelledError } from "./retry-policy.js";
import { offAbort, onAbort } from "./abort-fanout.js";

/** Gives the slot back; calling it more than once is harmless. */
export type Release = () => void;

interface Waiter {
  grant: (release: Release) => void;
}

/**
 * At most `limit` holders at a time; the rest wait in FIFO order. Waiters marked `priority` (calls coming back for
 * a retry, which were admitted once already) go before fresh ones, FIFO among themselves. A waiter whose signal
 * fires leaves the queue at once. A released slot passes straight to the next waiter, so no later arrival can
 * overtake the queue.
 */
export class ConcurrencyLimiter {
  #active = 0;
  // Sets iterate in insertion order and delete in O(1): a FIFO queue whose waiters can leave from anywhere.
  readonly #priority = new Set<Waiter>();
  readonly #queue = new Set<Waiter>();

  constructor(readonly limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`concurrency limit must be an integer ≥ 1, got ${limit}`);
  }

  /** Slots in use. */
  get active(): number {
    return this.#active;
  }

  /** Callers waiting for a slot. */
  get waiting(): number {
    return this.#priority.size + this.#queue.size;
  }

  /** A slot at once when one is free and nobody waits (what `acquire` would grant without waiting), else undefined. */
  tryAcquire(): Release | undefined {
    if (this.#active >= this.limit || this.waiting !== 0) return undefined;
    this.#active++;
    return this.#releaser();
  }

  acquire(signal?: AbortSignal, priority = false): Promise<Release> {
    if (signal?.aborted) return Promise.reject(cancelledError(signal));
    if (this.#active < this.limit && this.waiting === 0) {
      this.#active++;
      return Promise.resolve(this.#releaser());
    }
    return new Promise<Release>((resolve, reject) => {
      const queue = priority ? this.#priority : this.#queue;
      const cancel = () => {
        queue.delete(waiter);
        reject(cancelledError(signal!));
      };
      const waiter: Waiter = {
        grant: (release) => {
          if (signal !== undefined) offAbort(signal, cancel);
          resolve(release);
        },
      };
      queue.add(waiter);
      if (signal !== undefined) onAbort(signal, cancel);
    });
  }

  #releaser(): Release {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#next();
      if (next) next.grant(this.#releaser());
      else this.#active--;
    };
  }

  #next(): Waiter | undefined {
    for (const queue of [this.#priority, this.#queue]) {
      const first = queue.values().next();
      if (!first.done) {
        queue.delete(first.value);
        return first.value;
      }
    }
    return undefined;
  }
}
