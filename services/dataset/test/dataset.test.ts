import { readdir, readFile } from "node:fs/promises";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import type { Bus } from "@ragtune/bus";
import {
  DatasetService,
  DatasetSplit,
  DatasetVersionBuiltSchema,
  DatasetVersionSchema,
  DatasetVersionStatus,
  ExampleKind,
  PromptTemplate,
  type DatasetVersionEvent,
} from "@ragtune/proto";
import { expectCode } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_REFUSAL } from "../src/negatives.js";
import { resolveBuildSettings } from "../src/build-settings.js";
import { openVersionStore } from "../src/version-store.js";
import { SAMPLE_DOCS } from "./sample-chunks.js";
import { type DatasetTestbed, type DatasetTestService, startDatasetTestbed } from "./testbed.js";

let bed: DatasetTestbed;
let bus: Bus;
let ingest: DatasetTestbed["ingest"];
let dataset: DatasetTestService;

beforeAll(async () => {
  bed = await startDatasetTestbed();
  ({ bus, ingest, dataset } = bed);
  const files = (await readdir(SAMPLE_DOCS)).sort();
  await bed.ingestDocuments("docs", await Promise.all(files.map(async (f) => [f, await readFile(join(SAMPLE_DOCS, f))] as [string, Uint8Array])));
}, 120_000);

afterAll(() => bed?.close());

async function watchToEnd(id: string): Promise<DatasetVersionEvent[]> {
  const events: DatasetVersionEvent[] = [];
  for await (const res of dataset.client(DatasetService).watchDatasetVersion({ datasetVersionId: id })) events.push(res.event!);
  return events;
}

