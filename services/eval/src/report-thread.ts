/**
 * The report of a run built in a worker thread: scoring aggregates, thousands of bootstrap resamples per difference
 * and slice take about a second for a few thousand items and three models, which must not stall the service's RPCs
 * and health checks. Compiled JavaScript runs the worker as it is; from TypeScript sources (dev, tests) the worker
 * loads tsx first, with the @ragtune/source condition so workspace packages resolve to their sources.
 */
import type { Worker } from "node:worker_threads";
import { fromBinary } from "@bufbuild/protobuf";
import { siblingEntry, startWorkerThread } from "@ragtune/rpc";
import { type EvalItemResult, EvalItemResultSchema, type EvalReport, EvalReportSchema } from "@ragtune/proto";
import type { ReportInput } from "./report.js";

function startWorker(): Worker {
  return startWorkerThread(siblingEntry(import.meta.url, "report-worker"));
}

/** buildReport in a worker thread of its own (ended when done); `signal` ends it early. */
export async function buildReportOffThread(input: ReportInput, signal?: AbortSignal): Promise<{ report: EvalReport; results: EvalItemResult[] }> {
  const worker = startWorker();
  const onAbort = () => void worker.terminate();
  signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const out = await new Promise<{ report: Uint8Array; results: Uint8Array[] }>((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
      worker.once("exit", (code) => reject(signal?.aborted ? signal.reason : new Error(`the report worker exited with code ${code} before it answered`)));
      worker.postMessage(input);
    });
    return { report: fromBinary(EvalReportSchema, out.report), results: out.results.map((r) => fromBinary(EvalItemResultSchema, r)) };
  } finally {
    signal?.removeEventListener("abort", onAbort);
    await worker.terminate();
  }
}
