import type { DescMessage, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { DeliverPolicy, type Consumer, type JsMsg } from "@nats-io/jetstream";
import { nanos } from "@nats-io/nats-core";
import type { BusContext } from "./bus.js";
import { ensureDurableConsumer } from "./consumers.js";
import { decodeMessage, MSG_ID_HEADER, publishMessage, type PublishOptions, type PublishResult } from "./events.js";
import { guardStoreFull } from "./store-limits.js";
import { ensureWorkQueueStream } from "./streams.js";

const QUEUE_NAME_RE = /^[a-z0-9]+(-[a-z0-9]+)*$/;

export interface WorkQueueOptions<Desc extends DescMessage> {
  /** Queue name in kebab-case, e.g. `trainer-jobs` → stream `WORK_TRAINER_JOBS`, subject `work.trainer-jobs`. */
  name: string;
  schema: Desc;
  /** Time a worker has before the job goes to another worker (extend with `working()`). Default 30 s. */
  ackWaitMs?: number;
  /** Deliveries before a job is given up (the server stops sending it). Default 5. */
  maxDeliver?: number;
  /** The shared durable consumer's name. Default `workers`. */
  durable?: string;
  /** Refuse new jobs past this many waiting (0 = unlimited, the default); enqueue then fails with StoreFullError. */
  maxMessages?: number;
  /** Refuse new jobs past this size (-1 = unlimited, the default); enqueue then fails with StoreFullError. */
  maxBytes?: number;
  /** Copies across the cluster. Default: the bus's `replicas` (NATS_REPLICAS). */
  replicas?: number;
}

export interface TakeOptions {
  /** How long to wait for a job before returning null. Default 30 s (min 1 s, the server's floor). */
  expiresMs?: number;
}

/** One job taken from the queue; exactly one of ack / nak / term ends it. */
export interface Job<Desc extends DescMessage> {
  value: MessageShape<Desc>;
  seq: number;
  deliveryCount: number;
  redelivered: boolean;
  msgId: string | undefined;
  /** Tell the server this worker is still busy (resets the ack timer once). */
  working(): void;
  /** Call `working()` every `intervalMs` (default a third of the ack wait) until `stopHeartbeat()` or the job ends. */
  startHeartbeat(intervalMs?: number): void;
  stopHeartbeat(): void;
  /** Done: the job leaves the queue (confirmed by the server). */
  ack(): Promise<void>;
  /** Failed for now: deliver again after `delayMs` (to any worker). */
  nak(delayMs?: number): void;
  /** Failed for good: never deliver again (the reason is logged). */
  term(reason?: string): void;
}

export interface WorkQueue<Desc extends DescMessage> {
  readonly name: string;
  readonly stream: string;
  readonly subject: string;
  /** Adds a job; `msgId` (e.g. the job id) makes a repeated enqueue a no-op within the dedupe window. */
  enqueue(job: MessageInitShape<Desc>, options: PublishOptions): Promise<PublishResult>;
  /** Waits for the next job (null after `expiresMs` with none). Jobs that cannot be decoded are terminated and skipped. */
  take(options?: TakeOptions): Promise<Job<Desc> | null>;
  /** Jobs waiting or in progress (not yet acked). */
  size(): Promise<number>;
}

/** Maps a queue name to its stream (`WORK_TRAINER_JOBS`) and subject (`work.trainer-jobs`). */
export function workQueueNames(name: string): { stream: string; subject: string } {
  if (!QUEUE_NAME_RE.test(name)) {
    throw new Error(`work queue name ${JSON.stringify(name)} is invalid: use kebab-case like "trainer-jobs"`);
  }
  return { stream: `WORK_${name.replaceAll("-", "_").toUpperCase()}`, subject: `work.${name}` };
}

/** Ensures the work-queue stream and its shared durable pull consumer, and returns the queue. */
export async function openWorkQueue<Desc extends DescMessage>(ctx: BusContext, options: WorkQueueOptions<Desc>): Promise<WorkQueue<Desc>> {
  const { stream, subject } = workQueueNames(options.name);
  const ackWaitMs = options.ackWaitMs ?? 30_000;
  const durable = options.durable ?? "workers";
  await ensureWorkQueueStream(ctx, {
    name: stream,
    subjects: [subject],
    ...(options.maxMessages !== undefined ? { maxMessages: options.maxMessages } : {}),
    ...(options.maxBytes !== undefined ? { maxBytes: options.maxBytes } : {}),
    ...(options.replicas !== undefined ? { replicas: options.replicas } : {}),
  });
  await ensureDurableConsumer(ctx.jsm, stream, {
    durable_name: durable,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(ackWaitMs),
    max_deliver: options.maxDeliver ?? 5,
  });
  const log = ctx.logger.child({ queue: options.name });
  let consumer: Consumer | undefined;
  const getConsumer = async () => (consumer ??= await ctx.js.consumers.get(stream, durable));

  const toJob = (m: JsMsg, value: MessageShape<Desc>): Job<Desc> => {
    let timer: NodeJS.Timeout | undefined;
    const stopHeartbeat = () => {
      if (timer !== undefined) clearInterval(timer);
      timer = undefined;
    };
    return {
      value,
      seq: m.seq,
      deliveryCount: m.info.deliveryCount,
      redelivered: m.redelivered,
      msgId: m.headers?.get(MSG_ID_HEADER) || undefined,
      working: () => m.working(),
      startHeartbeat(intervalMs = Math.max(100, Math.floor(ackWaitMs / 3))) {
        stopHeartbeat();
        timer = setInterval(() => m.working(), intervalMs);
        timer.unref();
      },
      stopHeartbeat,
      async ack() {
        stopHeartbeat();
        await m.ackAck();
      },
      nak(delayMs) {
        stopHeartbeat();
        m.nak(delayMs);
      },
      term(reason) {
        stopHeartbeat();
        log.warn({ seq: m.seq, reason }, "job terminated");
        // the reason is logged, not sent: "+TERM <reason>" needs nats-server 2.11
        m.term();
      },
    };
  };

  return {
    name: options.name,
    stream,
    subject,
    enqueue: (job, o) =>
      guardStoreFull({ store: `work queue ${options.name} (stream ${stream})`, maxBytes: options.maxBytes ?? -1 }, () =>
        publishMessage(ctx, subject, options.schema, job, o),
      ),
    async take(o = {}) {
      const expires = Math.max(1_000, o.expiresMs ?? 30_000);
      const c = await getConsumer();
      const deadline = Date.now() + expires;
      for (;;) {
        const left = deadline - Date.now();
        if (left <= 0) return null;
        const m = await c.next({ expires: Math.max(1_000, left) });
        if (m === null) return null;
        try {
          return toJob(m, decodeMessage(options.schema, m));
        } catch (err) {
          log.error({ err, seq: m.seq }, "terminating undecodable job");
          m.term(); // no reason text: "+TERM <reason>" needs nats-server 2.11
        }
      }
    },
    async size() {
      const info = await ctx.jsm.streams.info(stream);
      return info.state.messages;
    },
  };
}
