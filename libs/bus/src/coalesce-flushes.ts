import type { NatsConnection } from "@nats-io/nats-core";

/** What `coalesceFlushes` did on a connection. */
export interface FlushStats {
  /** Socket writes of the connection's outbound buffer. */
  writes: number;
}

/** The parts of nats.js's protocol handler this relies on (internal, checked at run time). */
interface ProtocolInternals {
  flushPending(): void;
  close(err?: Error): Promise<void>;
  outbound: { size(): number };
  pendingLimit: number;
}

const stats = new WeakMap<NatsConnection, FlushStats>();

/**
 * Makes a connection write what its client queued in one event-loop turn with one socket write, rather than one per
 * microtask burst. The nats.js client writes its outbound buffer from a microtask queued by the first command put in
 * an empty buffer, so a service with many requests in flight (each continuing in its own promise chain when its reply
 * arrives) writes to its socket almost once per request: on loopback each write runs the kernel's whole TCP path and
 * wakes the server, and in the ingest service these writes were half of the main thread's CPU time. Here the write
 * waits for the end of the turn (setImmediate), so every command of the turn goes out together; a buffer past the
 * client's own threshold (32 KiB) is still written at once, and closing writes what is queued first. The latency
 * added is at most one turn of the event loop.
 *
 * Relies on internals of @nats-io/nats-core (ProtocolHandler.flushPending, close, outbound, pendingLimit): when they
 * are not there (another version), the connection is left as it is and this returns undefined.
 */
export function coalesceFlushes(nc: NatsConnection): FlushStats | undefined {
  const existing = stats.get(nc);
  if (existing !== undefined) return existing;
  const protocol = (nc as unknown as { protocol?: Partial<ProtocolInternals> }).protocol;
  if (
    protocol === undefined ||
    typeof protocol.flushPending !== "function" ||
    typeof protocol.close !== "function" ||
    typeof protocol.outbound?.size !== "function" ||
    typeof protocol.pendingLimit !== "number"
  ) {
    return undefined;
  }
  const p = protocol as ProtocolInternals;
  const flushNow = p.flushPending.bind(p);
  const close = p.close.bind(p);
  const counted: FlushStats = { writes: 0 };
  let scheduled: NodeJS.Immediate | undefined;
  const write = () => {
    if (scheduled !== undefined) clearImmediate(scheduled);
    scheduled = undefined;
    if (p.outbound.size() > 0) counted.writes++;
    flushNow();
  };
  p.flushPending = () => {
    if (p.outbound.size() >= p.pendingLimit) write();
    else scheduled ??= setImmediate(write);
  };
  p.close = (err?: Error) => {
    if (scheduled !== undefined) write();
    return close(err);
  };
  stats.set(nc, counted);
  return counted;
}
