import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ComputeDtype,
  type Hyperparameters,
  HyperparametersSchema,
  LrScheduler,
  QuantBackend,
  TrainingMethod,
} from "@ragtune/proto";

/** The seed pipeline's settings (Mistral-7B QLoRA); every unset hyperparameter takes these. */
export const DEFAULT_HYPERPARAMETERS = {
  method: TrainingMethod.QLORA,
  quantBackendQlora: QuantBackend.BUILTIN,
  quantBackendLora: QuantBackend.NONE,
  rank: 8,
  alpha: 16,
  dropout: 0.05,
  targetModules: ["q_proj", "k_proj", "v_proj", "o_proj"],
  learningRate: 2e-4,
  lrScheduler: LrScheduler.COSINE,
  warmupSteps: 20,
  epochs: 1,
  microBatchSize: 4,
  gradientAccumulationSteps: 4,
  maxSeqLen: 1024,
  seed: 42,
  evalIntervalSteps: 50,
  checkpointIntervalSteps: 50,
  weightDecay: 0.01,
  gradientCheckpointing: true,
  maxGradNorm: 1.0,
} as const;

/** Bounds checked at CreateJob; the worker checks the same (and what needs the model and data). */
export const LIMITS = {
  rank: [1, 256],
  alpha: [0, 10_000],
  dropout: [0, 0.9],
  learningRate: [0, 1],
  warmupSteps: [0, 1_000_000],
  epochs: [0, 10_000],
  maxSteps: [1, 10_000_000],
  microBatchSize: [1, 1024],
  gradientAccumulationSteps: [1, 4096],
  maxSeqLen: [16, 32_768],
  evalIntervalSteps: [0, 10_000_000],
  checkpointIntervalSteps: [0, 10_000_000],
  weightDecay: [0, 1],
  maxGradNorm: [0, 1_000_000],
} as const;

const MODULE_NAME = /^[A-Za-z_][A-Za-z0-9_.]*$/;

/** A hyperparameter problem, named by its field path in the request (e.g. `hyperparameters.rank`). */
export function invalidField(field: string, message: string): ConnectError {
  return new ConnectError(`${field}: ${message}`, Code.InvalidArgument);
}

function checkInt(field: string, value: number, [min, max]: readonly [number, number]): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw invalidField(`hyperparameters.${field}`, `must be an integer in [${min}, ${max}], got ${value}`);
  }
}

function checkNumber(
  field: string,
  value: number,
  [min, max]: readonly [number, number],
  opts: { minOpen?: boolean } = {},
): void {
  const ok = Number.isFinite(value) && (opts.minOpen ? value > min : value >= min) && value <= max;
  if (!ok) {
    throw invalidField(
      `hyperparameters.${field}`,
      `must be a number in ${opts.minOpen ? "(" : "["}${min}, ${max}], got ${value}`,
    );
  }
}

function checkEnum<E extends Record<string, string | number>>(field: string, e: E, value: number): void {
  if (e[value] === undefined) {
    const allowed = Object.keys(e).filter((k) => Number.isNaN(Number(k)) && k !== "UNSPECIFIED");
    throw invalidField(`hyperparameters.${field}`, `unknown value ${value}; expected one of ${allowed.join(", ")}`);
  }
}

/**
 * Validates a request's hyperparameters and returns a copy with every default filled in.
 * Throws a ConnectError with Code.InvalidArgument whose message starts with the field's path.
 */
