interface Waiter {
  exclusive: boolean;
  start: () => void;
}

interface KeyState {
  /** Holders now: shared ones count up; an exclusive holder is -1. */
  holders: number;
  waiting: Waiter[];
}

/**
 * Serializes async work per key (e.g. per collection) inside one process: `run` holds the key alone (a delete, the
 * collection counts), `shared` alongside other shared holders (the documents of a run, each its own document), so a
 * delete and a run never interleave their writes. Waiters are served in order: a waiting exclusive holder keeps
 * later shared ones waiting, so a busy run cannot starve a delete.
 */
export class KeyedLock {
  private readonly keys = new Map<string, KeyState>();

  /** Runs `work` holding `key` alone. */
  run<T>(key: string, work: () => Promise<T>): Promise<T> {
    return this.hold(key, true, work);
  }

  /** Runs `work` holding `key` together with other shared holders. */
  shared<T>(key: string, work: () => Promise<T>): Promise<T> {
    return this.hold(key, false, work);
  }

  private async hold<T>(key: string, exclusive: boolean, work: () => Promise<T>): Promise<T> {
    let state = this.keys.get(key);
    if (state === undefined) {
      state = { holders: 0, waiting: [] };
      this.keys.set(key, state);
    }
    const free = state.waiting.length === 0 && (exclusive ? state.holders === 0 : state.holders >= 0);
    if (free) state.holders = exclusive ? -1 : state.holders + 1;
    else await new Promise<void>((start) => state.waiting.push({ exclusive, start }));
    try {
      return await work();
    } finally {
      state.holders = exclusive ? 0 : state.holders - 1;
      this.wake(key, state);
    }
  }

  /** Lets the next waiters in: one exclusive, or every shared one up to the next exclusive. */
  private wake(key: string, state: KeyState): void {
    while (state.waiting.length > 0) {
      const next = state.waiting[0]!;
      if (next.exclusive ? state.holders !== 0 : state.holders < 0) break;
      state.waiting.shift();
      state.holders = next.exclusive ? -1 : state.holders + 1;
      next.start();
      if (next.exclusive) break;
    }
    if (state.holders === 0 && state.waiting.length === 0) this.keys.delete(key);
  }
}
