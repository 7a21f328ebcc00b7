import { toJson } from "@bufbuild/protobuf";
import { type AdapterFileKind, HyperparametersSchema, JobStatus } from "@ragtune/proto";
import { errorText, gateway, isAborted, when } from "./api.js";
import { LiveChart } from "./charts.js";
import { badge, fill, h, link, num, section, table } from "./dom.js";
import type { PageContext } from "./main.js";

const TERMINAL = new Set([JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]);
const TERMINAL_NAMES = new Set([...TERMINAL].map((s) => `JOB_STATUS_${JobStatus[s]}`));
const statusName = (s: JobStatus) => `JOB_STATUS_${JobStatus[s] ?? s}`;

/** A training job: hyperparameters, live loss and learning-rate curves from the job's event stream, checkpoints. */
export async function jobPage({ root, signal }: PageContext, jobId: string): Promise<void> {
  const { job, checkpoints } = await gateway.getCollectionJob({ jobId });
  if (job === undefined) throw new Error(`job ${jobId} not found`);
  const status = h("span", { id: "job-status" }, badge(job.status));
  const progress = h("span", { id: "job-progress" });
  const live = h("span", { id: "stream-state", "data-state": "connecting" }, "connecting…");
  const loss = new LiveChart("Loss", "step", [{ label: "train loss", stroke: "#d0492a" }, { label: "val loss", stroke: "#3b6fb6", points: true }], { id: "loss-chart" });
  const lr = new LiveChart("Learning rate", "step", [{ label: "learning rate", stroke: "#2a8f4e" }], { id: "lr-chart" });
  const checkpointRows = h("tbody", {}, checkpoints.map((c) => checkpointRow(c.step, c.id, when(c.createdAt))));
  const logList = h("ul", { id: "job-log" });
  const actions = h("p", { id: "job-actions" });
  const hp = job.hyperparameters === undefined ? {} : (toJson(HyperparametersSchema, job.hyperparameters) as Record<string, unknown>);

  const cancel = h(
    "button",
    {
      id: "cancel-job",
      onclick: async () => {
        try {
          await gateway.cancelCollectionJob({ jobId });
          actions.append(h("span", { class: "note" }, " cancel requested"));
        } catch (err) {
          actions.append(h("span", { class: "error" }, ` ${errorText(err)}`));
        }
      },
    },
    "Cancel job",
  );
  if (!TERMINAL_NAMES.has(job.status)) actions.append(cancel);
  const downloads = h("p", { id: "adapter-downloads" });
  if (job.adapter !== undefined) {
    for (const file of job.adapter.files) downloads.append(downloadButton(jobId, file.kind, file.fileName, downloads), " ");
  }

  root.append(
    h("h1", {}, `Job ${job.jobId}`),
    h(
      "p",
      {},
      "Status ",
      status,
      " ",
      progress,
      " · collection ",
      link(`#/c/${encodeURIComponent(job.collection)}`, job.collection),
      " · ",
      link(`#/lineage/${job.jobId}`, "lineage"),
      job.datasetVersionId !== "" ? h("span", {}, " · dataset ", link(`#/dataset/${job.datasetVersionId}`, job.datasetVersionId)) : null,
      job.initAdapterJobId !== "" ? h("span", { id: "warm-start" }, " · warm start from the adapter of job ", link(`#/job/${job.initAdapterJobId}`, job.initAdapterJobId)) : null,
    ),
    h("p", {}, `Base model ${job.baseModel} · created ${when(job.createdAt)} · attempt ${job.attempt}`, job.adapter ? ` · adapter ${job.adapter.id}` : ""),
    actions,
    job.adapter !== undefined ? section("Adapter", h("p", {}, `${job.adapter.id}: PEFT files (vLLM --enable-lora) and a GGUF LoRA (llama.cpp)`), downloads) : "",
    h("p", {}, "Live: ", live),
    h("div", { class: "charts" }, loss.element, lr.element),
    section("Hyperparameters", table(["name", "value"], Object.entries(hp).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]), { id: "hyperparameters" })),
    section("Checkpoints", h("table", { id: "checkpoints" }, h("thead", {}, h("tr", {}, h("th", {}, "step"), h("th", {}, "checkpoint"), h("th", {}, "saved"))), checkpointRows)),
    section("Log", logList),
    job.failure ? h("p", { class: "error" }, `Failed: ${job.failure.message}`) : "",
  );

  // The job's whole history, then live events, over one Connect-Web server stream (it ends after the terminal status).
  // A stream cut short (a proxy's idle limit, a gateway restart) is taken up again after the last event seen.
  let lastSequence = 0;
  let finished = false;
  for (let attempt = 0; !finished; attempt++) {
    try {
      for await (const { event } of gateway.watchCollectionJob({ jobId, fromSequence: lastSequence + 1 }, { signal })) {
        fill(live, "streaming");
        live.dataset.state = "streaming";
        if (event === undefined) continue;
        lastSequence = event.sequence;
        const e = event.event;
        if (e.case === "metrics") {
          const m = e.value;
          loss.push(m.step, [m.trainLoss, m.valLoss ?? null]);
          lr.push(m.step, [m.learningRate]);
          fill(progress, `step ${m.step}/${m.totalSteps} · train loss ${num(m.trainLoss, 4)}${m.valLoss !== undefined ? ` · val loss ${num(m.valLoss, 4)}` : ""} · ${m.tokensPerSecond.toFixed(0)} tok/s`);
        } else if (e.case === "statusChanged") {
          fill(status, badge(statusName(e.value.status)));
          if (TERMINAL.has(e.value.status)) {
            finished = true;
            cancel.remove();
          }
          if (e.value.failure) logList.append(h("li", { class: "error" }, e.value.failure.message));
        } else if (e.case === "checkpointSaved" && e.value.checkpoint) {
          const c = e.value.checkpoint;
          if (!checkpoints.some((x) => x.id === c.id)) checkpointRows.append(checkpointRow(c.step, c.id, when(c.createdAt)));
        } else if (e.case === "log") {
          logList.append(h("li", {}, e.value.message));
        }
      }
      finished = true;
    } catch (err) {
      if (signal.aborted || isAborted(err)) return;
      fill(live, `stream interrupted — ${errorText(err)}; reconnecting`);
      live.dataset.state = "reconnecting";
      if (attempt >= 20) {
        fill(live, `stream failed — ${errorText(err)}`);
        live.dataset.state = "failed";
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(10_000, 500 * 2 ** attempt)));
      if (signal.aborted) return;
    }
  }
  fill(live, "ended (the job finished)");
  live.dataset.state = "ended";
}

