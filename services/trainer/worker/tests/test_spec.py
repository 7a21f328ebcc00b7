"""The job spec: seed defaults, and every bad input rejected as a user error naming the problem."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import FIXTURES, small_spec

from ragtune_worker.spec import CONTRACT, UserError, parse_spec, read_model_config, worker_field

SHARED_CASES: list[dict[str, Any]] = json.loads((FIXTURES / "hyperparameter-cases.json").read_text())["cases"]
SPECIAL_NUMBERS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def test_defaults_are_the_seed_settings_and_qlora_uses_the_builtin_nf4_base(tmp_path: Path) -> None:
    spec = parse_spec({"model_dir": "m", "train_file": "t.jsonl", "output_dir": str(tmp_path)})
    assert (spec.method, spec.quant_backend) == ("qlora", "builtin")
    assert (spec.lora_r, spec.lora_alpha, spec.lora_dropout) == (8, 16, 0.05)
    assert spec.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert (spec.learning_rate, spec.lr_scheduler, spec.warmup_steps, spec.weight_decay) == (
        2e-4,
        "cosine",
        20,
        0.01,
    )
    assert (spec.micro_batch_size, spec.gradient_accumulation_steps, spec.max_seq_len) == (4, 4, 1024)
    assert spec.gradient_checkpointing is True
    assert (spec.epochs, spec.max_steps, spec.eval_interval_steps, spec.checkpoint_interval_steps) == (
        1,
        None,
        50,
        50,
    )
    assert (spec.seed, spec.compute_dtype, spec.max_grad_norm) == (42, "auto", 1.0)
    assert spec.adapter_dir == tmp_path / "adapter"
    assert spec.checkpoints_dir == tmp_path / "checkpoints"
    lora = parse_spec({"model_dir": "m", "train_file": "t", "output_dir": "o", "method": "lora"})
    assert lora.quant_backend == "none"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("lora_r", 0, "lora_r must be an integer in [1, 64]"),
        ("lora_r", 2.5, "lora_r must be an integer"),
        ("lora_alpha", -1, "lora_alpha must be a number in (0"),
        ("lora_dropout", 1.5, "lora_dropout must be a number in [0, 0.9]"),
        ("learning_rate", 0, "learning_rate must be a number in (0, 1]"),
        ("learning_rate", 1e6, "learning_rate must be a number in (0, 1]"),
        ("learning_rate", "fast", "learning_rate must be a number"),
        ("lr_scheduler", "exotic", "lr_scheduler must be one of cosine, linear, constant"),
        ("lr_scheduler", "polynomial", "lr_scheduler must be one of cosine, linear, constant"),
        ("warmup_steps", -1, "warmup_steps must be an integer in [0"),
        ("weight_decay", 2, "weight_decay must be a number in [0, 1]"),
        ("micro_batch_size", 0, "micro_batch_size must be an integer in [1, 1024]"),
        ("gradient_accumulation_steps", 0, "gradient_accumulation_steps must be an integer in [1, 4096]"),
        ("max_seq_len", 4, "max_seq_len must be an integer in [16, 32768]"),
        ("gradient_checkpointing", "yes", "gradient_checkpointing must be true or false"),
        ("epochs", 0, "epochs must be a number in (0"),
        ("max_steps", 0, "max_steps must be an integer in [1"),
        ("eval_interval_steps", -1, "eval_interval_steps must be an integer in [0"),
        ("checkpoint_interval_steps", True, "checkpoint_interval_steps must be an integer"),
        ("seed", -5, "seed must be an integer in [0"),
        ("compute_dtype", "int8", "compute_dtype must be one of auto, fp32, bf16, fp16"),
        ("max_grad_norm", -1, "max_grad_norm must be a number in [0"),
        ("method", "full", "method must be one of qlora, lora"),
        ("quant_backend", "gptq", "quant_backend must be one of builtin, bitsandbytes, none"),
        ("target_modules", [], "target_modules must be a non-empty list"),
        ("target_modules", "q_proj", "target_modules must be a non-empty list"),
        ("target_modules", ["q_proj", 7], "target_modules[1]: 7 is not a module name"),
    ],
)
def test_out_of_range_hyperparameters_name_the_field_and_range(
    field: str, value: object, expected: str
) -> None:
    raw = small_spec(Path("m"), Path("o"))
    raw[field] = value
    with pytest.raises(
        UserError, match=expected.replace("(", r"\(").replace("[", r"\[").replace("]", r"\]")
    ) as caught:
        parse_spec(raw)
    assert caught.value.reason == "INVALID_VALUE"
    assert caught.value.field == expected.split(" ")[0].removesuffix(":")


def worker_spec(values: dict[str, Any]) -> dict[str, Any]:
    """A case's values (contract names, proto-JSON special numbers) as a worker spec."""
    raw: dict[str, Any] = {"model_dir": "m", "train_file": "t.jsonl", "output_dir": "o"}
    for key, value in values.items():
        if CONTRACT[key]["type"] == "number" and isinstance(value, str):
            value = SPECIAL_NUMBERS.get(value, value)
        raw[worker_field(key)] = value
    return raw


