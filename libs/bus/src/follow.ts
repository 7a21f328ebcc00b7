/**
 * Following events: every replica gets every event, from now (or from a stream sequence) on.
 *
 * The durable subscriptions (`subscribeEvents`) and work queues share one consumer among a service's replicas, so
 * each event is handled once by one of them. A follower is the other shape: each replica (each `followEvents` call)
 * reads the events through an ordered consumer of its own — ephemeral (the server removes it once the replica is gone),
 * no acks, one event at a time in stream order. nats.js recreates it from the last sequence seen after a gap, a
 * missed heartbeat or a reconnect, so a follower sees each event once, in order, for as long as it runs. For caches
 * and in-memory indexes that every replica keeps of its own (the gateway's collection indexes).
 *
 * Nothing is redelivered: a handler that throws is logged and the follower goes on with the next event, so a handler
 * that cannot afford to miss one must make itself whole (drop its state and rebuild it). An event that cannot be
 * decoded is logged and skipped.
 */
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { DeliverPolicy, type ConsumerMessages, type JsMsg, type OrderedConsumerOptions } from "@nats-io/jetstream";
import { nuid } from "@nats-io/nats-core";
import type { Logger } from "@ragtune/logger";
import type { BusContext } from "./bus.js";
import { assertName } from "./consumers.js";
import { decodeMessage, eventFilterSubject, MSG_ID_HEADER, type EventVerb } from "./events.js";
import { EVENTS_STREAM } from "./streams.js";

export interface FollowedEvent<Desc extends DescMessage> {
  event: MessageShape<Desc>;
  subject: string;
  /** Stream sequence: a stable, increasing position of this event. */
  seq: number;
  /** The publisher's `Nats-Msg-Id`. */
  msgId: string | undefined;
}

/** One kind of event a follower handles: build it with `onEvent`. */
export interface FollowedKind {
  readonly schema: DescMessage;
  /** The subject filter (a catalog event's, or the explicit one of a message outside the catalog). */
  readonly filter: string;
  readonly handle: (m: JsMsg) => Promise<void> | void;
}

export interface OnEventOptions<Desc extends DescMessage> {
  /** For an event with a verb pattern: only this verb. Default every verb. */
  verb?: EventVerb<Desc>;
  /** Only for a message outside the event catalog (tests): the subject it is published on. */
  subject?: string;
}

/**
 * A kind of event for `followEvents`: a catalog event (its subject from its declaration, or one `verb` of it) and its
 * handler, called once per event in stream order; the next event waits for the returned promise.
 */
export function onEvent<Desc extends DescMessage>(
  schema: Desc,
  handler: (e: FollowedEvent<Desc>) => Promise<void> | void,
  options: OnEventOptions<Desc> = {},
): FollowedKind {
  let filter: string;
  if (options.subject !== undefined) {
    if (options.verb !== undefined) throw new Error(`onEvent ${schema.typeName}: give a verb or a subject, not both`);
    let catalog = true;
    try {
      eventFilterSubject(schema);
    } catch {
      catalog = false;
    }
    if (catalog) throw new Error(`onEvent ${schema.typeName}: a catalog event's subject comes from its declaration; leave subject out (and use verb to pick one)`);
    filter = options.subject;
  } else {
    filter = eventFilterSubject(schema, options.verb);
  }
  return {
    schema,
    filter,
    handle: (m) => handler({ event: decodeMessage(schema, m), subject: m.subject, seq: m.seq, msgId: m.headers?.get(MSG_ID_HEADER) || undefined }),
  };
}

export interface FollowOptions {
  /** Names the follower in logs and its consumers on the server (letters, digits, '_' and '-'), e.g. `gateway-index`. */
  name: string;
  /** The kinds of event to follow (`onEvent`), each to its handler; events of all of them come in one stream order. */
  events: readonly FollowedKind[];
  /**
   * Where to start: `"new"` (default) the events published after `followEvents` resolves (and any published while it
   * was starting); `"all"` every stored event; `{ seq }` the stored events from that stream sequence on (e.g. one
   * past the last a replica applied before it rebuilt its state).
   */
  from?: "new" | "all" | { seq: number };
  /** Stream to read. Default `RAGTUNE`. */
  stream?: string;
  /** Where the follower logs (handler failures, skipped events). Default the bus's logger. */
  logger?: Logger;
}

