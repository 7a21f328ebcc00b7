import { clone, create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  type Bus,
  type CatalogEvent,
  type TypedKv,
  type Fence,
  type HistoryEvent,
  OwnershipLostError,
  ResourceExistsError,
  type ResourceKind,
  ResourceStore,
  type ResourceStoreOptions,
} from "@ragtune/bus";
import {
  DocumentStatus,
  IngestDocumentResultSchema,
  IngestRunEventSchema,
  IngestRunRecordSchema,
  IngestRunStatus,
  type IngestDocumentResult,
  type IngestRunEvent,
  type IngestRunItem,
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
 * Entries of one page of a run's per-document lists. A page holds at most this many: with source names and error
 * messages of up to a few KB each, a page stays far below NATS's 1 MB message limit.
 */
export const RUN_PAGE_SIZE = 64;

/** The per-document lists of a run, kept beside its record (a page per KV entry), so the record stays small. */
type PagedField = "requested" | "items" | "results";

/** What this instance last wrote of a held run's lists (by identity), to write only the pages that changed. */
interface Written {
  requested: readonly IngestRunItem[] | undefined;
  items: readonly IngestRunItem[] | undefined;
  results: (IngestDocumentResult | undefined)[];
}

/**
 * Ingest runs on the shared resource history: the run record in KV, its events gap-free and exactly once, Watch
 * from a sequence then live. The runner works on a run it claimed with a lease: it changes the record in memory,
 * `appendEvent` queues events, and `save` writes record and events in one fenced compare-and-set that renews the
 * lease — a run another instance took over fails that write with LeaseLostError.
 *
 * The per-document lists of a run (requested sources, expanded items, one result per document) live beside the
 * record, RUN_PAGE_SIZE entries per KV entry of the pages bucket (`<runId>.<list>.<page>`), so the record keeps the
 * same small size whatever the batch (a 10,000-document run's lists are over NATS's 1 MB message limit, and writing
 * them whole at every save made a run's writes quadratic). A save writes the pages that changed first, then the
 * record with its events; a crash between the two leaves pages ahead of the history, which `claim` puts right (a
 * document finished in its page but not in the history is done again).
 */
export class RunStore {
  /** Fences of the runs this instance holds, the events waiting for their next save, and what was last written. */
  private readonly held = new Map<string, { fence: Fence; pending: HistoryEvent<RunEventBody>[]; written: Written }>();

  private constructor(
    readonly resources: ResourceStore<typeof IngestRunRecordSchema, typeof IngestRunEventSchema, RunEventBody>,
    private readonly pages: TypedKv<typeof IngestRunRecordSchema>,
  ) {}

  static async open(
    bus: Bus,
    names: { bucket: string; stream: string; subjectPrefix: string; pagesBucket: string },
    options: ResourceStoreOptions = {},
  ): Promise<RunStore> {
    const [resources, pages] = await Promise.all([
      ResourceStore.open(bus, ingestRunKind, { ...options, bucket: names.bucket, stream: names.stream, subjectPrefix: names.subjectPrefix }),
      bus.kv(names.pagesBucket, IngestRunRecordSchema),
    ]);
    return new RunStore(resources, pages);
  }

  /** The run with its per-document results (`run.documents`); the requested sources and items are not read. */
  async get(runId: string): Promise<{ record: IngestRunRecord; revision: number } | null> {
    const found = await this.resources.get(runId);
    if (found === null) return null;
    const record = found.state;
    if (record.run !== undefined && record.run.documents.length === 0) {
      record.run.documents = await this.readList(runId, "results", record.run.documentsTotal);
    }
    return { record, revision: found.revision };
  }

  /** Creates the record with its first event; false when a record with this ID exists already. */
  async create(record: IngestRunRecord, first: RunEventBody): Promise<boolean> {
    const runId = record.run!.id;
    // The requested sources go first: a record is never stored without them (pages without a record are harmless).
    await this.writeList(runId, "requested", record.requested, allPages(record.requested.length));
    const state = clone(IngestRunRecordSchema, record);
    state.requested = [];
    try {
      await this.resources.create(runId, state, [{ body: first }]);
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
    const record = claimed.resource.state;
    const run = record.run!;
    // A record written before the lists were paged holds them itself: they are written as pages at the next save.
    const written: Written = { requested: undefined, items: undefined, results: [] };
    if (record.requested.length === 0) {
      record.requested = await this.readList(runId, "requested");
      written.requested = record.requested;
    }
    if (record.items.length === 0 && run.documents.length === 0 && run.documentsTotal > 0) {
      const [items, results] = await Promise.all([
        this.readList(runId, "items", run.documentsTotal),
        this.readList(runId, "results", run.documentsTotal),
      ]);
      record.items = items;
      run.documents = results;
      written.items = items;
      written.results = [...results];
      if (run.status === IngestRunStatus.RUNNING) await this.reconcile(record, written);
    }
    this.held.set(runId, { fence: claimed.fence, pending: [], written });
    return record;
  }

  /**
   * Puts the results of a claimed run back in step with its history: a save writes the changed pages before the
   * record and its events, so after a crash between the two a page may hold a document as finished while the
   * history never said so. Such a document is done again (its writes are idempotent), so every document gets
   * exactly one final event.
   */
  private async reconcile(record: IngestRunRecord, written: Written): Promise<void> {
    const run = record.run!;
    const finished = new Set<number>();
    const last = record.lastEventSequence;
    if (last > 0) {
      const stop = new AbortController();
      try {
        for await (const event of this.resources.watch(run.id, { fromSequence: 1, signal: stop.signal })) {
          if (event.event.case === "documentProgress") {
            const status = event.event.value.result?.status;
            if (status === DocumentStatus.READY || status === DocumentStatus.FAILED) finished.add(event.event.value.index);
          }
          if (event.sequence >= last) break;
        }
      } finally {
        stop.abort();
      }
    }
    run.documents.forEach((result, index) => {
      const done = result.status === DocumentStatus.READY || result.status === DocumentStatus.FAILED;
      if (done && !finished.has(index)) {
        run.documents[index] = create(IngestDocumentResultSchema, { sourceName: result.sourceName, status: DocumentStatus.PENDING });
        written.results[index] = undefined;
      }
    });
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
    const state = this.snapshot(record);
    const lists = this.pendingLists(record, held.written);
    const batches = eventBatches(events);
    try {
      await lists.write();
      for (;;) {
        const batch = batches[0] ?? [];
        const stored = await this.resources.modify(runId, () => ({ state, events: batch }), { fence: held.fence, renewLeaseMs: leaseMs });
        batches.shift();
        record.lastEventSequence = stored.state.lastEventSequence;
        if (batches.length === 0) break;
      }
      lists.done();
    } catch (err) {
      if (err instanceof OwnershipLostError) {
        this.held.delete(runId);
        throw new LeaseLostError(runId);
      }
      held.pending = [...batches.flat(), ...held.pending];
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
    const state = this.snapshot(record);
    const lists = this.pendingLists(record, held.written);
    // The stored record keeps its last write's events (its outbox) until another write: that write carries only the
    // last event (the terminal one of a finished run), so a finished record stays small; the others go before it.
    const pending = held.pending;
    const batches = pending.length > 1 ? [...eventBatches(pending.slice(0, -1)), [pending.at(-1)!]] : eventBatches(pending);
    try {
      await lists.write();
      // Events beyond one write's budget go first, with the state as it was before the run finished: only the last
      // write may hold a finished state (its last event is then the terminal one, which ends every watch).
      while (batches.length > 1) {
        const before = clone(IngestRunRecordSchema, state);
        if (isFinished(before.run!.status)) before.run!.status = IngestRunStatus.RUNNING;
        const stored = await this.resources.modify(runId, () => ({ state: before, events: batches[0]! }), { fence: held.fence });
        batches.shift();
        held.pending = batches.flat();
        record.lastEventSequence = stored.state.lastEventSequence;
      }
      const stored = await this.resources.release(runId, held.fence, () => ({ state, events: batches[0] ?? [] }));
      lists.done();
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

  /** The record as stored: without its per-document lists, which live in the pages. */
  private snapshot(record: IngestRunRecord): IngestRunRecord {
    const { requested, items } = record;
    const documents = record.run!.documents;
    record.requested = [];
    record.items = [];
    record.run!.documents = [];
    try {
      return clone(IngestRunRecordSchema, record);
    } finally {
      record.requested = requested;
      record.items = items;
      record.run!.documents = documents;
    }
  }

  /**
   * The pages of a held run's lists that changed since they were last written, taken now (before any await, like
   * the record): `write` stores them, `done` notes them as written once the record that goes with them is stored.
   */
  private pendingLists(record: IngestRunRecord, written: Written): { write(): Promise<void>; done(): void } {
    const runId = record.run!.id;
    const { requested, items } = record;
    const results = [...record.run!.documents];
    const changed = new Set<number>();
    results.forEach((r, i) => {
      if (written.results[i] !== r) changed.add(Math.floor(i / RUN_PAGE_SIZE));
    });
    const writes: (() => Promise<void>)[] = [];
    if (written.requested !== requested) writes.push(() => this.writeList(runId, "requested", requested, allPages(requested.length)));
    if (written.items !== items) writes.push(() => this.writeList(runId, "items", items, allPages(items.length)));
    if (changed.size > 0) writes.push(() => this.writeList(runId, "results", results, changed));
    return {
      write: async () => {
        await Promise.all(writes.map((w) => w()));
      },
      done: () => {
        written.requested = requested;
        written.items = items;
        written.results = results;
      },
    };
  }

  /** Writes the given pages of one of a run's lists. */
  private async writeList(runId: string, field: PagedField, list: readonly (IngestRunItem | IngestDocumentResult)[], pages: Iterable<number>): Promise<void> {
    await Promise.all(
      [...pages].map((page) => {
        const slice = list.slice(page * RUN_PAGE_SIZE, (page + 1) * RUN_PAGE_SIZE);
        const value =
          field === "results"
            ? { run: { documents: slice as IngestDocumentResult[] } }
            : field === "items"
              ? { items: slice as IngestRunItem[] }
              : { requested: slice as IngestRunItem[] };
        return this.pages.put(pageKey(runId, field, page), value);
      }),
    );
  }

  /** One of a run's lists, read a page at a time (all pages at once when the length is known). */
  private async readList(runId: string, field: "results", length: number): Promise<IngestDocumentResult[]>;
  private async readList(runId: string, field: "requested" | "items", length?: number): Promise<IngestRunItem[]>;
  private async readList(runId: string, field: PagedField, length?: number): Promise<(IngestRunItem | IngestDocumentResult)[]> {
    const pick = (page: IngestRunRecord): (IngestRunItem | IngestDocumentResult)[] =>
      field === "results" ? (page.run?.documents ?? []) : field === "items" ? page.items : page.requested;
    if (length !== undefined) {
      const pages = await Promise.all([...allPages(length)].map((page) => this.pages.get(pageKey(runId, field, page))));
      const list = pages.flatMap((p) => (p === null ? [] : pick(p.value)));
      if (list.length !== length) throw new Error(`ingest run ${runId}: its ${field} pages hold ${list.length} entries, expected ${length}`);
      return list;
    }
    const list: (IngestRunItem | IngestDocumentResult)[] = [];
    for (let page = 0; ; page++) {
      const found = await this.pages.get(pageKey(runId, field, page));
      if (found === null) return list;
      const entries = pick(found.value);
      list.push(...entries);
      if (entries.length < RUN_PAGE_SIZE) return list;
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

/**
 * Bytes of events one record write may carry (they sit in the record's outbox until published): well below NATS's
 * 1 MB message limit, whatever piles up while a slow save is in flight.
 */
const EVENT_BYTES_PER_WRITE = 256 * 1024;

/** The events in order, cut into batches of at most EVENT_BYTES_PER_WRITE (at least one event each). */
function eventBatches(events: HistoryEvent<RunEventBody>[]): HistoryEvent<RunEventBody>[][] {
  const batches: HistoryEvent<RunEventBody>[][] = [];
  let bytes = Infinity;
  for (const e of events) {
    const size = toBinary(IngestRunEventSchema, create(IngestRunEventSchema, e.body as MessageInitShape<typeof IngestRunEventSchema>)).byteLength + 64;
    if (bytes + size > EVENT_BYTES_PER_WRITE) {
      batches.push([]);
      bytes = 0;
    }
    batches.at(-1)!.push(e);
    bytes += size;
  }
  return batches;
}

function pageKey(runId: string, field: PagedField, page: number): string {
  return `${runId}.${field}.${page}`;
}

function allPages(length: number): number[] {
  return Array.from({ length: Math.ceil(length / RUN_PAGE_SIZE) }, (_, i) => i);
}
