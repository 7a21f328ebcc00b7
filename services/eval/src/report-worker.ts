/** Worker thread entry: builds one report (report.ts) off the service's event loop; see report-thread.ts. */
import { parentPort } from "node:worker_threads";
import { toBinary } from "@bufbuild/protobuf";
import { EvalItemResultSchema, EvalReportSchema } from "@ragtune/proto";
import { buildReport, type ReportInput } from "./report.js";

parentPort!.once("message", (input: ReportInput) => {
  const { report, results } = buildReport(input);
  parentPort!.postMessage({ report: toBinary(EvalReportSchema, report), results: results.map((r) => toBinary(EvalItemResultSchema, r)) });
});
