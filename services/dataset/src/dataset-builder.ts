import { createHash } from "node:crypto";
import type { DatasetExample } from "./example.js";
import { generateExtractiveDataset, type ExtractiveOptions, type SourceChunk } from "./extractive-generator.js";
import { exportRow, type ExportFormat } from "./exports.js";
import { DEFAULT_REFUSAL, generateNegatives, NEGATIVE_DEFAULTS, type NegativeExample, type NegativeOptions, type NegativeSkip } from "./negatives.js";
import { DEFAULT_QUALITY_GATE, runQualityGate, type DroppedExample, type DropReason, type QualityGateConfig } from "./quality-gate.js";
import { withServedContexts, type ServedContextResult, type ServedDrop } from "./served-contexts.js";
import { splitExamples, type SplitConfig, type SplitDrop, type SplitName, type SplitResult } from "./splits.js";

/** Everything that decides a version's content; its hash is part of the version's identity. */
export interface DatasetBuildSettings {
  generation: ExtractiveOptions;
  /** Set when a model writes the examples (settings.model): what it was asked, for the content hash (lineage). */
  llm?: { model: string; promptHash: string; temperature: number; questionsPerChunk: number; seed: number };
  /** The version whose generated examples were reused (incremental build); part of the content hash. */
  baseVersionId?: string;
  /** Set for retrieved ("as served") contexts: `context_chunks` chunks per context, the gold chunk in `goldShare` of them. */
  served?: { topK: number; goldShare: number };
  negatives: NegativeOptions;
  quality: Partial<QualityGateConfig>;
  splits: Partial<SplitConfig>;
}

export interface DatasetBuildDeps {
  /** Counts tokens with the target model's tokenizer (libs/text), for the token budget. */
  tokenizer: { count(text: string): number };
}

/** The content of a dataset version, before it is stored. */
export interface DatasetBuild {
  /** SHA-256 over the chunk IDs (sorted) and the settings: the same input builds the same version. */
  contentHash: string;
  /** Every generated example before negatives and checks, in chunk order (what an incremental build reuses). */
  generated: DatasetExample[];
  splits: Pick<SplitResult, "train" | "val" | "test" | "stats">;
  /** Every example that was generated but not kept, with why: none is dropped silently. */
  dropped: { gate: DroppedExample[]; split: SplitDrop[]; served: ServedDrop[]; negativesSkipped: NegativeSkip[] };
  counts: {
    chunks: number;
    chunksWithExamples: number;
    generated: number;
    negatives: number;
    negativeTarget: number;
    kept: number;
    droppedByReason: Record<DropReason | SplitDrop["reason"] | ServedDrop["reason"], number>;
    /** Retrieved contexts: how many held their gold chunk, and the targets the contexts changed. */
    served?: ServedContextResult["counts"];
  };
}

/**
 * The offline build of a dataset version from a collection's chunks: extractive questions with verbatim answers,
 * "not in context" negatives with the refusal target, the quality gate, then leak-free splits by chunk. Pure and
 * deterministic: the same chunks and settings give the same examples, splits and hash. `pregenerated` examples (the
 * LLM generator's, written in the service process, and those reused from a base version) take the extractive
 * generator's place; with them, the extractive generator writes only the chunks named in `extractiveChunkIds`.
 */
export function buildDataset(
  chunks: readonly SourceChunk[],
  settings: DatasetBuildSettings,
  deps: DatasetBuildDeps,
  pregenerated?: readonly DatasetExample[],
  extractiveChunkIds?: readonly string[],
): DatasetBuild {
  let generated: DatasetExample[];
  if (pregenerated === undefined) generated = generateExtractiveDataset(chunks, settings.generation);
  else {
    const wanted = new Set(extractiveChunkIds ?? []);
    const fresh = wanted.size === 0 ? [] : generateExtractiveDataset(chunks.filter((c) => wanted.has(c.id)), settings.generation);
    // In chunk order, whichever way each chunk's examples were made.
    const order = new Map(chunks.map((c, i) => [c.id, i]));
    generated = [...pregenerated, ...fresh].sort((a, b) => (order.get(a.chunkId) ?? 0) - (order.get(b.chunkId) ?? 0));
  }
  const negatives = generateNegatives(generated, chunks, settings.negatives);
  const gate = runQualityGate([...generated, ...negatives.negatives], deps, settings.quality);
  const split = splitExamples(gate.kept, settings.splits);
  const droppedByReason = { ...gate.counts } as DatasetBuild["counts"]["droppedByReason"];
  for (const d of split.dropped) droppedByReason[d.reason] = (droppedByReason[d.reason] ?? 0) + 1;
  // Retrieved contexts, per split (each example stays in the split of its source chunk).
  const served: ServedDrop[] = [];
  let servedCounts: ServedContextResult["counts"] | undefined;
  if (settings.served !== undefined && settings.served.topK > 1) {
    const answers = new Map(generated.map((e) => [e.id, e.answer]));
    const options = {
      topK: settings.served.topK,
      goldShare: settings.served.goldShare,
      seed: settings.splits.seed ?? 42,
      refusal: settings.negatives.refusal ?? DEFAULT_REFUSAL,
      maxSeqLen: settings.quality.maxSeqLen ?? DEFAULT_QUALITY_GATE.maxSeqLen,
      maxAnswerCoverage: settings.negatives.maxAnswerCoverage ?? NEGATIVE_DEFAULTS.maxAnswerCoverage,
    };
    const sourceAnswerOf = (e: DatasetExample) => answers.get((e as Partial<NegativeExample>).sourceExampleId ?? "");
    for (const name of ["train", "val", "test"] as const) {
      const result = withServedContexts(split[name], chunks, options, { tokenizer: deps.tokenizer, sourceAnswerOf });
      split[name] = result.examples;
      served.push(...result.dropped);
      for (const d of result.dropped) droppedByReason[d.reason] = (droppedByReason[d.reason] ?? 0) + 1;
      if (servedCounts === undefined) servedCounts = { ...result.counts };
      else for (const k of Object.keys(servedCounts) as (keyof typeof servedCounts)[]) servedCounts[k] += result.counts[k];
    }
  }
  return {
    contentHash: contentHash(chunks, settings),
    generated,
    splits: { train: split.train, val: split.val, test: split.test, stats: split.stats },
    dropped: { gate: gate.dropped, split: split.dropped, served, negativesSkipped: negatives.skipped },
    counts: {
      chunks: chunks.length,
      chunksWithExamples: new Set(generated.map((e) => e.chunkId)).size,
      generated: generated.length,
      negatives: negatives.negatives.length,
      negativeTarget: negatives.target,
      kept: split.train.length + split.val.length + split.test.length,
      droppedByReason,
      ...(servedCounts === undefined ? {} : { served: servedCounts }),
    },
  };
}

/** One split as JSON lines in an export format (the trainer trains on `mistral-instruct`). */
export function exportSplit(build: DatasetBuild, split: SplitName, format: ExportFormat): string {
  return build.splits[split].map((e) => exportRow(e, format)).join("");
}

function contentHash(chunks: readonly SourceChunk[], settings: DatasetBuildSettings): string {
  const h = createHash("sha256");
  for (const id of chunks.map((c) => c.id).sort()) h.update(`${id}\n`);
  h.update(stableJson(settings));
  return h.digest("hex");
}

/** JSON with object keys sorted, so equal settings hash equally whatever their key order. */
function stableJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== undefined);
    return `{${entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([k, v]) => `${JSON.stringify(k)}:${stableJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}