export function resolveHyperparameters(input: Hyperparameters | undefined): Hyperparameters {
  const hp = input ?? create(HyperparametersSchema);
  const d = DEFAULT_HYPERPARAMETERS;

  checkEnum("method", TrainingMethod, hp.method);
  const method = hp.method === TrainingMethod.UNSPECIFIED ? d.method : hp.method;
  checkEnum("quant_backend", QuantBackend, hp.quantBackend);
  const quantBackend =
    hp.quantBackend !== QuantBackend.UNSPECIFIED
      ? hp.quantBackend
      : method === TrainingMethod.QLORA
        ? d.quantBackendQlora
        : d.quantBackendLora;
  if (method === TrainingMethod.LORA && quantBackend !== QuantBackend.NONE) {
    throw invalidField(
      "hyperparameters.quant_backend",
      `method LORA trains on an unquantized base, but quant_backend is ${QuantBackend[quantBackend]}; use method QLORA or quant_backend NONE`,
    );
  }

  const rank = hp.rank ?? d.rank;
  checkInt("rank", rank, LIMITS.rank);
  const alpha = hp.alpha ?? d.alpha;
  checkNumber("alpha", alpha, LIMITS.alpha, { minOpen: true });
  const dropout = hp.dropout ?? d.dropout;
  checkNumber("dropout", dropout, LIMITS.dropout);

  const targetModules = hp.targetModules.length > 0 ? [...hp.targetModules] : [...d.targetModules];
  const seen = new Set<string>();
  for (const [i, name] of targetModules.entries()) {
    if (!MODULE_NAME.test(name)) {
      throw invalidField(
        `hyperparameters.target_modules[${i}]`,
        `"${name}" is not a module name (letters, digits, '_' and '.', e.g. q_proj)`,
      );
    }
    if (seen.has(name)) throw invalidField(`hyperparameters.target_modules[${i}]`, `"${name}" is listed twice`);
    seen.add(name);
  }

  const learningRate = hp.learningRate ?? d.learningRate;
  checkNumber("learning_rate", learningRate, LIMITS.learningRate, { minOpen: true });
  checkEnum("lr_scheduler", LrScheduler, hp.lrScheduler);
  const lrScheduler = hp.lrScheduler === LrScheduler.UNSPECIFIED ? d.lrScheduler : hp.lrScheduler;
  const warmupSteps = hp.warmupSteps ?? d.warmupSteps;
  checkInt("warmup_steps", warmupSteps, LIMITS.warmupSteps);

  let duration: Hyperparameters["duration"];
  switch (hp.duration.case) {
    case "epochs":
      checkNumber("epochs", hp.duration.value, LIMITS.epochs, { minOpen: true });
      duration = { case: "epochs", value: hp.duration.value };
      break;
    case "maxSteps":
      checkInt("max_steps", hp.duration.value, LIMITS.maxSteps);
      duration = { case: "maxSteps", value: hp.duration.value };
      break;
    default:
      duration = { case: "epochs", value: d.epochs };
  }

  const microBatchSize = hp.microBatchSize ?? d.microBatchSize;
  checkInt("micro_batch_size", microBatchSize, LIMITS.microBatchSize);
  const gradientAccumulationSteps = hp.gradientAccumulationSteps ?? d.gradientAccumulationSteps;
  checkInt("gradient_accumulation_steps", gradientAccumulationSteps, LIMITS.gradientAccumulationSteps);
  const maxSeqLen = hp.maxSeqLen ?? d.maxSeqLen;
  checkInt("max_seq_len", maxSeqLen, LIMITS.maxSeqLen);
  const seed = hp.seed ?? d.seed;
  const evalIntervalSteps = hp.evalIntervalSteps ?? d.evalIntervalSteps;
  checkInt("eval_interval_steps", evalIntervalSteps, LIMITS.evalIntervalSteps);
  const checkpointIntervalSteps = hp.checkpointIntervalSteps ?? d.checkpointIntervalSteps;
  checkInt("checkpoint_interval_steps", checkpointIntervalSteps, LIMITS.checkpointIntervalSteps);
  const weightDecay = hp.weightDecay ?? d.weightDecay;
  checkNumber("weight_decay", weightDecay, LIMITS.weightDecay);
  checkEnum("compute_dtype", ComputeDtype, hp.computeDtype);
  const gradientCheckpointing = hp.gradientCheckpointing ?? d.gradientCheckpointing;
  const maxGradNorm = hp.maxGradNorm ?? d.maxGradNorm;
  checkNumber("max_grad_norm", maxGradNorm, LIMITS.maxGradNorm);

  return create(HyperparametersSchema, {
    method,
    quantBackend,
    rank,
    alpha,
    dropout,
    targetModules,
    learningRate,
    lrScheduler,
    warmupSteps,
    duration,
    microBatchSize,
    gradientAccumulationSteps,
    maxSeqLen,
    seed,
    evalIntervalSteps,
    checkpointIntervalSteps,
    weightDecay,
    computeDtype: hp.computeDtype,
    gradientCheckpointing,
    maxGradNorm,
  });
}

