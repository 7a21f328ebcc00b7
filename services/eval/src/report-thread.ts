/**
 * The report of a run built in a worker thread: scoring aggregates, thousands of bootstrap resamples per difference
 * and slice take about a second for a few thousand items and three models, which must not stall the service's RPCs
 * and health checks. Compiled JavaScript runs the worker as it is; from TypeScript sources (dev, tests) the worker
 * loads tsx first, with the @ragtune/source condition so workspace packages resolve to their sources.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { fromBinary } from "@bufbuild/protobuf";
import { type EvalItemResult, EvalItemResultSchema, type EvalReport, EvalReportSchema } from "@ragtune/proto";
import type { ReportInput } from "./report.js";

function startWorker(): Worker {
  const here = import.meta.url;
  if (!here.endsWith(".ts")) return new Worker(new URL("./report-worker.js", here));
  const entry = new URL("./report-worker.ts", here).href;
  // tsx's ESM API module, named by its package exports (its CommonJS build cannot register hooks in a worker).
  const manifest = createRequire(fileURLToPath(here)).resolve("tsx/package.json");
  const exports = (JSON.parse(readFileSync(manifest, "utf8")) as { exports: Record<string, { import: { default: string } }> }).exports;
  const tsx = pathToFileURL(join(dirname(manifest), exports["./esm/api"]!.import.default)).href;
  const bootstrap = `import(${JSON.stringify(tsx)}).then((m) => { (m.register ?? m.default.register)(); return import(${JSON.stringify(entry)}); })`;
  return new Worker(bootstrap, { eval: true, execArgv: ["--conditions=@ragtune/source"] });
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
