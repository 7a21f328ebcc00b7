"""One training job: validate everything, then LoRA/QLoRA with transformers' Trainer and peft, then export.

`run_job(spec, emit, cancel)` drives the whole job and reports through `emit(event_type, **fields)`; it raises
`UserError` for bad input (always before training starts) and `WorkerSystemError` for a run that fails
(diverged loss) or cannot run here (`device` cuda without a CUDA device). Trainer does the optimisation
(AdamW, schedule with warmup, accumulation, clipping, gradient checkpointing, eval, checkpoints, exact
resume); the `JobCallback` below turns its logs and saves into protocol events and stops it at a step
boundary on cancel or on a non-finite loss.
"""

from __future__ import annotations

import importlib
import math
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from transformers import TrainerCallback

from ragtune_worker.data import CompletionCollator, ExampleDataset, load_examples, load_tokenizer
from ragtune_worker.spec import (
    INIT_ADAPTER_WEIGHTS,
    JobSpec,
    UserError,
    WorkerSystemError,
    check_init_adapter,
    check_resume_checkpoint,
    read_model_config,
)

Emit = Callable[..., Any]

# A loss that turns NaN/inf at or above this learning rate is blamed on the learning rate (a user error).
DIVERGENT_LEARNING_RATE = 1e-2


def resolve_compute_dtype(name: str, cuda: bool) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if cuda else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def resolve_device(requested: str) -> bool:
    """Whether the job trains on CUDA, for the spec's `device` (TRAINER_DEVICE of the trainer service).

    `cuda` without a usable GPU is a system error (the node, its driver or the image's torch build is at
    fault, not the job), so a GPU deployment never falls back to training on the CPU unnoticed. `auto` says
    on stderr when it falls back to the CPU.
    """
    available = torch.cuda.is_available()
    if requested == "cpu":
        return False
    if requested == "cuda" and not available:
        raise WorkerSystemError(
            "TRAINER_DEVICE=cuda but the worker sees no CUDA device (torch.cuda.is_available() is false; "
            f"torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none: a CPU-only build'}): "
            "check the pod's nvidia.com/gpu limit, the node's NVIDIA driver and the image's torch build, "
            "or set TRAINER_DEVICE=cpu (or auto) to train on the CPU",
            reason="CUDA_UNAVAILABLE",
        )
    if not available:
        print("device auto: no CUDA device visible to torch; training on the CPU", file=sys.stderr)
    return available


def peak_memory_bytes(cuda: bool) -> int:
    """Peak memory of this job: CUDA allocator peak on a GPU, the process's peak RSS on CPU."""
    if cuda:
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Distinct last-component names of the model's linear layers (plain or quantized), e.g. q_proj."""
    names: set[str] = set()
    for qualified, module in model.named_modules():
        if not qualified:
            continue
        if isinstance(module, torch.nn.Linear) or "Linear" in type(module).__name__:
            names.add(qualified.rsplit(".", 1)[-1])
    return sorted(names)


def check_target_modules(model: torch.nn.Module, targets: tuple[str, ...]) -> None:
    available = linear_module_names(model)
    missing = [t for t in targets if t not in available]
    if missing:
        raise UserError(
            f"target_modules {', '.join(missing)} match no linear module of the model; "
            f"available linear modules: {', '.join(available)}",
            reason="UNKNOWN_TARGET_MODULE",
            field=f"target_modules[{targets.index(missing[0])}]",
        )


def planned_steps(spec: JobSpec, rows: int) -> int:
    """Optimizer steps Trainer will run (same arithmetic as Trainer, with drop_last off)."""
    if spec.max_steps is not None:
        return spec.max_steps
    batches = math.ceil(rows / spec.micro_batch_size)
    per_epoch = max(math.ceil(batches / spec.gradient_accumulation_steps), 1)
    return math.ceil(spec.epochs * per_epoch)


