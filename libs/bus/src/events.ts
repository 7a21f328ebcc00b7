import {
  create,
  fromBinary,
  getOption,
  hasOption,
  toBinary,
  type DescField,
  type DescFile,
  type DescMessage,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { reflect } from "@bufbuild/protobuf/reflect";
import { DeliverPolicy, type ConsumerMessages, type JsMsg } from "@nats-io/jetstream";
import { headers as natsHeaders, nanos } from "@nats-io/nats-core";
import * as contracts from "@ragtune/proto";
import type { BusContext } from "./bus.js";
import { assertName, defaultRetryDelayMs, ensureDurableConsumer } from "./consumers.js";
import { EVENTS_STREAM } from "./streams.js";

/** Header carrying the protobuf type name, checked by consumers before decoding. */
export const TYPE_HEADER = "Ragtune-Type";
/** JetStream's dedupe header. */
export const MSG_ID_HEADER = "Nats-Msg-Id";

const EVENT_SUBJECT_RE = /^ragtune(\.[a-z0-9_-]+){3,}$/;

export interface PublishOptions {
  /** Stable id of this event (e.g. `${entityId}:${seq}`): a second publish with it is dropped by the server. */
  msgId: string;
  /** Extra headers (e.g. a trace id). */
  headers?: Record<string, string>;
}

export interface PublishResult {
  stream: string;
  seq: number;
  /** True when the server already had a message with this `msgId` (nothing new was stored). */
  duplicate: boolean;
}

/** Checks `ragtune.<area>.<entity>.<verb>` (lowercase tokens, no wildcards). */
export function assertEventSubject(subject: string): void {
  if (!EVENT_SUBJECT_RE.test(subject)) {
    throw new Error(`event subject ${JSON.stringify(subject)} is invalid: expected ragtune.<area>.<entity>.<verb> in lowercase`);
  }
}

/** Encodes a protobuf message and publishes it to JetStream with `Nats-Msg-Id` and the type header. */
export async function publishMessage<Desc extends DescMessage>(
  ctx: BusContext,
  subject: string,
  schema: Desc,
  value: MessageInitShape<Desc>,
  options: PublishOptions,
): Promise<PublishResult> {
  if (options.msgId.trim() === "") throw new Error(`publish to ${subject}: msgId must not be empty`);
  const h = natsHeaders();
  for (const [k, v] of Object.entries(options.headers ?? {})) h.set(k, v);
  h.set(TYPE_HEADER, schema.typeName);
  const message = create(schema, value);
  const ack = await ctx.js.publish(subject, toBinary(schema, message), { msgID: options.msgId, headers: h });
  return { stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate };
}

// ---------------------------------------------------------------------------------------------
// The event catalog: every event message of ragtune.events.v1 declares its subject with the option
// (ragtune.events.v1.event_subject); publishers and subscribers pass the schema and the subject is
// derived from it, so no service types a subject and a consumer never imports a producer's source.
// ---------------------------------------------------------------------------------------------

/** The protobuf package whose messages are the pipeline's events. */
export const EVENTS_PACKAGE = "ragtune.events.v1";

/** A catalog subject: exactly `ragtune.<area>.<entity>.<verb>`, lowercase tokens. */
const CATALOG_SUBJECT_RE = /^ragtune\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$/;
/** A pattern whose verb is named by an enum field: `ragtune.<area>.<entity>.{<field>}`. */
const VERB_PATTERN_RE = /^(ragtune\.[^.{}]+\.[^.{}]+)\.\{([a-z][a-z0-9_]*)\}$/;
/** By convention the verb field is `kind`: the `verb` option of a subscription is typed by it. */
export const VERB_FIELD = "kind";

/** One event type of the catalog. */
export interface EventCatalogEntry {
  /** Full protobuf type name, e.g. `ragtune.events.v1.TrainerJobEvent`. */
  readonly typeName: string;
  /** The declared subject, e.g. `ragtune.ingest.document.chunked` or `ragtune.trainer.job.{kind}`. */
  readonly pattern: string;
  /** Every subject the message goes to: one, or one per verb. */
  readonly subjects: readonly string[];
  /** The enum field whose value is the verb, when the pattern has one (`kind`). */
  readonly verbField?: string;
}

/** What a declaration resolves to for one schema. */
interface EventDeclaration {
  readonly entry: EventCatalogEntry;
  /** For a verb pattern: the subject without the verb, e.g. `ragtune.trainer.job`. */
  readonly prefix?: string;
  /** For a verb pattern: the enum field and its value number → verb. */
  readonly verbField?: DescField;
  readonly verbs?: ReadonlyMap<number, string>;
}

/** The verb values a subscription to `Desc` may filter by: its `kind` enum, or nothing. */
export type EventVerb<Desc extends DescMessage> = MessageShape<Desc> extends { kind: infer K extends number } ? K : never;

const declarations = new WeakMap<DescMessage, EventDeclaration | null>();

function declarationError(schema: DescMessage, pattern: string, problem: string): Error {
  return new Error(`event ${schema.typeName} declares the subject ${JSON.stringify(pattern)}: ${problem}`);
}

function parseDeclaration(schema: DescMessage): EventDeclaration | null {
  if (!hasOption(schema, contracts.event_subject)) return null;
  const pattern = getOption(schema, contracts.event_subject);
  const verbMatch = VERB_PATTERN_RE.exec(pattern);
  if (verbMatch === null) {
    if (!CATALOG_SUBJECT_RE.test(pattern)) {
      throw declarationError(schema, pattern, "expected ragtune.<area>.<entity>.<verb> in lowercase, or ragtune.<area>.<entity>.{<enum field>}");
    }
    return { entry: { typeName: schema.typeName, pattern, subjects: [pattern] } };
  }
  const [, prefix = "", fieldName = ""] = verbMatch;
  const field = schema.fields.find((f) => f.name === fieldName);
  if (field === undefined || field.fieldKind !== "enum") {
    throw declarationError(schema, pattern, `{${fieldName}} must name an enum field of the message`);
  }
  if (field.name !== VERB_FIELD) {
    throw declarationError(schema, pattern, `the verb field must be called ${VERB_FIELD} (subscriptions filter by it)`);
  }
  const enumPrefix = field.enum.sharedPrefix ?? "";
  const verbs = new Map<number, string>();
  for (const value of field.enum.values) {
    if (value.number === 0) continue; // UNSPECIFIED names no verb
    const name = value.name.toLowerCase();
    const verb = name.startsWith(enumPrefix) ? name.slice(enumPrefix.length) : name;
    const subject = `${prefix}.${verb}`;
    if (!CATALOG_SUBJECT_RE.test(subject)) {
      throw declarationError(schema, pattern, `the value ${value.name} makes ${JSON.stringify(subject)}, not ragtune.<area>.<entity>.<verb>`);
    }
    if (!verbs.has(value.number)) verbs.set(value.number, verb);
  }
  if (verbs.size === 0) throw declarationError(schema, pattern, `the enum ${field.enum.typeName} has no value besides 0`);
  return {
    entry: { typeName: schema.typeName, pattern, subjects: [...verbs.values()].map((v) => `${prefix}.${v}`), verbField: field.name },
    prefix,
    verbField: field,
    verbs,
  };
}

/** The schema's declaration (cached), or undefined when it declares no subject. Throws on a malformed one. */
function declarationOf(schema: DescMessage): EventDeclaration | undefined {
  let decl = declarations.get(schema);
  if (decl === undefined) {
    decl = parseDeclaration(schema);
    declarations.set(schema, decl);
  }
  return decl ?? undefined;
}

function requireDeclaration(schema: DescMessage): EventDeclaration {
  const decl = declarationOf(schema);
  if (decl === undefined) {
    throw new Error(
      `${schema.typeName} is not in the event catalog: declare its subject with option (ragtune.events.v1.event_subject) in proto/ragtune/events/v1`,
    );
  }
  return decl;
}

/**
 * Checks a set of event messages and lists them: every message must declare a subject of the form
 * `ragtune.<area>.<entity>.<verb>` (or a `{kind}` verb pattern), and no two may share a subject.
 * Throws naming the message at fault. In the order given (declaration order: the pipeline's).
 */
export function buildEventCatalog(messages: Iterable<DescMessage>): EventCatalogEntry[] {
  const entries: EventCatalogEntry[] = [];
  const owner = new Map<string, string>();
  for (const schema of messages) {
    const decl = declarationOf(schema);
    if (decl === undefined) {
      throw new Error(`event ${schema.typeName} declares no subject: add option (ragtune.events.v1.event_subject) = "ragtune.<area>.<entity>.<verb>"`);
    }
    for (const subject of decl.entry.subjects) {
      const other = owner.get(subject);
      if (other !== undefined) throw new Error(`events ${other} and ${schema.typeName} both claim the subject ${subject}`);
      owner.set(subject, schema.typeName);
    }
    entries.push(decl.entry);
  }
  return entries;
}

function isFileDesc(value: unknown): value is DescFile {
  return typeof value === "object" && value !== null && (value as { kind?: unknown }).kind === "file";
}

/** The top-level messages of every generated file of ragtune.events.v1: the pipeline's events. */
export function eventMessages(): DescMessage[] {
  return Object.values(contracts)
    .filter(isFileDesc)
    .filter((f) => f.proto.package === EVENTS_PACKAGE)
    .flatMap((f) => f.messages);
}

let catalog: readonly EventCatalogEntry[] | undefined;

/** The pipeline's event catalog (message type → subject pattern), checked by `buildEventCatalog`. */
export function eventCatalog(): readonly EventCatalogEntry[] {
  catalog ??= Object.freeze(buildEventCatalog(eventMessages()));
  return catalog;
}

/** The subject an event goes to, from its declaration (for a verb pattern: from its `kind`). */
export function eventSubject<Desc extends DescMessage>(schema: Desc, event: MessageShape<Desc>): string {
  const decl = requireDeclaration(schema);
  if (decl.verbField === undefined || decl.verbs === undefined || decl.prefix === undefined) return decl.entry.pattern;
  const value = reflect(schema, event).get(decl.verbField) as number;
  const verb = decl.verbs.get(value);
  if (verb === undefined) {
    throw new Error(
      `${schema.typeName}.${decl.verbField.name} is ${value}, which names no verb of ${decl.entry.pattern}; set it to one of ${[...decl.verbs.values()].join(", ")}`,
    );
  }
  return `${decl.prefix}.${verb}`;
}

/** The subject filter of a subscription: every subject of the event, or the one of `verb`. */
export function eventFilterSubject<Desc extends DescMessage>(schema: Desc, verb?: EventVerb<Desc>): string {
  const decl = requireDeclaration(schema);
  if (decl.verbs === undefined || decl.prefix === undefined) {
    if (verb !== undefined) throw new Error(`${schema.typeName} goes to one subject (${decl.entry.pattern}); it has no verb to filter by`);
    return decl.entry.pattern;
  }
  if (verb === undefined) return `${decl.prefix}.*`;
  const name = decl.verbs.get(verb);
  if (name === undefined) {
    throw new Error(`${verb} is not a verb of ${schema.typeName}; use one of ${[...decl.verbs.values()].join(", ")}`);
  }
  return `${decl.prefix}.${name}`;
}

/** Publishes a catalog event on the subject its message declares (see `eventSubject`). */
export async function publishEvent<Desc extends DescMessage>(
  ctx: BusContext,
  schema: Desc,
  event: MessageInitShape<Desc>,
  options: PublishOptions,
): Promise<PublishResult> {
  const message = create(schema, event);
  return publishMessage(ctx, eventSubject(schema, message), schema, message, options);
}

/**
 * Publishes on an explicit subject: for messages outside the catalog (tests). A catalog event is
 * accepted only on the subject its declaration gives, so a hand-typed subject cannot drift.
 */
export async function publishEventTo<Desc extends DescMessage>(
  ctx: BusContext,
  subject: string,
  schema: Desc,
  event: MessageInitShape<Desc>,
  options: PublishOptions,
): Promise<PublishResult> {
  assertEventSubject(subject);
  const message = create(schema, event);
  if (declarationOf(schema) !== undefined) {
    const declared = eventSubject(schema, message);
    if (declared !== subject) {
      throw new Error(`${schema.typeName} is published on ${declared} (its catalog subject), not ${subject}; publish by schema instead`);
    }
  }
  return publishMessage(ctx, subject, schema, message, options);
}

/** `Bus.publish`: by schema (the catalog), or on an explicit subject (outside the catalog). */
export interface PublishEvent {
  <Desc extends DescMessage>(schema: Desc, event: MessageInitShape<Desc>, options: PublishOptions): Promise<PublishResult>;
  <Desc extends DescMessage>(subject: string, schema: Desc, event: MessageInitShape<Desc>, options: PublishOptions): Promise<PublishResult>;
}

/** The `publish` of a bus: dispatches on whether a subject comes first. */
export function eventPublisher(ctx: BusContext): PublishEvent {
  function publish<Desc extends DescMessage>(schema: Desc, event: MessageInitShape<Desc>, options: PublishOptions): Promise<PublishResult>;
  function publish<Desc extends DescMessage>(
    subject: string,
    schema: Desc,
    event: MessageInitShape<Desc>,
    options: PublishOptions,
  ): Promise<PublishResult>;
  function publish(
    first: string | DescMessage,
    second: DescMessage | MessageInitShape<DescMessage>,
    third: MessageInitShape<DescMessage> | PublishOptions,
    fourth?: PublishOptions,
  ): Promise<PublishResult> {
    if (typeof first === "string") {
      return publishEventTo(ctx, first, second as DescMessage, third as MessageInitShape<DescMessage>, fourth as PublishOptions);
    }
    return publishEvent(ctx, first, second as MessageInitShape<DescMessage>, third as PublishOptions);
  }
  return publish;
}

/**
 * Decodes a message with the schema. Fails (with the subject and sequence in the message) when the
 * type header names another type or the payload is not a valid encoding.
 */
export function decodeMessage<Desc extends DescMessage>(schema: Desc, m: JsMsg): MessageShape<Desc> {
  const type = m.headers?.get(TYPE_HEADER) ?? "";
  if (type !== "" && type !== schema.typeName) {
    throw new Error(`message ${m.subject}#${m.seq} is a ${type}, expected ${schema.typeName}`);
  }
  try {
    return fromBinary(schema, m.data);
  } catch (err) {
    throw new Error(`message ${m.subject}#${m.seq} is not a valid ${schema.typeName}: ${(err as Error).message}`, { cause: err });
  }
}

export interface EventContext<Desc extends DescMessage> {
  event: MessageShape<Desc>;
  subject: string;
  /** Stream sequence: a stable, increasing position of this event. */
  seq: number;
  redelivered: boolean;
  /** 1 on the first delivery. */
  deliveryCount: number;
  /** The publisher's `Nats-Msg-Id`. */
  msgId: string | undefined;
  /** Tell the server the handler is still busy (resets the ack timer). */
  working(): void;
}

export interface SubscribeOptions<Desc extends DescMessage> {
  /** Durable consumer name: one per service and purpose (e.g. `dataset-on-chunked`). */
  durable: string;
  /** The event type: a catalog message, whose subject (filter) is derived from its declaration. */
  schema: Desc;
  /**
   * For an event with a verb pattern (`ragtune.trainer.job.{kind}`): receive only this verb
   * (e.g. `TrainerJobEventKind.SUCCEEDED`). Default: every verb.
   */
  verb?: EventVerb<Desc>;
  /**
   * An explicit subject filter, only for messages outside the catalog (tests). For a catalog event
   * it must be one its declaration allows; leave it out and let the schema (and `verb`) decide.
   */
  filterSubject?: string;
  /**
   * Called once per delivery; must be idempotent (a delivery may repeat). Resolve → ack;
   * throw → nak with `retryDelayMs`.
   */
  handler: (ctx: EventContext<Desc>) => Promise<void> | void;
  /** Stream to read. Default `RAGTUNE`. */
  stream?: string;
  /** Where a new durable starts: every stored event (default) or only new ones. */
  deliver?: "all" | "new";
  /** Time the handler has before the server redelivers (extend with `working()`). Default 30 s. */
  ackWaitMs?: number;
  /** Give up on an event after this many deliveries (it is logged, then terminated). Default 10. */
  maxDeliver?: number;
  /** Delay before the next delivery after the handler threw. Default 1 s doubling to 60 s. */
  retryDelayMs?: (deliveryCount: number) => number;
  /** Messages pulled ahead of the handler. Default 8. */
  prefetch?: number;
  /**
   * How long to wait for the server to confirm an ack before moving on (the event may then come
   * back, which idempotent handlers absorb). Default 2 s.
   */
  ackConfirmTimeoutMs?: number;
}

export interface EventSubscription {
  readonly durable: string;
  /** Stop pulling, let the in-flight handler finish, then resolve. */
  stop(): Promise<void>;
}

/** The subject filter of a subscription: from the catalog, or the explicit one of a non-catalog message. */
function subscriptionFilter<Desc extends DescMessage>(options: SubscribeOptions<Desc>): string {
  const { schema, verb, filterSubject, durable } = options;
  const decl = declarationOf(schema);
  if (decl === undefined) {
    if (verb !== undefined) throw new Error(`subscription ${durable}: ${schema.typeName} is not in the event catalog, so it has no verbs`);
    if (filterSubject === undefined) {
      throw new Error(`subscription ${durable}: ${schema.typeName} is not in the event catalog; give a filterSubject or declare its subject`);
    }
    return filterSubject;
  }
  const derived = eventFilterSubject(schema, verb);
  if (filterSubject === undefined || filterSubject === derived) return derived;
  if (verb === undefined && decl.entry.subjects.includes(filterSubject)) return filterSubject;
  throw new Error(
    `subscription ${durable}: ${schema.typeName} is on ${decl.entry.pattern}, so filterSubject ${JSON.stringify(filterSubject)} is wrong; leave it out (and use verb to pick one)`,
  );
}

/** Runs a durable pull consumer that decodes typed events and acks/naks by handler outcome. */
export async function subscribeEvents<Desc extends DescMessage>(
  ctx: BusContext,
  options: SubscribeOptions<Desc>,
): Promise<EventSubscription> {
  const stream = options.stream ?? EVENTS_STREAM;
  assertName("stream", stream);
  const maxDeliver = options.maxDeliver ?? 10;
  const retryDelay = options.retryDelayMs ?? defaultRetryDelayMs;
  const ackConfirmTimeoutMs = options.ackConfirmTimeoutMs ?? 2_000;
  const filterSubject = subscriptionFilter(options);
  await ensureDurableConsumer(ctx.jsm, stream, {
    durable_name: options.durable,
    filter_subject: filterSubject,
    deliver_policy: options.deliver === "new" ? DeliverPolicy.New : DeliverPolicy.All,
    ack_wait: nanos(options.ackWaitMs ?? 30_000),
    max_deliver: maxDeliver,
  });
  const consumer = await ctx.js.consumers.get(stream, options.durable);
  const log = ctx.logger.child({ durable: options.durable, stream });
  const messages: ConsumerMessages = await consumer.consume({ max_messages: options.prefetch ?? 8 });

  const handleOne = async (m: JsMsg): Promise<void> => {
    const msgId = m.headers?.get(MSG_ID_HEADER) || undefined;
    let event: MessageShape<Desc>;
    try {
      event = decodeMessage(options.schema, m);
    } catch (err) {
      // A message that cannot be decoded never will be: do not redeliver it.
      log.error({ err, subject: m.subject, seq: m.seq, msgId }, "dropping undecodable event");
      m.term(); // no reason text: "+TERM <reason>" needs nats-server 2.11
      return;
    }
    const deliveries = m.info.deliveryCount;
    try {
      await options.handler({
        event,
        subject: m.subject,
        seq: m.seq,
        redelivered: m.redelivered,
        deliveryCount: deliveries,
        msgId,
        working: () => m.working(),
      });
    } catch (err) {
      if (deliveries >= maxDeliver) {
        log.error({ err, subject: m.subject, seq: m.seq, msgId, deliveries }, "event handler failed on the last allowed delivery; giving up");
        m.term();
      } else {
        const delay = retryDelay(deliveries);
        log.warn({ err, subject: m.subject, seq: m.seq, msgId, deliveries, retryInMs: delay }, "event handler failed; will retry");
        m.nak(delay);
      }
      return;
    }
    try {
      await m.ackAck({ timeout: ackConfirmTimeoutMs });
    } catch (err) {
      // The handler ran; the event comes back later and the idempotent handler absorbs it.
      log.warn({ err, subject: m.subject, seq: m.seq, msgId }, "ack not confirmed; event may be redelivered");
    }
  };

  const done = (async () => {
    for await (const m of messages) {
      await handleOne(m);
    }
  })().catch((err: unknown) => {
    log.error({ err }, "event consumer stopped with an error");
  });

  return {
    durable: options.durable,
    async stop() {
      await messages.close();
      await done;
    },
  };
}
