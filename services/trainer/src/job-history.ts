import type { Bus } from "@ragtune/bus";
import type { Logger } from "@ragtune/logger";
import { type JobEvent, JobStatus } from "@ragtune/proto";
import { JobStore } from "./job-store.js";

export interface WatchOptions {
  /** First sequence to deliver (1 = from the start). */
  fromSequence: number;
  signal?: AbortSignal;
  /**
   * How long to wait for a missing sequence number before skipping it. Writers publish right after their
   * compare-and-set write, so two writers can publish in swapped order; a writer that crashed between its
   * write and its publish leaves a gap for good.
   */
  gapTimeoutMs?: number;
}

function isTerminalEvent(e: JobEvent): boolean {
  if (e.event.case !== "statusChanged") return false;
  const s = e.event.value.status;
  return s === JobStatus.SUCCEEDED || s === JobStatus.FAILED || s === JobStatus.CANCELLED;
}

/**
 * A job's events from `fromSequence`: the stored history first, then live events, in sequence order without
 * duplicates (an ordered consumer on the job's history subject, reordered by sequence). Ends after the event that
 * leaves the job in a terminal status (when no later event exists), or when `signal` aborts.
 */
export async function* watchJobEvents(
  bus: Bus,
  store: JobStore,
  jobId: string,
  options: WatchOptions,
  logger: Logger,
): AsyncGenerator<JobEvent> {
  const gapTimeoutMs = options.gapTimeoutMs ?? 3_000;
  const consumer = await bus.js.consumers.get(store.names.historyStream, { filter_subjects: store.historySubject(jobId) });
  const messages = await consumer.consume({ max_messages: 256 });
  const onAbort = () => void messages.close();
  options.signal?.addEventListener("abort", onAbort, { once: true });

  // The consumer pushes into a queue; the generator pulls with a timeout so a gap can be skipped.
  const queue: { event: JobEvent; pending: number }[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  let failure: unknown;
  void (async () => {
    try {
      for await (const m of messages) {
        queue.push({ event: JobStore.decodeEvent(m.data), pending: m.info.pending });
        wake?.();
      }
    } catch (err) {
      failure = err;
    } finally {
      ended = true;
      wake?.();
    }
  })();
  const waitForMore = (timeoutMs: number | undefined) =>
    new Promise<void>((resolve) => {
      if (queue.length > 0 || ended) return resolve();
      const timer = timeoutMs === undefined ? undefined : setTimeout(resolve, timeoutMs);
      wake = () => {
        clearTimeout(timer);
        wake = undefined;
        resolve();
      };
    });

  let next = Math.max(1, options.fromSequence);
  const buffered = new Map<number, JobEvent>();
  let caughtUp = false;
  try {
    for (;;) {
      if (queue.length === 0 && !ended) {
        await waitForMore(buffered.size > 0 && caughtUp ? gapTimeoutMs : undefined);
        if (queue.length === 0 && !ended && buffered.size > 0) {
          const lowest = Math.min(...buffered.keys());
          logger.warn({ jobId, missing: next, skippedTo: lowest }, "job history has a gap; skipping it");
          next = lowest;
        }
      }
      if (queue.length === 0 && ended) {
        if (failure !== undefined && !options.signal?.aborted) throw failure;
        return;
      }
      const item = queue.shift();
      if (item !== undefined) {
        caughtUp = item.pending === 0;
        if (item.event.sequence >= next) buffered.set(item.event.sequence, item.event);
      }
      while (buffered.has(next)) {
        const event = buffered.get(next)!;
        buffered.delete(next);
        next += 1;
        yield event;
        if (isTerminalEvent(event) && buffered.size === 0 && (await store.isFinishedAt(jobId, event.sequence))) return;
      }
    }
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
    await messages.close();
  }
}
