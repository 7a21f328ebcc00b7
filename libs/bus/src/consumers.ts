import {
  AckPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type ConsumerConfig,
  type ConsumerInfo,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";

const NAME_RE = /^[A-Za-z0-9_-]+$/;

/** Durable and stream names end up in subjects: only letters, digits, '_' and '-'. */
export function assertName(kind: string, name: string): void {
  if (!NAME_RE.test(name)) {
    throw new Error(`${kind} ${JSON.stringify(name)} is invalid: use only letters, digits, '_' and '-'`);
  }
}

function isConsumerNotFound(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === JetStreamApiCodes.ConsumerNotFound;
}

/**
 * Creates a durable pull consumer with explicit acks, or updates the mutable settings of an
 * existing one. The filter subject cannot change on a live durable: that fails with a clear message.
 */
export async function ensureDurableConsumer(
  jsm: JetStreamManager,
  stream: string,
  config: Partial<ConsumerConfig> & { durable_name: string },
): Promise<ConsumerInfo> {
  assertName("durable consumer name", config.durable_name);
  const wanted: Partial<ConsumerConfig> = { ack_policy: AckPolicy.Explicit, ...config };
  let existing: ConsumerInfo | undefined;
  try {
    existing = await jsm.consumers.info(stream, config.durable_name);
  } catch (err) {
    if (!isConsumerNotFound(err)) throw err;
  }
  if (existing === undefined) {
    try {
      return await jsm.consumers.add(stream, wanted);
    } catch (err) {
      throw new Error(`cannot create consumer ${config.durable_name} on stream ${stream}: ${(err as Error).message}`, { cause: err });
    }
  }
  const was = existing.config.filter_subject ?? "";
  const now = wanted.filter_subject ?? "";
  if (was !== now) {
    throw new Error(
      `consumer ${config.durable_name} on stream ${stream} filters ${JSON.stringify(was)}, not ${JSON.stringify(now)}; use another durable name`,
    );
  }
  const mutable = ["ack_wait", "max_deliver", "max_ack_pending", "description"] as const;
  const delta: Partial<ConsumerConfig> = {};
  for (const key of mutable) {
    if (wanted[key] !== undefined && wanted[key] !== existing.config[key]) {
      Object.assign(delta, { [key]: wanted[key] });
    }
  }
  if (Object.keys(delta).length === 0) return existing;
  return jsm.consumers.update(stream, config.durable_name, delta);
}

/** How many times the server has delivered this message (1 on first delivery). */
export function deliveryCount(m: JsMsg): number {
  return m.info.deliveryCount;
}

/** Default retry delay after a failed attempt: 1 s, 2 s, 4 s, … capped at 60 s. */
export function defaultRetryDelayMs(deliveries: number): number {
  return Math.min(60_000, 1_000 * 2 ** Math.max(0, deliveries - 1));
}
