import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
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
import { z } from "zod";

// ---------------------------------------------------------------------------------------------------------
// The contract: defaults and limits shared with the worker (ragtune_worker/spec.py reads the same file)

/**
 * The hyperparameter contract (its `$comment` says what it holds). It ships inside the worker's package, which
 * the trainer image copies to services/trainer/worker next to services/trainer/dist, so this path holds in the
 * repository (src/) and in the image (dist/) alike.
 */
export const CONTRACT_PATH = fileURLToPath(new URL("../worker/ragtune_worker/hyperparameters.json", import.meta.url));

const worker = z.string().regex(/^[a-z_]+$/).optional();
const intRule = z.object({
  type: z.literal("int"),
  worker,
  min: z.number().int(),
  max: z.number().int(),
  default: z.number().int(),
});
const numberRule = z.object({
  type: z.literal("number"),
  worker,
  min: z.number(),
  max: z.number(),
  min_exclusive: z.boolean().optional(),
  default: z.number(),
});
function choiceRule<const T extends readonly [string, ...string[]]>(names: T) {
  return z.object({ type: z.literal("choice"), choices: z.array(z.enum(names)).nonempty(), default: z.enum(names) });
}
const METHODS = ["qlora", "lora"] as const;
const BACKENDS = ["builtin", "bitsandbytes", "none"] as const;
const backend = z.enum(BACKENDS);

/** The contract's shape. `strict`: a field added to the contract must be added here (and to the proto) too. */
const contractSchema = z.object({
  hyperparameters: z
    .object({
      method: choiceRule(METHODS),
      quant_backend: z.object({
        type: z.literal("choice"),
        choices: z.array(backend).nonempty(),
        default_by_method: z.object({ qlora: backend, lora: backend }),
        allowed_by_method: z.object({ qlora: z.array(backend), lora: z.array(backend) }),
      }),
      rank: intRule,
      alpha: numberRule,
      dropout: numberRule,
      target_modules: z.object({
        type: z.literal("names"),
        pattern: z.string(),
        default: z.array(z.string()).nonempty(),
      }),
      learning_rate: numberRule,
      lr_scheduler: choiceRule(["cosine", "linear", "constant"]),
      warmup_steps: intRule,
      epochs: numberRule,
      max_steps: intRule.extend({ default: z.null() }),
      micro_batch_size: intRule,
      gradient_accumulation_steps: intRule,
      max_seq_len: intRule,
      seed: intRule,
      eval_interval_steps: intRule,
      checkpoint_interval_steps: intRule,
      weight_decay: numberRule,
      compute_dtype: choiceRule(["auto", "fp32", "bf16", "fp16"]),
      gradient_checkpointing: z.object({ type: z.literal("bool"), default: z.boolean() }),
      max_grad_norm: numberRule,
    })
    .strict(),
});
export type HyperparameterContract = z.infer<typeof contractSchema>["hyperparameters"];
type ContractField = keyof HyperparameterContract;

function loadContract(path: string): HyperparameterContract {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, "utf8"));
  } catch (err) {
    throw new Error(`cannot read the hyperparameter contract ${path}: ${(err as Error).message}`);
  }
  const parsed = contractSchema.safeParse(raw);
  if (!parsed.success) {
    throw new Error(`the hyperparameter contract ${path} is malformed: ${z.prettifyError(parsed.error)}`);
  }
  return parsed.data.hyperparameters;
}

/** Defaults and limits of every hyperparameter, keyed by its proto field name. */
export const CONTRACT: HyperparameterContract = loadContract(CONTRACT_PATH);

// The worker's value names of the proto enums (the contract's choices are these names).
type WorkerMethod = (typeof METHODS)[number];
type WorkerBackend = (typeof BACKENDS)[number];
type WorkerScheduler = HyperparameterContract["lr_scheduler"]["default"];
type WorkerDtype = HyperparameterContract["compute_dtype"]["default"];

