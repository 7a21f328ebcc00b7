import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DocumentStatus, IngestRunStatus, type DocumentSource, type IngestRunEvent } from "@ragtune/proto";
import { RunStore } from "../src/run-store.js";
import { ingestResourceNames } from "../src/server.js";
import { startHarness, waitForRun, type Harness } from "./harness.js";

const doc = (i: number) =>
  `# Runbook ${i}\n\n## Steps\n\n${Array.from({ length: 8 }, (_, k) => `Step ${k} of runbook ${i}: check the queue depth, drain the node and confirm the alert cleared.`).join(" ")}\n\n## Rollback\n\nRevert the change ${i} and page the owner.`;

const batch = (n: number): DocumentSource[] =>
  Array.from({ length: n }, (_, i) => ({
    $typeName: "ragtune.ingest.v1.DocumentSource",
    source: { case: "inline", value: { $typeName: "ragtune.ingest.v1.InlineDocument", filename: `rb/${String(i).padStart(3, "0")}.md`, mediaType: "", content: new TextEncoder().encode(doc(i)) } },
  }));

/** The documents whose final event (ready or failed) the run holds, in index order (they finish in any order). */
function finalIndices(events: IngestRunEvent[]): number[] {
  return events
    .filter((e) => e.event.case === "documentProgress")
    .map((e) => e.event.value as { index: number; result?: { status: DocumentStatus } })
    .filter((p) => p.result?.status === DocumentStatus.READY || p.result?.status === DocumentStatus.FAILED)
    .map((p) => p.index)
    .sort((a, b) => a - b);
}

describe("two instances on one NATS", () => {
  let h: Harness;

  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h?.close();
  });

  it("a second instance leaves a run alone while its holder works on it", async () => {
    const other = await h.startInstance({ INGEST_RUN_SCAN_INTERVAL: "50ms" });
    try {
      const { run: started } = await h.grpc.ingestDocuments({ collection: "rb", sources: batch(40), chunking: { chunkSizeTokens: 64 } });
      const { run, events } = await waitForRun(other.grpc, started!.id);
      expect(run.status).toBe(IngestRunStatus.SUCCEEDED);
      expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
      expect(finalIndices(events)).toEqual(Array.from({ length: 40 }, (_, i) => i));
    } finally {
      await other.server.stop();
    }
  });

  it("takes over the run of an instance that died once its lease lapses", async () => {
    const { run: started } = await h.grpc.ingestDocuments({ collection: "rb2", sources: batch(60), chunking: { chunkSizeTokens: 64 } });
    await h.server.stop(); // stops after the current document and releases the run
    // Pretend the holder crashed instead: it claimed the run and its lease is still live for a moment.
    const names = ingestResourceNames(h.config.INGEST_BUCKET_PREFIX);
    const runs = await RunStore.open(h.bus, { bucket: names.runs, stream: names.runEventsStream, subjectPrefix: names.runEventsSubjectPrefix, pagesBucket: names.runPages });
    const record = await runs.claim(started!.id, "crashed-instance", 1_500);
    expect(record?.run?.status).not.toBe(IngestRunStatus.SUCCEEDED);

    const survivor = await h.startInstance({ INGEST_RUN_SCAN_INTERVAL: "100ms" });
    try {
      expect(survivor.server.instance.resumedRuns).not.toContain(started!.id); // the lease is still live at start
      const { run, events } = await waitForRun(survivor.grpc, started!.id);
      expect(run.status).toBe(IngestRunStatus.SUCCEEDED);
      expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
      expect(finalIndices(events)).toEqual(Array.from({ length: 60 }, (_, i) => i));
      expect((await survivor.grpc.listDocuments({ collection: "rb2" })).page?.totalSize).toBe(60);
      const stored = await runs.resources.get(started!.id);
      expect(stored?.owner).toBe("");
      expect(stored?.claimReason).toMatch(/the lease of crashed-instance lapsed/);
    } finally {
      await survivor.server.stop();
      h.server = (await h.startInstance()).server; // so afterAll closes a live instance
    }
  });
});