/** The hyperparameter part of the worker's job spec (snake_case keys, the worker's value names). */
export interface WorkerHyperparameters {
  method: "qlora" | "lora";
  quant_backend: "builtin" | "bitsandbytes" | "none";
  lora_r: number;
  lora_alpha: number;
  lora_dropout: number;
  target_modules: string[];
  learning_rate: number;
  lr_scheduler: "cosine" | "linear" | "constant";
  warmup_steps: number;
  weight_decay: number;
  micro_batch_size: number;
  gradient_accumulation_steps: number;
  max_seq_len: number;
  gradient_checkpointing: boolean;
  epochs: number;
  max_steps: number | null;
  eval_interval_steps: number;
  checkpoint_interval_steps: number;
  seed: number;
  compute_dtype: "auto" | "fp32" | "bf16" | "fp16";
  max_grad_norm: number;
}

/** "Never" for the worker, whose intervals are >= 1: larger than any step count it accepts. */
const NEVER_STEPS = 10_000_000;

/** Maps resolved hyperparameters (see {@link resolveHyperparameters}) to the worker's spec fields. */
export function toWorkerHyperparameters(hp: Hyperparameters): WorkerHyperparameters {
  const dtype: Record<ComputeDtype, WorkerHyperparameters["compute_dtype"]> = {
    [ComputeDtype.UNSPECIFIED]: "auto",
    [ComputeDtype.FLOAT32]: "fp32",
    [ComputeDtype.BFLOAT16]: "bf16",
    [ComputeDtype.FLOAT16]: "fp16",
  };
  const scheduler: Record<LrScheduler, WorkerHyperparameters["lr_scheduler"]> = {
    [LrScheduler.UNSPECIFIED]: "cosine",
    [LrScheduler.COSINE]: "cosine",
    [LrScheduler.LINEAR]: "linear",
    [LrScheduler.CONSTANT]: "constant",
  };
  const backend: Record<QuantBackend, WorkerHyperparameters["quant_backend"]> = {
    [QuantBackend.UNSPECIFIED]: "builtin",
    [QuantBackend.BUILTIN]: "builtin",
    [QuantBackend.BITSANDBYTES]: "bitsandbytes",
    [QuantBackend.NONE]: "none",
  };
  return {
    method: hp.method === TrainingMethod.LORA ? "lora" : "qlora",
    quant_backend: backend[hp.quantBackend],
    lora_r: hp.rank ?? DEFAULT_HYPERPARAMETERS.rank,
    lora_alpha: hp.alpha ?? DEFAULT_HYPERPARAMETERS.alpha,
    lora_dropout: hp.dropout ?? DEFAULT_HYPERPARAMETERS.dropout,
    target_modules: [...hp.targetModules],
    learning_rate: hp.learningRate ?? DEFAULT_HYPERPARAMETERS.learningRate,
    lr_scheduler: scheduler[hp.lrScheduler],
    warmup_steps: hp.warmupSteps ?? DEFAULT_HYPERPARAMETERS.warmupSteps,
    weight_decay: hp.weightDecay ?? DEFAULT_HYPERPARAMETERS.weightDecay,
    micro_batch_size: hp.microBatchSize ?? DEFAULT_HYPERPARAMETERS.microBatchSize,
    gradient_accumulation_steps: hp.gradientAccumulationSteps ?? DEFAULT_HYPERPARAMETERS.gradientAccumulationSteps,
    max_seq_len: hp.maxSeqLen ?? DEFAULT_HYPERPARAMETERS.maxSeqLen,
    gradient_checkpointing: hp.gradientCheckpointing ?? DEFAULT_HYPERPARAMETERS.gradientCheckpointing,
    epochs: hp.duration.case === "epochs" ? hp.duration.value : DEFAULT_HYPERPARAMETERS.epochs,
    max_steps: hp.duration.case === "maxSteps" ? hp.duration.value : null,
    eval_interval_steps: hp.evalIntervalSteps || NEVER_STEPS,
    checkpoint_interval_steps: hp.checkpointIntervalSteps || NEVER_STEPS,
    seed: hp.seed ?? DEFAULT_HYPERPARAMETERS.seed,
    compute_dtype: dtype[hp.computeDtype],
    max_grad_norm: hp.maxGradNorm ?? DEFAULT_HYPERPARAMETERS.maxGradNorm,
  };
}
