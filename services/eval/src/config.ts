import { baseServiceSchema, envBoolean, envDuration, envInt } from "@ragtune/config";
import { llmConfigSchema } from "@ragtune/llm";
import { z } from "zod";
import type { SuccessRule } from "./metrics.js";
import type { GateConfig } from "./report.js";

/** A share 0..1, or "off" (the gate is not checked). */
function envGate(defaultValue: string) {
  return z
    .string()
    .default(defaultValue)
    .transform((value, ctx) => {
      const v = value.trim().toLowerCase();
      if (v === "off" || v === "") return undefined;
      const n = Number(v);
      if (!Number.isFinite(n) || n < -1 || n > 1) {
        ctx.addIssue({ code: "custom", message: `expected a share like 0.2 (between -1 and 1) or "off", got "${value}"` });
        return z.NEVER;
      }
      return n;
    });
}

function envShare(defaultValue: number) {
  return z.coerce.number().min(0, "must be between 0 and 1").max(1, "must be between 0 and 1").default(defaultValue);
}

/**
 * Environment of the eval service. The LLM_* variables (libs/llm) are the default endpoint of runs that name none
 * (LLM_BASE_URL, LLM_MODEL as the base model) and the client settings for every endpoint a run names, the judge's
 * included (LLM_API_KEY, LLM_TIMEOUT, LLM_MAX_RETRIES).
 */
export const evalConfigSchema = baseServiceSchema.extend({
  ...llmConfigSchema.shape,
  /** The dataset service (its RPC URL): test splits of dataset versions are read through its API. Unset: only uploaded eval files. */
  EVAL_DATASET_URL: z.url({ protocol: /^https?$/, message: "must be the dataset service's http(s) URL, e.g. http://127.0.0.1:50052" }).optional(),
  /** Bearer token for the dataset service, when it requires one (its RPC_AUTH_TOKEN). */
  EVAL_DATASET_AUTH_TOKEN: z.string().min(1).optional(),
  /** Prefix of the eval service's NATS buckets and streams (tests isolate with their own). */
  EVAL_BUCKET_PREFIX: z.string().regex(/^[a-z0-9][a-z0-9-]{0,30}$/, "use lowercase letters, digits and '-'").default("eval"),
  /** Requests on the wire at once for a run that sets no concurrency. */
  EVAL_DEFAULT_CONCURRENCY: envInt({ min: 1, max: 1024, default: 8 }),
  /** The largest concurrency a run may ask for. */
  EVAL_MAX_CONCURRENCY: envInt({ min: 1, max: 4096, default: 256 }),
  /** How long a replica's claim on a run lasts without renewal; another replica takes an abandoned run after it. */
  EVAL_RUN_LEASE: envDuration("30s"),
  /** Promotion gate: adapter success rate ≥ base success rate + this ("off": not checked). */
  EVAL_GATE_MIN_SUCCESS_GAIN: envGate("0.20"),
  /** Promotion gate: adapter false-answer rate on unanswerable items ≤ this ("off": not checked). */
  EVAL_GATE_MAX_FALSE_ANSWER_RATE: envGate("0.05"),
  /** Promotion gate: adapter success rate ≥ this ("off": not checked). */
  EVAL_GATE_MIN_SUCCESS_RATE: envGate("off"),
  /** Promotion gate: adapter truthfulness (−1..1) ≥ base truthfulness + this ("off": not checked). */
  EVAL_GATE_MIN_TRUTHFULNESS_GAIN: envGate("off"),
  /** Success rule: an answerable item needs max(token F1, ROUGE-L) ≥ this. */
  EVAL_SUCCESS_MIN_CORRECTNESS: envShare(0.5),
  /** Success rule: an answerable item needs grounding ≥ this (0: not checked). */
  EVAL_SUCCESS_MIN_GROUNDING: envShare(0),
  /** Success rule: whether an answer cut off at max_tokens may succeed. */
  EVAL_SUCCESS_ALLOW_LENGTH_CUTOFF: envBoolean(false),
});

export type EvalConfig = z.infer<typeof evalConfigSchema>;

export function gatesFromConfig(config: EvalConfig): GateConfig {
  return {
    ...(config.EVAL_GATE_MIN_SUCCESS_GAIN === undefined ? {} : { minSuccessGain: config.EVAL_GATE_MIN_SUCCESS_GAIN }),
    ...(config.EVAL_GATE_MAX_FALSE_ANSWER_RATE === undefined ? {} : { maxFalseAnswerRate: config.EVAL_GATE_MAX_FALSE_ANSWER_RATE }),
    ...(config.EVAL_GATE_MIN_SUCCESS_RATE === undefined ? {} : { minSuccessRate: config.EVAL_GATE_MIN_SUCCESS_RATE }),
    ...(config.EVAL_GATE_MIN_TRUTHFULNESS_GAIN === undefined ? {} : { minTruthfulnessGain: config.EVAL_GATE_MIN_TRUTHFULNESS_GAIN }),
  };
}

export function successRuleFromConfig(config: EvalConfig): SuccessRule {
  return {
    minCorrectness: config.EVAL_SUCCESS_MIN_CORRECTNESS,
    minGrounding: config.EVAL_SUCCESS_MIN_GROUNDING,
    allowLengthCutoff: config.EVAL_SUCCESS_ALLOW_LENGTH_CUTOFF,
  };
}
