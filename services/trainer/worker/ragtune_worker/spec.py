"""The job spec (the `spec` of a train command) and the checks that run before any training starts.

Every problem a user can fix is raised as `UserError` with a message that names the field, file or module at
fault, a machine-readable reason and the spec field to blame; the protocol turns it into a `failed` event with
kind `user_error` and exit code 2. The hyperparameters' defaults and limits are not in this file: they are the
contract hyperparameters.json, which the trainer service reads as well.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

#: Where the job trains (`device`, set by the trainer service from TRAINER_DEVICE, not by the user): `auto`
#: takes the GPU when torch sees one and the CPU otherwise, `cuda` fails the job when there is none, `cpu`
#: never uses it.
DEVICES = ("auto", "cuda", "cpu")

#: The hyperparameter contract shared with the trainer service (defaults and limits; see the file's $comment).
CONTRACT: dict[str, dict[str, Any]] = json.loads(
    resources.files("ragtune_worker").joinpath("hyperparameters.json").read_text(encoding="utf-8")
)["hyperparameters"]


def worker_field(contract_key: str) -> str:
    """The job-spec key of a contract field (`rank` → `lora_r`)."""
    return CONTRACT[contract_key].get("worker", contract_key)


def _default(contract_key: str) -> Any:
    rule = CONTRACT[contract_key]
    if "default_by_method" in rule:
        return rule["default_by_method"][CONTRACT["method"]["default"]]
    default = rule["default"]
    return tuple(default) if isinstance(default, list) else default


class WorkerError(Exception):
    """A failure the worker reports: a message, an UPPER_SNAKE_CASE `reason` and, where one is to blame, the
    spec `field` (e.g. `train_file`, `lora_r`, `target_modules[1]`) and the 1-based `line` of that file.
    """

    kind = "system_error"

    def __init__(
        self, message: str, *, reason: str, field: str | None = None, line: int | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.line = line


class UserError(WorkerError):
    """A problem with the job's input (spec, model folder, tokenizer, dataset) that the user can fix."""

    kind = "user_error"


class WorkerSystemError(WorkerError):
    """A failure of the training run itself (diverged loss, I/O, library errors, a broken environment)."""

    kind = "system_error"


@dataclass(frozen=True)
class JobSpec:
    """A validated training job. Hyperparameter defaults come from the contract (hyperparameters.json)."""

    model_dir: Path
    train_file: Path
    output_dir: Path
    val_file: Path | None = None
    method: str = _default("method")
    quant_backend: str = _default("quant_backend")
    lora_r: int = _default("rank")
    lora_alpha: float = _default("alpha")
    lora_dropout: float = _default("dropout")
    target_modules: tuple[str, ...] = _default("target_modules")
    learning_rate: float = _default("learning_rate")
    lr_scheduler: str = _default("lr_scheduler")
    warmup_steps: int = _default("warmup_steps")
    weight_decay: float = _default("weight_decay")
    micro_batch_size: int = _default("micro_batch_size")
    gradient_accumulation_steps: int = _default("gradient_accumulation_steps")
    max_seq_len: int = _default("max_seq_len")
    gradient_checkpointing: bool = _default("gradient_checkpointing")
    epochs: float = _default("epochs")
    max_steps: int | None = _default("max_steps")
    # 0: no validation loss at all.
    eval_interval_steps: int = _default("eval_interval_steps")
    # 0: checkpoints only on cancel and at the end.
    checkpoint_interval_steps: int = _default("checkpoint_interval_steps")
    seed: int = _default("seed")
    compute_dtype: str = _default("compute_dtype")
    max_grad_norm: float = _default("max_grad_norm")
    resume_from_checkpoint: Path | None = None
    # Warm start: a PEFT adapter folder (adapter_config.json, adapter_model.safetensors) of an earlier job
    # on the same base model whose LoRA weights the job starts from; rank and target modules as the job's.
    init_adapter: Path | None = None
    job_id: str | None = None
    device: str = "auto"

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
_PATH_FIELDS = {"model_dir", "train_file", "output_dir", "val_file", "resume_from_checkpoint", "init_adapter"}
_HYPERPARAMETER_FIELDS = {worker_field(key) for key in CONTRACT}
assert _HYPERPARAMETER_FIELDS <= _FIELD_NAMES, _HYPERPARAMETER_FIELDS - _FIELD_NAMES


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def _invalid(name: str, message: str) -> UserError:
    return UserError(message, reason="INVALID_VALUE", field=name)


