/**
 * Document lineage over warm starts (unit: the upstream services are stand-ins). An adapter warm-started from one that
 * trained on a document holds the document in its weights even when its own dataset version no longer has it.
 */
import { create } from "@bufbuild/protobuf";
import { createContextValues } from "@connectrpc/connect";
import { DatasetVersionSchema, DocumentSchema, type GetDocumentLineageResponse, type Job, JobSchema, JobStatus, PromotionRecordSchema } from "@ragtune/proto";
import { describe, expect, it } from "vitest";
import { createReadApis, type ReadApiDeps } from "../src/read-apis.js";

const job = (id: string, version: string, from = "", status = JobStatus.SUCCEEDED): Job =>
  create(JobSchema, { id, collection: "docs", status, dataset: { case: "datasetVersionId", value: version }, initAdapterJobId: from, adapter: { id: `adapter-${id}` } });

describe("GetDocumentLineage", () => {
  it("lists the adapters trained on the document and those warm-started from them, naming the ancestor", async () => {
    const jobs = [
      job("j1", "v1"), // v1 has the document
      job("j2", "v2", "j1"), // v2 does not: holds it through j1
      job("j3", "v3", "j2"), // through j1, two starts away
      job("j4", "v2"), // v2, from the base: never saw it
      job("j5", "v2", "j1", JobStatus.FAILED), // no adapter
      job("j6", "v1", "j4"), // its own version has it
    ];
    const deps = {
      ingest: { getDocument: async () => ({ document: create(DocumentSchema, { id: "doc-1", collection: "docs", sourceName: "faq.md" }) }) },
      dataset: {
        listDatasetVersions: async () => ({
          versions: ["v1", "v2", "v3"].map((id) =>
            create(DatasetVersionSchema, { id, collection: "docs", lineage: { documents: id === "v1" ? [{ documentId: "doc-1", contentSha256: "ab" }] : [] } }),
          ),
        }),
      },
      trainer: { listJobs: async () => ({ jobs }) },
      promotions: { record: async () => create(PromotionRecordSchema, { collection: "docs", history: [{ jobId: "j3" }] }) },
    } as unknown as ReadApiDeps;
    const apis = createReadApis(deps);
    const res = (await apis.getDocumentLineage!({ $typeName: "ragtune.gateway.v1.GetDocumentLineageRequest", documentId: "doc-1" }, { values: createContextValues() } as never)) as GetDocumentLineageResponse;
    expect(res.datasetVersions.map((v) => v.datasetVersionId)).toEqual(["v1"]);
    expect(res.adapters.map((a) => [a.jobId, a.viaJobId, a.serving])).toEqual([
      ["j1", "", false],
      ["j2", "j1", false],
      ["j3", "j1", true],
      ["j6", "", false],
    ]);
  });
});