/** Proto enum value → the worker's name of it, per choice field (UNSPECIFIED is absent where it means "default"). */
export const WORKER_CHOICES = {
  method: { [TrainingMethod.QLORA]: "qlora", [TrainingMethod.LORA]: "lora" },
  quant_backend: {
    [QuantBackend.BUILTIN]: "builtin",
    [QuantBackend.BITSANDBYTES]: "bitsandbytes",
    [QuantBackend.NONE]: "none",
  },
  lr_scheduler: { [LrScheduler.COSINE]: "cosine", [LrScheduler.LINEAR]: "linear", [LrScheduler.CONSTANT]: "constant" },
  compute_dtype: {
    [ComputeDtype.UNSPECIFIED]: "auto",
    [ComputeDtype.FLOAT32]: "fp32",
    [ComputeDtype.BFLOAT16]: "bf16",
    [ComputeDtype.FLOAT16]: "fp16",
  },
} as const satisfies {
  method: Record<Exclude<TrainingMethod, TrainingMethod.UNSPECIFIED>, WorkerMethod>;
  quant_backend: Record<Exclude<QuantBackend, QuantBackend.UNSPECIFIED>, WorkerBackend>;
  lr_scheduler: Record<Exclude<LrScheduler, LrScheduler.UNSPECIFIED>, WorkerScheduler>;
  compute_dtype: Record<ComputeDtype, WorkerDtype>;
};

/** The proto enum value the worker calls `name`. */
function enumValue(table: Readonly<Record<number, string>>, name: string): number {
  const hit = Object.entries(table).find(([, w]) => w === name);
  if (hit === undefined) throw new Error(`${CONTRACT_PATH}: no proto value for "${name}"`);
  return Number(hit[0]);
}

const MODULE_NAME = new RegExp(CONTRACT.target_modules.pattern);

// ---------------------------------------------------------------------------------------------------------
// Validation

/** A hyperparameter problem, named by its field path in the request (e.g. `hyperparameters.rank`). */
export function invalidField(field: string, message: string): ConnectError {
  return new ConnectError(`${field}: ${message}`, Code.InvalidArgument);
}

type FieldOfType<T> = {
  [K in ContractField]: HyperparameterContract[K] extends { type: T } ? K : never;
}[ContractField];
type IntField = FieldOfType<"int">;
type NumberField = FieldOfType<"number">;

function checkInt(field: IntField, value: number): number {
  const { min, max } = CONTRACT[field];
  if (!Number.isInteger(value) || value < min || value > max) {
    throw invalidField(`hyperparameters.${field}`, `must be an integer in [${min}, ${max}], got ${value}`);
  }
  return value;
}

function checkNumber(field: NumberField, value: number): number {
  const { min, max, min_exclusive: minOpen = false } = CONTRACT[field];
  const ok = Number.isFinite(value) && (minOpen ? value > min : value >= min) && value <= max;
  if (!ok) {
    const range = `${minOpen ? "(" : "["}${min}, ${max}]`;
    throw invalidField(`hyperparameters.${field}`, `must be a number in ${range}, got ${value}`);
  }
  return value;
}

type ChoiceField = keyof typeof WORKER_CHOICES;

/** The proto enum value of the request, or the contract's default when it is UNSPECIFIED (0 in every enum). */
function choiceOrDefault(field: ChoiceField, value: number, defaultName: string): number {
  return value === 0 ? enumValue(WORKER_CHOICES[field], defaultName) : value;
}

/**
 * Checks an enum value is one the proto knows and the contract allows (`choices`: the worker's names) and
 * returns the worker's name of it.
 */
function checkChoice(
  field: ChoiceField,
  names: Readonly<Record<number, string>>,
  value: number,
  choices: readonly string[] = CONTRACT[field].choices,
): string {
  const table: Readonly<Record<number, string>> = WORKER_CHOICES[field];
  const name = table[value];
  if (name === undefined || !choices.includes(name)) {
    const allowed = Object.entries(table)
      .filter(([, w]) => choices.includes(w))
      .map(([k]) => names[Number(k)]);
    const given = names[value] === undefined ? `unknown value ${value}` : `${names[value]} is not allowed`;
    throw invalidField(`hyperparameters.${field}`, `${given}; expected one of ${allowed.join(", ")}`);
  }
  return name;
}

/**
 * Validates a request's hyperparameters against the contract and returns a copy with every default filled in.
 * Throws a ConnectError with Code.InvalidArgument whose message starts with the field's path.
 */
