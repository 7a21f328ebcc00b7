import { gateway, when } from "./api.js";
import { h, link, section, statusText } from "./dom.js";
import type { PageContext } from "./main.js";

interface Node {
  id: string;
  label: string;
  sub: string;
  href?: string;
}

/** An adapter's lineage as a graph: documents → chunks → dataset version → job → adapter → eval runs → promotions. */
export async function lineagePage({ root }: PageContext, jobId: string): Promise<void> {
  const l = await gateway.getAdapterLineage({ jobId });
  const version = l.datasetVersion;
  const chunksByDoc = new Map((version?.stats?.documents ?? []).map((d) => [d.documentId, d]));
  const columns: Node[][] = [
    l.documents.map((d) => ({ id: `doc:${d.documentId}`, label: d.sourceName || d.documentId, sub: `sha ${d.contentSha256.slice(0, 10)}`, href: `#/doc/${d.documentId}` })),
    l.documents.map((d) => {
      const s = chunksByDoc.get(d.documentId);
      return { id: `chunks:${d.documentId}`, label: `${s?.chunks ?? "?"} chunks`, sub: `${s?.examples ?? "?"} examples`, href: `#/doc/${d.documentId}` };
    }),
    version ? [{ id: "dsv", label: version.datasetVersionId, sub: statusText(version.status), href: `#/dataset/${version.datasetVersionId}` }] : [],
    [{ id: "job", label: l.job?.jobId ?? jobId, sub: statusText(l.job?.status ?? ""), href: `#/job/${jobId}` }],
    [{ id: "adapter", label: l.job?.adapterId || "(no adapter yet)", sub: l.job?.baseModel.split("/").pop() ?? "" }],
    l.evalRuns.map((r) => ({ id: `eval:${r.evalRunId}`, label: r.evalRunId, sub: `${statusText(r.status)}${r.gatesPassed ? " · gates passed" : ""}`, href: `#/eval/${r.evalRunId}` })),
    l.promotions.map((p, i) => ({ id: `promo:${i}`, label: `promoted ${when(p.promotedAt)}`, sub: `${p.forced ? "forced" : "gated"}${p.pinned ? " · pinned" : ""}` })),
  ];
  const titles = ["documents", "chunks", "dataset version", "job", "adapter", "eval runs", "promotions"];
  root.append(
    h("h1", {}, `Lineage of job ${jobId}`),
    h("p", {}, "Collection ", link(`#/c/${encodeURIComponent(l.collection)}`, l.collection)),
    // A warm start continued an earlier adapter: its own lineage holds the documents that adapter was trained on.
    l.job !== undefined && l.job.initAdapterJobId !== ""
      ? h("p", { id: "warm-start" }, "Warm-started from the adapter of job ", link(`#/lineage/${l.job.initAdapterJobId}`, l.job.initAdapterJobId), " (its lineage)")
      : "",
    section("Graph", graph(columns, titles)),
  );
}

function graph(columns: Node[][], titles: string[]): SVGSVGElement {
  const ns = "http://www.w3.org/2000/svg";
  const boxW = 150;
  const boxH = 40;
  const gapX = 40;
  const gapY = 14;
  const rows = Math.max(1, ...columns.map((c) => c.length));
  const width = columns.length * (boxW + gapX);
  const height = 30 + rows * (boxH + gapY);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("id", "lineage-graph");
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  const el = (tag: string, attrs: Record<string, string | number>, text?: string) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const pos = new Map<string, { x: number; y: number }>();
  columns.forEach((col, ci) => {
    svg.append(el("text", { x: ci * (boxW + gapX) + 4, y: 14, class: "col-title" }, titles[ci] ?? ""));
    col.forEach((n, ri) => pos.set(n.id, { x: ci * (boxW + gapX), y: 24 + ri * (boxH + gapY) }));
  });
  // Edges: every node to every node of the next non-empty column, except documents to their own chunk counts.
  for (let ci = 0; ci < columns.length - 1; ci++) {
    let next = ci + 1;
    while (next < columns.length && columns[next]!.length === 0) next++;
    if (next >= columns.length) break;
    for (const [ri, a] of columns[ci]!.entries()) {
      const targets = ci === 0 ? [columns[1]![ri]!] : columns[next]!;
      for (const b of targets) {
        const p = pos.get(a.id)!;
        const q = pos.get(b.id)!;
        svg.append(el("line", { x1: p.x + boxW, y1: p.y + boxH / 2, x2: q.x, y2: q.y + boxH / 2, stroke: "#98a2b3", "stroke-width": 1.5 }));
      }
    }
  }
  for (const col of columns) {
    for (const n of col) {
      const p = pos.get(n.id)!;
      const g = el("g", { class: "node", "data-node": n.id });
      g.append(el("rect", { x: p.x, y: p.y, width: boxW, height: boxH, rx: 6, fill: "#eef3fb", stroke: "#3b6fb6" }));
      g.append(el("text", { x: p.x + 6, y: p.y + 16, class: "label" }, n.label.length > 22 ? `${n.label.slice(0, 21)}…` : n.label));
      g.append(el("text", { x: p.x + 6, y: p.y + 32, class: "sub" }, n.sub.length > 24 ? `${n.sub.slice(0, 23)}…` : n.sub));
      if (n.href !== undefined) {
        const a = el("a", { href: n.href });
        a.append(g);
        svg.append(a);
      } else svg.append(g);
    }
  }
  return svg;
}