@pytest.mark.parametrize("case", SHARED_CASES, ids=lambda case: json.dumps(case["values"]))
def test_shared_hyperparameter_cases_get_the_same_verdict_as_in_the_service(case: dict[str, Any]) -> None:
    # The same file drives services/trainer/src/hyperparameters.test.ts.
    raw = worker_spec(case["values"])
    if case["verdict"] == "valid":
        spec = parse_spec(raw)
        for key, value in case["values"].items():
            expected = tuple(value) if isinstance(value, list) else value
            assert getattr(spec, worker_field(key)) == expected
        return
    assert case["verdict"] == "invalid"
    with pytest.raises(UserError) as caught:
        parse_spec(raw)
    key, index, rest = case["field"].partition("[")
    field = worker_field(key) + index + rest
    assert (caught.value.reason, caught.value.field) == ("INVALID_VALUE", field)
    assert str(caught.value).startswith(field), str(caught.value)


def test_every_contract_field_is_in_the_shared_cases_both_valid_and_invalid() -> None:
    for key in CONTRACT:
        verdicts = {case["verdict"] for case in SHARED_CASES if key in case["values"]}
        assert verdicts == {"valid", "invalid"}, key


def test_unknown_fields_missing_fields_and_conflicting_method_are_user_errors() -> None:
    with pytest.raises(UserError, match="unknown spec field.*lerning_rate"):
        parse_spec({"model_dir": "m", "train_file": "t", "output_dir": "o", "lerning_rate": 1e-4})
    with pytest.raises(UserError, match="train_file is required"):
        parse_spec({"model_dir": "m", "output_dir": "o"})
    with pytest.raises(UserError, match="spec must be a JSON object"):
        parse_spec(["model_dir"])
    with pytest.raises(
        UserError,
        match="quant_backend 'builtin' does not go with method lora, which trains on an unquantized base",
    ):
        parse_spec(
            {
                "model_dir": "m",
                "train_file": "t",
                "output_dir": "o",
                "method": "lora",
                "quant_backend": "builtin",
            }
        )


def test_device_defaults_to_auto_and_accepts_only_auto_cuda_cpu() -> None:
    minimal = {"model_dir": "m", "train_file": "t", "output_dir": "o"}
    assert parse_spec(minimal).device == "auto"
    assert parse_spec({**minimal, "device": "cuda"}).device == "cuda"
    with pytest.raises(UserError, match="device must be one of auto, cuda, cpu, got 'gpu'") as caught:
        parse_spec({**minimal, "device": "gpu"})
    assert (caught.value.reason, caught.value.field) == ("INVALID_VALUE", "device")


def test_model_folder_checks_name_the_problem(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(UserError, match="does not exist or is not a folder"):
        read_model_config(tmp_path / "nowhere")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        read_model_config(empty)

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(UserError, match=r"config.json is not valid JSON"):
        read_model_config(broken)

    gpt2 = tmp_path / "gpt2"
    shutil.copytree(tiny_model_dir, gpt2)
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(UserError, match="unsupported architecture: model_type 'gpt2'.*llama, mistral, qwen2"):
        read_model_config(gpt2)

    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(UserError, match="has no weights"):
        read_model_config(no_weights)

    assert read_model_config(tiny_model_dir)["model_type"] == "llama"
