import type { EvalModelSummary } from "@ragtune/proto";
import { errorText, gateway, when } from "./api.js";
import { badge, fill, h, link, num, pct, section, table } from "./dom.js";
import type { PageContext } from "./main.js";

type Metric = [label: string, value: (m: EvalModelSummary) => string];

const est = (e: { value: number; ciLow: number; ciHigh: number } | undefined) => (e === undefined ? "–" : `${pct(e.value)} [${pct(e.ciLow)}, ${pct(e.ciHigh)}]`);

const METRICS: Metric[] = [
  ["success rate", (m) => pct(m.successRate)],
  ["truthfulness (95% CI)", (m) => (m.calibration?.truthfulness === undefined ? "–" : `${num(m.calibration.truthfulness.value)} [${num(m.calibration.truthfulness.ciLow)}, ${num(m.calibration.truthfulness.ciHigh)}]`)],
  ["answered, answerable (95% CI)", (m) => est(m.calibration?.answerRateAnswerable)],
  ["false answers, unanswerable (95% CI)", (m) => est(m.calibration?.falseAnswerRate)],
  ["over-refusal (95% CI)", (m) => est(m.calibration?.overRefusalRate)],
  ["token F1", (m) => num(m.tokenF1)],
  ["ROUGE-L", (m) => num(m.rougeL)],
  ["exact match", (m) => num(m.exactMatch)],
  ["grounding", (m) => num(m.grounding)],
  ["answer rate", (m) => pct(m.answerRate)],
  ["empty", (m) => pct(m.emptyRate)],
  ["cut off at max tokens", (m) => pct(m.lengthCutoffRate)],
  ["invented follow-ups", (m) => pct(m.followUpRate)],
  ["degenerate", (m) => pct(m.degenerateRate)],
  ["mean answer words", (m) => num(m.meanAnswerWords, 1)],
  ["latency p50 / p95 (s)", (m) => `${num(m.latencyP50, 2)} / ${num(m.latencyP95, 2)}`],
  ["tokens per second", (m) => num(m.tokensPerSecond, 0)],
  ["failed requests", (m) => String(m.failed)],
];

/** An eval run: base and adapters side by side with confidence intervals, breakdowns, gates, per-item answers; promote. */
export async function evalRunPage({ root }: PageContext, evalRunId: string): Promise<void> {
  const res = await gateway.getEvalRunReport({ evalRunId });
  root.append(
    h("h1", {}, `Eval run ${res.evalRunId}`),
    h("p", {}, "Status ", badge(res.status), " · collection ", link(`#/c/${encodeURIComponent(res.collection)}`, res.collection)),
  );
  const report = res.report;
  if (report === undefined) {
    root.append(h("p", {}, "The report is there once the run succeeded."));
    return;
  }
  const models = [...report.models].sort((a, b) => Number(b.isBase) - Number(a.isBase));
  root.append(
    h("p", {}, `${report.items} items: ${report.answerable} answerable, ${report.unanswerable} unanswerable. Success: ${report.successRule}`),
    section(
      "Models side by side",
      table(
        ["metric", ...models.map((m) => `${m.model}${m.isBase ? " (base)" : " (adapter)"}`)],
        METRICS.map(([label, f]) => [label, ...models.map((m) => f(m))]),
        { id: "model-metrics" },
      ),
    ),
    section(
      "Adapter − base (95% paired bootstrap CI)",
      table(
        ["model", "metric", "Δ", "CI", ""],
        report.differences.map((d) => [d.model, d.metric, num(d.delta), `[${num(d.ciLow)}, ${num(d.ciHigh)}]`, ciBar(d.delta, d.ciLow, d.ciHigh)]),
        { id: "differences" },
      ),
    ),
    section(
      "Gates",
      h("p", { id: "gates-verdict", "data-passed": String(report.gatesPassed) }, report.gatesPassed ? "Every gate passed." : "Not every gate passed."),
      table(
        ["gate", "model", "rule", "value", "verdict"],
        report.gates.map((g) => [g.name, g.model, g.rule, num(g.value), h("span", { class: g.passed ? "pass" : "fail" }, g.passed ? "pass" : "FAIL")]),
        { id: "gates" },
      ),
      await promoteForm(res.collection, res.evalRunId, models.filter((m) => !m.isBase).map((m) => m.model)),
    ),
    section(
      "Breakdowns",
      table(
        ["dimension", "value", "model", "items", "success", "token F1", "answered", "Δ success (CI)"],
        report.breakdowns.map((b) => [
          b.dimension,
          b.value,
          b.model,
          b.items,
          pct(b.successRate),
          num(b.tokenF1),
          pct(b.answerRate),
          b.deltaSuccess === undefined ? "–" : `${num(b.deltaSuccess)} [${num(b.deltaCiLow ?? NaN)}, ${num(b.deltaCiHigh ?? NaN)}]`,
        ]),
        { id: "breakdowns" },
      ),
    ),
    itemBrowser(res.evalRunId, models.map((m) => m.model)),
  );
}

