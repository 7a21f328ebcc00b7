import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { connectBus, type Bus } from "@ragtune/bus";
import { createLogger } from "@ragtune/logger";
import {
  DocumentStatus,
  IngestDocumentResultSchema,
  IngestRunItemSchema,
  IngestRunRecordSchema,
  IngestRunSchema,
  IngestRunStatus,
  ResourceRecordSchema,
  ServerPathSchema,
  type IngestRunEvent,
  type IngestRunRecord,
} from "@ragtune/proto";
import { startNatsServer, type NatsServerHandle } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RUN_PAGE_SIZE, RunStore } from "../src/run-store.js";
import { ingestResourceNames } from "../src/server.js";
import { startHarness, waitForRun, type Harness } from "./harness.js";

/** NATS's default max_payload: a KV value (a run record) cannot be larger. */
const MAX_PAYLOAD = 1024 * 1024;

/** Indices of the documents whose final event (ready or failed) the history holds, sorted, repeats kept. */
function finalIndices(events: IngestRunEvent[]): number[] {
  return events
    .flatMap((e) => (e.event.case === "documentProgress" ? [e.event.value] : []))
    .filter((p) => p.result?.status === DocumentStatus.READY || p.result?.status === DocumentStatus.FAILED)
    .map((p) => p.index)
    .sort((a, b) => a - b);
}

describe("a run whose per-document lists are larger than a NATS message", () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  it("ingests 2,200 documents with long paths; the record stays small, the results are read back in order", async () => {
    // Long paths: the run's items and results hold each twice or more, so the lists of 2,200 documents are over
    // 1 MB — the size at which a record holding them could no longer be written (about 10,000 documents of the AWS
    // corpus's path lengths).
    const n = 2_200;
    const dir = join("big", "a-rather-long-directory-name-for-runbooks-of-the-platform-team".repeat(2));
    await mkdir(join(h.root, dir), { recursive: true });
    const names: string[] = [];
    for (let i = 0; i < n; i++) {
      const name = `${String(i).padStart(5, "0")}-how-to-recover-a-node-after-the-disk-filled-up-and-the-queue-stopped.md`;
      names.push(`${dir}/${name}`);
      await writeFile(join(h.root, dir, name), `# Runbook ${i}\n\nDrain node ${i}, clear the disk and restart the queue.\n`);
    }
    const { run: started } = await h.grpc.ingestDocuments({ collection: "big", sources: [{ source: { case: "serverPath", value: { path: "big" } } }] });
    const { run, events } = await waitForRun(h.grpc, started!.id);
    expect(run.status).toBe(IngestRunStatus.SUCCEEDED);
    expect(run.documentsTotal).toBe(n);
    expect(run.documents.map((d) => d.sourceName)).toEqual(names);
    expect(run.documents.every((d) => d.status === DocumentStatus.READY && d.chunkCount === 1)).toBe(true);
    expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
    expect(finalIndices(events)).toEqual(names.map((_, i) => i));

    // What the lists weigh, and what the stored record weighs.
    const names_ = ingestResourceNames(h.config.INGEST_BUCKET_PREFIX);
    const records = await h.bus.kv(names_.runs, ResourceRecordSchema);
    const stored = (await records.get(started!.id))!.value;
    const state = toBinary(IngestRunRecordSchema, create(IngestRunRecordSchema, { run }));
    expect(state.byteLength).toBeGreaterThan(MAX_PAYLOAD / 2); // the results alone
    expect(toBinary(ResourceRecordSchema, stored).byteLength).toBeLessThan(16 * 1024);
    const pages = await h.bus.kv(names_.runPages, IngestRunRecordSchema);
    const items = await pages.get(`${started!.id}.items.0`);
    expect(items?.value.items.length).toBe(RUN_PAGE_SIZE);
    const withItems = run.documents.length * (items!.value.items[0]!.sourceName.length * 2 + 60);
    expect(state.byteLength + withItems).toBeGreaterThan(MAX_PAYLOAD);
  });
});

