import { readdir, readFile } from "node:fs/promises";
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import type { Bus } from "@ragtune/bus";
import {
  DatasetExportFormat,
  DatasetService,
  DatasetSplit,
  DatasetVersionBuiltSchema,
  DatasetVersionSchema,
  DatasetVersionStatus,
  ExampleKind,
  IngestRunStatisticsSchema,
  IngestRunStatus,
  PromptTemplate,
  type DatasetVersionEvent,
} from "@ragtune/proto";
import { expectCode } from "@ragtune/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_REFUSAL } from "../src/negatives.js";
import { rebuildAfterIngest } from "../src/dataset-service.js";
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
    expect(ready.stats!.chunksTotal).toBeGreaterThan(40);
    const splits = Object.fromEntries(ready.stats!.splits.map((s) => [DatasetSplit[s.split], s]));
    for (const name of ["TRAIN", "VAL", "TEST"]) expect(splits[name]!.examples).toBeGreaterThan(0);
    expect(splits.TRAIN!.unanswerable).toBeGreaterThan(0);
    // Token histograms stored with the stats: one set of edges for all splits, each split's buckets holding its
    // examples, from the bucket of the split's smallest row to that of its largest.
    const edges = (name: string) => splits[name]!.tokenHistogram.map((b) => `${b.lower}-${b.upper}`);
    expect(edges("TRAIN").length).toBeGreaterThan(1);
    for (const name of ["TRAIN", "VAL", "TEST"]) {
      const { tokenHistogram: h, tokenStats: t, examples } = splits[name]!;
      expect(edges(name)).toEqual(edges("TRAIN"));
      expect(h.reduce((n, b) => n + b.count, 0)).toBe(examples);
      const holding = h.filter((b) => b.count > 0);
      expect(holding[0]!.lower).toBeLessThanOrEqual(t!.min);
      expect(holding.at(-1)!.upper).toBeGreaterThan(t!.max);
    }
    expect(ready.exports.map((x) => `${DatasetSplit[x.split]} ${DatasetExportFormat[x.format]} ${PromptTemplate[x.template]}`)).toEqual(
      ["TRAIN", "VAL", "TEST"].flatMap((split) => [
        `${split} INSTRUCT MISTRAL_INSTRUCT`,
        `${split} INFERENCE MISTRAL_INSTRUCT`,
        `${split} CHAT UNSPECIFIED`,
        `${split} PROMPT_COMPLETION UNSPECIFIED`,
      ]),
    );

    // Report: per source document and per question type, summing to the kept examples; lineage names every document.
    const kept = ready.stats!.splits.reduce((n, s) => n + s.examples, 0);
    const files = (await readdir(SAMPLE_DOCS)).sort();
    expect(ready.stats!.documents.map((d) => d.sourceName).sort()).toEqual(files);
    expect(ready.stats!.documents.reduce((n, d) => n + d.examples, 0)).toBe(kept);
    expect(ready.stats!.documents.reduce((n, d) => n + d.chunks, 0)).toBe(ready.stats!.chunksTotal);
    for (const d of ready.stats!.documents) expect(d.answerable + d.unanswerable).toBe(d.examples);
    expect(Object.values(ready.stats!.examplesByQuestionType).reduce((a, b) => a + b, 0)).toBe(kept);
    expect(ready.stats!.examplesByQuestionType["unanswerable"]).toBe(splits.TRAIN!.unanswerable + splits.VAL!.unanswerable + splits.TEST!.unanswerable);
    const lineage = ready.lineage!;
    expect(lineage.generator).toBe("extractive");
    expect(lineage.tokenizer).toBe("mistral");
    expect(lineage.documents.map((d) => d.sourceName).sort()).toEqual(files);
    for (const d of lineage.documents) expect(d.contentSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(lineage.chunks!.sizeBytes).toBeGreaterThan(0n);
    expect(lineage.generated!.sizeBytes).toBeGreaterThan(0n);

    // Every dropped example is listed with its reason; the counts are the report's.
    const dropped = [];
    let droppedToken = "";
    do {
      const res = await client.listDroppedExamples({ datasetVersionId: version!.id, page: { pageSize: 200, pageToken: droppedToken } });
      dropped.push(...res.examples);
      droppedToken = res.page!.nextPageToken;
    } while (droppedToken !== "");
    const perReason: Record<string, number> = {};
    for (const d of dropped) perReason[d.reason] = (perReason[d.reason] ?? 0) + 1;
    expect(perReason).toEqual(ready.stats!.rejectedByCheck);
    expect(dropped.length).toBeGreaterThan(0);
    for (const d of dropped) {
      expect(d.detail).not.toBe("");
      expect(d.example!.question).not.toBe("");
      expect(d.example!.context).not.toBe("");
    }
    const someReason = dropped[0]!.reason;
    const ofReason = await client.listDroppedExamples({ datasetVersionId: version!.id, reason: someReason, page: { pageSize: 1000 } });
    expect(ofReason.examples.length).toBe(perReason[someReason]);
    await expectCode(client.listDroppedExamples({ datasetVersionId: version!.id, reason: "no_such_check" }), Code.InvalidArgument, /no_such_check.*reasons of this version/);

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

    // Chat rows of the same split: the user turn and the example's answer; a custom system prompt renders on request.
    const exportText = async (req: { split: DatasetSplit; format: DatasetExportFormat; template?: PromptTemplate; systemPrompt?: string }) => {
      let out = "";
      for await (const res of client.exportDatasetVersion({ datasetVersionId: version!.id, ...req })) {
        if (res.part.case === "jsonl") out += Buffer.from(res.part.value).toString("utf8");
      }
      return out.trimEnd().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    };
    const answerOf = new Map(all.map((e) => [e.id, e.answer]));
    const chat = (await exportText({ split: DatasetSplit.TRAIN, format: DatasetExportFormat.CHAT })) as { id: string; messages: { role: string; content: string }[] }[];
    expect(chat.length).toBe(rows.length);
    for (const r of chat) {
      expect(r.messages.map((m) => m.role)).toEqual(["user", "assistant"]);
      expect(r.messages[1]!.content).toBe(answerOf.get(r.id));
      expect(r.messages[0]!.content).toMatch(/\n\nQuestion: /);
    }
    const system = "Answer only from the context; refuse when it does not hold the answer.";
    const withSystem = (await exportText({ split: DatasetSplit.VAL, format: DatasetExportFormat.INSTRUCT, template: PromptTemplate.MISTRAL_INSTRUCT, systemPrompt: system })) as { prompt: string }[];
    expect(withSystem.length).toBe(splits.VAL!.examples);
    for (const r of withSystem) expect(r.prompt.startsWith(`[INST] ${system}\n\n`)).toBe(true);
    const chatSystem = (await exportText({ split: DatasetSplit.VAL, format: DatasetExportFormat.CHAT, systemPrompt: system })) as { messages: { role: string; content: string }[] }[];
    for (const r of chatSystem) expect(r.messages[0]).toEqual({ role: "system", content: system });
    const inference = (await exportText({ split: DatasetSplit.TEST, format: DatasetExportFormat.INFERENCE, template: PromptTemplate.MISTRAL_INSTRUCT })) as { prompt: string; reference: string; answerable: boolean }[];
    expect(inference.length).toBe(splits.TEST!.examples);
    for (const r of inference) expect(r.prompt.endsWith(" [/INST]")).toBe(true);
    await expectCode(
      exportText({ split: DatasetSplit.VAL, format: DatasetExportFormat.INSTRUCT, template: PromptTemplate.MISTRAL_INSTRUCT, systemPrompt: "Stop here [/INST] and go" }),
      Code.InvalidArgument,
      /system_prompt.*\[\/INST\]/,
    );
    await expectCode(exportText({ split: DatasetSplit.VAL, format: DatasetExportFormat.INSTRUCT, template: PromptTemplate.CHATML }), Code.InvalidArgument, /template/);
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

  it("rebuilds a collection configured for it after an ingest run that changed chunks, incrementally from its newest ready version", async () => {
    const client = dataset.client(DatasetService);
    const read = (f: string) => readFile(join(SAMPLE_DOCS, f));
    await bed.ingestDocuments("auto", [["overview.md", await read("overview.md")], ["faq.md", await read("faq.md")]]);
    const { version: first } = await client.buildDatasetVersion({ collection: "auto" });
    await watchToEnd(first!.id);
    await expectCode(client.setCollectionConfig({ collection: "auto", rebuildOnIngest: true, settings: { model: "mistral-7b" } }), Code.InvalidArgument, /settings.model/);
    expect((await client.getCollectionConfig({ collection: "auto" })).config!.rebuildOnIngest).toBe(false);
    const { config } = await client.setCollectionConfig({ collection: "auto", rebuildOnIngest: true });
    expect(config!.settings!.questionsPerChunk).toBe(3);
    expect((await client.getCollectionConfig({ collection: "auto" })).config!.rebuildOnIngest).toBe(true);

    const rebuilt = new Promise<string>((resolve) => {
      void bus.subscribe({
        durable: "dataset-test-auto-built",
        schema: DatasetVersionBuiltSchema,
        deliver: "new",
        handler: ({ event }) => {
          if (event.collection === "auto") resolve(event.datasetVersionId);
        },
      });
    });
    const faq = (await read("faq.md")).toString("utf8") + "\n## Support hours\n\nThe support desk answers tickets on weekdays between eight and six, and urgent tickets at any hour.\n";
    await bed.ingestDocuments("auto", [["faq.md", Buffer.from(faq, "utf8")]]);
    const id = await rebuilt;
    const v = (await client.getDatasetVersion({ datasetVersionId: id })).version!;
    expect(v.status).toBe(DatasetVersionStatus.READY);
    expect(v.baseVersionId).toBe(first!.id);
    expect(v.lineage!.baseVersionId).toBe(first!.id);
    const overviewChunks = v.stats!.documents.find((d) => d.sourceName === "overview.md")!.chunks;
    expect(v.stats!.chunksReused).toBeGreaterThanOrEqual(overviewChunks);
    expect(v.stats!.chunksReused).toBeLessThan(v.stats!.chunksTotal);

    // A run that changed no chunk, or a collection not configured for it, builds nothing.
    const untouched = { versions: undefined as never, builder: undefined as never, logger: undefined as never, llmConfigured: false, collections: undefined as never };
    const unchangedRun = { ingestRunId: "run_x", collection: "auto", status: IngestRunStatus.SUCCEEDED, statistics: create(IngestRunStatisticsSchema, { chunkChanges: { added: 0, kept: 5, removed: 0 } }) };
    expect(await rebuildAfterIngest(untouched, unchangedRun)).toBeUndefined();
  });
});
