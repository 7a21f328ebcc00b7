import { DatasetSplit, ExampleKind } from "@ragtune/proto";
import { gateway, when } from "./api.js";
import { barChart } from "./charts.js";
import { badge, fill, h, link, num, section, table } from "./dom.js";
import type { PageContext } from "./main.js";

const splitName = (s: DatasetSplit) => (DatasetSplit[s] ?? String(s)).toLowerCase();
const kindName = (k: ExampleKind) => (ExampleKind[k] ?? String(k)).toLowerCase();

/** A dataset version: counts per split and kind, dropped examples per reason, token lengths, examples with filters, lineage. */
export async function datasetVersionPage({ root }: PageContext, datasetVersionId: string): Promise<void> {
  const { version } = await gateway.getCollectionDatasetVersion({ datasetVersionId });
  if (version === undefined) throw new Error(`dataset version ${datasetVersionId} not found`);
  const stats = version.stats;
  const dropped = Object.entries(stats?.rejectedByCheck ?? {}).sort((a, b) => b[1] - a[1]);
  const splits = stats?.splits ?? [];
  root.append(
    h("h1", {}, `Dataset version ${version.datasetVersionId}`),
    h(
      "p",
      {},
      "Status ",
      badge(version.status),
      " · collection ",
      link(`#/c/${encodeURIComponent(version.collection)}`, version.collection),
      ` · generator ${version.generator || "–"} · created ${when(version.createdAt)}`,
      version.baseVersionId ? h("span", {}, " · built on ", link(`#/dataset/${version.baseVersionId}`, version.baseVersionId)) : null,
    ),
    version.failure ? h("p", { class: "error" }, version.failure.message) : "",
    section(
      "Counts",
      table(
        ["split", "examples", "answerable", "unanswerable", "tokens min", "median", "mean", "max"],
        splits.map((s) => [splitName(s.split), s.examples, s.answerable, s.unanswerable, s.tokenStats?.min ?? "–", s.tokenStats?.median ?? "–", num(s.tokenStats?.mean ?? NaN, 1), s.tokenStats?.max ?? "–"]),
        { id: "split-counts" },
      ),
      h("p", {}, `Chunks ${stats?.chunksTotal ?? 0} (${stats?.chunksReused ?? 0} reused, ${stats?.chunksFailed ?? 0} failed) · generated ${stats?.generated ?? 0} · LLM tokens ${stats?.promptTokens ?? 0n} prompt / ${stats?.completionTokens ?? 0n} completion`),
      Object.keys(stats?.examplesByQuestionType ?? {}).length > 0
        ? table(["question type", "examples"], Object.entries(stats!.examplesByQuestionType).map(([k, v]) => [k, v]), { id: "question-types" })
        : null,
    ),
    section(
      "Dropped examples per reason",
      dropped.length === 0 ? h("p", {}, "Nothing dropped.") : barChart("dropped by check", dropped.map(([k]) => k), dropped.map(([, v]) => v), { id: "dropped-chart", stroke: "#b5532a" }),
      table(["reason", "examples"], dropped.map(([k, v]) => [k, v]), { id: "dropped" }),
    ),
    section(
      "Token lengths per split (prompt + completion)",
      splits.every((s) => s.tokenHistogram.length === 0)
        ? h("p", {}, splits.length === 0 ? "No splits." : "No token histogram (the version was built before histograms were stored); the table above has min/median/mean/max.")
        : h(
            "div",
            { id: "token-histograms" },
            // Every split's buckets share one set of edges (the dataset service's stats), one chart each.
            splits.map((s) =>
              h(
                "div",
                { class: "token-histogram", "data-split": splitName(s.split), "data-total": s.tokenHistogram.reduce((n, b) => n + b.count, 0), "data-buckets": s.tokenHistogram.length },
                barChart(
                  `${splitName(s.split)}: examples per token count (bucket width ${s.tokenHistogram[0] === undefined ? "–" : s.tokenHistogram[0].upper - s.tokenHistogram[0].lower})`,
                  s.tokenHistogram.map((b) => String(b.lower)),
                  s.tokenHistogram.map((b) => b.count),
                  { id: `token-histogram-${splitName(s.split)}` },
                ),
              ),
            ),
          ),
    ),
    section(
      "Source documents",
      table(
        ["document", "chunks", "examples", "answerable", "unanswerable", "dropped"],
        (stats?.documents ?? []).map((d) => [link(`#/doc/${d.documentId}`, d.sourceName || d.documentId), d.chunks, d.examples, d.answerable, d.unanswerable, d.dropped]),
        { id: "source-documents" },
      ),
    ),
  );
  root.append(exampleBrowser(version.datasetVersionId, dropped.map(([k]) => k)));
}