describe("dataset service (real nats-server, the real ingest service)", () => {
  it("builds a version from an ingested collection: watchable, ready with splits and exports, announced downstream", async () => {
    const client = dataset.client(DatasetService);
    const announced = new Promise<string>((resolve) => {
      void bus.subscribe({
        durable: "dataset-test-built",
        schema: DatasetVersionBuiltSchema,
        handler: ({ event }) => resolve(event.datasetVersionId),
      });
    });
    const { version } = await client.buildDatasetVersion({ collection: "docs", clientRequestId: "first" });
    expect(version!.status).toBe(DatasetVersionStatus.QUEUED);
    const again = await client.buildDatasetVersion({ collection: "docs", clientRequestId: "first" });
    expect(again.version!.id).toBe(version!.id);

    const events = await watchToEnd(version!.id);
    expect(events.map((e) => e.sequence)).toEqual(events.map((_, i) => i + 1));
    const statuses = events.flatMap((e) => (e.event.case === "statusChanged" ? [DatasetVersionStatus[e.event.value.status]] : []));
    expect(statuses).toEqual(["QUEUED", "GENERATING", "FINALIZING", "READY"]);
    expect(await announced).toBe(version!.id);

    const ready = (await client.getDatasetVersion({ datasetVersionId: version!.id })).version!;
    expect(ready.generator).toBe("extractive");
    expect(ready.contentSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(ready.stats!.chunksTotal).toBeGreaterThan(50);
    const splits = Object.fromEntries(ready.stats!.splits.map((s) => [DatasetSplit[s.split], s]));
    for (const name of ["TRAIN", "VAL", "TEST"]) expect(splits[name]!.examples).toBeGreaterThan(0);
    expect(splits.TRAIN!.unanswerable).toBeGreaterThan(0);
    expect(ready.exports.map((x) => [DatasetSplit[x.split], PromptTemplate[x.template]])).toEqual([
      ["TRAIN", "MISTRAL_INSTRUCT"],
      ["VAL", "MISTRAL_INSTRUCT"],
      ["TEST", "MISTRAL_INSTRUCT"],
    ]);

    // Examples: no source chunk in two splits; negatives carry the refusal.
    const all = [];
    let pageToken = "";
    do {
      const res = await client.listExamples({ datasetVersionId: version!.id, page: { pageSize: 100, pageToken } });
      all.push(...res.examples);
      pageToken = res.page!.nextPageToken;
    } while (pageToken !== "");
    expect(all.length).toBe(ready.stats!.splits.reduce((n, s) => n + s.examples, 0));
    const splitOfChunk = new Map<string, DatasetSplit>();
    for (const e of all) {
      const chunk = e.contextChunkIds[0]!;
      expect(splitOfChunk.get(chunk) ?? e.split).toBe(e.split);
      splitOfChunk.set(chunk, e.split);
      if (e.kind === ExampleKind.UNANSWERABLE) expect(e.answer).toBe(DEFAULT_REFUSAL);
    }

    // The train export streams as whole JSON lines whose rows and hash the summary states.
    let text = "";
    let summary;
    for await (const res of client.exportDatasetVersion({ datasetVersionId: version!.id, split: DatasetSplit.TRAIN, template: PromptTemplate.MISTRAL_INSTRUCT })) {
      if (res.part.case === "jsonl") text += Buffer.from(res.part.value).toString("utf8");
      else summary = res.part.value;
    }
    const rows = text.trimEnd().split("\n").map((l) => JSON.parse(l) as { prompt: string; completion: string });
    expect(rows.length).toBe(splits.TRAIN!.examples);
    expect(summary!.rows).toBe(rows.length);
    for (const r of rows) {
      expect(r.prompt.startsWith("[INST] ")).toBe(true);
      expect(r.completion.endsWith("</s>")).toBe(true);
    }
  });

  it("finishes a build whose replica died: another replica takes it over once the dead one's lease lapses", async () => {
    // A version claimed by a replica that then died (its lease still live for a moment).
    const versions = await openVersionStore(bus, "dataset");
    const id = "dsv-orphaned";
    const { settings } = resolveBuildSettings(undefined, { llmConfigured: false });
    await versions.create(id, create(DatasetVersionSchema, { id, collection: "docs", status: DatasetVersionStatus.QUEUED, settings, createdAt: timestampNow() }));
    expect(await versions.claim(id, "dead-replica", { leaseMs: 1_500 })).not.toBeNull();
    // A replica that scans often (its own lease is short) finds it once the lease lapsed.
    const survivor = await bed.startDataset({ DATASET_BUILD_LEASE: "2s" });
    try {
      await watchToEnd(id);
      const done = await versions.get(id);
      expect(done!.state.status).toBe(DatasetVersionStatus.READY);
      expect(done!.owner).toBe("");
      expect(done!.claimReason).toMatch(/the lease of dead-replica lapsed/);
    } finally {
      await survivor.stop();
    }
  });

  it("rejects bad requests with a clear error and fails a build of an unknown collection, naming it", async () => {
    const client = dataset.client(DatasetService);
    await expectCode(client.buildDatasetVersion({ collection: "Bad Name!" }), Code.InvalidArgument, /collection/);
    await expectCode(client.buildDatasetVersion({ collection: "docs", settings: { questionsPerChunk: 0 } }), Code.InvalidArgument, /settings.questions_per_chunk/);
    await expectCode(
      client.buildDatasetVersion({ collection: "docs", settings: { splitRatios: { train: 0.5, val: 0.2, test: 0.2 } } }),
      Code.InvalidArgument,
      /settings.split_ratios/,
    );
    await expectCode(client.buildDatasetVersion({ collection: "docs", settings: { model: "mistral-7b" } }), Code.InvalidArgument, /settings.model.*LLM_BASE_URL is not configured/);
    await expectCode(client.getDatasetVersion({ datasetVersionId: "dsv-nope" }), Code.NotFound, /dsv-nope/);
    await expectCode(client.listExamples({ datasetVersionId: "dsv-nope" }), Code.NotFound);

    const { version } = await client.buildDatasetVersion({ collection: "never-ingested" });
    await watchToEnd(version!.id);
    const failed = (await client.getDatasetVersion({ datasetVersionId: version!.id })).version!;
    expect(failed.status).toBe(DatasetVersionStatus.FAILED);
    expect(failed.failure!.message).toMatch(/never-ingested/);
    await expectCode(client.listExamples({ datasetVersionId: version!.id }), Code.FailedPrecondition, /failed/);
    await expectCode(client.cancelDatasetBuild({ datasetVersionId: version!.id }), Code.FailedPrecondition, /already finished/);
  });
});
