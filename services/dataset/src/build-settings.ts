import { create } from "@bufbuild/protobuf";
import { DatasetVersionStatus, GenerationSettingsSchema, QualityChecksSchema, SplitRatiosSchema, type DatasetVersion, type GenerationSettings } from "@ragtune/proto";
import { invalidArgument } from "@ragtune/rpc";
import type { DatasetBuildSettings } from "./dataset-builder.js";
import { llmPromptHash } from "./llm-generator.js";
import { DEFAULT_REFUSAL } from "./negatives.js";

const DEFAULTS = {
  questionsPerChunk: 3,
  negativeRatio: 0.15,
  seed: 42,
  temperature: 0.7,
  maxConcurrency: 4,
  contextChunks: 1,
  goldShare: 0.8,
  ratios: { train: 0.6, val: 0.2, test: 0.2 },
};

/**
 * The request's GenerationSettings with every default filled in (what the version records), and the build settings
 * the domain modules take. A bad value is InvalidArgument naming the field (settings.<field>).
 */
export function resolveBuildSettings(
  requested: GenerationSettings | undefined,
  options: { llmConfigured: boolean },
): { settings: GenerationSettings; build: DatasetBuildSettings } {
  const s = requested ?? create(GenerationSettingsSchema);
  const model = s.model.trim();
  if (model !== "" && !options.llmConfigured) {
    throw invalidArgument(
      "settings.model",
      `"${model}" needs a generation model endpoint, but LLM_BASE_URL is not configured on the dataset service; set it (and LLM_API_KEY if the server wants one), or leave settings.model empty to build with the extractive generator (questions from headings and definitions, answers copied verbatim)`,
    );
  }
  if (model.length > 256) throw invalidArgument("settings.model", `must be at most 256 characters, got ${model.length}`);
  const questionsPerChunk = s.questionsPerChunk ?? DEFAULTS.questionsPerChunk;
  if (!Number.isInteger(questionsPerChunk) || questionsPerChunk < 1 || questionsPerChunk > 20) {
    throw invalidArgument("settings.questions_per_chunk", `must be 1..20, got ${questionsPerChunk}`);
  }
  const negativeRatio = s.negativeRatio ?? DEFAULTS.negativeRatio;
  if (!(negativeRatio >= 0 && negativeRatio <= 1)) throw invalidArgument("settings.negative_ratio", `must be 0..1, got ${negativeRatio}`);
  const contextChunks = s.contextChunks ?? DEFAULTS.contextChunks;
  if (!Number.isInteger(contextChunks) || contextChunks < 1 || contextChunks > 20) throw invalidArgument("settings.context_chunks", `must be 1..20, got ${contextChunks}`);
  const goldShare = s.goldShare ?? DEFAULTS.goldShare;
  if (!(goldShare >= 0 && goldShare <= 1)) throw invalidArgument("settings.gold_share", `must be 0..1, got ${goldShare}`);
  const seed = s.seed ?? DEFAULTS.seed;
  const refusal = s.refusalText.trim() === "" ? DEFAULT_REFUSAL : s.refusalText.trim();
  const ratios = s.splitRatios ?? create(SplitRatiosSchema, DEFAULTS.ratios);
  for (const [name, value] of Object.entries({ train: ratios.train, val: ratios.val, test: ratios.test })) {
    if (!(value >= 0 && value <= 1)) throw invalidArgument(`settings.split_ratios.${name}`, `must be 0..1, got ${value}`);
  }
  if (Math.abs(ratios.train + ratios.val + ratios.test - 1) > 1e-6) {
    throw invalidArgument("settings.split_ratios", `train + val + test must be 1, got ${ratios.train + ratios.val + ratios.test}`);
  }
  if (ratios.train === 0) throw invalidArgument("settings.split_ratios.train", "must be above 0: a version without training examples cannot be trained on");
  const q = s.qualityChecks ?? create(QualityChecksSchema);
  const quality = {
    deduplicate: q.deduplicate ?? true,
    requireGroundedAnswer: q.requireGroundedAnswer ?? true,
    minAnswerSupport: q.minAnswerSupport ?? 0.6,
    rejectTrivial: q.rejectTrivial ?? true,
    minAnswerWords: q.minAnswerWords ?? 3,
    maxAnswerWords: q.maxAnswerWords ?? 200,
  };
  if (!(quality.minAnswerSupport >= 0 && quality.minAnswerSupport <= 1)) {
    throw invalidArgument("settings.quality_checks.min_answer_support", `must be 0..1, got ${quality.minAnswerSupport}`);
  }
  if (quality.maxAnswerWords < 1) throw invalidArgument("settings.quality_checks.max_answer_words", "must be at least 1");
  if (quality.minAnswerWords > quality.maxAnswerWords) {
    throw invalidArgument("settings.quality_checks.min_answer_words", `must not exceed max_answer_words (${quality.maxAnswerWords})`);
  }
  const maxConcurrency = s.maxConcurrency ?? DEFAULTS.maxConcurrency;
  if (!Number.isInteger(maxConcurrency) || maxConcurrency < 1 || maxConcurrency > 1024) {
    throw invalidArgument("settings.max_concurrency", `must be 1..1024, got ${maxConcurrency}`);
  }
  const temperature = s.temperature ?? DEFAULTS.temperature;
  if (!(temperature >= 0 && temperature <= 2)) throw invalidArgument("settings.temperature", `must be 0..2, got ${temperature}`);
  const settings = create(GenerationSettingsSchema, {
    model,
    questionsPerChunk,
    negativeRatio,
    qualityChecks: quality,
    splitRatios: { train: ratios.train, val: ratios.val, test: ratios.test },
    seed,
    temperature,
    maxConcurrency,
    refusalText: refusal,
    contextChunks,
    ...(contextChunks > 1 ? { goldShare } : {}),
  });
  const build: DatasetBuildSettings = {
    generation: { questionsPerChunk, seed },
    negatives: { ratio: negativeRatio, seed, refusal },
    quality: { ...quality, seed },
    splits: { ratios: { train: ratios.train, val: ratios.val, test: ratios.test }, seed },
    ...(model === "" ? {} : { llm: { model, promptHash: llmPromptHash(questionsPerChunk), temperature, questionsPerChunk, seed } }),
    ...(contextChunks > 1 ? { served: { topK: contextChunks, goldShare } } : {}),
  };
  return { settings, build };
}

