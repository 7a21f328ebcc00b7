import { create, equals, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { DeliverPolicy, JetStreamApiError, RetentionPolicy, StorageType, type ConsumerMessages } from "@nats-io/jetstream";
import { headers as natsHeaders, nanos } from "@nats-io/nats-core";
import type { Logger } from "@ragtune/logger";
import { ResourceRecordSchema, type ResourceOutboxEntry, type ResourceRecord } from "@ragtune/proto";
import type { Bus, OnReconnect } from "./bus.js";
import { eventSubject, MSG_ID_HEADER, TYPE_HEADER } from "./events.js";
import { RevisionConflictError, type TypedKv } from "./kv.js";
import { storeFullError } from "./store-limits.js";
import { ensureStream } from "./streams.js";

/**
 * The one resource pattern for long work (ingest run, dataset build, training job, eval run, pipeline run):
 *
 * - a KV record per resource (compare-and-set) holding the service's state message, the sequence of its newest
 *   event, an outbox of events committed with the state but not yet published, and the work's owner and epoch;
 * - an append-only history per resource in a stream (`history.<kind>.<id>`), sequenced 1, 2, 3, … without gaps,
 *   duplicates or reordering, even when a writer dies between any two steps of an append;
 * - Watch: the stored history from a sequence, then live events, ending after the terminal event;
 * - ownership by lease (a replica claims until a time and renews) or by work-queue claim (the delivery decides and
 *   the claim takes over), fenced by an epoch that every write of the running attempt compares.
 *
 * An append is: (1) publish any outbox left by an earlier writer, (2) compare-and-set the record with the new state,
 * `last_sequence + n` and the new events in its outbox, (3) publish the outbox. A history event is published with
 * JetStream's "expected last subject sequence", so two writers repairing the same outbox store it once; an event is
 * dropped from the outbox only by a later write that first saw it stored. Catalog events announced with a history
 * event (ragtune.<area>.<entity>.<verb>, for downstream services) are published just before it, so they are
 * delivered at least once (their message ID dedupes a repeat; their consumers are idempotent).
 */

/** Points of an append where a test can inject a crash (`faults`). */
export type AppendStep = "before-write" | "after-write" | "after-catalog-publish" | "before-history-publish" | "after-history-publish";

/** The work belongs to another owner or epoch now: stop at once, write nothing more. */
export class OwnershipLostError extends Error {
  constructor(
    readonly kind: string,
    readonly id: string,
    readonly detail: string,
  ) {
    super(`${kind} ${id} is no longer owned by this replica: ${detail}`);
    this.name = "OwnershipLostError";
  }
}

/** Thrown by `create` when the ID is taken. */
export class ResourceExistsError extends Error {
  constructor(
    readonly kind: string,
    readonly id: string,
  ) {
    super(`${kind} ${id} exists already`);
    this.name = "ResourceExistsError";
  }
}

export interface ResourceMeta {
  /** Sequence of the newest history event. */
  lastSequence: number;
  owner: string;
  epoch: number;
  /** Unix ms when the lease lapses; 0 for a work-queue claim or no owner. */
  leaseExpiresAtMs: number;
  claimReason: string;
  /** KV revision of the record. */
  revision: number;
}

export interface Resource<S extends DescMessage> extends ResourceMeta {
  id: string;
  state: MessageShape<S>;
}

/** A catalog event announced together with a history event (published before it, at least once). */
export interface CatalogEvent {
  /** Default: the subject the event catalog declares for the message. */
  subject?: string;
  schema: DescMessage;
  value: MessageInitShape<DescMessage>;
  /** Default `<id>:<sequence>`. */
  msgId?: string;
}

/** The body of one history event, as the service gives it; the history stamps sequence, ID and time. */
export interface HistoryEvent<B> {
  body: B;
  /** Catalog events to announce with it. */
  announce?: CatalogEvent[];
}

/** What a change returns: the next state and the events appended with it (none: no history entry). */
export interface ResourceChange<S extends DescMessage, B> {
  state: MessageShape<S>;
  events?: HistoryEvent<B>[];
}

/** Proof of ownership for a running attempt: each fenced write checks that the record is still at this epoch. */
export interface Fence {
  owner: string;
  epoch: number;
}

export interface ResourceKind<S extends DescMessage, E extends DescMessage, B> {
  /** kebab-case kind, e.g. `trainer-job`: KV bucket `<kind>s`, stream `HISTORY_<KIND>`, subjects `history.<kind>.<id>`. */
  kind: string;
  stateSchema: S;
  eventSchema: E;
  /** Builds the event message from the service's body and what the history owns (sequence, resource ID, time). */
  stampEvent(body: B, stamp: { id: string; sequence: number; timeMs: number }): MessageInitShape<E>;
  sequenceOf(event: MessageShape<E>): number;
  /** The state is final: no event follows its last one. */
  isTerminal(state: MessageShape<S>): boolean;
  /** Called on every committed write with the new last sequence (e.g. to mirror it into the state). */
  onCommit?(state: MessageShape<S>, lastSequence: number): void;
}

export interface ResourceStoreOptions {
  /** Bucket name override (tests isolate with a suffix). */
  bucket?: string;
  /** History stream name override. */
  stream?: string;
  /** History subject prefix override (default `history.<kind>`). */
  subjectPrefix?: string;
  /** Revisions kept per record. Default 1. */
  kvHistory?: number;
  /** Drop history events older than this (0 = keep). Default: the bus's events retention (NATS_EVENTS_MAX_AGE). */
  historyMaxAgeMs?: number;
  /** Limit of the history stream in bytes (-1 = none). Default: NATS_EVENTS_MAX_BYTES. */
  historyMaxBytes?: number;
  /** How long a transient NATS failure (timeout, reconnect) is retried before an operation fails. Default 30 s. */
  transientRetryMs?: number;
  /** A watcher that saw nothing for this long checks the record for an unpublished outbox and publishes it. Default 1 s. */
  repairAfterMs?: number;
  /** Fault injection for tests: throw from here to simulate a crash at that step. */
  faults?: (step: AppendStep, id: string, sequence: number) => void | Promise<void>;
}

export interface WatchOptions {
  /** First sequence to deliver (1 = the whole history). */
  fromSequence?: number;
  signal?: AbortSignal;
}

const ID_RE = /^[A-Za-z0-9_-]{1,128}$/;
const KIND_RE = /^[a-z0-9]+(-[a-z0-9]+)*$/;
const WRONG_LAST_SEQUENCE = 10071;
/** What a write's build step returns for "no change". */
const SKIP = Symbol("skip");
/** Header marking the history event that left the resource terminal: watchers end after it. */
export const TERMINAL_HEADER = "Ragtune-Terminal";

/** A resource ID is a KV key and a subject token: letters, digits, '-', '_' (1–128). */
export function isResourceId(id: string): boolean {
  return ID_RE.test(id);
}

/** Errors a reconnect or a NATS restart causes: worth retrying within a bound. */
export function isTransientBusError(err: unknown): boolean {
  if (err instanceof JetStreamApiError) return err.code === 503 || err.code === 408;
  if (!(err instanceof Error)) return false;
  const text = `${err.name} ${err.message} ${(err as { code?: unknown }).code ?? ""}`.toLowerCase();
  return /timeout|timed out|no responders|503|disconnect|reconnect|connection closed|connection_closed|closed connection/.test(text);
}

/** Thrown into an attempt that a reconnect overtook (its request went to a server that is gone). */
class ReconnectedError extends Error {
  constructor() {
    super("NATS reconnected while the request was in flight");
    this.name = "ReconnectedError";
  }
}

/**
 * What happens to an attempt in flight when the connection comes back: "abandon" leaves it to finish or fail on its
 * own and retries at once (for operations whose late completion does no harm: requests, uploads under a temporary
 * name); "abort" aborts the signal `op` was given and retries once the attempt has settled (for operations that must
 * not overlap, such as a download writing a file), or takes its result when it completed anyway.
 */
export type InFlightAtReconnect = "abandon" | "abort";

/**
 * Runs `op`, retrying transient NATS failures with jittered backoff until `boundMs` has passed. With `onReconnect`
 * (the connection's `bus.onReconnect`), an attempt in flight when the connection comes back is abandoned or aborted
 * (`inFlight`) and retried at once (a request sent to the old server is lost and would only fail after the full
 * request timeout), and a backoff wait ends when the connection comes back (else an operation that failed during an
 * outage waits up to 2 s more after it, and a lease renewed that way can lapse over a few restarts in a row).
 */
export async function retryTransient<T>(
  op: (signal?: AbortSignal) => Promise<T>,
  boundMs: number,
  logger?: Logger,
  what = "NATS call",
  onReconnect?: OnReconnect,
  inFlight: InFlightAtReconnect = "abandon",
): Promise<T> {
  const deadline = Date.now() + boundMs;
  for (let attempt = 1; ; attempt++) {
    try {
      if (onReconnect === undefined) return await op();
      return await untilReconnect(op, onReconnect, inFlight);
    } catch (err) {
      if (err instanceof ReconnectedError && Date.now() < deadline) {
        logger?.info({ attempt }, `${what}: NATS reconnected while it was in flight; retrying at once`);
        continue;
      }
      if (!isTransientBusError(err) || Date.now() >= deadline) throw err;
      const delay = Math.min(2_000, 100 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
      logger?.warn({ err, attempt, retryInMs: Math.round(delay) }, `${what} failed transiently; retrying`);
      await backoff(Math.min(delay, Math.max(0, deadline - Date.now())), onReconnect);
    }
  }
}

/**
 * One attempt of `op`: its outcome, or ReconnectedError when the connection comes back first — at once ("abandon"),
 * or once the attempt, its signal aborted, has settled ("abort"; its result if it completed anyway).
 */
function untilReconnect<T>(op: (signal?: AbortSignal) => Promise<T>, onReconnect: OnReconnect, inFlight: InFlightAtReconnect): Promise<T> {
  const controller = inFlight === "abort" ? new AbortController() : undefined;
  const pending = op(controller?.signal);
  return new Promise<T>((resolve, reject) => {
    let reconnected = false;
    const off = onReconnect(() => {
      reconnected = true;
      if (controller === undefined) reject(new ReconnectedError());
      else controller.abort(new ReconnectedError());
    });
    pending.then(
      (value) => {
        off();
        resolve(value);
      },
      (err: unknown) => {
        off();
        reject(reconnected ? new ReconnectedError() : err);
      },
    );
  });
}

/** Waits `ms`, or less when the connection comes back first. */
function backoff(ms: number, onReconnect: OnReconnect | undefined): Promise<void> {
  return new Promise((resolve) => {
    let off: (() => void) | undefined;
    const timer = setTimeout(() => {
      off?.();
      resolve();
    }, ms);
    off = onReconnect?.(() => {
      clearTimeout(timer);
      off?.();
      resolve();
    });
  });
}

/** The store of one resource kind. */
export class ResourceStore<S extends DescMessage, E extends DescMessage, B> {
  readonly stream: string;
  readonly subjectPrefix: string;
  private readonly log: Logger;
  private readonly retryMs: number;

  private constructor(
    private readonly bus: Bus,
    readonly def: ResourceKind<S, E, B>,
    private readonly records: TypedKv<typeof ResourceRecordSchema>,
    private readonly o: ResourceStoreOptions,
    names: { stream: string; subjectPrefix: string },
  ) {
    this.stream = names.stream;
    this.subjectPrefix = names.subjectPrefix;
    this.log = bus.logger.child({ component: "resource", kind: def.kind });
    this.retryMs = o.transientRetryMs ?? 30_000;
  }

  /** retryTransient with this store's bound, logger and reconnect signal. */
  private retry<T>(op: () => Promise<T>, what: string): Promise<T> {
    return retryTransient(op, this.retryMs, this.log, what, this.bus.onReconnect);
  }

  /** Opens (creating if missing) the kind's KV bucket and history stream. */
  static async open<S extends DescMessage, E extends DescMessage, B>(
    bus: Bus,
    def: ResourceKind<S, E, B>,
    options: ResourceStoreOptions = {},
  ): Promise<ResourceStore<S, E, B>> {
    if (!KIND_RE.test(def.kind)) throw new Error(`resource kind ${JSON.stringify(def.kind)} is invalid: use kebab-case like "trainer-job"`);
    const stream = options.stream ?? `HISTORY_${def.kind.replaceAll("-", "_").toUpperCase()}`;
    const subjectPrefix = options.subjectPrefix ?? `history.${def.kind}`;
    await ensureStream(
      bus,
      {
        name: stream,
        subjects: [`${subjectPrefix}.>`],
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        // Histories are events: they follow the events retention (NATS_EVENTS_MAX_AGE / _MAX_BYTES) unless told.
        max_age: nanos(options.historyMaxAgeMs ?? bus.stores.eventsMaxAgeMs),
        max_bytes: options.historyMaxBytes ?? bus.stores.eventsMaxBytes,
      },
      { store: `history stream ${stream}`, variable: "NATS_EVENTS_MAX_BYTES" },
    );
    const records = await bus.kv(options.bucket ?? `${def.kind}s`, ResourceRecordSchema, { history: options.kvHistory ?? 1 });
    return new ResourceStore(bus, def, records, options, { stream, subjectPrefix });
  }

  subject(id: string): string {
    return `${this.subjectPrefix}.${id}`;
  }

  private decodeState(record: ResourceRecord): MessageShape<S> {
    return fromBinary(this.def.stateSchema, record.state);
  }

  private toResource(id: string, record: ResourceRecord, revision: number): Resource<S> {
    return {
      id,
      state: this.decodeState(record),
      lastSequence: Number(record.lastSequence),
      owner: record.owner,
      epoch: Number(record.epoch),
      leaseExpiresAtMs: Number(record.leaseExpiresAtMs),
      claimReason: record.claimReason,
      revision,
    };
  }

  private async read(id: string): Promise<{ record: ResourceRecord; revision: number } | null> {
    const found = await this.retry(() => this.records.get(id), "reading a resource record");
    return found === null ? null : { record: found.value, revision: found.revision };
  }

  /** The resource, or null when absent (or the ID cannot be one). Publishes a dead writer's outbox first. */
  async get(id: string): Promise<Resource<S> | null> {
    if (!isResourceId(id)) return null;
    const found = await this.read(id);
    if (found === null) return null;
    return this.toResource(id, found.record, found.revision);
  }

  /** Every resource of the kind (optionally only those `where` accepts). */
  async list(where?: (r: Resource<S>) => boolean): Promise<Resource<S>[]> {
    const out: Resource<S>[] = [];
    for await (const e of this.records.entries()) {
      const r = this.toResource(e.key, e.value, e.revision);
      if (where === undefined || where(r)) out.push(r);
    }
    return out;
  }

  /**
   * The resource's state as it changes (the current one first; null once deleted), e.g. for a runner to notice a
   * cancel request or that another replica took its work. `stop()` ends it.
   */
  async watchState(id: string): Promise<AsyncIterable<Resource<S> | null> & { stop(): void }> {
    const w = await this.retry(() => this.records.watch({ key: id }), "watching a resource record");
    const toResource = (c: { value: ResourceRecord | null; revision: number }) => (c.value === null ? null : this.toResource(id, c.value, c.revision));
    return {
      stop: () => w.stop(),
      async *[Symbol.asyncIterator]() {
        for await (const change of w) yield toResource(change);
      },
    };
  }

  /** Stores a new resource with its first events. Throws ResourceExistsError when the ID is taken. */
  async create(id: string, state: MessageShape<S>, events: HistoryEvent<B>[] = []): Promise<Resource<S>> {
    if (!isResourceId(id)) throw new Error(`${this.def.kind} ID ${JSON.stringify(id)} is invalid: use 1–128 letters, digits, '-' or '_'`);
    const { record, outbox } = this.nextRecord(id, create(ResourceRecordSchema), state, events);
    await this.fault("before-write", id, Number(record.lastSequence));
    let revision: number;
    try {
      revision = await this.retry(() => this.records.create(id, record), "creating a resource");
    } catch (err) {
      if (!(err instanceof RevisionConflictError)) throw err;
      const mine = await this.ownWriteLanded(id, record);
      if (mine === undefined) throw new ResourceExistsError(this.def.kind, id);
      revision = mine;
    }
    await this.fault("after-write", id, Number(record.lastSequence));
    await this.publishOutbox(id, outbox);
    return this.toResource(id, record, revision);
  }

  /**
   * Read-modify-write with compare-and-set: `change` gets the current state (a copy) and returns the next state and
   * its events, or null for no change. With a `fence`, the write happens only while the record is still at that owner
   * and epoch (else OwnershipLostError). Concurrent writers make `change` run again on the newer state.
   */
  async modify(
    id: string,
    change: (state: MessageShape<S>, meta: ResourceMeta) => ResourceChange<S, B> | null,
    options: { fence?: Fence; renewLeaseMs?: number } = {},
  ): Promise<Resource<S>> {
    const written = await this.write(id, (current, meta) => {
      if (options.fence !== undefined) this.checkFence(id, current, options.fence);
      const result = change(meta.state, meta);
      if (result === null) return SKIP;
      const next = this.nextRecord(id, current, result.state, result.events ?? []);
      if (options.renewLeaseMs !== undefined && next.record.owner !== "") next.record.leaseExpiresAtMs = BigInt(Date.now() + options.renewLeaseMs);
      return next;
    });
    if (written === null) throw new Error(`${this.def.kind} ${id} not found`);
    return written.resource;
  }

  /**
   * Takes the work for `owner` and starts a new epoch. With `leaseMs`, only when nobody holds a live lease (or the
   * owner itself does); without, unconditionally (a work-queue delivery decides who owns the work). `reason` goes
   * into the record and, through `change`, into the history. Returns null when the resource is absent, terminal, or
   * leased by another owner.
   */
  async claim(
    id: string,
    owner: string,
    options: {
      leaseMs?: number;
      reason?: (previous: ResourceMeta, now: number) => string;
      change?: (state: MessageShape<S>, previous: ResourceMeta, reason: string) => ResourceChange<S, B>;
    } = {},
  ): Promise<{ resource: Resource<S>; fence: Fence } | null> {
    const written = await this.write(id, (current, meta) => {
      if (this.def.isTerminal(meta.state)) return SKIP;
      const now = Date.now();
      if (options.leaseMs !== undefined && current.owner !== "" && current.owner !== owner && Number(current.leaseExpiresAtMs) > now) return SKIP;
      const reason = options.reason?.(meta, now) ?? describeClaim(meta, owner, now);
      const changed = options.change?.(meta.state, meta, reason) ?? { state: meta.state };
      const next = this.nextRecord(id, current, changed.state, changed.events ?? []);
      next.record.owner = owner;
      next.record.epoch = current.epoch + 1n;
      next.record.leaseExpiresAtMs = options.leaseMs !== undefined ? BigInt(now + options.leaseMs) : 0n;
      next.record.claimReason = reason;
      return next;
    });
    if (written === null || !written.wrote) return null;
    return { resource: written.resource, fence: { owner, epoch: written.resource.epoch } };
  }

  /** Gives up ownership (fenced): the next claim takes the work at once. `change` may record why. */
  async release(id: string, fence: Fence, change?: (state: MessageShape<S>) => ResourceChange<S, B>): Promise<Resource<S>> {
    return this.modifyFenced(id, fence, change, (record) => {
      record.owner = "";
      record.leaseExpiresAtMs = 0n;
    });
  }

  /** Extends a lease (fenced). */
  async renew(id: string, fence: Fence, leaseMs: number): Promise<Resource<S>> {
    return this.modifyFenced(id, fence, undefined, (record) => {
      record.leaseExpiresAtMs = BigInt(Date.now() + leaseMs);
    });
  }

  private async modifyFenced(
    id: string,
    fence: Fence,
    change: ((state: MessageShape<S>) => ResourceChange<S, B>) | undefined,
    edit: (record: ResourceRecord) => void,
  ): Promise<Resource<S>> {
    const written = await this.write(id, (current, meta) => {
      this.checkFence(id, current, fence);
      const changed = change?.(meta.state) ?? { state: meta.state };
      const next = this.nextRecord(id, current, changed.state, changed.events ?? []);
      edit(next.record);
      return next;
    });
    if (written === null) throw new Error(`${this.def.kind} ${id} not found`);
    return written.resource;
  }

  /**
   * The one write loop: read the record, publish what an earlier writer left in its outbox, let `build` make the
   * next record (or SKIP), compare-and-set it, publish its outbox. A conflict runs `build` again on the newer record.
   * Returns null when the resource is absent; `wrote` is false when `build` skipped.
   */
  private async write(
    id: string,
    build: (current: ResourceRecord, meta: Resource<S>) => { record: ResourceRecord; outbox: ResourceOutboxEntry[] } | typeof SKIP,
  ): Promise<{ resource: Resource<S>; wrote: boolean } | null> {
    for (;;) {
      const found = await this.read(id);
      if (found === null) return null;
      const { record: current, revision } = found;
      // Whatever an earlier writer committed but did not publish goes out first, so the history stays in order.
      if (current.outbox.length > 0) await this.publishOutbox(id, current.outbox);
      const meta = this.toResource(id, current, revision);
      const next = build(current, meta);
      if (next === SKIP) return { resource: meta, wrote: false };
      const { record, outbox } = next;
      await this.fault("before-write", id, Number(record.lastSequence));
      let written: number;
      try {
        written = await this.retry(() => this.records.update(id, record, revision), "writing a resource record");
      } catch (err) {
        if (!(err instanceof RevisionConflictError)) throw err;
        const mine = await this.ownWriteLanded(id, record);
        if (mine === undefined) continue;
        written = mine;
      }
      await this.fault("after-write", id, Number(record.lastSequence));
      await this.publishOutbox(id, outbox);
      return { resource: this.toResource(id, record, written), wrote: true };
    }
  }

  /**
   * After a compare-and-set conflict: the revision of the stored record when it is exactly `record` (this writer's
   * own write landed although its request was retried, e.g. across a reconnect), else undefined.
   */
  private async ownWriteLanded(id: string, record: ResourceRecord): Promise<number | undefined> {
    const now = await this.read(id);
    if (now === null) return undefined;
    return equals(ResourceRecordSchema, now.record, record) ? now.revision : undefined;
  }

  private checkFence(id: string, record: ResourceRecord, fence: Fence): void {
    if (record.owner !== fence.owner || Number(record.epoch) !== fence.epoch) {
      const now = record.owner === "" ? "nobody holds it" : `${record.owner} holds it at epoch ${record.epoch}`;
      throw new OwnershipLostError(this.def.kind, id, `this replica (${fence.owner}) held epoch ${fence.epoch}; ${now}`);
    }
  }

  /** The record after a change: new state, sequence advanced by the events, outbox = exactly those events. */
  private nextRecord(
    id: string,
    current: ResourceRecord,
    state: MessageShape<S>,
    events: HistoryEvent<B>[],
  ): { record: ResourceRecord; outbox: ResourceOutboxEntry[] } {
    let sequence = Number(current.lastSequence);
    const timeMs = Date.now();
    const outbox: ResourceOutboxEntry[] = [];
    const terminal = events.length > 0 && this.def.isTerminal(state);
    for (const [index, e] of events.entries()) {
      sequence += 1;
      for (const a of e.announce ?? []) {
        const message = create(a.schema, a.value);
        outbox.push({
          $typeName: "ragtune.common.v1.ResourceOutboxEntry",
          sequence: BigInt(sequence),
          subject: a.subject ?? eventSubject(a.schema, message),
          typeName: a.schema.typeName,
          data: toBinary(a.schema, message),
          msgId: a.msgId ?? `${id}:${sequence}`,
          history: false,
          terminal: false,
        });
      }
      const event = create(this.def.eventSchema, this.def.stampEvent(e.body, { id, sequence, timeMs }));
      outbox.push({
        $typeName: "ragtune.common.v1.ResourceOutboxEntry",
        sequence: BigInt(sequence),
        subject: this.subject(id),
        typeName: this.def.eventSchema.typeName,
        data: toBinary(this.def.eventSchema, event),
        msgId: `${this.def.kind}:${id}:${sequence}`,
        history: true,
        terminal: terminal && index === events.length - 1,
      });
    }
    this.def.onCommit?.(state, sequence);
    const record = create(ResourceRecordSchema, {
      state: toBinary(this.def.stateSchema, state),
      lastSequence: BigInt(sequence),
      outbox,
      owner: current.owner,
      epoch: current.epoch,
      leaseExpiresAtMs: current.leaseExpiresAtMs,
      claimReason: current.claimReason,
    });
    return { record, outbox };
  }

  /** Sequence and stream position of the newest stored history event of `id` ({0, 0} when none). */
  private async lastStored(id: string): Promise<{ sequence: number; streamSeq: number }> {
    const m = await this.retry(() => this.bus.jsm.streams.getMessage(this.stream, { last_by_subj: this.subject(id) }), "reading the last history event");
    if (m === null) return { sequence: 0, streamSeq: 0 };
    return { sequence: this.def.sequenceOf(fromBinary(this.def.eventSchema, m.data)), streamSeq: m.seq };
  }

  /**
   * Publishes the outbox entries the history lacks, in order: each history event exactly once (expected last
   * subject sequence), each catalog event before its history event. Safe to run from any number of writers and
   * watchers at once.
   *
   * Consecutive history events go out together rather than one acknowledgement at a time (a save of an ingest run
   * carries hundreds): the first guarded by the subject's last sequence as read, each later one by the message ID of
   * the one before it (JetStream's "expected last message ID": the stream's last stored message must be that event).
   * The server stores them in order, and once one is refused none after it is stored unless that one was stored by
   * another writer meanwhile — so no gap and no reordering, whatever fails. After a refusal the history is read
   * again and the rest goes out one at a time, as before.
   */
  private async publishOutbox(id: string, outbox: readonly ResourceOutboxEntry[]): Promise<void> {
    if (outbox.length === 0) return;
    let last = await this.lastStored(id);
    let together = true;
    for (let i = 0; i < outbox.length; ) {
      const entry = outbox[i]!;
      const sequence = Number(entry.sequence);
      if (sequence <= last.sequence) {
        i++;
        continue;
      }
      if (sequence !== last.sequence + 1) {
        throw new Error(`${this.def.kind} ${id}: history holds events up to ${last.sequence} but the outbox continues at ${sequence}`);
      }
      if (!entry.history) {
        await this.retry(() => this.bus.js.publish(entry.subject, entry.data, { msgID: entry.msgId, headers: this.headersOf(entry) }), "publishing a catalog event").catch(
          (err: unknown) => {
            throw storeFullError(err, { store: `the events stream (subject ${entry.subject})`, variable: "NATS_EVENTS_MAX_BYTES" }) ?? err;
          },
        );
        await this.fault("after-catalog-publish", id, sequence);
        i++;
        continue;
      }
      let end = i + 1;
      while (end < outbox.length && outbox[end]!.history) end++;
      await this.fault("before-history-publish", id, sequence);
      if (together && end - i > 1) {
        const run = outbox.slice(i, end);
        const acks = run.map((e, k) =>
          this.bus.js
            .publish(e.subject, e.data, {
              msgID: e.msgId,
              headers: this.headersOf(e),
              expect: k === 0 ? { lastSubjectSequence: last.streamSeq } : { lastMsgID: run[k - 1]!.msgId },
            })
            .then((ack) => ({ seq: ack.seq }), (err: unknown) => ({ err })),
        );
        let stored = 0;
        try {
          for (const [k, e] of run.entries()) {
            const result = await acks[k]!;
            if ("err" in result) break;
            last = { sequence: Number(e.sequence), streamSeq: result.seq };
            stored++;
            await this.fault("after-history-publish", id, last.sequence);
          }
        } finally {
          await Promise.all(acks);
        }
        i += stored;
        if (stored < run.length) {
          // Refused (another writer appended, a reconnect, a full stream): see what the history holds now.
          together = false;
          last = await this.lastStored(id);
        }
        continue;
      }
      try {
        const ack = await this.retry(() => this.bus.js.publish(entry.subject, entry.data, { msgID: entry.msgId, headers: this.headersOf(entry), expect: { lastSubjectSequence: last.streamSeq } }), "appending a history event");
        last = { sequence, streamSeq: ack.seq };
      } catch (err) {
        if (!(err instanceof JetStreamApiError && err.code === WRONG_LAST_SEQUENCE)) {
          throw storeFullError(err, { store: `history stream ${this.stream}`, variable: "NATS_EVENTS_MAX_BYTES" }) ?? err;
        }
        // Another writer or watcher stored it (or an earlier one) meanwhile: look again.
        last = await this.lastStored(id);
        if (last.sequence < sequence) throw new Error(`${this.def.kind} ${id}: history changed under the append of ${sequence}; retry`, { cause: err });
      }
      await this.fault("after-history-publish", id, sequence);
      i++;
    }
  }

  /** The headers of an outbox entry's message: its type, message ID and whether it ends the history. */
  private headersOf(entry: ResourceOutboxEntry) {
    const h = natsHeaders();
    h.set(TYPE_HEADER, entry.typeName);
    h.set(MSG_ID_HEADER, entry.msgId);
    if (entry.terminal) h.set(TERMINAL_HEADER, "true");
    return h;
  }

  /**
   * Publishes what a dead writer left in the record's outbox (idempotent). Returns the resource. With `beyond`, only
   * when the record holds events past that sequence (a watcher that has them all skips the look at the stream).
   */
  async repair(id: string, beyond = 0): Promise<Resource<S> | null> {
    const found = await this.read(id);
    if (found === null) return null;
    if (found.record.outbox.length > 0 && Number(found.record.lastSequence) > beyond) await this.publishOutbox(id, found.record.outbox);
    return this.toResource(id, found.record, found.revision);
  }

  /**
   * The resource's history from `fromSequence`: stored events, then live ones, each once and in order; ends after
   * the last event of a terminal state, or when `signal` aborts. A writer that died before publishing is repaired
   * by the watcher, so it never waits on a gap.
   */
  async *watch(id: string, options: WatchOptions = {}): AsyncGenerator<MessageShape<E>> {
    let next = Math.max(1, options.fromSequence ?? 1);
    const first = await this.repair(id);
    if (first === null) throw new Error(`${this.def.kind} ${id} not found`);
    if (this.def.isTerminal(first.state) && first.lastSequence < next) return;

    const consumer = await this.retry(() => this.bus.js.consumers.get(this.stream, { filter_subjects: this.subject(id), deliver_policy: DeliverPolicy.All }), "opening a history consumer");
    // A short pull expiry makes the client notice a NATS restart within ~2 s (missed heartbeats) and re-create the
    // ordered consumer, instead of ~30 s with the default.
    const messages: ConsumerMessages = await consumer.consume({ max_messages: 256, expires: 2_000 });
    const queue: { event: MessageShape<E>; terminal: boolean }[] = [];
    let wake: (() => void) | undefined;
    let ended = false;
    let failure: unknown;
    const onAbort = () => void messages.close();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    void (async () => {
      try {
        for await (const m of messages) {
          queue.push({ event: fromBinary(this.def.eventSchema, m.data), terminal: m.headers?.get(TERMINAL_HEADER) === "true" });
          wake?.();
        }
      } catch (err) {
        failure = err;
      } finally {
        ended = true;
        wake?.();
      }
    })();

    // While idle, look (in the background, never blocking delivery) for a writer that died between its record write
    // and its publish, and publish for it; also notice a resource that was deleted.
    const repairAfterMs = this.o.repairAfterMs ?? 1_000;
    let repairing = false;
    let gone = false;
    const timer = setInterval(() => {
      if (repairing || queue.length > 0 || ended) return;
      repairing = true;
      this.repair(id, next - 1)
        .then((r) => {
          if (r === null) {
            gone = true;
            wake?.();
          }
        })
        .catch((err: unknown) => this.log.warn({ err, id }, "checking a resource for unpublished events failed"))
        .finally(() => {
          repairing = false;
        });
    }, repairAfterMs);
    timer.unref();

    try {
      for (;;) {
        while (queue.length === 0 && !ended && !gone) {
          await new Promise<void>((resolve) => {
            wake = () => {
              wake = undefined;
              resolve();
            };
          });
        }
        if (gone) return;
        const item = queue.shift();
        if (item === undefined) {
          if (failure !== undefined && !options.signal?.aborted) throw failure;
          return;
        }
        const sequence = this.def.sequenceOf(item.event);
        if (sequence < next) continue;
        if (sequence > next) {
          // Retention removed older events: deliver from what is kept.
          this.log.warn({ id, missing: next, next: sequence }, "history events before this one have expired");
        }
        next = sequence + 1;
        yield item.event;
        if (item.terminal && queue.length === 0) {
          // The last event unless the resource was reopened since (e.g. a failed job resumed): the record decides.
          const now = await this.get(id);
          if (now === null || (this.def.isTerminal(now.state) && now.lastSequence < next)) return;
        }
      }
    } finally {
      clearInterval(timer);
      options.signal?.removeEventListener("abort", onAbort);
      await messages.close();
    }
  }

  private async fault(step: AppendStep, id: string, sequence: number): Promise<void> {
    await this.o.faults?.(step, id, sequence);
  }
}

function describeClaim(previous: ResourceMeta, owner: string, now: number): string {
  if (previous.owner === "") return previous.epoch === 0 ? `claimed by ${owner}` : `claimed by ${owner} (released by its previous owner)`;
  if (previous.owner === owner) return `claimed again by ${owner} (it restarted or NATS redelivered its work)`;
  if (previous.leaseExpiresAtMs > 0 && previous.leaseExpiresAtMs <= now) {
    return `taken over by ${owner}: the lease of ${previous.owner} lapsed ${now - previous.leaseExpiresAtMs} ms ago`;
  }
  return `taken over by ${owner} from ${previous.owner} (its work was redelivered: the replica died, stalled or lost NATS)`;
}
