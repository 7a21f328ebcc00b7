/**
 * The form that creates a training job of a collection: a pipeline run of the TRAIN stage alone on a READY dataset
 * version (StartPipelineRun), followed on the run's stream until its train stage names the trainer job, then the
 * job's page.
 */
import { create } from "@bufbuild/protobuf";
import { PipelineRunStatus, PipelineSpecSchema, PipelineStage, type PipelineStageState } from "@ragtune/proto";
import { errorText, gateway, isAborted } from "./api.js";
import { fill, h, link, section } from "./dom.js";

const TERMINAL = new Set([PipelineRunStatus.SUCCEEDED, PipelineRunStatus.FAILED, PipelineRunStatus.CANCELLED]);

/** `readyVersions`: the collection's READY dataset version IDs, newest first. */
export function jobCreateForm(collection: string, readyVersions: string[], signal: AbortSignal): HTMLElement {
  const field = (id: string, label: string, input: HTMLElement) => h("p", {}, h("label", { for: id }, label), " ", input);
  const version = h("select", { id: "job-dataset-version" }, readyVersions.map((v) => h("option", { value: v }, v)));
  const baseModel = h("input", { id: "job-base-model", size: 60, placeholder: "the base model's folder (empty: the gateway's GATEWAY_PIPELINE_BASE_MODEL)" });
  const steps = h("input", { id: "job-max-steps", type: "number", min: 1, step: 1, value: 40, required: true });
  const learningRate = h("input", { id: "job-learning-rate", type: "number", min: 0, step: "any", value: "0.0002", required: true });
  const result = h("p", { id: "create-job-result", role: "status" });
  const submit = h("button", { type: "submit", id: "create-job", disabled: readyVersions.length === 0 }, "Create job");

  const follow = async (pipelineRunId: string, initial: PipelineStageState[]): Promise<void> => {
    const jobOf = (stages: PipelineStageState[]) => stages.find((s) => s.stage === PipelineStage.TRAIN && s.resourceId !== "")?.resourceId;
    const started = jobOf(initial);
    if (started !== undefined) {
      location.hash = `#/job/${started}`;
      return;
    }
    fill(result, "Run ", link(`#/pipeline/${pipelineRunId}`, pipelineRunId), " started; waiting for its training job…");
    result.dataset.state = "waiting";
    for await (const { event } of gateway.watchPipelineRun({ pipelineRunId }, { signal })) {
      const e = event?.event;
      if (e?.case === "stageChanged") {
        const jobId = jobOf([e.value]);
        if (jobId !== undefined) {
          location.hash = `#/job/${jobId}`;
          return;
        }
        if (e.value.stage === PipelineStage.TRAIN && e.value.failure !== undefined) {
          throw new Error(`the train stage failed: ${e.value.failure.message}`);
        }
      }
      if (e?.case === "statusChanged" && TERMINAL.has(e.value.status)) {
        throw new Error(`the run ended ${PipelineRunStatus[e.value.status]?.toLowerCase()} before it created a job${e.value.failure ? `: ${e.value.failure.message}` : ""}`);
      }
    }
    throw new Error("the run's stream ended before it created a job");
  };

  const form = h(
    "form",
    {
      id: "create-job-form",
      onsubmit: async (ev: Event) => {
        ev.preventDefault();
        submit.disabled = true;
        const spec = create(PipelineSpecSchema, {
          stages: [PipelineStage.TRAIN],
          datasetVersionId: version.value,
          baseModel: baseModel.value.trim(),
          hyperparameters: { duration: { case: "maxSteps", value: Number(steps.value) }, learningRate: Number(learningRate.value) },
        });
        fill(result, "Starting…");
        let runId = "";
        try {
          const { run } = await gateway.startPipelineRun({ collection, spec, clientRequestId: crypto.randomUUID() }, { signal });
          runId = run!.id;
          await follow(runId, run!.stages);
        } catch (err) {
          if (signal.aborted || isAborted(err)) return;
          result.dataset.state = "failed";
          fill(result, "No job — ", err instanceof Error && !("code" in err) ? err.message : errorText(err), runId === "" ? "" : h("span", {}, " (run ", link(`#/pipeline/${runId}`, runId), ")"));
          submit.disabled = false;
        }
      },
    },
    readyVersions.length === 0 ? h("p", { class: "note" }, "No READY dataset version to train on yet.") : null,
    field("job-dataset-version", "Dataset version", version),
    field("job-base-model", "Base model", baseModel),
    field("job-max-steps", "Steps", steps),
    field("job-learning-rate", "Learning rate", learningRate),
    submit,
    result,
  );
  return section("Create a training job", form);
}