def _check_names(name: str, value: Any, pattern: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise _invalid(name, f"{name} must be a non-empty list of module names, got {value!r}")
    seen: set[str] = set()
    for index, item in enumerate(value):
        at = f"{name}[{index}]"
        # fullmatch: with re.match, `$` would also accept a trailing newline (JavaScript's `$` does not).
        if not isinstance(item, str) or re.fullmatch(pattern, item) is None:
            raise _invalid(
                at, f"{at}: {item!r} is not a module name (letters, digits, '_' and '.', e.g. q_proj)"
            )
        if item in seen:
            raise _invalid(at, f"{at}: {item!r} is listed twice")
        seen.add(item)
    return tuple(value)


def _check(name: str, value: Any, rule: dict[str, Any]) -> Any:
    """`value` checked against its contract rule (the same checks as the service's); returns it normalized."""
    kind = rule["type"]
    if kind == "int":
        low, high = rule["min"], rule["max"]
        if not _is_int(value) or not low <= value <= high:
            raise _invalid(name, f"{name} must be an integer in [{low}, {high}], got {value!r}")
    elif kind == "number":
        low, high, low_open = rule["min"], rule["max"], rule.get("min_exclusive", False)
        ok = _is_number(value) and (value > low if low_open else value >= low) and value <= high
        if not ok:
            bracket = "(" if low_open else "["
            raise _invalid(name, f"{name} must be a number in {bracket}{low}, {high}], got {value!r}")
    elif kind == "choice":
        if value not in rule["choices"]:
            raise _invalid(name, f"{name} must be one of {', '.join(rule['choices'])}, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _invalid(name, f"{name} must be true or false, got {value!r}")
    elif kind == "names":
        return _check_names(name, value, rule["pattern"])
    else:
        raise AssertionError(f"hyperparameters.json: unknown type {kind!r} of {name}")
    return value


def parse_spec(raw: Any) -> JobSpec:
    """Check types and ranges of a spec object (already parsed from JSON) and fill in the defaults."""
    if not isinstance(raw, dict):
        raise UserError(f"spec must be a JSON object, got {type(raw).__name__}", reason="INVALID_SPEC")
    unknown = sorted(set(raw) - _FIELD_NAMES)
    if unknown:
        raise UserError(
            f"unknown spec field(s): {', '.join(unknown)}", reason="UNKNOWN_FIELD", field=unknown[0]
        )
    for required in ("model_dir", "train_file", "output_dir"):
        if not raw.get(required):
            raise UserError(f"spec field {required} is required", reason="MISSING_FIELD", field=required)
    values: dict[str, Any] = {f.name: f.default for f in fields(JobSpec)}
    method = raw.get("method", values["method"])
    backends = CONTRACT["quant_backend"]["default_by_method"]
    if method in backends:
        values["quant_backend"] = backends[method]
    values.update({k: v for k, v in raw.items() if v is not None})

    for name in _PATH_FIELDS:
        value = values[name]
        if value is not None and not (isinstance(value, str) and value):
            raise _invalid(name, f"{name} must be a non-empty path string, got {value!r}")
    for key, rule in CONTRACT.items():
        name = worker_field(key)
        if name == "max_steps" and values[name] is None:
            continue  # unset: epochs decide
        values[name] = _check(name, values[name], rule)
    allowed = CONTRACT["quant_backend"]["allowed_by_method"][values["method"]]
    if values["quant_backend"] not in allowed:
        backend = values["quant_backend"]
        hint = (
            f"quant_backend {backend!r} does not go with method lora, which trains on an unquantized base; "
            "use method qlora for a quantized base or quant_backend none"
            if values["method"] == "lora"
            else f"quant_backend {backend!r} does not go with method {values['method']} "
            f"(allowed: {', '.join(allowed)})"
        )
        raise _invalid("quant_backend", hint)
    if values["device"] not in DEVICES:
        raise _invalid("device", f"device must be one of {', '.join(DEVICES)}, got {values['device']!r}")
    if values["job_id"] is not None and not isinstance(values["job_id"], str):
        raise _invalid("job_id", f"job_id must be a string, got {values['job_id']!r}")

    for name in _PATH_FIELDS:
        if values[name] is not None:
            values[name] = Path(values[name])
    return JobSpec(**values)


def read_model_config(model_dir: Path) -> dict[str, Any]:
    """The model folder's config.json, checked for a supported architecture and present weights."""
    if not model_dir.is_dir():
        raise UserError(
            f"model_dir {model_dir} does not exist or is not a folder",
            reason="MODEL_NOT_FOUND",
            field="model_dir",
        )
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise UserError(
            f"model_dir {model_dir} has no config.json; it must be a Hugging Face model folder",
            reason="INVALID_MODEL",
            field="model_dir",
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{config_path} is not valid JSON: {error}", reason="INVALID_MODEL", field="model_dir"
        ) from error
    if not isinstance(config, dict):
        raise UserError(f"{config_path} must hold a JSON object", reason="INVALID_MODEL", field="model_dir")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"unsupported architecture: model_type {model_type!r} in {config_path}; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
            reason="UNSUPPORTED_ARCHITECTURE",
            field="model_dir",
        )
    weights = (
        list(model_dir.glob("*.safetensors"))
        + list(model_dir.glob("model.safetensors.index.json"))
        + list(model_dir.glob("pytorch_model*.bin"))
    )
    if not weights:
        raise UserError(
            f"model_dir {model_dir} has no weights (no *.safetensors or pytorch_model*.bin files)",
            reason="INVALID_MODEL",
            field="model_dir",
        )
    return config


def check_resume_checkpoint(path: Path) -> None:
    if not (path / "trainer_state.json").is_file():
        raise UserError(
            f"resume_from_checkpoint {path} is not a training checkpoint (no trainer_state.json); "
            "pass a checkpoints/checkpoint-N folder of an earlier run",
            reason="INVALID_CHECKPOINT",
            field="resume_from_checkpoint",
        )


INIT_ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_init_adapter(spec: JobSpec) -> None:
    """The warm-start adapter folder holds a LoRA adapter of the job's rank, alpha and target modules."""
    path = spec.init_adapter
    assert path is not None

    def bad(message: str) -> UserError:
        return UserError(
            f"init_adapter {path}: {message}", reason="INVALID_INIT_ADAPTER", field="init_adapter"
        )

    config_path = path / "adapter_config.json"
    if not config_path.is_file() or not (path / INIT_ADAPTER_WEIGHTS).is_file():
        raise bad(f"not a PEFT adapter folder (it needs adapter_config.json and {INIT_ADAPTER_WEIGHTS})")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise bad(f"adapter_config.json is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise bad("adapter_config.json is not a LoRA adapter's (peft_type LORA)")
    if config.get("modules_to_save"):
        raise bad(
            f"the adapter also trains whole modules (modules_to_save {config['modules_to_save']}); "
            "only LoRA adapters warm-start"
        )
    if config.get("r") != spec.lora_r:
        raise bad(
            f"the adapter has rank {config.get('r')}, the job lora_r {spec.lora_r}; "
            "a warm start keeps the rank"
        )
    if config.get("lora_alpha") != spec.lora_alpha:
        raise bad(
            f"the adapter has alpha {config.get('lora_alpha')}, the job lora_alpha {spec.lora_alpha}; "
            "a warm start keeps it"
        )
    targets = config.get("target_modules")
    if not isinstance(targets, list) or sorted(targets) != sorted(spec.target_modules):
        raise bad(
            f"the adapter targets {targets}, the job {list(spec.target_modules)}; "
            "a warm start keeps the target modules"
        )
