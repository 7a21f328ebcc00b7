import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { TokenizerName } from "@ragtune/text";
import type { DatasetBuild, DatasetBuildSettings } from "./dataset-builder.js";
import type { DatasetExample } from "./example.js";
import type { ExportFormat } from "./exports.js";
import type { SourceChunk } from "./extractive-generator.js";
import type { SplitName } from "./splits.js";

/** The export formats a version stores per split (ExportDatasetVersion serves them; the trainer reads mistral-instruct). */
export const STORED_FORMATS = ["mistral-instruct", "mistral-inference", "chat", "prompt-completion"] as const satisfies readonly ExportFormat[];
export type StoredFormat = (typeof STORED_FORMATS)[number];

export interface BuildInput {
  chunks: SourceChunk[];
  settings: DatasetBuildSettings;
  tokenizer: TokenizerName;
  /**
   * Examples generated before the build (by the LLM generator, or reused from a base version): the extractive
   * generator then writes only the chunks in `extractiveChunkIds`.
   */
  examples?: DatasetExample[];
  extractiveChunkIds?: string[];
}

/** An example the build generated and did not keep, with the check that dropped it. */
export interface DroppedRow {
  example: DatasetExample;
  reason: string;
  detail: string;
}

export interface BuildOutput {
  contentHash: string;
  counts: DatasetBuild["counts"];
  /** Per split: its examples, its exports (JSON lines per stored format) and each training row's token count. */
  splits: Record<SplitName, { examples: DatasetExample[]; exports: Record<StoredFormat, string>; tokens: number[] }>;
  /** Every generated example before negatives and checks, in chunk order. */
  generated: DatasetExample[];
  /** Every example dropped by the quality gate or the split (leakage), in that order. */
  dropped: DroppedRow[];
}

/** The build ran out of time (DATASET_BUILD_TIMEOUT) and was stopped. */
export class BuildTimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`the build took longer than ${timeoutMs} ms (DATASET_BUILD_TIMEOUT) and was stopped`);
    this.name = "BuildTimeoutError";
  }
}

const STDERR_KEPT = 4_000;

/**
 * Runs a build in a child process (build-main), so the service's event loop keeps answering RPCs and health while it
 * runs, and a runaway build is killed after `timeoutMs`. From TypeScript sources (dev, tests) the child runs through
 * tsx with the @ragtune/source condition; from dist, as plain JavaScript.
 */
export function runBuild(input: BuildInput, options: { timeoutMs: number; signal?: AbortSignal }): Promise<BuildOutput> {
  const here = import.meta.url;
  const fromSource = here.endsWith(".ts");
  const entry = fileURLToPath(new URL(fromSource ? "./build-main.ts" : "./build-main.js", here));
  const args = fromSource ? ["--conditions=@ragtune/source", "--import", "tsx", entry] : [entry];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    let stderr = "";
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, options.timeoutMs);
    const onAbort = () => child.kill("SIGKILL");
    options.signal?.addEventListener("abort", onAbort, { once: true });
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr = (stderr + d).slice(-STDERR_KEPT);
    });
    child.stdin.on("error", () => {}); // a child that died early: its exit reports it
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      if (timedOut) return reject(new BuildTimeoutError(options.timeoutMs));
      if (options.signal?.aborted) return reject(options.signal.reason ?? new Error("build cancelled"));
      if (code !== 0) return reject(new Error(`the build process exited with ${signal ?? `code ${code}`}: ${stderr.trim().split("\n").slice(-5).join(" | ")}`));
      try {
        resolve(JSON.parse(Buffer.concat(out).toString("utf8")) as BuildOutput);
      } catch (err) {
        reject(new Error("the build process wrote no valid result", { cause: err }));
      }
    });
    child.stdin.end(JSON.stringify(input));
  });
}
