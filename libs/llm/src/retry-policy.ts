import { LlmError } from "./errors.js";
import { offAbort, onAbort } from "./abort-fanout.js";
import type { HeaderLookup } from "./http-transport.js";

export interface BackoffOptions {
  /** Upper bound of the first retry's delay; doubles with every further retry. */
  baseMs: number;
  /** Upper bound of any computed delay. */
  capMs: number;
  /**
   * Upper bound of the first retry's delay after a quick failure (see `isQuickFailure`); never above `baseMs`. The
   * retries after it follow the usual schedule (base · 2^(retry-1)). Default 25 ms.
   */
  quickBaseMs?: number;
  /** A failure that came back within this time of its request being sent was answered at once. Default 50 ms. */
  quickFailureMs?: number;
}

export const DEFAULT_QUICK_BASE_MS = 25;
export const DEFAULT_QUICK_FAILURE_MS = 50;

/**
 * Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And Jitter"): a delay drawn
 * uniformly from [0, min(cap, base · 2^(retry-1))). `retry` counts from 1. With `quick`, the first retry's delay is
 * drawn from [0, min(quickBase, base)) instead; later retries are not affected.
 */
export function backoffDelay(retry: number, options: BackoffOptions, random: () => number = Math.random, quick = false): number {
  const base = quick && retry === 1 ? Math.min(options.quickBaseMs ?? DEFAULT_QUICK_BASE_MS, options.baseMs) : options.baseMs;
  const ceiling = Math.min(options.capMs, base * 2 ** Math.max(0, retry - 1));
  return Math.floor(random() * ceiling);
}

/**
 * Whether a failed attempt may be retried soon (its first retry only; `backoffDelay`'s `quick`): the server did not
 * spend a generation on it or is not short of capacity because of it —
 *   - the failure came back at once (within `quickFailureMs` of the request being sent): a 5xx or a refused, reset or
 *     dropped connection before any work (a proxy or a server rejecting load answers so), where the usual first
 *     delay (up to `baseMs`) would only leave the freed slot to later calls and the build's last requests waiting;
 *   - the server answered, but the output is not the JSON asked for (`malformed_json`): a property of that answer
 *     (sampling, a cut), not of the server's load.
 * Not a timeout (the server was slow: it gets the usual schedule) and not a 429, whose Retry-After is honoured as
 * ever. One quick retry per call at most, each still taking a slot of the client's concurrency limit, so the server
 * never sees more requests at once than before; a server that keeps failing meets the usual exponential schedule
 * from the second retry on.
 */
export function isQuickFailure(error: LlmError, attemptMs: number, options: BackoffOptions): boolean {
  if (error.kind === "malformed_json") return true;
  if (error.kind !== "server_error" && error.kind !== "connection") return false;
  return attemptMs < (options.quickFailureMs ?? DEFAULT_QUICK_FAILURE_MS);
}

/**
 * The wait a server asked for, in milliseconds: `retry-after-ms` (OpenAI's precise form) first, then
 * `Retry-After` as seconds or an HTTP date. Undefined when absent or unreadable.
 */
export function retryAfterMs(headers: HeaderLookup, now: number = Date.now()): number | undefined {
  const ms = headers.get("retry-after-ms");
  if (ms !== null && ms.trim() !== "") {
    const value = Number(ms);
    if (Number.isFinite(value) && value >= 0) return Math.ceil(value);
  }
  const after = headers.get("retry-after");
  if (after === null || after.trim() === "") return undefined;
  const trimmed = after.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Math.ceil(Number(trimmed) * 1000);
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - now);
}

/** Resolves after `ms`, or rejects with a `cancelled` LlmError as soon as `signal` fires. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(cancelledError(signal));
      return;
    }
    const cancel = () => {
      clearTimeout(timer);
      reject(cancelledError(signal!));
    };
    const timer = setTimeout(() => {
      if (signal !== undefined) offAbort(signal, cancel);
      resolve();
    }, ms);
    if (signal !== undefined) onAbort(signal, cancel);
  });
}

/** The error a call ends with when its signal fires; keeps the signal's reason as the cause. */
export function cancelledError(signal: AbortSignal): LlmError {
  const reason: unknown = signal.reason;
  const why = reason instanceof Error && reason.name !== "AbortError" ? `: ${reason.message}` : "";
  return new LlmError("cancelled", `LLM call cancelled${why}`, { cause: reason });
}
