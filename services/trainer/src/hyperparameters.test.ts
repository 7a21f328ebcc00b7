import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ComputeDtype,
  HyperparametersSchema,
  LrScheduler,
  QuantBackend,
  TrainingMethod,
} from "@ragtune/proto";
import { describe, expect, it } from "vitest";
import { resolveHyperparameters, toWorkerHyperparameters } from "./hyperparameters.js";

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
    // 0 = only at cancel and at the end; the worker takes a step count >= 1.
    expect(spec.checkpoint_interval_steps).toBeGreaterThan(1_000_000);
  });

  it.each([
    [{ rank: 0 }, "hyperparameters.rank"],
    [{ rank: 300 }, "hyperparameters.rank"],
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