export function resolveHyperparameters(input: Hyperparameters | undefined): Hyperparameters {
  const hp = input ?? create(HyperparametersSchema);
  const c = CONTRACT;

  const method = choiceOrDefault("method", hp.method, c.method.default);
  const methodName = checkChoice("method", TrainingMethod, method) as WorkerMethod;
  const quantBackend = choiceOrDefault("quant_backend", hp.quantBackend, c.quant_backend.default_by_method[methodName]);
  const backendName = checkChoice("quant_backend", QuantBackend, quantBackend);
  if (!(c.quant_backend.allowed_by_method[methodName] as readonly string[]).includes(backendName)) {
    const backend = QuantBackend[quantBackend];
    throw invalidField(
      "hyperparameters.quant_backend",
      method === TrainingMethod.LORA
        ? `method LORA trains on an unquantized base, but quant_backend is ${backend}; use method QLORA or quant_backend NONE`
        : `method ${TrainingMethod[method]} cannot use quant_backend ${backend}`,
    );
  }

  const rank = checkInt("rank", hp.rank ?? c.rank.default);
  const alpha = checkNumber("alpha", hp.alpha ?? c.alpha.default);
  const dropout = checkNumber("dropout", hp.dropout ?? c.dropout.default);

  const targetModules = hp.targetModules.length > 0 ? [...hp.targetModules] : [...c.target_modules.default];
  const seen = new Set<string>();
  for (const [i, name] of targetModules.entries()) {
    if (!MODULE_NAME.test(name)) {
      throw invalidField(
        `hyperparameters.target_modules[${i}]`,
        `${JSON.stringify(name)} is not a module name (letters, digits, '_' and '.', e.g. q_proj)`,
      );
    }
    if (seen.has(name)) throw invalidField(`hyperparameters.target_modules[${i}]`, `"${name}" is listed twice`);
    seen.add(name);
  }

  const learningRate = checkNumber("learning_rate", hp.learningRate ?? c.learning_rate.default);
  const lrScheduler = choiceOrDefault("lr_scheduler", hp.lrScheduler, c.lr_scheduler.default);
  checkChoice("lr_scheduler", LrScheduler, lrScheduler);
  const warmupSteps = checkInt("warmup_steps", hp.warmupSteps ?? c.warmup_steps.default);

  let duration: Hyperparameters["duration"];
  switch (hp.duration.case) {
    case "epochs":
      duration = { case: "epochs", value: checkNumber("epochs", hp.duration.value) };
      break;
    case "maxSteps":
      duration = { case: "maxSteps", value: checkInt("max_steps", hp.duration.value) };
      break;
    default:
      duration = { case: "epochs", value: c.epochs.default };
  }

  const microBatchSize = checkInt("micro_batch_size", hp.microBatchSize ?? c.micro_batch_size.default);
  const gradientAccumulationSteps = checkInt(
    "gradient_accumulation_steps",
    hp.gradientAccumulationSteps ?? c.gradient_accumulation_steps.default,
  );
  const maxSeqLen = checkInt("max_seq_len", hp.maxSeqLen ?? c.max_seq_len.default);
  const seed = checkInt("seed", hp.seed ?? c.seed.default);
  const evalIntervalSteps = checkInt("eval_interval_steps", hp.evalIntervalSteps ?? c.eval_interval_steps.default);
  const checkpointIntervalSteps = checkInt(
    "checkpoint_interval_steps",
    hp.checkpointIntervalSteps ?? c.checkpoint_interval_steps.default,
  );
  const weightDecay = checkNumber("weight_decay", hp.weightDecay ?? c.weight_decay.default);
  const computeDtype = choiceOrDefault("compute_dtype", hp.computeDtype, c.compute_dtype.default);
  checkChoice("compute_dtype", ComputeDtype, computeDtype);
  const gradientCheckpointing = hp.gradientCheckpointing ?? c.gradient_checkpointing.default;
  const maxGradNorm = checkNumber("max_grad_norm", hp.maxGradNorm ?? c.max_grad_norm.default);

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
    computeDtype,
    gradientCheckpointing,
    maxGradNorm,
  });
}

