import { create } from "@bufbuild/protobuf";
import { type PipelineRun, PipelineRunStatus, PipelineSpecSchema, PipelineStage, PipelineStageStatus, type PipelineStageState } from "@ragtune/proto";
import { errorText, gateway, isAborted, when } from "./api.js";
import { badge, fill, h, link, section, table } from "./dom.js";
import type { PageContext } from "./main.js";

const runStatus = (s: PipelineRunStatus) => `PIPELINE_RUN_STATUS_${PipelineRunStatus[s] ?? s}`;
const stageStatus = (s: PipelineStageStatus) => `PIPELINE_STAGE_STATUS_${PipelineStageStatus[s] ?? s}`;
const stageName = (s: PipelineStage) => (PipelineStage[s] ?? String(s)).toLowerCase();
const STAGES = [PipelineStage.INGEST, PipelineStage.DATASET, PipelineStage.TRAIN, PipelineStage.EVAL, PipelineStage.PROMOTE];

/** A collection's pipeline runs and the form that starts one. */
export async function pipelinesPage({ root }: PageContext, collection: string): Promise<void> {
  const { runs } = await gateway.listPipelineRuns({ collection, page: { pageSize: 100 } });
  root.append(
    h("h1", {}, `Pipeline runs of ${collection}`),
    h("p", {}, link(`#/c/${encodeURIComponent(collection)}`, `← ${collection}`)),
    startForm(collection),
    section(
      "Runs",
      table(
        ["run", "status", "stage", "created", "finished"],
        runs.map((r) => [link(`#/pipeline/${r.id}`, r.id), badge(runStatus(r.status)), stageName(r.currentStage), when(r.createdAt), when(r.finishedAt)]),
        { id: "pipeline-runs" },
      ),
    ),
  );
}

function startForm(collection: string): HTMLElement {
  const field = (id: string, label: string, input: HTMLElement) => h("p", {}, h("label", { for: id }, label), " ", input);
  const baseModel = h("input", { id: "spec-base-model", size: 60, placeholder: "the base model's folder (empty: the gateway's default)" });
  const stages = STAGES.map((s) => h("input", { type: "checkbox", value: String(s), checked: s !== PipelineStage.INGEST, "data-stage": stageName(s) }));
  const datasetVersion = h("input", { id: "spec-dataset-version", size: 30, placeholder: "when the run does not build one" });
  const jobId = h("input", { id: "spec-job", size: 30, placeholder: "when the run does not train" });
  const maxSteps = h("input", { id: "spec-max-steps", type: "number", min: 1, value: 40 });
  const evalItems = h("input", { id: "spec-eval-items", type: "number", min: 0, value: 0 });
  const evalTokens = h("input", { id: "spec-eval-tokens", type: "number", min: 1, value: 200 });
  const autoPromote = h("input", { id: "spec-auto-promote", type: "checkbox", checked: true });
  const force = h("input", { id: "spec-force", type: "checkbox" });
  const result = h("p", { id: "start-result", role: "status" });
  return section(
    "Start a run",
    h(
      "form",
      {
        id: "start-pipeline",
        onsubmit: async (ev: Event) => {
          ev.preventDefault();
          const spec = create(PipelineSpecSchema, {
            baseModel: baseModel.value.trim(),
            stages: stages.filter((s) => s.checked).map((s) => Number(s.value) as PipelineStage),
            datasetVersionId: datasetVersion.value.trim(),
            jobId: jobId.value.trim(),
            hyperparameters: { duration: { case: "maxSteps", value: Number(maxSteps.value) } },
            ...(Number(evalItems.value) > 0 ? { evalMaxItems: Number(evalItems.value) } : {}),
            evalSampling: { maxTokens: Number(evalTokens.value) },
            promotion: { autoPromote: autoPromote.checked, force: force.checked },
          });
          fill(result, "Starting…");
          try {
            const { run } = await gateway.startPipelineRun({ collection, spec, clientRequestId: crypto.randomUUID() });
            location.hash = `#/pipeline/${run!.id}`;
          } catch (err) {
            fill(result, `Not started — ${errorText(err)}`);
          }
        },
      },
      h("p", {}, "Stages: ", stages.map((s) => h("label", {}, s, ` ${s.dataset.stage} `))),
      field("spec-base-model", "Base model", baseModel),
      field("spec-dataset-version", "Dataset version", datasetVersion),
      field("spec-job", "Trainer job", jobId),
      field("spec-max-steps", "Training steps", maxSteps),
      field("spec-eval-items", "Eval items (0: the whole test split)", evalItems),
      field("spec-eval-tokens", "Eval answer tokens at most", evalTokens),
      h("p", {}, h("label", {}, autoPromote, " promote when the gates pass"), " ", h("label", {}, force, " force (promote past the gates)")),
      h("button", { type: "submit", id: "start-run" }, "Start run"),
      result,
    ),
  );
}

