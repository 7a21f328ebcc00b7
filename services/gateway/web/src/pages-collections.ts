import { DocumentStatus } from "@ragtune/proto";
import { allPages, gateway, when } from "./api.js";
import { badge, h, link, section, table } from "./dom.js";
import { jobCreateForm } from "./job-create-form.js";
import type { PageContext } from "./main.js";

export async function collectionsPage({ root }: PageContext): Promise<void> {
  const collections = await allPages(async (pageToken) => {
    const res = await gateway.listTenantCollections({ page: { pageSize: 200, pageToken } });
    return { items: res.collections, next: res.page?.nextPageToken ?? "" };
  });
  root.append(
    h("h1", {}, "Collections"),
    collections.length === 0
      ? h("p", { id: "no-collections" }, "This key's tenant has no collections yet.")
      : table(
          ["collection", "documents", "chunks"],
          collections.map((c) => [link(`#/c/${encodeURIComponent(c.name)}`, c.name), c.documentCount, c.chunkCount]),
          { id: "collections" },
        ),
  );
}

export async function collectionPage({ root, signal }: PageContext, collection: string): Promise<void> {
  const [docs, versions, jobs, evals, promoted] = await Promise.all([
    gateway.listCollectionDocuments({ collection, page: { pageSize: 500 } }),
    gateway.listCollectionDatasetVersions({ collection, page: { pageSize: 100 } }),
    gateway.listCollectionJobs({ collection, page: { pageSize: 100 } }),
    gateway.listCollectionEvalRuns({ collection, page: { pageSize: 100 } }),
    gateway.getPromotedAdapter({ collection }),
  ]);
  const serving = promoted.adapter;
  root.append(
    h("h1", {}, `Collection ${collection}`),
    h(
      "p",
      { id: "serving" },
      serving === undefined
        ? "No adapter promoted: the base model answers."
        : h("span", {}, "Serving adapter ", h("strong", {}, serving.adapterId), " of job ", link(`#/job/${serving.jobId}`, serving.jobId), ` since ${when(serving.promotedAt)}${serving.forced ? " (forced)" : ""}${serving.pinned ? " (pinned)" : ""}`),
    ),
    h("p", {}, link(`#/c/${encodeURIComponent(collection)}/pipelines`, "Pipeline runs →")),
    section(
      "Documents",
      table(
        ["document", "status", "chunks", "tokens", "updated"],
        docs.documents.map((d) => [
          link(`#/doc/${d.id}`, d.sourceName || d.title || d.id),
          badge(`STATUS_${DocumentStatus[d.status] ?? d.status}`),
          d.chunkCount,
          d.tokenStats?.totalTokens ?? "–",
          when(d.updatedAt),
        ]),
        { id: "documents" },
      ),
    ),
    section(
      "Dataset versions",
      table(
        ["version", "status", "examples", "dropped", "created"],
        versions.versions.map((v) => [
          link(`#/dataset/${v.datasetVersionId}`, v.datasetVersionId),
          badge(v.status),
          v.stats?.splits.reduce((n, s) => n + s.examples, 0) ?? 0,
          Object.values(v.stats?.rejectedByCheck ?? {}).reduce((n, x) => n + x, 0),
          when(v.createdAt),
        ]),
        { id: "dataset-versions" },
      ),
    ),
    section(
      "Training jobs",
      table(
        ["job", "status", "adapter", "dataset version", ""],
        jobs.jobs.map((j) => [link(`#/job/${j.jobId}`, j.jobId), badge(j.status), j.adapterId || "–", j.datasetVersionId || "files", link(`#/lineage/${j.jobId}`, "lineage")]),
        { id: "jobs" },
      ),
    ),
    jobCreateForm(
      collection,
      versions.versions.filter((v) => v.status === "DATASET_VERSION_STATUS_READY").map((v) => v.datasetVersionId),
      signal,
    ),
    section(
      "Eval runs",
      table(
        ["run", "status", "base", "adapters", "gates", "created"],
        evals.runs.map((r) => [
          link(`#/eval/${r.evalRunId}`, r.evalRunId),
          badge(r.status),
          r.baseModel,
          r.adapters.join(", "),
          !r.hasReport ? "–" : r.gatesPassed ? "passed" : "not passed",
          when(r.createdAt),
        ]),
        { id: "eval-runs" },
      ),
    ),
  );
}

export async function documentPage({ root }: PageContext, documentId: string): Promise<void> {
  const [lineage, chunks] = await Promise.all([
    gateway.getDocumentLineage({ documentId }),
    allPages(async (pageToken) => {
      const res = await gateway.listDocumentChunks({ documentId, page: { pageSize: 500, pageToken } });
      return { items: res.chunks, next: res.page?.nextPageToken ?? "" };
    }),
  ]);
  const d = lineage.document!;
  root.append(
    h("h1", {}, d.sourceName || d.id),
    h("p", {}, "Collection ", link(`#/c/${encodeURIComponent(d.collection)}`, d.collection), ` · ${d.chunkCount} chunks · status `, badge(`STATUS_${DocumentStatus[d.status] ?? d.status}`)),
    section(
      "Used by",
      h("p", {}, `Dataset versions: `, lineage.datasetVersions.length === 0 ? "none" : lineage.datasetVersions.map((v) => h("span", {}, link(`#/dataset/${v.datasetVersionId}`, v.datasetVersionId), " "))),
      h("p", {}, `Adapters: `, lineage.adapters.length === 0 ? "none" : lineage.adapters.map((a) => h("span", {}, link(`#/lineage/${a.jobId}`, a.adapterId || a.jobId), a.serving ? " (serving) " : " "))),
    ),
    section(
      "Chunks",
      table(
        ["#", "heading path", "tokens", "text"],
        chunks.map((c) => [c.ordinal, c.headingPath.join(" › "), c.tokenCount, h("div", { class: "chunk-text" }, c.text)]),
        { id: "chunks" },
      ),
    ),
  );
}
