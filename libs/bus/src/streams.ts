import {
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
  type StreamConfig,
  type StreamInfo,
} from "@nats-io/jetstream";
import { nanos } from "@nats-io/nats-core";
import type { BusContext } from "./bus.js";
import { DEFAULT_STORE_DEFAULTS, STORE_VARIABLES, storeFullError, type StoreDefaults, type StoreLabel } from "./store-limits.js";

/** The one events stream of the system: every `ragtune.<area>.<entity>.<verb>` event lands here. */
export const EVENTS_STREAM = "RAGTUNE";
export const EVENTS_SUBJECTS = "ragtune.>";

export interface EventsStreamOptions {
  /** Stream name. Default `RAGTUNE` (tests may use another to isolate). */
  name?: string;
  /** Subjects captured. Default `["ragtune.>"]`. */
  subjects?: string[];
  /** How long a `Nats-Msg-Id` is remembered for dedupe. Default 2 minutes. */
  duplicateWindowMs?: number;
  /** Drop events older than this (0 = keep forever). Default: the bus's `eventsMaxAgeMs` (NATS_EVENTS_MAX_AGE). */
  maxAgeMs?: number;
  /** Drop the oldest events past this size (-1 = no limit). Default: the bus's `eventsMaxBytes` (NATS_EVENTS_MAX_BYTES). */
  maxBytes?: number;
  /** Copies across the cluster. Default: the bus's `replicas` (NATS_REPLICAS). */
  replicas?: number;
}

export interface WorkQueueStreamOptions {
  /** Stream name, e.g. `WORK_TRAINER_JOBS`. */
  name: string;
  /** Subjects captured, e.g. `["work.trainer.jobs"]`. Must not overlap `ragtune.>`. */
  subjects: string[];
  /** Dedupe window for `Nats-Msg-Id`. Default 2 minutes. */
  duplicateWindowMs?: number;
  /** Refuse new jobs past this many queued (0 = unlimited). */
  maxMessages?: number;
  /** Refuse new jobs past this size (-1 = unlimited, the default); enqueue then fails with StoreFullError. */
  maxBytes?: number;
  /** Drop jobs nobody took within this long (0 = never, the default). */
  maxAgeMs?: number;
  /** Copies across the cluster. Default: the bus's `replicas` (NATS_REPLICAS). */
  replicas?: number;
}

/**
 * Where a stream is created: a BusContext (its `stores` give the default replicas), or a bare JetStreamManager.
 * A JetStreamManager that `connectBus` made carries its bus's defaults too, so `ensureStream(bus.jsm, ...)` and
 * `ensureStream(bus, ...)` do the same; any other one gets one replica.
 */
export type StreamTarget = Pick<BusContext, "jsm" | "stores"> | JetStreamManager;

const defaultsOfManager = new WeakMap<JetStreamManager, Readonly<StoreDefaults>>();

/** Lets a bare `jsm` made by `connectBus` stand for its bus in `ensureStream` (internal). */
export function registerStoreDefaults(jsm: JetStreamManager, stores: Readonly<StoreDefaults>): void {
  defaultsOfManager.set(jsm, stores);
}

/** The manager and store defaults behind a StreamTarget. */
export function resolveTarget(target: StreamTarget): { jsm: JetStreamManager; stores: Readonly<StoreDefaults> } {
  if ("stores" in target && "jsm" in target) return { jsm: target.jsm, stores: target.stores };
  const jsm = target as JetStreamManager;
  return { jsm, stores: defaultsOfManager.get(jsm) ?? DEFAULT_STORE_DEFAULTS };
}

const TWO_MINUTES = 2 * 60_000;

function isStreamNotFound(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound;
}

/** How errors name a stream: `stream <name>` unless a KV or object store says what it is (and its limit's variable). */
export type StreamLabel = Omit<StoreLabel, "maxBytes">;

/** What a failed create/update of a stream says, with the settings that caused it named (internal). */
export function streamError(verb: "create" | "update", config: Partial<StreamConfig> & { name: string }, err: unknown, label: StreamLabel): Error {
  const what = label.store;
  const full = storeFullError(err, { ...label, maxBytes: config.max_bytes });
  if (full !== undefined) return full;
  const message = (err as Error).message;
  if (/replicas/i.test(message) && (config.num_replicas ?? 1) > 1) {
    return new Error(
      `cannot ${verb} ${what} with ${config.num_replicas} replicas (${STORE_VARIABLES.replicas}): ${message}; ` +
        `run a NATS cluster of at least ${config.num_replicas} servers or lower ${STORE_VARIABLES.replicas}`,
      { cause: err },
    );
  }
  return new Error(`cannot ${verb} ${what}: ${message}`, { cause: err });
}