// ---------------------------------------------------------------------------------------------------------
// The worker's job spec

/** The hyperparameter part of the worker's job spec (snake_case keys, the worker's value names). */
export interface WorkerHyperparameters {
  method: WorkerMethod;
  quant_backend: WorkerBackend;
  lora_r: number;
  lora_alpha: number;
  lora_dropout: number;
  target_modules: string[];
  learning_rate: number;
  lr_scheduler: WorkerScheduler;
  warmup_steps: number;
  weight_decay: number;
  micro_batch_size: number;
  gradient_accumulation_steps: number;
  max_seq_len: number;
  gradient_checkpointing: boolean;
  epochs: number;
  max_steps: number | null;
  /** 0: no validation loss. */
  eval_interval_steps: number;
  /** 0: checkpoints only on cancel and at the end. */
  checkpoint_interval_steps: number;
  seed: number;
  compute_dtype: WorkerDtype;
  max_grad_norm: number;
}

/** The worker's name of a (resolved) enum value, or `fallback` for UNSPECIFIED. */
function workerName<T extends Readonly<Record<number, string>>>(
  table: T,
  value: number,
  fallback: T[keyof T],
): T[keyof T] {
  return (table[value] as T[keyof T] | undefined) ?? fallback;
}

/** Maps resolved hyperparameters (see {@link resolveHyperparameters}) to the worker's spec fields. */
export function toWorkerHyperparameters(hp: Hyperparameters): WorkerHyperparameters {
  const c = CONTRACT;
  const method = workerName(WORKER_CHOICES.method, hp.method, c.method.default);
  return {
    method,
    quant_backend: workerName(WORKER_CHOICES.quant_backend, hp.quantBackend, c.quant_backend.default_by_method[method]),
    lora_r: hp.rank ?? c.rank.default,
    lora_alpha: hp.alpha ?? c.alpha.default,
    lora_dropout: hp.dropout ?? c.dropout.default,
    target_modules: hp.targetModules.length > 0 ? [...hp.targetModules] : [...c.target_modules.default],
    learning_rate: hp.learningRate ?? c.learning_rate.default,
    lr_scheduler: workerName(WORKER_CHOICES.lr_scheduler, hp.lrScheduler, c.lr_scheduler.default),
    warmup_steps: hp.warmupSteps ?? c.warmup_steps.default,
    weight_decay: hp.weightDecay ?? c.weight_decay.default,
    micro_batch_size: hp.microBatchSize ?? c.micro_batch_size.default,
    gradient_accumulation_steps: hp.gradientAccumulationSteps ?? c.gradient_accumulation_steps.default,
    max_seq_len: hp.maxSeqLen ?? c.max_seq_len.default,
    gradient_checkpointing: hp.gradientCheckpointing ?? c.gradient_checkpointing.default,
    epochs: hp.duration.case === "epochs" ? hp.duration.value : c.epochs.default,
    max_steps: hp.duration.case === "maxSteps" ? hp.duration.value : c.max_steps.default,
    eval_interval_steps: hp.evalIntervalSteps ?? c.eval_interval_steps.default,
    checkpoint_interval_steps: hp.checkpointIntervalSteps ?? c.checkpoint_interval_steps.default,
    seed: hp.seed ?? c.seed.default,
    compute_dtype: workerName(WORKER_CHOICES.compute_dtype, hp.computeDtype, c.compute_dtype.default),
    max_grad_norm: hp.maxGradNorm ?? c.max_grad_norm.default,
  };
}

/**
 * The request field (`hyperparameters.rank`) of a worker spec field (`lora_r`; `target_modules[1]` keeps its
 * index), or undefined when the worker field is not a hyperparameter.
 */
export function requestFieldOfWorkerField(workerField: string): string | undefined {
  const m = /^([a-z_]+)(\[\d+\])?$/.exec(workerField);
  if (!m) return undefined;
  const key = (Object.keys(CONTRACT) as ContractField[]).find((k) => {
    const rule = CONTRACT[k];
    return ("worker" in rule && rule.worker !== undefined ? rule.worker : k) === m[1];
  });
  return key === undefined ? undefined : `hyperparameters.${key}${m[2] ?? ""}`;
}
