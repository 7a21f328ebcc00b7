import { clone, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  type Bus,
  type CatalogEvent,
  type Fence,
  type HistoryEvent,
  OwnershipLostError,
  ResourceExistsError,
  type ResourceKind,
  ResourceStore,
  type ResourceStoreOptions,
} from "@ragtune/bus";
import {
  IngestRunEventSchema,
  IngestRunRecordSchema,
  IngestRunStatus,
  type IngestRunEvent,
  type IngestRunRecord,
} from "@ragtune/proto";

export function isFinished(status: IngestRunStatus): boolean {
  return (
    status === IngestRunStatus.SUCCEEDED ||
    status === IngestRunStatus.PARTIALLY_SUCCEEDED ||
    status === IngestRunStatus.FAILED
  );
}

/** The event of an ingest run, without the fields the history fills in (sequence, run ID, time). */
export type RunEventBody = Omit<MessageInitShape<typeof IngestRunEventSchema>, "sequence" | "runId" | "time" | "$typeName">;

/** Another instance took the run over (its lease had lapsed); this one must stop working on it. */
export class LeaseLostError extends Error {
  constructor(readonly runId: string) {
    super(`ingest run ${runId} is held by another instance now`);
    this.name = "LeaseLostError";
  }
}

/** An ingest run as a resource of the shared history (libs/bus): state `IngestRunRecord`, history `IngestRunEvent`. */
export const ingestRunKind: ResourceKind<typeof IngestRunRecordSchema, typeof IngestRunEventSchema, RunEventBody> = {
  kind: "ingest-run",
  stateSchema: IngestRunRecordSchema,
  eventSchema: IngestRunEventSchema,
  stampEvent: (body, { id, sequence, timeMs }) => ({ ...body, sequence, runId: id, time: timestampFromMs(timeMs) }) as MessageInitShape<typeof IngestRunEventSchema>,
  sequenceOf: (e) => e.sequence,
  isTerminal: (record) => record.run !== undefined && isFinished(record.run.status),
  onCommit: (record, lastSequence) => {
    record.lastEventSequence = lastSequence;
  },
};

/** An unfinished run and whether an instance may claim it now (nobody holds a live lease on it). */
export interface UnfinishedRun {
  record: IngestRunRecord;
  claimable: boolean;
}

/**
 * Ingest runs on the shared resource history: the run record in KV, its events gap-free and exactly once, Watch
 * from a sequence then live. The runner works on a run it claimed with a lease: it changes the record in memory,
 * `appendEvent` queues events, and `save` writes record and events in one fenced compare-and-set that renews the
 * lease — a run another instance took over fails that write with LeaseLostError.
 */
export class RunStore {
  /** Fences of the runs this instance holds, and the events waiting for their next save. */
  private readonly held = new Map<string, { fence: Fence; pending: HistoryEvent<RunEventBody>[] }>();

  private constructor(readonly resources: ResourceStore<typeof IngestRunRecordSchema, typeof IngestRunEventSchema, RunEventBody>) {}

  static async open(bus: Bus, names: { bucket: string; stream: string; subjectPrefix: string }, options: ResourceStoreOptions = {}): Promise<RunStore> {
    const resources = await ResourceStore.open(bus, ingestRunKind, { ...options, bucket: names.bucket, stream: names.stream, subjectPrefix: names.subjectPrefix });
    return new RunStore(resources);
  }

  async get(runId: string): Promise<{ record: IngestRunRecord; revision: number } | null> {
    const found = await this.resources.get(runId);
    return found === null ? null : { record: found.state, revision: found.revision };
  }

  /** Creates the record with its first event; false when a record with this ID exists already. */
  async create(record: IngestRunRecord, first: RunEventBody): Promise<boolean> {
    try {
      await this.resources.create(record.run!.id, record, [{ body: first }]);
      return true;
    } catch (err) {
      if (err instanceof ResourceExistsError) return false;
      throw err;
    }
  }