/**
 * Creates the stream, or updates an existing one to the wanted config (subjects, windows, limits, replicas).
 * `num_replicas` defaults to the target bus's `replicas`. Properties the server cannot change on a live stream
 * (retention, storage) fail with a message naming the stream; a limit larger than the servers' storage fails with
 * a StoreFullError.
 *
 * A `max_age` shorter than the dedupe window shortens the window to it (the server refuses anything else).
 *
 * `label` names the stream in errors (default `stream <name>`; KV and object stores pass their bucket, and the
 * variable their size limit comes from).
 */
export async function ensureStream(
  target: StreamTarget,
  config: Partial<StreamConfig> & { name: string },
  label: StreamLabel = { store: `stream ${config.name}` },
): Promise<StreamInfo> {
  const { jsm, stores } = resolveTarget(target);
  const wantedConfig: Partial<StreamConfig> & { name: string } = { num_replicas: stores.replicas, ...config };
  const fitDedupeWindow = (c: Partial<StreamConfig>) => {
    if (c.max_age !== undefined && c.max_age > 0 && c.duplicate_window !== undefined && c.duplicate_window > c.max_age) {
      c.duplicate_window = c.max_age;
    }
  };
  fitDedupeWindow(wantedConfig);
  let existing: StreamInfo | undefined;
  try {
    existing = await jsm.streams.info(config.name);
  } catch (err) {
    if (!isStreamNotFound(err)) throw err;
  }
  if (existing === undefined) {
    try {
      return await jsm.streams.add(wantedConfig);
    } catch (err) {
      // Another process (a second replica starting at the same moment) may have created it meanwhile: the server
      // then refuses this add (name in use, or "subjects overlap" with the stream it is creating). Use theirs.
      existing = await jsm.streams.info(config.name).catch(() => undefined);
      if (existing === undefined) throw streamError("create", wantedConfig, err, label);
    }
  }
  for (const key of ["retention", "storage"] as const) {
    if (wantedConfig[key] !== undefined && existing.config[key] !== wantedConfig[key]) {
      throw new Error(
        `stream ${config.name} exists with ${key}=${existing.config[key]} but ${wantedConfig[key]} is required; delete or rename the stream`,
      );
    }
  }
  const wanted = { ...existing.config, ...wantedConfig };
  fitDedupeWindow(wanted);
  const same = (Object.keys(wantedConfig) as (keyof StreamConfig)[]).every(
    (k) => JSON.stringify(existing.config[k]) === JSON.stringify(wanted[k]),
  );
  if (same) return existing;
  try {
    return await jsm.streams.update(config.name, wanted);
  } catch (err) {
    throw streamError("update", wantedConfig, err, label);
  }
}

/**
 * Ensures an events stream: file storage, `ragtune.>` (or the given subjects), limits retention (the oldest events
 * go first), a dedupe window, and the bus's events retention and replicas unless the options say otherwise.
 */
export function ensureEventsStream(target: StreamTarget, options: EventsStreamOptions = {}): Promise<StreamInfo> {
  const { stores } = resolveTarget(target);
  const name = options.name ?? EVENTS_STREAM;
  const label: StreamLabel = { store: `stream ${name}`, ...(options.maxBytes === undefined ? { variable: STORE_VARIABLES.eventsMaxBytes } : {}) };
  return ensureStream(
    target,
    {
      name,
      subjects: options.subjects ?? [EVENTS_SUBJECTS],
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.Old,
      duplicate_window: nanos(options.duplicateWindowMs ?? TWO_MINUTES),
      max_age: nanos(options.maxAgeMs ?? stores.eventsMaxAgeMs),
      max_bytes: options.maxBytes ?? stores.eventsMaxBytes,
      num_replicas: options.replicas ?? stores.replicas,
    },
    label,
  );
}

/** Ensures a work-queue stream: file storage, retention workqueue (a message is gone once acked). */
export function ensureWorkQueueStream(target: StreamTarget, options: WorkQueueStreamOptions): Promise<StreamInfo> {
  if (options.subjects.length === 0) throw new Error(`work-queue stream ${options.name}: subjects must not be empty`);
  const { stores } = resolveTarget(target);
  return ensureStream(target, {
    name: options.name,
    subjects: options.subjects,
    storage: StorageType.File,
    retention: RetentionPolicy.Workqueue,
    discard: DiscardPolicy.New,
    duplicate_window: nanos(options.duplicateWindowMs ?? TWO_MINUTES),
    max_msgs: options.maxMessages && options.maxMessages > 0 ? options.maxMessages : -1,
    max_bytes: options.maxBytes !== undefined && options.maxBytes > 0 ? options.maxBytes : -1,
    max_age: nanos(options.maxAgeMs ?? 0),
    num_replicas: options.replicas ?? stores.replicas,
  });
}
