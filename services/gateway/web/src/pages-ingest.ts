import { DocumentStatus, IngestRunStatus } from "@ragtune/proto";
import { errorText, gateway, isAborted } from "./api.js";
import { badge, fill, h } from "./dom.js";
import type { PageContext } from "./main.js";

/** An ingest run followed live: each document's result as it is chunked, then the run's summary. */
export async function ingestRunPage({ root, signal }: PageContext, runId: string): Promise<void> {
  const status = h("span", { id: "ingest-status" }, badge("STATUS_QUEUED"));
  const progress = h("progress", { id: "ingest-progress", max: 1, value: 0 });
  const rows = new Map<number, HTMLTableRowElement>();
  const body = h("tbody", {});
  const summary = h("p", { id: "ingest-summary" });
  const live = h("span", { id: "stream-state", "data-state": "connecting" }, "connecting…");
  root.append(
    h("h1", {}, `Ingest run ${runId}`),
    h("p", {}, "Status ", status, " ", progress, " · live: ", live),
    h("table", { id: "ingest-documents" }, h("thead", {}, h("tr", {}, ["#", "document", "status", "chunks", "changes", "error"].map((x) => h("th", {}, x)))), body),
    summary,
  );
  try {
    for await (const { event } of gateway.watchCollectionIngestRun({ runId }, { signal })) {
      fill(live, "streaming");
      live.dataset.state = "streaming";
      const e = event?.event;
      if (e?.case === "statusChanged") fill(status, badge(`STATUS_${IngestRunStatus[e.value.status] ?? e.value.status}`));
      if (e?.case === "documentProgress" && e.value.result) {
        const r = e.value.result;
        const row = rows.get(e.value.index) ?? h("tr", {});
        if (!rows.has(e.value.index)) {
          rows.set(e.value.index, row);
          body.append(row);
        }
        fill(
          row,
          h("td", {}, e.value.index + 1),
          h("td", {}, r.documentId ? h("a", { href: `#/doc/${r.documentId}` }, r.sourceName) : r.sourceName),
          h("td", {}, r.unchanged ? "unchanged" : badge(`STATUS_${DocumentStatus[r.status] ?? r.status}`)),
          h("td", {}, r.chunkCount),
          h("td", {}, r.changes ? `+${r.changes.added} ~${r.changes.kept} −${r.changes.removed}` : ""),
          h("td", { class: "error" }, r.error?.message ?? ""),
        );
        progress.max = Math.max(progress.max, rows.size);
      }
      if (e?.case === "completed") {
        fill(status, badge(`STATUS_${IngestRunStatus[e.value.status] ?? e.value.status}`));
        const st = e.value.statistics;
        const t = st?.tokenStats;
        progress.value = progress.max;
        fill(summary, `${st?.documentsIngested ?? 0} ingested, ${st?.documentsUnchanged ?? 0} unchanged, ${st?.documentsFailed ?? 0} failed; ${t?.count ?? 0} chunks, ${t?.totalTokens ?? 0} tokens (median ${t?.median ?? 0} of ${t?.budget ?? 0} per chunk)`);
      }
    }
    fill(live, "ended");
    live.dataset.state = "ended";
  } catch (err) {
    if (signal.aborted || isAborted(err)) return;
    fill(live, `stream failed — ${errorText(err)}`);
    live.dataset.state = "failed";
  }
}