  /**
   * Takes the run for `owner` until now + `leaseMs`, if it is unfinished and nobody else holds a live lease.
   * Returns the record, or null when not taken.
   */
  async claim(runId: string, owner: string, leaseMs: number): Promise<IngestRunRecord | null> {
    const claimed = await this.resources.claim(runId, owner, { leaseMs });
    if (claimed === null) return null;
    this.held.set(runId, { fence: claimed.fence, pending: [] });
    return claimed.resource.state;
  }

  /** Queues the next event of a run this instance holds; it is written with the record at the next `save`. */
  appendEvent(record: IngestRunRecord, body: RunEventBody, announce?: CatalogEvent[]): void {
    this.hold(record.run!.id).pending.push({ body, ...(announce ? { announce } : {}) });
  }

  /**
   * Writes the record and its queued events (renewing the lease by `leaseMs`). Throws LeaseLostError when another
   * instance took the run over since.
   */
  async save(record: IngestRunRecord, leaseMs: number): Promise<void> {
    const runId = record.run!.id;
    const held = this.hold(runId);
    // The record and its queued events are taken together, before any await: changes made while this save is in
    // flight (documents finishing meanwhile) go out with their events in the next one.
    const events = held.pending;
    held.pending = [];
    const state = clone(IngestRunRecordSchema, record);
    try {
      const stored = await this.resources.modify(runId, () => ({ state, events }), { fence: held.fence, renewLeaseMs: leaseMs });
      record.lastEventSequence = stored.state.lastEventSequence;
    } catch (err) {
      if (err instanceof OwnershipLostError) {
        this.held.delete(runId);
        throw new LeaseLostError(runId);
      }
      held.pending = [...events, ...held.pending];
      throw err;
    }
  }

  /** Writes what is queued and gives up this instance's lease, so another instance (or the next start) takes the run at once. */
  async release(record: IngestRunRecord): Promise<void> {
    await this.finishHold(record);
  }

  /** Stores a finished run with its `completed` event (the terminal one) and the catalog events announcing it, and lets go of it. */
  async completeRun(record: IngestRunRecord, announce: CatalogEvent[]): Promise<void> {
    const run = record.run!;
    this.appendEvent(
      record,
      {
        event: {
          case: "completed",
          value: {
            status: run.status,
            ...(run.statistics !== undefined ? { statistics: run.statistics } : {}),
            ...(run.failure !== undefined ? { failure: run.failure } : {}),
          },
        },
      },
      announce,
    );
    await this.finishHold(record);
  }

  private async finishHold(record: IngestRunRecord): Promise<void> {
    const runId = record.run!.id;
    const held = this.hold(runId);
    const events = held.pending;
    try {
      const stored = await this.resources.release(runId, held.fence, () => ({ state: clone(IngestRunRecordSchema, record), events }));
      record.lastEventSequence = stored.state.lastEventSequence;
      this.held.delete(runId);
    } catch (err) {
      if (err instanceof OwnershipLostError) {
        this.held.delete(runId);
        throw new LeaseLostError(runId);
      }
      throw err;
    }
  }

  private hold(runId: string) {
    const held = this.held.get(runId);
    if (held === undefined) throw new LeaseLostError(runId);
    return held;
  }

  /** Runs that are not finished (to resume after a restart), oldest first, each with whether it may be claimed now. */
  async unfinished(now = Date.now()): Promise<UnfinishedRun[]> {
    const found = await this.resources.list((r) => r.state.run !== undefined && !isFinished(r.state.run.status));
    const millis = (r: IngestRunRecord) => Number(r.run?.createdAt?.seconds ?? 0n) * 1000 + (r.run?.createdAt?.nanos ?? 0) / 1e6;
    return found
      .map((r) => ({ record: r.state, claimable: r.owner === "" || r.leaseExpiresAtMs <= now }))
      .sort((a, b) => millis(a.record) - millis(b.record));
  }

  /** The run's events from `fromSequence`: the stored history, then live events, ending after the `completed` event. */
  events(runId: string, fromSequence: number, signal: AbortSignal): AsyncGenerator<IngestRunEvent> {
    return this.resources.watch(runId, { fromSequence, signal });
  }
}