function exampleBrowser(datasetVersionId: string, reasons: string[]): HTMLElement {
  const split = h("select", { id: "filter-split" }, h("option", { value: "0" }, "every split"), [DatasetSplit.TRAIN, DatasetSplit.VAL, DatasetSplit.TEST].map((s) => h("option", { value: String(s) }, splitName(s))));
  const kind = h("select", { id: "filter-kind" }, h("option", { value: "0" }, "every kind"), [ExampleKind.ANSWERABLE, ExampleKind.UNANSWERABLE].map((k) => h("option", { value: String(k) }, kindName(k))));
  const reason = h("select", { id: "filter-dropped" }, h("option", { value: "" }, "kept examples"), h("option", { value: "*" }, "dropped: every reason"), reasons.map((r) => h("option", { value: r }, `dropped: ${r}`)));
  const out = h("div", { id: "examples" });
  let pageToken = "";
  const more = h("button", { id: "more-examples", onclick: () => void load(false) }, "More");
  const load = async (reset: boolean) => {
    if (reset) {
      pageToken = "";
      fill(out);
    }
    const cards: HTMLElement[] = [];
    let next = "";
    if (reason.value === "") {
      const res = await gateway.listDatasetExamples({ datasetVersionId, split: Number(split.value), kind: Number(kind.value), page: { pageSize: 25, pageToken } });
      for (const e of res.examples) cards.push(exampleCard(e.question, e.answer, e.context, `${splitName(e.split)} · ${kindName(e.kind)} · ${e.questionType} · ${e.headingPath.join(" › ")} · chunk ${e.sourceChunkId}${e.contextChunkIds.length > 1 ? ` (context: ${e.contextChunkIds.join(", ")})` : ""}`, e.sourceDocumentId));
      next = res.page?.nextPageToken ?? "";
    } else {
      const res = await gateway.listDatasetDroppedExamples({ datasetVersionId, reason: reason.value === "*" ? "" : reason.value, page: { pageSize: 25, pageToken } });
      for (const d of res.examples) {
        const e = d.example;
        cards.push(exampleCard(e?.question ?? "", e?.answer ?? "", e?.context ?? "", `dropped by ${d.reason}: ${d.detail}`, e?.sourceDocumentId ?? ""));
      }
      next = res.page?.nextPageToken ?? "";
    }
    if (reset && cards.length === 0) out.append(h("p", {}, "No examples match."));
    out.append(...cards);
    pageToken = next;
    more.hidden = next === "";
  };
  for (const s of [split, kind, reason]) s.addEventListener("change", () => void load(true));
  void load(true);
  return section("Examples", h("p", { class: "filters" }, split, " ", kind, " ", reason), out, more);
}

function exampleCard(question: string, answer: string, context: string, meta: string, documentId: string): HTMLElement {
  return h(
    "div",
    { class: "example" },
    h("div", { class: "meta" }, meta, documentId ? h("span", {}, " · ", link(`#/doc/${documentId}`, "source")) : null),
    h("div", {}, h("strong", {}, "Q: "), question),
    h("div", {}, h("strong", {}, "A: "), answer),
    context ? h("details", {}, h("summary", {}, "context"), h("pre", {}, context)) : null,
  );
}