def gguf_exporter() -> ModuleType:
    """The GGUF exporter module. Every finished job writes adapter.gguf, so a package the exporter needs
    (gguf, numpy, ...) missing from the worker's environment is a system error naming it, before training.
    """
    try:
        return importlib.import_module("ragtune_worker.gguf_export")
    except ImportError as error:
        raise WorkerSystemError(
            f"cannot export adapters to GGUF: the Python package {error.name or str(error)!r} is missing "
            f"from the worker's environment ({error}); install services/trainer/worker/requirements.txt",
            reason="MISSING_PACKAGE",
        ) from error


def load_base_model(spec: JobSpec, dtype: torch.dtype) -> torch.nn.Module:
    """The frozen base: quantized by the NF4 module for qlora backends, else loaded as is in `dtype`."""
    if spec.quant_backend == "none":
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(spec.model_dir), dtype=dtype, local_files_only=True
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise UserError(
                f"could not load the model weights from {spec.model_dir}: {error}",
                reason="INVALID_MODEL",
                field="model_dir",
            ) from error
    else:
        from ragtune_worker.nf4 import QuantBackendUnavailableError, load_quantized_base

        try:
            model = load_quantized_base(spec.model_dir, spec.quant_backend, dtype)
        except QuantBackendUnavailableError as error:
            raise UserError(str(error), reason="BACKEND_UNAVAILABLE", field="quant_backend") from error
        except (OSError, ValueError) as error:
            raise UserError(
                f"could not load and quantize the model from {spec.model_dir}: {error}",
                reason="INVALID_MODEL",
                field="model_dir",
            ) from error
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


class JobCallback(TrainerCallback):
    """Trainer logs → metrics events, saves → checkpoint events; cancel and non-finite loss stop the run."""

    def __init__(self, emit: Emit, cancel: threading.Event, checkpoints_dir: Path) -> None:
        self.emit = emit
        self.cancel = cancel
        self.checkpoints_dir = checkpoints_dir
        self.cancelled = False
        self.nonfinite: tuple[int, float] | None = None
        self.last_loss: float | None = None
        self.last_checkpoint: Path | None = None
        self._pending: dict[str, Any] | None = None
        self._last_time = time.perf_counter()
        self._last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = int(state.num_input_tokens_seen or 0)

    def on_step_end(self, args, state, control, **kwargs):
        if self.cancel.is_set() and not control.should_training_stop:
            self.cancelled = True
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            self.nonfinite = (state.global_step, loss)
            control.should_training_stop = True
            control.should_save = False
            control.should_evaluate = False
            return
        self.last_loss = loss
        now = time.perf_counter()
        tokens = int(state.num_input_tokens_seen or 0)
        elapsed = max(now - self._last_time, 1e-9)
        metrics = {
            "step": state.global_step,
            "epoch": round(float(state.epoch or 0.0), 6),
            "train_loss": loss,
            "learning_rate": float(logs.get("learning_rate", 0.0)),
            "tokens_per_second": round((tokens - self._last_tokens) / elapsed, 3),
            "peak_memory_bytes": peak_memory_bytes(cuda=not args.use_cpu),
        }
        if "grad_norm" in logs:
            metrics["grad_norm"] = float(logs["grad_norm"])
        self._last_time, self._last_tokens = now, tokens
        if control.should_evaluate:
            self._pending = metrics  # sent with the val loss of this step
        else:
            self.emit("metrics", **metrics)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        event = self._pending or {"step": state.global_step, "epoch": round(float(state.epoch or 0.0), 6)}
        self._pending = None
        if metrics and "eval_loss" in metrics:
            event["val_loss"] = float(metrics["eval_loss"])
        self.emit("metrics", **event)

    def on_save(self, args, state, control, **kwargs):
        path = self.checkpoints_dir / f"checkpoint-{state.global_step}"
        self.last_checkpoint = path
        self.emit("checkpoint", step=state.global_step, path=str(path))


@dataclass
class JobResult:
    """How the job ended ("finished" or "cancelled") and the trained peft model (base frozen)."""

    status: str
    model: torch.nn.Module | None
    steps: int