export interface EventFollower {
  readonly name: string;
  /** Stream sequence of the last event handled (or skipped); 0 before the first. */
  readonly lastSeq: number;
  /** Stop reading, let the event in hand finish, then resolve. */
  stop(): Promise<void>;
}

/** Does a NATS subject match a filter (`*` one token, `>` the rest)? */
export function subjectMatches(filter: string, subject: string): boolean {
  const f = filter.split(".");
  const s = subject.split(".");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === ">") return s.length > i;
    if (i >= s.length) return false;
    if (f[i] !== "*" && f[i] !== s[i]) return false;
  }
  return f.length === s.length;
}

/** One filter covering all of them, for a server that takes one filter per consumer (before 2.10): their common tokens, then `>`. */
export function coveringFilter(filters: readonly string[]): string {
  if (new Set(filters).size === 1) return filters[0]!;
  const split = filters.map((f) => f.split("."));
  const common: string[] = [];
  for (let i = 0; ; i++) {
    const token = split[0]![i];
    // `*` and `>` cover more than one token, so the common part stops before them
    if (token === undefined || token === "*" || token === ">" || split.some((s) => s[i] !== token || i >= s.length - 1)) break;
    common.push(token);
  }
  return [...common, ">"].join(".");
}

/** Consumers with several filter subjects came with nats-server 2.10. */
function takesManyFilters(version: string | undefined): boolean {
  const [major = 0, minor = 0] = (version ?? "0.0").split(".").map((n) => Number.parseInt(n, 10));
  return major > 2 || (major === 2 && minor >= 10);
}

/**
 * Follows events through an ordered consumer of this caller's own (see the module comment). Resolves once the
 * consumer exists on the server: with `from: "new"`, every event published after that is delivered.
 */
export async function followEvents(ctx: BusContext, options: FollowOptions): Promise<EventFollower> {
  assertName("follower name", options.name);
  const stream = options.stream ?? EVENTS_STREAM;
  assertName("stream", stream);
  if (options.events.length === 0) throw new Error(`follower ${options.name}: give at least one event to follow (onEvent)`);
  const filters = options.events.map((k) => k.filter);
  const from = options.from ?? "new";
  const log = (options.logger ?? ctx.logger).child({ follower: options.name, stream });

  const consumerOptions: Partial<OrderedConsumerOptions> = { name_prefix: `${options.name}_${nuid.next()}` };
  const multiple = takesManyFilters(ctx.nc.info?.version);
  consumerOptions.filter_subjects = filters.length === 1 ? filters[0]! : multiple ? [...new Set(filters)] : coveringFilter(filters);
  if (from === "all") {
    consumerOptions.deliver_policy = DeliverPolicy.All;
  } else {
    // "new" as a start sequence (one past the stream's last), not DeliverPolicy.New: nats.js recreates an ordered
    // consumer from its last delivered sequence, and before the first delivery that would be the stream's start.
    let seq: number;
    if (from === "new") {
      const info = await ctx.jsm.streams.info(stream);
      seq = info.state.last_seq + 1;
    } else {
      if (!Number.isSafeInteger(from.seq) || from.seq < 1) throw new Error(`follower ${options.name}: from.seq must be a stream sequence ≥ 1, not ${from.seq}`);
      seq = from.seq;
    }
    consumerOptions.deliver_policy = DeliverPolicy.StartSequence;
    consumerOptions.opt_start_seq = seq;
  }
  const consumer = await ctx.js.consumers.get(stream, consumerOptions);
  const messages: ConsumerMessages = await consumer.consume();

  let lastSeq = 0;
  const handleOne = async (m: JsMsg): Promise<void> => {
    const kind = options.events.find((k) => subjectMatches(k.filter, m.subject));
    if (kind === undefined) return; // under the covering filter of an old server: not one of ours
    try {
      await kind.handle(m);
    } catch (err) {
      log.warn({ err, subject: m.subject, seq: m.seq }, "event not handled; the follower goes on with the next");
    }
  };
  const done = (async () => {
    for await (const m of messages) {
      await handleOne(m);
      lastSeq = m.seq;
    }
  })().catch((err: unknown) => {
    log.error({ err }, "event follower stopped with an error");
  });
  log.debug({ filter: consumerOptions.filter_subjects, from }, "following events");

  return {
    name: options.name,
    get lastSeq() {
      return lastSeq;
    },
    async stop() {
      await messages.close();
      await done;
    },
  };
}
