import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { DatasetService, DatasetSplit, DatasetVersionStatus, EvalRunStatus, EvalService, ExampleKind, PromptTemplate } from "@ragtune/proto";
import { startTestService } from "@ragtune/rpc";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SAMPLE_DOCS } from "../../dataset/test/sample-chunks.js";
import { type DatasetTestbed, startDatasetTestbed } from "../../dataset/test/testbed.js";
import { evalConfigSchema } from "../src/config.js";
import { startEvalService } from "../src/server.js";
import { startLoopbackEndpoint, type LoopbackEndpoint } from "./loopback-endpoint.js";

let bed: DatasetTestbed;
let endpoint: LoopbackEndpoint;
let versionId: string;
const references = new Map<string, string>();

beforeAll(async () => {
  bed = await startDatasetTestbed();
  const files = (await readdir(SAMPLE_DOCS)).sort();
  await bed.ingestDocuments("docs", await Promise.all(files.map(async (f) => [f, await readFile(join(SAMPLE_DOCS, f))] as [string, Uint8Array])));
  const datasets = bed.dataset.client(DatasetService);
  const { version } = await datasets.buildDatasetVersion({ collection: "docs" });
  for await (const res of datasets.watchDatasetVersion({ datasetVersionId: version!.id })) void res;
  const ready = (await datasets.getDatasetVersion({ datasetVersionId: version!.id })).version!;
  expect(ready.status, ready.failure?.message).toBe(DatasetVersionStatus.READY);
  versionId = ready.id;
  // The test export's rows: prompt → the trained completion (the reference and the EOS).
  let text = "";
  for await (const res of datasets.exportDatasetVersion({ datasetVersionId: versionId, split: DatasetSplit.TEST, template: PromptTemplate.MISTRAL_INSTRUCT })) {
    if (res.part.case === "jsonl") text += new TextDecoder().decode(res.part.value);
  }
  for (const line of text.split("\n").filter(Boolean)) {
    const row = JSON.parse(line) as { prompt: string; completion: string };
    references.set(row.prompt, row.completion.replace(/<\/s>$/, ""));
  }
  // The adapter answers each prompt with its reference; the base model with newline garbage.
  endpoint = await startLoopbackEndpoint({
    "tiny-base": () => ({ text: "\n\n\n\n" }),
    "docs-adapter": (_q, body) => ({ text: references.get(String(body["prompt"])) ?? "" }),
  });
}, 180_000);

afterAll(async () => {
  await endpoint?.close();
  await bed?.close();
});

describe("eval over a dataset version", () => {
  it("reads the test split through the dataset API, sends the training template's prompts, and reports per question type and document", async () => {
    const service = await startTestService({
      definition: { name: "eval", schema: evalConfigSchema, start: startEvalService },
      nats: bed.nats,
      env: { LLM_BASE_URL: endpoint.url, EVAL_DATASET_URL: bed.dataset.url },
    });
    try {
      const client = service.client(EvalService);
      const { run: created } = await client.createEvalRun({ source: { case: "datasetVersionId", value: versionId }, baseModel: "tiny-base", adapters: ["docs-adapter"] });
      for await (const res of client.watchEvalRun({ evalRunId: created!.id })) void res;
      const run = (await client.getEvalRun({ evalRunId: created!.id })).run!;
      expect(run.status, run.failure?.message).toBe(EvalRunStatus.SUCCEEDED);

      const datasets = bed.dataset.client(DatasetService);
      const { examples } = await datasets.listExamples({ datasetVersionId: versionId, split: DatasetSplit.TEST, page: { pageSize: 1000 } });
      expect(run.items).toBe(examples.length);
      expect(run.collection).toBe("docs");
      expect((await client.listEvalRuns({ collection: "docs" })).runs.map((r) => r.id)).toEqual([run.id]);
      expect(run.report!.unanswerable).toBe(examples.filter((e) => e.kind === ExampleKind.UNANSWERABLE).length);

      // Every completion prompt is exactly a prompt of the version's test export (the training template).
      const sent = endpoint.requests.filter((r) => r.body["model"] === "docs-adapter").map((r) => r.body["prompt"] as string);
      expect(sent).toHaveLength(examples.length);
      for (const prompt of sent) expect(references.has(prompt), prompt.slice(0, 80)).toBe(true);

      const adapter = run.report!.models.find((m) => m.model === "docs-adapter")!;
      expect(adapter.successRate).toBe(1);
      expect(adapter.grounding).toBeGreaterThan(0.9);
      const types = new Set(run.report!.breakdowns.filter((b) => b.dimension === "question_type").map((b) => b.value));
      expect(types.has("unanswerable")).toBe(true);
      expect([...types].some((t) => t === "factual" || t === "conceptual" || t === "comparison")).toBe(true);
      expect(run.report!.breakdowns.filter((b) => b.dimension === "source_document" && b.value !== "unknown").length).toBeGreaterThan(0);
    } finally {
      await service.stop();
    }
  });
});