/**
 * Why `base` cannot be the base of an incremental build of `version` (same collection, READY with its generated
 * examples stored, written by the same generator with the same settings), or undefined when it can.
 */
export function baseProblem(
  base: Pick<DatasetVersion, "id" | "collection" | "status" | "settings" | "lineage">,
  version: Pick<DatasetVersion, "collection" | "settings">,
): string | undefined {
  if (base.collection !== version.collection) return `dataset version ${base.id} is of collection "${base.collection}", not "${version.collection}"`;
  if (base.status !== DatasetVersionStatus.READY) return `dataset version ${base.id} is ${DatasetVersionStatus[base.status]?.toLowerCase()}; only a ready version can be a base`;
  if (base.lineage?.generated === undefined || base.lineage.chunks === undefined) return `dataset version ${base.id} was built before versions stored their generated examples; build from scratch once`;
  const a = base.settings;
  const b = version.settings;
  const differs: string[] = [];
  if ((a?.model ?? "") !== (b?.model ?? "")) differs.push(`model "${a?.model || "extractive"}" vs "${b?.model || "extractive"}"`);
  if (a?.questionsPerChunk !== b?.questionsPerChunk) differs.push(`questions_per_chunk ${a?.questionsPerChunk} vs ${b?.questionsPerChunk}`);
  if (a?.seed !== b?.seed) differs.push(`seed ${a?.seed} vs ${b?.seed}`);
  if ((b?.model ?? "") !== "") {
    if (a?.temperature !== b?.temperature) differs.push(`temperature ${a?.temperature} vs ${b?.temperature}`);
    if (base.lineage.promptSha256 !== llmPromptHash(b?.questionsPerChunk ?? 3)) differs.push("the generation prompt changed since it was built");
  }
  if (differs.length > 0) return `dataset version ${base.id} was generated with other settings (${differs.join("; ")}); its examples can only be reused by a build with the same generator settings`;
  return undefined;
}
