import { JetStreamApiError } from "@nats-io/jetstream";

/**
 * Replicas and retention that every stream, KV bucket and object store created through a bus gets unless the
 * creator's own options say otherwise. `connectBus` fills it from its `stores` option (`busOptionsFromConfig`
 * maps the NATS_* variables onto it); it is kept on the BusContext.
 */
export interface StoreDefaults {
  /** Copies of each stream and bucket across the NATS cluster (NATS_REPLICAS). 1 on a single server. */
  replicas: number;
  /** Events streams drop events older than this; 0 keeps them forever (NATS_EVENTS_MAX_AGE). */
  eventsMaxAgeMs: number;
  /** Size limit of each events stream, oldest events dropped past it; -1 = none (NATS_EVENTS_MAX_BYTES). */
  eventsMaxBytes: number;
  /** Size limit of each KV bucket, writes refused past it; -1 = none (NATS_KV_MAX_BYTES). */
  kvMaxBytes: number;
  /** Size limit of each artifact bucket (object store), puts refused past it; -1 = none (NATS_ARTIFACTS_MAX_BYTES). */
  artifactsMaxBytes: number;
}

export const DEFAULT_STORE_DEFAULTS: Readonly<StoreDefaults> = Object.freeze({
  replicas: 1,
  eventsMaxAgeMs: 0,
  eventsMaxBytes: -1,
  kvMaxBytes: -1,
  artifactsMaxBytes: -1,
});

/** The configuration variable each default comes from, named in errors that ask for a larger limit. */
export const STORE_VARIABLES = {
  replicas: "NATS_REPLICAS",
  eventsMaxAgeMs: "NATS_EVENTS_MAX_AGE",
  eventsMaxBytes: "NATS_EVENTS_MAX_BYTES",
  kvMaxBytes: "NATS_KV_MAX_BYTES",
  artifactsMaxBytes: "NATS_ARTIFACTS_MAX_BYTES",
} as const satisfies Record<keyof StoreDefaults, string>;

/** Checks and completes partial defaults; a bad value fails with the field and the variable it comes from. */
export function resolveStoreDefaults(given: Partial<StoreDefaults> = {}): Readonly<StoreDefaults> {
  const d: StoreDefaults = { ...DEFAULT_STORE_DEFAULTS };
  for (const [key, value] of Object.entries(given) as [keyof StoreDefaults, number | undefined][]) {
    if (value !== undefined) d[key] = value;
  }
  const bad = (key: keyof StoreDefaults, expected: string) =>
    new Error(`connectBus: stores.${key} (${STORE_VARIABLES[key]}) must be ${expected}, got ${d[key]}`);
  if (!Number.isInteger(d.replicas) || d.replicas < 1 || d.replicas > 5) throw bad("replicas", "a whole number from 1 to 5");
  if (!Number.isSafeInteger(d.eventsMaxAgeMs) || d.eventsMaxAgeMs < 0) throw bad("eventsMaxAgeMs", "0 (forever) or more milliseconds");
  for (const key of ["eventsMaxBytes", "kvMaxBytes", "artifactsMaxBytes"] as const) {
    if (!Number.isSafeInteger(d[key]) || (d[key] < 1 && d[key] !== -1)) throw bad(key, "-1 (no limit) or a positive number of bytes");
  }
  return Object.freeze(d);
}

/** What a store-full error names: the store, its byte limit, and the variable that sets that limit. */
export interface StoreLabel {
  /** E.g. `KV bucket ingest-runs`, `artifact bucket trainer-artifacts`, `stream WORK_TRAINER_JOBS`. */
  store: string;
  /** The store's max_bytes (-1 or undefined = none). */
  maxBytes?: number;
  /** The variable that sets `maxBytes`, when it came from the configuration. */
  variable?: string;
}

/** JetStream's error codes for a store that cannot take more data. */
const MAX_BYTES_OR_MESSAGES = 10077; // "maximum bytes exceeded" / "maximum messages exceeded" (discard new)
const INSUFFICIENT_RESOURCES = 10023; // the server's JetStream storage is exhausted
const INSUFFICIENT_STORAGE = 10047; // a limit larger than the storage the server has left

/** Every retention variable, named when the server itself is out of storage. */
const RETENTION_VARIABLES = "NATS_EVENTS_MAX_AGE, NATS_EVENTS_MAX_BYTES, NATS_KV_MAX_BYTES, NATS_ARTIFACTS_MAX_BYTES";

/**
 * A write (or a create) refused because a stream, KV bucket or object store is full, or because the NATS servers'
 * JetStream storage is. The message names the store and what to change (the configuration variable, when the limit
 * came from one).
 */
export class StoreFullError extends Error {
  constructor(
    /** The store, as in StoreLabel.store. */
    readonly store: string,
    /** The variable to raise, when there is one. */
    readonly variable: string | undefined,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "StoreFullError";
  }
}

function formatBytes(n: number): string {
  for (const [unit, size] of [["GiB", 1024 ** 3], ["MiB", 1024 ** 2], ["KiB", 1024]] as const) {
    if (n >= size && n % size === 0) return `${n / size} ${unit}`;
  }
  return `${n} bytes`;
}

/**
 * The StoreFullError for a JetStream error that says the store (or the server's storage) is full, else undefined.
 * Modules that write through `js.publish` directly wrap with it: `throw storeFullError(err, label) ?? err`.
 */
export function storeFullError(err: unknown, label: StoreLabel): StoreFullError | undefined {
  if (!(err instanceof JetStreamApiError)) return undefined;
  const limit = label.maxBytes !== undefined && label.maxBytes > 0 ? ` of ${formatBytes(label.maxBytes)}` : "";
  const raise = label.variable !== undefined ? `raise ${label.variable}` : "raise its size limit";
  if (err.code === MAX_BYTES_OR_MESSAGES && /maximum bytes/i.test(err.message)) {
    return new StoreFullError(
      label.store,
      label.variable,
      `${label.store} is full: it holds its limit${limit} (${err.message}); ${raise} or delete data from it`,
      { cause: err },
    );
  }
  if (err.code === MAX_BYTES_OR_MESSAGES && /maximum messages/i.test(err.message)) {
    return new StoreFullError(label.store, undefined, `${label.store} is full: it holds its message limit (${err.message})`, { cause: err });
  }
  if (err.code === INSUFFICIENT_STORAGE) {
    return new StoreFullError(
      label.store,
      label.variable,
      `cannot reserve the size limit${limit} for ${label.store}: the NATS servers have less JetStream storage left ` +
        `(${err.message}); ${label.variable !== undefined ? `lower ${label.variable}` : "lower its size limit"} or give JetStream more storage`,
      { cause: err },
    );
  }
  if (err.code === INSUFFICIENT_RESOURCES) {
    return new StoreFullError(
      label.store,
      undefined,
      `cannot write to ${label.store}: the NATS servers' JetStream storage is full (${err.message}); ` +
        `give JetStream more storage or lower the retention (${RETENTION_VARIABLES}) so old data goes`,
      { cause: err },
    );
  }
  return undefined;
}

/** Runs a write and turns a store-full JetStream error into a StoreFullError naming the store. */
export async function guardStoreFull<T>(label: StoreLabel | (() => StoreLabel), write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (err) {
    throw storeFullError(err, typeof label === "function" ? label() : label) ?? err;
  }
}