describe("a crash between a save's pages and its record", () => {
  let nats: NatsServerHandle;
  let bus: Bus;
  const names = { bucket: "crash-runs", stream: "CRASH_RUN_EVENTS", subjectPrefix: "crash.run-events", pagesBucket: "crash-run-pages" };
  beforeAll(async () => {
    nats = await startNatsServer();
    bus = await connectBus({ servers: nats.url, name: "run-pages-test", logger: createLogger({ svc: "ingest-test", level: "silent" }) });
  });
  afterAll(async () => {
    await bus?.close();
    await nats?.stop();
  });

  it("does again the documents the pages finished but the history never told, and no other", async () => {
    const n = 4 * RUN_PAGE_SIZE + 7;
    let crash = false;
    const crashing = await RunStore.open(bus, names, {
      faults: (step) => {
        if (crash && step === "before-write") throw new Error("crash before the record is written");
      },
    });
    const items = Array.from({ length: n }, (_, i) =>
      create(IngestRunItemSchema, { sourceName: `doc-${i}.md`, source: { case: "serverPath", value: create(ServerPathSchema, { path: `/docs/doc-${i}.md` }) } }),
    );
    const record = create(IngestRunRecordSchema, {
      run: create(IngestRunSchema, { id: "run_crash", collection: "c", status: IngestRunStatus.QUEUED }),
      requested: items,
    });
    expect(await crashing.create(record, { event: { case: "statusChanged", value: { status: IngestRunStatus.QUEUED } } })).toBe(true);

    // The first holder expands the run and finishes documents 0..99 (saved), then 100..199, whose save dies after
    // their pages were written and before the record (with their events) was.
    const a = (await crashing.claim("run_crash", "a", 0))!;
    expect(a.requested.map((r) => r.sourceName)).toEqual(items.map((r) => r.sourceName));
    a.items = [...a.requested];
    a.run!.documents = items.map((it) => create(IngestDocumentResultSchema, { sourceName: it.sourceName, status: DocumentStatus.PENDING }));
    a.run!.documentsTotal = n;
    a.run!.status = IngestRunStatus.RUNNING;
    crashing.appendEvent(a, { event: { case: "statusChanged", value: { status: IngestRunStatus.RUNNING } } });
    const finish = (run: IngestRunRecord, store: RunStore, from: number, to: number) => {
      for (let i = from; i < to; i++) {
        run.run!.documents[i] = create(IngestDocumentResultSchema, { sourceName: `doc-${i}.md`, documentId: `d${i}`, status: DocumentStatus.READY, chunkCount: 1 });
        store.appendEvent(run, { event: { case: "documentProgress", value: { index: i, result: run.run!.documents[i]! } } });
      }
    };
    finish(a, crashing, 0, 100);
    await crashing.save(a, 0);
    finish(a, crashing, 100, 200);
    crash = true;
    await expect(crashing.save(a, 0)).rejects.toThrow(/crash before the record is written/);

    // The pages are ahead of the history: a reader sees 200 documents done.
    const survivor = await RunStore.open(bus, names);
    const seen = (await survivor.get("run_crash"))!.record.run!.documents;
    expect(seen.filter((d) => d.status === DocumentStatus.READY)).toHaveLength(200);

    // The next holder (the lease of 0 ms has lapsed) keeps 0..99 and does 100..n-1 again.
    const b = (await survivor.claim("run_crash", "b", 60_000))!;
    expect(b.items.map((it) => it.sourceName)).toEqual(items.map((it) => it.sourceName));
    const ready = b.run!.documents.flatMap((d, i) => (d.status === DocumentStatus.READY ? [i] : []));
    expect(ready).toEqual(Array.from({ length: 100 }, (_, i) => i));
    finish(b, survivor, 100, n);
    b.run!.status = IngestRunStatus.SUCCEEDED;
    await survivor.completeRun(b, []);

    // Every document has exactly one final event, and the stored results are the survivor's.
    const events: IngestRunEvent[] = [];
    for await (const e of survivor.events("run_crash", 1, new AbortController().signal)) events.push(e);
    expect(finalIndices(events)).toEqual(Array.from({ length: n }, (_, i) => i));
    const final = (await survivor.get("run_crash"))!.record.run!;
    expect(final.documents.every((d) => d.status === DocumentStatus.READY)).toBe(true);
    expect(final.documents).toHaveLength(n);
  });
});
