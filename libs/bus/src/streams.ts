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
  /** Drop events older than this. Default: keep forever (0). */
  maxAgeMs?: number;
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
}

const TWO_MINUTES = 2 * 60_000;

function isStreamNotFound(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound;
}

/**
 * Creates the stream, or updates an existing one to the wanted config (subjects, windows, limits).
 * Properties the server cannot change on a live stream (retention, storage) fail with a message
 * naming the stream.
 */
export async function ensureStream(jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }): Promise<StreamInfo> {
  let existing: StreamInfo | undefined;
  try {
    existing = await jsm.streams.info(config.name);
  } catch (err) {
    if (!isStreamNotFound(err)) throw err;
  }
  if (existing === undefined) {
    try {
      return await jsm.streams.add(config);
    } catch (err) {
      throw new Error(`cannot create stream ${config.name}: ${(err as Error).message}`, { cause: err });
    }
  }
  for (const key of ["retention", "storage"] as const) {
    if (config[key] !== undefined && existing.config[key] !== config[key]) {
      throw new Error(
        `stream ${config.name} exists with ${key}=${existing.config[key]} but ${config[key]} is required; delete or rename the stream`,
      );
    }
  }
  const wanted = { ...existing.config, ...config };
  const same = (Object.keys(config) as (keyof StreamConfig)[]).every(
    (k) => JSON.stringify(existing.config[k]) === JSON.stringify(wanted[k]),
  );
  if (same) return existing;
  try {
    return await jsm.streams.update(config.name, wanted);
  } catch (err) {
    throw new Error(`cannot update stream ${config.name}: ${(err as Error).message}`, { cause: err });
  }
}

/** Ensures the events stream: file storage, `ragtune.>`, limits retention, a dedupe window. */
export function ensureEventsStream(jsm: JetStreamManager, options: EventsStreamOptions = {}): Promise<StreamInfo> {
  return ensureStream(jsm, {
    name: options.name ?? EVENTS_STREAM,
    subjects: options.subjects ?? [EVENTS_SUBJECTS],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    duplicate_window: nanos(options.duplicateWindowMs ?? TWO_MINUTES),
    max_age: nanos(options.maxAgeMs ?? 0),
  });
}

/** Ensures a work-queue stream: file storage, retention workqueue (a message is gone once acked). */
export function ensureWorkQueueStream(jsm: JetStreamManager, options: WorkQueueStreamOptions): Promise<StreamInfo> {
  if (options.subjects.length === 0) throw new Error(`work-queue stream ${options.name}: subjects must not be empty`);
  return ensureStream(jsm, {
    name: options.name,
    subjects: options.subjects,
    storage: StorageType.File,
    retention: RetentionPolicy.Workqueue,
    discard: DiscardPolicy.New,
    duplicate_window: nanos(options.duplicateWindowMs ?? TWO_MINUTES),
    max_msgs: options.maxMessages && options.maxMessages > 0 ? options.maxMessages : -1,
  });
}
