import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { create, fromJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ComputeDtype,
  type Hyperparameters,
  HyperparametersSchema,
  LrScheduler,
  QuantBackend,
  TrainingMethod,
} from "@ragtune/proto";
import { describe, expect, it } from "vitest";
import {
  CONTRACT,
  requestFieldOfWorkerField,
  resolveHyperparameters,
  toWorkerHyperparameters,
  WORKER_CHOICES,
} from "./hyperparameters.js";

function invalid(init: Record<string, unknown>): ConnectError {
  try {
    resolveHyperparameters(create(HyperparametersSchema, init as never));
  } catch (err) {
    expect(err).toBeInstanceOf(ConnectError);
    return err as ConnectError;
  }
  throw new Error("expected an InvalidArgument error");
}

describe("resolveHyperparameters", () => {
  it("fills in the seed's defaults", () => {
    const hp = resolveHyperparameters(undefined);
    expect(hp.method).toBe(TrainingMethod.QLORA);
    expect(hp.quantBackend).toBe(QuantBackend.BUILTIN);
    expect(hp.rank).toBe(8);
    expect(hp.alpha).toBe(16);
    expect(hp.dropout).toBe(0.05);
    expect(hp.targetModules).toEqual(["q_proj", "k_proj", "v_proj", "o_proj"]);
    expect(hp.learningRate).toBe(2e-4);
    expect(hp.lrScheduler).toBe(LrScheduler.COSINE);
    expect(hp.warmupSteps).toBe(20);
    expect(hp.weightDecay).toBe(0.01);
    expect(hp.microBatchSize).toBe(4);
    expect(hp.gradientAccumulationSteps).toBe(4);
    expect(hp.maxSeqLen).toBe(1024);
    expect(hp.gradientCheckpointing).toBe(true);
    expect(hp.duration).toEqual({ case: "epochs", value: 1 });
    expect(hp.evalIntervalSteps).toBe(50);
    expect(hp.checkpointIntervalSteps).toBe(50);
    expect(hp.maxGradNorm).toBe(1);
  });

  it("keeps given values and maps them to the worker's spec", () => {
    const hp = resolveHyperparameters(
      create(HyperparametersSchema, {
        method: TrainingMethod.LORA,
        rank: 4,
        duration: { case: "maxSteps", value: 6 },
        maxSeqLen: 64,
        computeDtype: ComputeDtype.FLOAT32,
        checkpointIntervalSteps: 0,
        lrScheduler: LrScheduler.LINEAR,
      }),
    );
    expect(hp.quantBackend).toBe(QuantBackend.NONE);
    const spec = toWorkerHyperparameters(hp);
    expect(spec).toMatchObject({
      method: "lora",
      quant_backend: "none",
      lora_r: 4,
      max_steps: 6,
      max_seq_len: 64,
      compute_dtype: "fp32",
      lr_scheduler: "linear",
      lora_alpha: 16,
    });
    // 0 = only at cancel and at the end: the worker reads the contract's 0 the same way.
    expect(spec.checkpoint_interval_steps).toBe(0);
  });

  it.each([
    [{ rank: 0 }, "hyperparameters.rank"],
    [{ rank: 300 }, "hyperparameters.rank"],
    [{ rank: CONTRACT.rank.max + 1 }, "hyperparameters.rank"],
    [{ alpha: 0 }, "hyperparameters.alpha"],
    [{ dropout: 1 }, "hyperparameters.dropout"],
    [{ learningRate: 0 }, "hyperparameters.learning_rate"],
    [{ learningRate: Number.NaN }, "hyperparameters.learning_rate"],
    [{ duration: { case: "epochs", value: 0 } }, "hyperparameters.epochs"],
    [{ duration: { case: "maxSteps", value: 0 } }, "hyperparameters.max_steps"],
    [{ microBatchSize: 0 }, "hyperparameters.micro_batch_size"],
    [{ gradientAccumulationSteps: 0 }, "hyperparameters.gradient_accumulation_steps"],
    [{ maxSeqLen: 8 }, "hyperparameters.max_seq_len"],
    [{ maxSeqLen: 100_000 }, "hyperparameters.max_seq_len"],
    [{ weightDecay: -0.1 }, "hyperparameters.weight_decay"],
    [{ maxGradNorm: -1 }, "hyperparameters.max_grad_norm"],
    [{ targetModules: ["q_proj", "not a module"] }, "hyperparameters.target_modules[1]"],
    [{ targetModules: ["q_proj", "q_proj"] }, "hyperparameters.target_modules[1]"],
    [{ method: TrainingMethod.LORA, quantBackend: QuantBackend.BUILTIN }, "hyperparameters.quant_backend"],
    [{ method: 42 }, "hyperparameters.method"],
    [{ lrScheduler: 9 }, "hyperparameters.lr_scheduler"],
  ])("rejects %o naming %s", (init, field) => {
    const err = invalid(init);
    expect(err.code).toBe(Code.InvalidArgument);
    expect(err.rawMessage.startsWith(`${field}: `)).toBe(true);
  });
});