/** Streams one adapter file through the gateway, checks its SHA-256 and hands it to the browser as a download. */
function downloadButton(jobId: string, kind: AdapterFileKind, fileName: string, out: HTMLElement): HTMLButtonElement {
  return h(
    "button",
    {
      class: "download",
      "data-file": fileName,
      onclick: async () => {
        const note = h("span", { class: "note" }, ` downloading ${fileName}…`);
        out.append(note);
        try {
          const parts: Uint8Array<ArrayBuffer>[] = [];
          let sha256 = "";
          for await (const { piece } of gateway.downloadCollectionAdapter({ jobId, kind })) {
            if (piece === undefined || piece.fileName !== fileName) continue;
            parts.push(new Uint8Array(piece.data));
            sha256 = piece.sha256;
          }
          const blob = new Blob(parts);
          const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", await blob.arrayBuffer())), (b) => b.toString(16).padStart(2, "0")).join("");
          if (digest !== sha256) throw new Error(`${fileName}: the bytes received do not match the adapter's SHA-256`);
          const a = h("a", { href: URL.createObjectURL(blob), download: fileName });
          a.click();
          fill(note, ` ${fileName}: ${blob.size} bytes, SHA-256 verified`);
          note.dataset.verified = "true";
        } catch (err) {
          fill(note, ` ${errorText(err)}`);
          note.className = "error";
        }
      },
    },
    `Download ${fileName}`,
  );
}

function checkpointRow(step: number, id: string, at: string): HTMLTableRowElement {
  return h("tr", {}, h("td", {}, step), h("td", {}, id), h("td", {}, at));
}
