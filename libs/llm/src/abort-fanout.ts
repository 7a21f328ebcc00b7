/**
 * One "abort" listener per signal, however many of the client's calls wait on it. A service hands the client its
 * shutdown signal and often one signal for a whole batch of calls (a dataset build, an eval run): with an
 * EventTarget listener per call, 32 calls in flight put 32 listeners on that signal and Node warns of a leak
 * (MaxListenersExceededWarning) although none is. Here the first call to listen registers the signal's one
 * listener, which calls every listener present when the signal aborts; `off` only forgets a listener.
 */
const listeners = new WeakMap<AbortSignal, Set<() => void>>();

/** Calls `listener` once when `signal` aborts (never when it is aborted already: check `signal.aborted` first). */
export function onAbort(signal: AbortSignal, listener: () => void): void {
  let set = listeners.get(signal);
  if (set === undefined) {
    const created = new Set<() => void>();
    set = created;
    listeners.set(signal, created);
    signal.addEventListener(
      "abort",
      () => {
        const all = [...created];
        created.clear();
        for (const l of all) l();
      },
      { once: true },
    );
  }
  set.add(listener);
}

/** Forgets a listener given to `onAbort` (one already called, or never given, is fine). */
export function offAbort(signal: AbortSignal, listener: () => void): void {
  listeners.get(signal)?.delete(listener);
}