/** One pipeline run, its stages updated live from the run's event stream. */
export async function pipelineRunPage({ root, signal }: PageContext, pipelineRunId: string): Promise<void> {
  const { run } = await gateway.getPipelineRun({ pipelineRunId });
  if (run === undefined) throw new Error(`pipeline run ${pipelineRunId} not found`);
  const status = h("span", { id: "run-status" }, badge(runStatus(run.status)));
  const failure = h("p", { class: "error", id: "run-failure" }, run.failure?.message ?? "");
  const rows = new Map<PipelineStage, HTMLTableRowElement>();
  const body = h("tbody", {});
  const render = (s: PipelineStageState) => {
    const row = rows.get(s.stage) ?? h("tr", { "data-stage": stageName(s.stage) });
    if (!rows.has(s.stage)) {
      rows.set(s.stage, row);
      body.append(row);
    }
    row.dataset.status = stageStatus(s.status);
    const total = Number(s.progressTotal);
    const done = Number(s.progressDone);
    fill(
      row,
      h("td", {}, stageName(s.stage)),
      h("td", {}, badge(stageStatus(s.status))),
      h("td", {}, total > 0 ? h("progress", { max: total, value: done }) : null, total > 0 ? ` ${done}/${total} ${s.progressUnit}` : ""),
      h("td", {}, resourceLink(s)),
      h("td", {}, s.detail, s.failure ? h("span", { class: "error" }, ` ${s.failure.message}`) : null),
    );
  };
  for (const s of run.stages) render(s);
  const live = h("span", { id: "stream-state", "data-state": "connecting" }, "connecting…");
  root.append(
    h("h1", {}, `Pipeline run ${run.id}`),
    h("p", {}, "Status ", status, " · collection ", link(`#/c/${encodeURIComponent(run.collection)}/pipelines`, run.collection), ` · created ${when(run.createdAt)} · live: `, live),
    failure,
    h("table", { id: "stages" }, h("thead", {}, h("tr", {}, ["stage", "status", "progress", "resource", "detail"].map((x) => h("th", {}, x)))), body),
    h("p", {}, h("button", { id: "cancel-run", onclick: () => void gateway.cancelPipelineRun({ pipelineRunId }).catch((err: unknown) => fill(failure, errorText(err))) }, "Cancel run")),
  );
  if (isTerminal(run)) {
    fill(live, "ended");
    live.dataset.state = "ended";
    return;
  }
  try {
    for await (const { event } of gateway.watchPipelineRun({ pipelineRunId }, { signal })) {
      live.dataset.state = "streaming";
      fill(live, "streaming");
      const e = event?.event;
      if (e?.case === "stageChanged") render(e.value);
      if (e?.case === "statusChanged") {
        fill(status, badge(runStatus(e.value.status)));
        if (e.value.failure) fill(failure, e.value.failure.message);
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

const isTerminal = (r: PipelineRun) => [PipelineRunStatus.SUCCEEDED, PipelineRunStatus.FAILED, PipelineRunStatus.CANCELLED].includes(r.status);

function resourceLink(s: PipelineStageState): HTMLElement | string {
  if (s.resourceId === "") return "";
  switch (s.stage) {
    case PipelineStage.INGEST:
      return link(`#/ingest/${s.resourceId}`, s.resourceId);
    case PipelineStage.DATASET:
      return link(`#/dataset/${s.resourceId}`, s.resourceId);
    case PipelineStage.TRAIN:
      return link(`#/job/${s.resourceId}`, s.resourceId);
    case PipelineStage.EVAL:
      return link(`#/eval/${s.resourceId}`, s.resourceId);
    default:
      return s.resourceId;
  }
}