def load_init_adapter(model: torch.nn.Module, path: Path) -> int:
    """Copies a saved adapter's LoRA weights into the fresh peft model (warm start); returns their count.

    Every LoRA tensor of the model must come from the file with its shape, and the file must hold nothing
    else: a partial load would train a mix of old and fresh weights without saying so.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(path / INIT_ADAPTER_WEIGHTS))
    expected = get_peft_model_state_dict(model)

    def bad(message: str) -> UserError:
        return UserError(
            f"init_adapter {path}: {message}", reason="INVALID_INIT_ADAPTER", field="init_adapter"
        )

    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        detail = f"{len(missing)} LoRA tensor(s) of the job missing (e.g. {missing[0]})" if missing else ""
        detail += ("; " if detail else "") + (
            f"{len(extra)} unknown tensor(s) (e.g. {extra[0]})" if extra else ""
        )
        raise bad(f"its weights do not fit this base model and job: {detail}")
    for name, tensor in saved.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise bad(
                f"tensor {name} has shape {tuple(tensor.shape)}, the job's {tuple(expected[name].shape)} "
                "(trained on another base model?)"
            )
        if not torch.isfinite(tensor).all():
            raise bad(f"tensor {name} holds NaN or infinite values")
    set_peft_model_state_dict(model, saved)
    return len(saved)


def run_job(spec: JobSpec, emit: Emit, cancel: threading.Event) -> JobResult:
    """Run the job to its end, emitting events on the way; the final event is finished or cancelled."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments, enable_full_determinism, set_seed

    # --- validation: nothing below trains until the environment and all input are known to be good ---
    cuda = resolve_device(spec.device)
    exporter = gguf_exporter()
    config = read_model_config(spec.model_dir)
    if spec.resume_from_checkpoint is not None:
        check_resume_checkpoint(spec.resume_from_checkpoint)
    if spec.init_adapter is not None:
        check_init_adapter(spec)
    if spec.compute_dtype == "fp16" and not cuda:
        raise UserError(
            "compute_dtype fp16 needs a CUDA GPU; use fp32 or bf16 on CPU",
            reason="GPU_REQUIRED",
            field="compute_dtype",
        )
    if spec.quant_backend == "bitsandbytes" and not cuda:
        raise UserError(
            "quant_backend bitsandbytes needs a CUDA GPU; use quant_backend builtin on CPU",
            reason="GPU_REQUIRED",
            field="quant_backend",
        )
    max_positions = config.get("max_position_embeddings")
    if isinstance(max_positions, int) and spec.max_seq_len > max_positions:
        raise UserError(
            f"max_seq_len {spec.max_seq_len} exceeds the model's max_position_embeddings {max_positions}",
            reason="INVALID_VALUE",
            field="max_seq_len",
        )
    vocab_size = config.get("vocab_size")
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise UserError(
            f"{spec.model_dir / 'config.json'} has no valid vocab_size",
            reason="INVALID_MODEL",
            field="model_dir",
        )
    tokenizer = load_tokenizer(spec.model_dir, vocab_size)
    train_examples = load_examples(spec.train_file, tokenizer, spec.max_seq_len, field_name="train_file")
    val_examples = (
        load_examples(spec.val_file, tokenizer, spec.max_seq_len, field_name="val_file")
        if spec.val_file is not None
        else []
    )

    if cuda:
        set_seed(spec.seed)
    else:
        enable_full_determinism(spec.seed)
    dtype = resolve_compute_dtype(spec.compute_dtype, cuda)
    model = load_base_model(spec, dtype)
    check_target_modules(model, spec.target_modules)
    lora_config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=list(spec.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    if spec.quant_backend == "builtin":
        from ragtune_worker.nf4 import prepare_lora_config

        lora_config = prepare_lora_config(lora_config)
    model = get_peft_model(model, lora_config)
    warm_tensors = load_init_adapter(model, spec.init_adapter) if spec.init_adapter is not None else 0
    if spec.gradient_checkpointing:
        model.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    steps = planned_steps(spec, len(train_examples))
    emit(
        "validated",
        rows=len(train_examples),
        val_rows=len(val_examples),
        steps_planned=steps,
        trainable_params=trainable,
        total_params=total,
        method=spec.method,
        quant_backend=spec.quant_backend,
        compute_dtype=str(dtype).removeprefix("torch."),
        pad_token=tokenizer.pad_token,
        eos_token=tokenizer.eos_token,
        max_row_tokens=max(len(e.input_ids) for e in train_examples),
        init_adapter_tensors=warm_tensors,
    )
    if cancel.is_set():
        emit("cancelled", checkpoint_path=None, step=0)
        return JobResult("cancelled", model, 0)

    # --- training ---
    args = TrainingArguments(
        output_dir=str(spec.checkpoints_dir),
        max_steps=steps,
        per_device_train_batch_size=spec.micro_batch_size,
        per_device_eval_batch_size=spec.micro_batch_size,
        gradient_accumulation_steps=spec.gradient_accumulation_steps,
        learning_rate=spec.learning_rate,
        lr_scheduler_type=spec.lr_scheduler,
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm,  # 0: no clipping (Trainer clips only when > 0)
        optim="adamw_torch",
        gradient_checkpointing=spec.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if spec.gradient_checkpointing else None,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        logging_strategy="steps",
        logging_steps=1,
        logging_nan_inf_filter=False,
        include_num_input_tokens_seen="non_padding",
        # eval_interval_steps 0: no validation loss at all.
        eval_strategy="steps" if val_examples and spec.eval_interval_steps > 0 else "no",
        eval_steps=spec.eval_interval_steps or None,
        prediction_loss_only=True,
        save_strategy="steps",
        # checkpoint_interval_steps 0: only on cancel (JobCallback) and at the last step (Trainer's default).
        save_steps=spec.checkpoint_interval_steps or steps,
        seed=spec.seed,
        data_seed=spec.seed,
        full_determinism=not cuda,
        use_cpu=not cuda,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
    )
    callback = JobCallback(emit, cancel, spec.checkpoints_dir)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ExampleDataset(train_examples),
        eval_dataset=ExampleDataset(val_examples) if val_examples else None,
        data_collator=CompletionCollator(tokenizer.pad_token_id),
        callbacks=[callback],
    )
    emit("started", steps_planned=steps)
    resume = str(spec.resume_from_checkpoint) if spec.resume_from_checkpoint is not None else None
    trainer.train(resume_from_checkpoint=resume)

    if callback.nonfinite is not None:
        step, loss = callback.nonfinite
        if spec.learning_rate >= DIVERGENT_LEARNING_RATE:
            raise UserError(
                f"training diverged: the loss became {loss} at step {step} with learning_rate "
                f"{spec.learning_rate}; that learning rate is too high for LoRA (typical: 1e-4 to 5e-4)",
                reason="NAN_LOSS",
                field="learning_rate",
            )
        raise WorkerSystemError(
            f"training diverged: the loss became {loss} at step {step}; the run was stopped without a "
            "checkpoint (lower learning_rate or use compute_dtype fp32)",
            reason="NAN_LOSS",
        )
    final_step = trainer.state.global_step
    if callback.cancelled and final_step < steps:
        emit("cancelled", checkpoint_path=str(callback.last_checkpoint), step=final_step)
        return JobResult("cancelled", model, final_step)

    # --- outputs ---
    model.save_pretrained(str(spec.adapter_dir))
    exporter.export_lora_gguf(spec.adapter_dir, spec.model_dir, spec.adapter_gguf_path)
    emit(
        "finished",
        steps=final_step,
        final_loss=callback.last_loss,
        adapter_dir=str(spec.adapter_dir),
        gguf_path=str(spec.adapter_gguf_path),
    )
    return JobResult("finished", model, final_step)