/** A horizontal interval around zero: where the difference and its CI lie. */
function ciBar(delta: number, low: number, high: number): SVGSVGElement {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", "160");
  svg.setAttribute("height", "14");
  const x = (v: number) => String(80 + Math.max(-1, Math.min(1, v)) * 78);
  const line = (x1: string, x2: string, y1: string, y2: string, color: string, width = "1") => {
    const l = document.createElementNS(ns, "line");
    Object.entries({ x1, x2, y1, y2, stroke: color, "stroke-width": width }).forEach(([k, v]) => l.setAttribute(k, v));
    svg.append(l);
  };
  line("80", "80", "0", "14", "#999");
  line(x(low), x(high), "7", "7", high < 0 ? "#c0392b" : low > 0 ? "#2a8f4e" : "#555", "3");
  line(x(delta), x(delta), "2", "12", "#000", "2");
  return svg;
}

async function promoteForm(collection: string, evalRunId: string, adapters: string[]): Promise<HTMLElement> {
  const jobs = (await gateway.listCollectionJobs({ collection, page: { pageSize: 1000 } })).jobs;
  const result = h("p", { id: "promote-result", role: "status" });
  const force = h("input", { type: "checkbox", id: "promote-force" });
  const buttons = adapters.map((model) => {
    // An adapter is evaluated under its served name `<collection>-<job ID>@<content digest>` (gateway promotions.ts).
    const servedAs = (jobId: string) => `${nameablePart(collection || "adapter")}-${nameablePart(jobId)}@`;
    const job = jobs.find((j) => j.adapterId === model || j.jobId === model || model.startsWith(servedAs(j.jobId)));
    return h(
      "button",
      {
        class: "promote",
        "data-model": model,
        disabled: job === undefined,
        onclick: async () => {
          fill(result, "Promoting…");
          try {
            const { adapter } = await gateway.promoteAdapter({ collection, jobId: job!.jobId, evalRunId, force: force.checked });
            result.dataset.outcome = "promoted";
            fill(result, `Promoted: ${adapter?.adapterId} now serves ${collection}${adapter?.forced ? " (forced past the gates)" : ""} since ${when(adapter?.promotedAt)}.`);
          } catch (err) {
            result.dataset.outcome = "refused";
            fill(result, `Not promoted — ${errorText(err)}`);
          }
        },
      },
      `Promote ${model}`,
    );
  });
  return h("div", { class: "promote-form" }, buttons, " ", h("label", {}, force, " force (promote without passed gates: for demonstrating the mechanism only)"), result);
}

function itemBrowser(evalRunId: string, models: string[]): HTMLElement {
  const failuresOnly = h("input", { type: "checkbox", id: "failures-only", checked: true });
  const out = h("div", { id: "items" });
  const count = h("span", { id: "items-count" });
  let pageToken = "";
  const more = h("button", { onclick: () => void load(false) }, "More");
  const load = async (reset: boolean) => {
    if (reset) {
      pageToken = "";
      fill(out);
    }
    const res = await gateway.listEvalRunItems({ evalRunId, failuresOnly: failuresOnly.checked, page: { pageSize: 20, pageToken } });
    fill(count, `${res.page?.totalSize ?? res.results.length} items${failuresOnly.checked ? " some model failed" : ""}`);
    for (const r of res.results) {
      out.append(
        h(
          "div",
          { class: "item" },
          h("div", { class: "meta" }, `${r.itemId} · ${r.answerable ? "answerable" : "unanswerable"} · ${r.questionType} · ${r.sourceDocument}`),
          h("div", {}, h("strong", {}, "Q: "), r.question),
          h("div", {}, h("strong", {}, "Reference: "), r.reference),
          res.contexts[r.itemId] === undefined
            ? h("div", { class: "meta" }, "no context (the run is not over a dataset version)")
            : h("details", { class: "context" }, h("summary", {}, "Context"), h("div", { class: "context-text" }, res.contexts[r.itemId]!)),
          h(
            "div",
            { class: "answers" },
            models.map((model) => {
              const a = r.answers.find((x) => x.model === model);
              return h(
                "div",
                { class: `answer ${a?.success ? "ok" : "bad"}` },
                h("div", { class: "meta" }, `${model}: ${a === undefined ? "no answer" : a.success ? "success" : "failed"}${a ? ` · F1 ${num(a.tokenF1)}${a.refused ? " · refused" : ""}${a.error ? ` · ${a.error}` : ""}` : ""}`),
                h("div", {}, a?.text ?? ""),
              );
            }),
          ),
        ),
      );
    }
    pageToken = res.page?.nextPageToken ?? "";
    more.hidden = pageToken === "";
  };
  failuresOnly.addEventListener("change", () => void load(true));
  void load(true);
  return section("Per-item answers", h("p", {}, h("label", {}, failuresOnly, " failures only"), " · ", count), out, more);
}

/** A collection or job ID as it appears in a served adapter name (servedNameOf in the gateway's promotions.ts). */
function nameablePart(s: string): string {
  return s.replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 64) || "_";
}
