import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs, timestampNow, type Timestamp } from "@bufbuild/protobuf/wkt";
import { DeliverPolicy, RetentionPolicy, StorageType, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import { ensureStream, RevisionConflictError, type TypedKv } from "@ragtune/bus";
import {
  IngestRunEventSchema,
  IngestRunRecordSchema,
  IngestRunStatus,
  type IngestRunEvent,
  type IngestRunRecord,
} from "@ragtune/proto";

export interface RunStoreDeps {
  /** Key: run ID. */
  runs: TypedKv<typeof IngestRunRecordSchema>;
  js: JetStreamClient;
  jsm: JetStreamManager;
  /** Stream holding the run events, one subject per run. */
  eventsStream: string;
  /** Subject prefix of that stream; a run's events are on `<prefix>.<runId>`. */
  eventsSubjectPrefix: string;
}

export function isFinished(status: IngestRunStatus): boolean {
  return (
    status === IngestRunStatus.SUCCEEDED ||
    status === IngestRunStatus.PARTIALLY_SUCCEEDED ||
    status === IngestRunStatus.FAILED
  );
}

/** The event of an ingest run, without the fields the store fills in (sequence, run ID, time). */
export type RunEventBody = Omit<MessageInitShape<typeof IngestRunEventSchema>, "sequence" | "runId" | "time" | "$typeName">;

/**
 * Ingest runs: the run record (run, its sources, event counter) in KV and the run's events in a
 * stream (one subject per run), so a watcher reads the history and then live events in order.
 */
/** Another instance took the run over (its lease had lapsed); this one must stop working on it. */
export class LeaseLostError extends Error {
  constructor(readonly runId: string) {
    super(`ingest run ${runId} is held by another instance now`);
    this.name = "LeaseLostError";
  }
}

function timestampMs(t: Timestamp): number {
  return Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6);
}

/** True when the run has no live lease (nobody holds it, or the holder's claim lapsed). */
export function isUnclaimed(record: IngestRunRecord, now = Date.now()): boolean {
  return record.leaseOwner === "" || record.leaseExpiresAt === undefined || timestampMs(record.leaseExpiresAt) <= now;
}

export class RunStore {
  /** KV revisions of the records this instance holds a lease on. */
  private readonly revisions = new Map<string, number>();

  constructor(private readonly deps: RunStoreDeps) {}

  /** Creates the events stream if missing. */
  static async ensureEventsStream(jsm: JetStreamManager, name: string, subjectPrefix: string): Promise<void> {
    await ensureStream(jsm, {
      name,
      subjects: [`${subjectPrefix}.>`],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
    });
  }

  private subject(runId: string): string {
    return `${this.deps.eventsSubjectPrefix}.${runId}`;
  }

  async get(runId: string): Promise<{ record: IngestRunRecord; revision: number } | null> {
    if (!/^[A-Za-z0-9_-]+$/.test(runId)) return null;
    const found = await this.deps.runs.get(runId);
    return found === null ? null : { record: found.value, revision: found.revision };
  }

  /** Creates the record; false when a record with this ID exists already. */
  async create(record: IngestRunRecord): Promise<boolean> {
    try {
      await this.deps.runs.create(record.run!.id, record);
      return true;
    } catch (err) {
      if (err instanceof RevisionConflictError) return false;
      throw err;
    }
  }

  /**
   * Takes the run for `owner` until now + `leaseMs` (compare-and-set on the record), if it is
   * unfinished and nobody else holds a live lease. Returns the record, or null when not taken.
   */
  async claim(runId: string, owner: string, leaseMs: number): Promise<IngestRunRecord | null> {
    const found = await this.get(runId);
    if (found === null) return null;
    const { record, revision } = found;
    if (isFinished(record.run!.status)) return null;
    const expires = record.leaseExpiresAt === undefined ? 0 : timestampMs(record.leaseExpiresAt);
    if (record.leaseOwner !== "" && record.leaseOwner !== owner && expires > Date.now()) return null;
    record.leaseOwner = owner;
    record.leaseExpiresAt = timestampFromMs(Date.now() + leaseMs);
    try {
      this.revisions.set(runId, await this.deps.runs.update(runId, record, revision));
    } catch (err) {
      if (err instanceof RevisionConflictError) return null;
      throw err;
    }
    return record;
  }

  /**
   * Saves a run this instance holds (from `claim`), renewing its lease by `leaseMs`. Throws
   * LeaseLostError when another instance changed the record since (it took the run over).
   */
  async save(record: IngestRunRecord, leaseMs: number): Promise<void> {
    const runId = record.run!.id;
    const revision = this.revisions.get(runId);
    if (revision === undefined) throw new LeaseLostError(runId);
    if (record.leaseOwner !== "") record.leaseExpiresAt = timestampFromMs(Date.now() + leaseMs);
    try {
      this.revisions.set(runId, await this.deps.runs.update(runId, record, revision));
    } catch (err) {
      if (err instanceof RevisionConflictError) {
        this.revisions.delete(runId);
        throw new LeaseLostError(runId);
      }
      throw err;
    }
    if (record.leaseOwner === "") this.revisions.delete(runId);
  }

