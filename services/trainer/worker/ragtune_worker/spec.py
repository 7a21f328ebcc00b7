"""The job spec (the `spec` of a train command) and the checks that run before any training starts.

Every problem a user can fix is raised as `UserError` with a message that names the field, file or module at
fault; the protocol turns it into a `failed` event with kind `user_error` and exit code 2.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
METHODS = ("qlora", "lora")
QUANT_BACKENDS = ("builtin", "bitsandbytes", "none")
COMPUTE_DTYPES = ("auto", "bf16", "fp16", "fp32")
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
MAX_LEARNING_RATE = 10.0


class UserError(Exception):
    """A problem with the job's input (spec, model folder, tokenizer, dataset) that the user can fix."""


class WorkerSystemError(Exception):
    """A failure of the training run itself (diverged loss, I/O, library errors)."""


@dataclass(frozen=True)
class JobSpec:
    """A validated training job. Defaults are the seed's QLoRA settings for Mistral-7B."""

    model_dir: Path
    train_file: Path
    output_dir: Path
    val_file: Path | None = None
    method: str = "qlora"
    quant_backend: str = "builtin"
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_steps: int = 20
    weight_decay: float = 0.01
    micro_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    max_seq_len: int = 1024
    gradient_checkpointing: bool = True
    epochs: float = 1
    max_steps: int | None = None
    eval_interval_steps: int = 50
    checkpoint_interval_steps: int = 50
    seed: int = 42
    compute_dtype: str = "auto"
    max_grad_norm: float = 1.0
    resume_from_checkpoint: Path | None = None
    job_id: str | None = None

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / "adapter"

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def adapter_gguf_path(self) -> Path:
        return self.output_dir / "adapter.gguf"


_FIELD_NAMES = {f.name for f in fields(JobSpec)}
_PATH_FIELDS = {"model_dir", "train_file", "output_dir", "val_file", "resume_from_checkpoint"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _int_in(raw: dict[str, Any], name: str, low: int, high: int) -> None:
    value = raw[name]
    if not _is_int(value) or not low <= value <= high:
        raise UserError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _number_in(raw: dict[str, Any], name: str, low: float, high: float, *, low_open: bool = False) -> None:
    value = raw[name]
    ok = _is_number(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise UserError(f"{name} must be a number in {bracket}{low}, {high}], got {value!r}")


def _choice(raw: dict[str, Any], name: str, choices: tuple[str, ...]) -> None:
    if raw[name] not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}, got {raw[name]!r}")


def parse_spec(raw: Any) -> JobSpec:
    """Check types and ranges of a spec object (already parsed from JSON) and fill in the defaults."""
    if not isinstance(raw, dict):
        raise UserError(f"spec must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _FIELD_NAMES)
    if unknown:
        raise UserError(f"unknown spec field(s): {', '.join(unknown)}")
    for required in ("model_dir", "train_file", "output_dir"):
        if not raw.get(required):
            raise UserError(f"spec field {required} is required")
    values: dict[str, Any] = {f.name: f.default for f in fields(JobSpec)}
    method = raw.get("method", "qlora")
    values["quant_backend"] = "builtin" if method == "qlora" else "none"
    values.update({k: v for k, v in raw.items() if v is not None})

    for name in _PATH_FIELDS:
        value = values[name]
        if value is not None and not (isinstance(value, str) and value):
            raise UserError(f"{name} must be a non-empty path string, got {value!r}")
    _choice(values, "method", METHODS)
    _choice(values, "quant_backend", QUANT_BACKENDS)
    if values["method"] == "lora" and values["quant_backend"] != "none":
        raise UserError(
            f"method lora trains on an unquantized base, but quant_backend is {values['quant_backend']!r}; "
            "use method qlora for a quantized base or quant_backend none"
        )
    _int_in(values, "lora_r", 1, 1024)
    _number_in(values, "lora_alpha", 0, 1e4, low_open=True)
    _number_in(values, "lora_dropout", 0, 0.9)
    targets = values["target_modules"]
    if (
        not isinstance(targets, list | tuple)
        or not targets
        or not all(isinstance(t, str) and t.strip() for t in targets)
    ):
        raise UserError(f"target_modules must be a non-empty list of module names, got {targets!r}")
    values["target_modules"] = tuple(targets)
    _number_in(values, "learning_rate", 0, MAX_LEARNING_RATE, low_open=True)
    _choice(values, "lr_scheduler", LR_SCHEDULERS)
    _int_in(values, "warmup_steps", 0, 1_000_000)
    _number_in(values, "weight_decay", 0, 1)
    _int_in(values, "micro_batch_size", 1, 1024)
    _int_in(values, "gradient_accumulation_steps", 1, 4096)
    _int_in(values, "max_seq_len", 8, 1_048_576)
    if not isinstance(values["gradient_checkpointing"], bool):
        raise UserError(
            f"gradient_checkpointing must be true or false, got {values['gradient_checkpointing']!r}"
        )
    _number_in(values, "epochs", 0, 10_000, low_open=True)
    if values["max_steps"] is not None:
        _int_in(values, "max_steps", 1, 10_000_000)
    _int_in(values, "eval_interval_steps", 1, 10_000_000)
    _int_in(values, "checkpoint_interval_steps", 1, 10_000_000)
    _int_in(values, "seed", 0, 2**32 - 1)
    _choice(values, "compute_dtype", COMPUTE_DTYPES)
    _number_in(values, "max_grad_norm", 0, 1e6)
    if values["job_id"] is not None and not isinstance(values["job_id"], str):
        raise UserError(f"job_id must be a string, got {values['job_id']!r}")

    for name in _PATH_FIELDS:
        if values[name] is not None:
            values[name] = Path(values[name])
    return JobSpec(**values)


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The model folder's config.json, checked for a supported architecture and present weights."""
    if not model_dir.is_dir():
        raise UserError(f"model_dir {model_dir} does not exist or is not a folder")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise UserError(f"model_dir {model_dir} has no config.json; it must be a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise UserError(f"{config_path} must hold a JSON object")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"unsupported architecture: model_type {model_type!r} in {config_path}; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    weights = (
        list(model_dir.glob("*.safetensors"))
        + list(model_dir.glob("model.safetensors.index.json"))
        + list(model_dir.glob("pytorch_model*.bin"))
    )
    if not weights:
        raise UserError(
            f"model_dir {model_dir} has no weights (no *.safetensors or pytorch_model*.bin files)"
        )
    return config


def check_resume_checkpoint(path: Path) -> None:
    if not (path / "trainer_state.json").is_file():
        raise UserError(
            f"resume_from_checkpoint {path} is not a training checkpoint (no trainer_state.json); "
            "pass a checkpoints/checkpoint-N folder of an earlier run"
        )