// ---------------------------------------------------------------------------------------------------------
// The shared cases: services/trainer/worker/tests/test_spec.py runs the same file through the worker's parse_spec.

interface SharedCase {
  values: Record<string, JsonValue>;
  verdict: "valid" | "invalid";
  field?: string;
  note?: string;
}
const CASES_PATH = fileURLToPath(new URL("../worker/tests/fixtures/hyperparameter-cases.json", import.meta.url));
const { cases } = JSON.parse(readFileSync(CASES_PATH, "utf8")) as { cases: SharedCase[] };

/** A case's values as proto JSON: choices from the worker's names to enum numbers (unknown names stay strings). */
function protoJson(values: SharedCase["values"]): JsonObject {
  const out: JsonObject = {};
  for (const [key, value] of Object.entries(values)) {
    const table: Readonly<Record<number, string>> | undefined = WORKER_CHOICES[key as keyof typeof WORKER_CHOICES];
    const hit = table && Object.entries(table).find(([, name]) => name === value);
    out[key] = hit ? Number(hit[0]) : value;
  }
  return out;
}

function workerKey(key: string): string {
  return (CONTRACT[key as keyof typeof CONTRACT] as { worker?: string }).worker ?? key;
}

describe("the hyperparameter contract's shared cases", () => {
  it("cover every field of the contract, with a valid and an invalid value each", () => {
    for (const key of Object.keys(CONTRACT)) {
      const verdicts = new Set(cases.filter((c) => key in c.values).map((c) => c.verdict));
      expect([...verdicts].sort(), key).toEqual(["invalid", "valid"]);
    }
  });

  it.each(cases.map((c) => [JSON.stringify(c.values), c] as const))("%s", (_, c) => {
    let hp: Hyperparameters;
    try {
      hp = fromJson(HyperparametersSchema, protoJson(c.values));
    } catch (err) {
      // A value the proto cannot hold (rank 2.5, seed -1): the API's decoder rejects it and names the field.
      expect(c.verdict, String(err)).toBe("invalid");
      const field = HyperparametersSchema.fields.find((f) => f.name === c.field);
      const named = field?.fieldKind === "enum" ? field.enum.typeName : `Hyperparameters.${c.field}`;
      expect(String(err)).toContain(named);
      return;
    }
    if (c.verdict === "valid") {
      const spec = toWorkerHyperparameters(resolveHyperparameters(hp)) as unknown as Record<string, unknown>;
      for (const [key, value] of Object.entries(c.values)) expect(spec[workerKey(key)], key).toEqual(value);
      return;
    }
    expect(c.verdict).toBe("invalid");
    let error: unknown;
    try {
      resolveHyperparameters(hp);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.InvalidArgument);
    const prefix = `hyperparameters.${c.field}: `;
    expect((error as ConnectError).rawMessage.slice(0, prefix.length)).toBe(prefix);
  });
});

describe("requestFieldOfWorkerField", () => {
  it("names the request field of a worker spec field", () => {
    expect(requestFieldOfWorkerField("lora_r")).toBe("hyperparameters.rank");
    expect(requestFieldOfWorkerField("learning_rate")).toBe("hyperparameters.learning_rate");
    expect(requestFieldOfWorkerField("target_modules[2]")).toBe("hyperparameters.target_modules[2]");
    expect(requestFieldOfWorkerField("train_file")).toBeUndefined();
    expect(requestFieldOfWorkerField("lora_r; drop")).toBeUndefined();
  });
});