  /** Gives up this instance's lease on an unfinished run, so another instance (or the next start) takes it at once. */
  async release(record: IngestRunRecord): Promise<void> {
    record.leaseOwner = "";
    delete record.leaseExpiresAt;
    await this.save(record, 0);
  }

  /** Records that are not finished (to resume after a restart), oldest first. */
  async unfinished(): Promise<IngestRunRecord[]> {
    const out: IngestRunRecord[] = [];
    for await (const e of this.deps.runs.entries()) {
      if (e.value.run !== undefined && !isFinished(e.value.run.status)) out.push(e.value);
    }
    const millis = (r: IngestRunRecord) => Number(r.run?.createdAt?.seconds ?? 0n) * 1000 + (r.run?.createdAt?.nanos ?? 0) / 1e6;
    return out.sort((a, b) => millis(a) - millis(b));
  }

  /** The sequence of the last event stored for the run (0 when none), read from the stream itself. */
  async lastStoredSequence(runId: string): Promise<number> {
    const m = await this.deps.jsm.streams.getMessage(this.deps.eventsStream, { last_by_subj: this.subject(runId) });
    return m === null ? 0 : fromBinary(IngestRunEventSchema, m.data).sequence;
  }

  /**
   * Appends the next event of the run (sequence = record.lastEventSequence + 1) and advances the
   * record's counter. The event is published first, with a Nats-Msg-Id of `<runId>:<sequence>`, so a
   * repeat after a crash is dropped as a duplicate; the caller then saves the record.
   */
  async appendEvent(record: IngestRunRecord, body: RunEventBody): Promise<IngestRunEvent> {
    const runId = record.run!.id;
    const event = create(IngestRunEventSchema, {
      ...body,
      sequence: record.lastEventSequence + 1,
      runId,
      time: timestampNow(),
    } as MessageInitShape<typeof IngestRunEventSchema>);
    await this.deps.js.publish(this.subject(runId), toBinary(IngestRunEventSchema, event), { msgID: `${runId}:${event.sequence}` });
    record.lastEventSequence = event.sequence;
    return event;
  }

  /**
   * Stores a finished run and then its `completed` event. The record is saved first (with the
   * event's sequence reserved), so whoever sees the event also sees the final record; a crash in
   * between is repaired by `ensureCompletedEvent`, which every watcher of a finished run calls.
   */
  async completeRun(record: IngestRunRecord): Promise<void> {
    record.lastEventSequence += 1;
    record.leaseOwner = "";
    delete record.leaseExpiresAt;
    await this.save(record, 0);
    await this.publishCompleted(record);
  }

  /** Writes the `completed` event of a finished run if the stream lacks it (idempotent). */
  async ensureCompletedEvent(record: IngestRunRecord): Promise<void> {
    if (!isFinished(record.run!.status)) return;
    if ((await this.lastStoredSequence(record.run!.id)) < record.lastEventSequence) await this.publishCompleted(record);
  }

  private async publishCompleted(record: IngestRunRecord): Promise<void> {
    const run = record.run!;
    const event = create(IngestRunEventSchema, {
      sequence: record.lastEventSequence,
      runId: run.id,
      time: run.finishedAt ?? timestampNow(),
      event: {
        case: "completed",
        value: {
          status: run.status,
          ...(run.statistics !== undefined ? { statistics: run.statistics } : {}),
          ...(run.failure !== undefined ? { failure: run.failure } : {}),
        },
      },
    });
    await this.deps.js.publish(this.subject(run.id), toBinary(IngestRunEventSchema, event), { msgID: `${run.id}:${event.sequence}` });
  }

  /**
   * The run's events from `fromSequence` on: the stored history, then live events, ending after
   * the `completed` event. Stops early when `signal` aborts.
   */
  async *events(runId: string, fromSequence: number, signal: AbortSignal): AsyncGenerator<IngestRunEvent> {
    const consumer = await this.deps.js.consumers.get(this.deps.eventsStream, {
      filter_subjects: this.subject(runId),
      deliver_policy: DeliverPolicy.All,
    });
    const messages = await consumer.consume({ max_messages: 64 });
    const stop = () => void messages.close();
    signal.addEventListener("abort", stop, { once: true });
    try {
      for await (const m of messages) {
        const event = fromBinary(IngestRunEventSchema, m.data);
        if (event.sequence >= fromSequence) yield event;
        if (event.event.case === "completed") return;
      }
    } finally {
      signal.removeEventListener("abort", stop);
      await messages.close();
    }
  }
}
