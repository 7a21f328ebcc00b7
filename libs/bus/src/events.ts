import { fromBinary, toBinary, create, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { DeliverPolicy, type ConsumerMessages, type JsMsg } from "@nats-io/jetstream";
import { headers as natsHeaders, nanos } from "@nats-io/nats-core";
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

/** Publishes a typed event on `ragtune.<area>.<entity>.<verb>`. */
export async function publishEvent<Desc extends DescMessage>(
  ctx: BusContext,
  subject: string,
  schema: Desc,
  event: MessageInitShape<Desc>,
  options: PublishOptions,
): Promise<PublishResult> {
  assertEventSubject(subject);
  return publishMessage(ctx, subject, schema, event, options);
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
  /** One subject filter, e.g. `ragtune.ingest.document.chunked` or `ragtune.trainer.job.*`. */
  filterSubject: string;
  schema: Desc;
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
  await ensureDurableConsumer(ctx.jsm, stream, {
    durable_name: options.durable,
    filter_subject: options.filterSubject,
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
