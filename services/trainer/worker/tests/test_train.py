"""Training jobs on the tiny model, in process: loss, learned EOS, frozen base, adapter round trip, cancel and
exact resume, divergence, and bad input rejected before training starts."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import TRAIN_FILE, small_spec
from safetensors.torch import load_file, save_file

from ragtune_worker.spec import UserError, WorkerSystemError

ATTN_AND_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def baseline(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted 8-step plain-LoRA run with eval and checkpoints every 4 steps."""
    from conftest import Events

    from ragtune_worker.spec import parse_spec
    from ragtune_worker.train import run_job

    output = tmp_path_factory.mktemp("baseline")
    events = Events()
    spec = small_spec(tiny_model_dir, output, gradient_checkpointing=True)
    result = run_job(parse_spec(spec), events, events.cancel)
    return spec, result, events, output


def test_metrics_checkpoints_and_finished_events(baseline) -> None:
    _, result, events, output = baseline
    assert result.status == "finished"
    assert events.types[:2] == ["validated", "started"]
    assert events.types[-1] == "finished"
    validated = events.of("validated")[0]
    assert validated["rows"] == 36 and validated["val_rows"] == 6 and validated["steps_planned"] == 8
    assert 0 < validated["trainable_params"] < validated["total_params"]
    train_metrics = [m for m in events.of("metrics") if "train_loss" in m]
    assert [m["step"] for m in train_metrics] == list(range(1, 9))
    for m in train_metrics:
        assert {"epoch", "learning_rate", "tokens_per_second", "peak_memory_bytes"} <= m.keys()
        assert m["tokens_per_second"] > 0 and m["peak_memory_bytes"] > 10_000_000
    assert [m["step"] for m in events.of("metrics") if "val_loss" in m] == [4, 8]
    checkpoints = events.of("checkpoint")
    assert [c["step"] for c in checkpoints] == [4, 8]
    for c in checkpoints:
        assert Path(c["path"]) == output / "checkpoints" / f"checkpoint-{c['step']}"
        assert (Path(c["path"]) / "optimizer.pt").is_file()
    finished = events.of("finished")[0]
    assert finished["steps"] == 8 and finished["final_loss"] == train_metrics[-1]["train_loss"]
    assert Path(finished["adapter_dir"]) == output / "adapter"


def test_loss_falls(baseline) -> None:
    _, _, events, _ = baseline
    losses = events.train_losses()
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1
    val = [m["val_loss"] for m in events.of("metrics") if "val_loss" in m]
    assert val[1] < val[0]


def test_base_weights_are_unchanged_and_only_lora_weights_are_saved(baseline, tiny_model_dir: Path) -> None:
    _, result, _, output = baseline
    original = load_file(tiny_model_dir / "model.safetensors")
    trained = {
        name.removeprefix("base_model.model.").replace(".base_layer", ""): tensor
        for name, tensor in result.model.state_dict().items()
        if "lora_" not in name
    }
    assert set(trained) == set(original)
    for name, tensor in original.items():
        assert torch.equal(trained[name], tensor), name
    saved = load_file(output / "adapter" / "adapter_model.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)
    config = json.loads((output / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]


def test_saved_adapter_loads_into_a_fresh_model_with_the_same_logits(baseline, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, result, _, output = baseline
    fresh = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), output / "adapter"
    )
    ids = torch.tensor([[1, 733, 16289, 28793, 1824, 349, 1500, 28804, 733, 28748, 16289, 28793]])
    trained = result.model.eval()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        actual = fresh.eval()(input_ids=ids).logits
        with trained.disable_adapter():
            base = trained(input_ids=ids).logits
    assert torch.allclose(actual, expected, atol=1e-5)
    assert not torch.allclose(base, expected, atol=1e-4)  # the adapter really changes the model


def test_cancel_saves_a_checkpoint_and_resume_matches_the_uninterrupted_run(
    baseline, run_in_process, tmp_path: Path
) -> None:
    spec, _, base_events, _ = baseline
    interrupted = {**spec, "output_dir": str(tmp_path / "interrupted")}
    result, events = run_in_process(interrupted, cancel_after_step=3)
    assert result.status == "cancelled"
    cancelled = events.of("cancelled")[0]
    step = cancelled["step"]
    assert 3 < step < 8
    checkpoint = Path(cancelled["checkpoint_path"])
    assert checkpoint == tmp_path / "interrupted" / "checkpoints" / f"checkpoint-{step}"
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert events.of("checkpoint")[-1]["path"] == str(checkpoint)
    assert "finished" not in events.types
    # same seed, same data order, same numbers: the run is deterministic on CPU up to the cancel
    assert events.train_losses() == base_events.train_losses()[:step]

    resumed_spec = {**interrupted, "resume_from_checkpoint": str(checkpoint)}
    resumed, resumed_events = run_in_process(resumed_spec)
    assert resumed.status == "finished"
    finished = resumed_events.of("finished")[0]
    expected = base_events.of("finished")[0]
    assert finished["steps"] == expected["steps"] == 8
    assert [m["step"] for m in resumed_events.of("metrics") if "train_loss" in m] == list(range(step + 1, 9))
    assert math.isclose(finished["final_loss"], expected["final_loss"], rel_tol=0.01)


def test_the_trained_adapter_answers_and_then_stops_with_eos(tiny_model_dir: Path, run_in_process, tmp_path):
    """The seed masked every EOS (pad = EOS) and its model never stopped; here EOS is a learned target."""
    from transformers import AutoTokenizer

    rows = [json.loads(line) for line in TRAIN_FILE.read_text().splitlines()[:4]]
    train = tmp_path / "four.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = small_spec(
        tiny_model_dir,
        tmp_path / "out",
        train_file=str(train),
        val_file=None,
        max_steps=50,
        learning_rate=1e-2,
        warmup_steps=2,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=ATTN_AND_MLP,
        checkpoint_interval_steps=50,
    )
    result, _ = run_in_process(spec)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = result.model.eval()
    for row in rows:
        ids = tokenizer(row["prompt"], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=24,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        generated = out[0, ids.shape[1] :].tolist()
        answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
        assert generated == answer + [tokenizer.eos_token_id], (
            row["completion"],
            tokenizer.decode(generated),
        )


def poisoned_copy(tiny_model_dir: Path, target: Path) -> Path:
    """The tiny model with one inf weight: the loss is non-finite from the first step."""
    shutil.copytree(tiny_model_dir, target)
    weights = load_file(target / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"][0, 0] = float("inf")
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_non_finite_weights_stop_with_a_system_error(tiny_model_dir, run_in_process, tmp_path) -> None:
    spec = small_spec(poisoned_copy(tiny_model_dir, tmp_path / "poisoned"), tmp_path / "out", val_file=None)
    with pytest.raises(
        WorkerSystemError, match=r"training diverged: the loss became (nan|inf) at step 1"
    ) as caught:
        run_in_process(spec)
    assert (caught.value.reason, caught.value.field) == ("NAN_LOSS", None)
    assert not list((tmp_path / "out").glob("checkpoints/checkpoint-*"))


def test_a_non_finite_loss_at_a_high_learning_rate_blames_the_learning_rate(
    tiny_model_dir, run_in_process, tmp_path
) -> None:
    spec = small_spec(
        poisoned_copy(tiny_model_dir, tmp_path / "poisoned"),
        tmp_path / "out",
        learning_rate=0.5,
        warmup_steps=0,
        val_file=None,
        max_steps=3,
    )
    with pytest.raises(
        UserError, match=r"training diverged: the loss became (nan|inf) at step 1 with learning_rate 0.5; "
    ) as caught:
        run_in_process(spec)
    assert (caught.value.reason, caught.value.field) == ("NAN_LOSS", "learning_rate")
    assert not (tmp_path / "out" / "adapter").exists()


def test_builtin_nf4_qlora_trains_and_exports(tiny_model_dir, run_in_process, tmp_path) -> None:
    # The intervals' and max_grad_norm's 0 as well: no eval, checkpoints only at the end, no clipping.
    spec = small_spec(
        tiny_model_dir,
        tmp_path,
        method="qlora",
        max_steps=3,
        eval_interval_steps=0,
        checkpoint_interval_steps=0,
        max_grad_norm=0,
    )
    spec.pop("quant_backend", None)
    result, events = run_in_process(spec)
    assert result.status == "finished"
    assert events.of("validated")[0]["quant_backend"] == "builtin"
    assert all(math.isfinite(loss) for loss in events.train_losses())
    assert not [m for m in events.of("metrics") if "val_loss" in m]
    assert [c["step"] for c in events.of("checkpoint")] == [3]
    finished = events.of("finished")[0]
    assert (Path(finished["adapter_dir"]) / "adapter_model.safetensors").is_file()
    assert Path(finished["gguf_path"]) == tmp_path / "adapter.gguf"
    assert Path(finished["gguf_path"]).stat().st_size > 0


def test_a_missing_gguf_package_is_a_system_error_naming_it_before_training(
    tiny_model_dir, run_in_process, tmp_path, monkeypatch
) -> None:
    from conftest import Events

    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    monkeypatch.delitem(sys.modules, "ragtune_worker.gguf_export", raising=False)
    events = Events()
    with pytest.raises(WorkerSystemError, match=r"the Python package 'gguf' is missing") as caught:
        run_in_process(small_spec(tiny_model_dir, tmp_path), events=events)
    assert caught.value.reason == "MISSING_PACKAGE"
    assert events.items == []


def test_device_cuda_without_a_gpu_is_a_system_error_naming_trainer_device_before_training(
    tiny_model_dir, run_in_process, tmp_path, monkeypatch
) -> None:
    from conftest import Events

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this CPU machine, on any machine
    events = Events()
    with pytest.raises(WorkerSystemError, match=r"^TRAINER_DEVICE=cuda but the worker sees no CUDA device"):
        run_in_process(small_spec(tiny_model_dir, tmp_path, device="cuda"), events=events)
    assert events.items == []
    assert not (tmp_path / "adapter").exists()


def test_device_cpu_never_uses_a_visible_gpu_and_auto_takes_it(monkeypatch) -> None:
    from ragtune_worker.train import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (resolve_device("cpu"), resolve_device("auto"), resolve_device("cuda")) == (False, True, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (resolve_device("cpu"), resolve_device("auto")) == (False, False)


def rows_file(path: Path, rows: list[object]) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


BAD_INPUTS = {
    "missing model folder": (lambda m, t: {"model_dir": str(t / "nowhere")}, "does not exist"),
    "folder without config": (lambda m, t: {"model_dir": str(t)}, "has no config.json"),
    "target module matches nothing": (
        lambda m, t: {"target_modules": ["q_proj", "qkv"]},
        r"target_modules qkv match no linear module of the model; "
        r"available linear modules: .*down_proj.*q_proj",
    ),
    "row without completion": (
        lambda m, t: {
            "train_file": rows_file(t / "r.jsonl", [{"prompt": "[INST] Q? [/INST]", "completion": ""}])
        },
        r"r.jsonl line 1: completion is empty",
    ),
    "row not JSON": (
        lambda m, t: {"train_file": rows_file(t / "r.jsonl", ["{x"])},
        r"line 1: not valid JSON",
    ),
    "training file not UTF-8": (
        lambda m, t: {"train_file": latin1_file(t / "l.jsonl")},
        r"l.jsonl line 1: not valid UTF-8 \(byte 0xe9",
    ),
    "row over max_seq_len": (
        lambda m, t: {"max_seq_len": 32},
        r"train.jsonl line \d+: row is \d+ tokens .*32",
    ),
    "val row over max_seq_len": (
        lambda m, t: {
            "val_file": rows_file(
                t / "v.jsonl", [{"prompt": "[INST] " + "x " * 70 + "[/INST]", "completion": "a"}]
            )
        },
        r"val_file .*v.jsonl line 1: row is",
    ),
    "max_seq_len over the model's positions": (
        lambda m, t: {"max_seq_len": 4096},
        "max_seq_len 4096 exceeds the model's max_position_embeddings 2048",
    ),
    "fp16 without a GPU": (lambda m, t: {"compute_dtype": "fp16"}, "compute_dtype fp16 needs a CUDA GPU"),
    "bitsandbytes without a GPU": (
        lambda m, t: {"method": "qlora", "quant_backend": "bitsandbytes"},
        "bitsandbytes needs a CUDA GPU",
    ),
    "resume from a non-checkpoint": (
        lambda m, t: {"resume_from_checkpoint": str(t)},
        "is not a training checkpoint",
    ),
}
# The failed event's reason and field (the spec field to blame) for each case.
BAD_INPUT_REASONS = {
    "missing model folder": ("MODEL_NOT_FOUND", "model_dir"),
    "folder without config": ("INVALID_MODEL", "model_dir"),
    "target module matches nothing": ("UNKNOWN_TARGET_MODULE", "target_modules[1]"),
    "row without completion": ("EMPTY_COMPLETION", "train_file"),
    "row not JSON": ("INVALID_JSON", "train_file"),
    "training file not UTF-8": ("INVALID_UTF8", "train_file"),
    "row over max_seq_len": ("ROW_TOO_LONG", "train_file"),
    "val row over max_seq_len": ("ROW_TOO_LONG", "val_file"),
    "max_seq_len over the model's positions": ("INVALID_VALUE", "max_seq_len"),
    "fp16 without a GPU": ("GPU_REQUIRED", "compute_dtype"),
    "bitsandbytes without a GPU": ("GPU_REQUIRED", "quant_backend"),
    "resume from a non-checkpoint": ("INVALID_CHECKPOINT", "resume_from_checkpoint"),
}


def latin1_file(path: Path) -> str:
    path.write_bytes('{"prompt": "[INST] Caf\u00e9? [/INST]", "completion": "Oui."}\n'.encode("latin-1"))
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_before_training_starts(case: str, tiny_model_dir, run_in_process, tmp_path) -> None:
    from conftest import Events

    make, message = BAD_INPUTS[case]
    spec = {**small_spec(tiny_model_dir, tmp_path / "out"), **make(tiny_model_dir, tmp_path)}
    events = Events()
    with pytest.raises(UserError, match=message) as caught:
        run_in_process(spec, events=events)
    assert (caught.value.reason, caught.value.field) == BAD_INPUT_REASONS[case]
    assert "started" not in events.types and "metrics" not in events.types
    assert not list((tmp_path / "out").glob("checkpoints/checkpoint-*"))


def test_a_warm_start_begins_from_the_init_adapters_weights_and_trains_on(
    baseline, run_in_process, tmp_path: Path
) -> None:
    from conftest import Events
    from peft import get_peft_model_state_dict

    spec, _, base_events, output = baseline
    saved = load_file(output / "adapter" / "adapter_model.safetensors")
    warm = {**spec, "output_dir": str(tmp_path / "warm"), "init_adapter": str(output / "adapter")}

    # Cancelled before the first step: the model holds exactly the adapter's weights.
    events = Events()
    events.cancel.set()
    result, _ = run_in_process(warm, events=events)
    assert result.status == "cancelled"
    assert events.of("validated")[0]["init_adapter_tensors"] == len(saved)
    loaded = get_peft_model_state_dict(result.model)
    assert set(loaded) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(loaded[name], tensor), name

    # Trained on: it starts where the baseline ended, far below a fresh adapter's first loss.
    result, events = run_in_process({**warm, "output_dir": str(tmp_path / "warm-run"), "max_steps": 2})
    assert result.status == "finished"
    first_fresh, last_fresh = base_events.train_losses()[0], base_events.train_losses()[-1]
    assert events.train_losses()[0] < first_fresh - 0.1
    assert abs(events.train_losses()[0] - last_fresh) < abs(events.train_losses()[0] - first_fresh)


@pytest.mark.parametrize("case", ["rank", "targets", "nan", "not-an-adapter"])
def test_a_warm_start_refuses_an_adapter_that_does_not_fit_before_training(
    case: str, baseline, run_in_process, tmp_path: Path
) -> None:
    from conftest import Events

    spec, _, _, output = baseline
    adapter = tmp_path / "adapter"
    shutil.copytree(output / "adapter", adapter)
    warm = {**spec, "output_dir": str(tmp_path / "out"), "init_adapter": str(adapter)}
    expected = {
        "rank": r"has rank 8, the job lora_r 16",
        "targets": r"a warm start keeps the target modules",
        "nan": r"holds NaN or infinite values",
        "not-an-adapter": r"not a PEFT adapter folder",
    }[case]
    if case == "rank":
        warm["lora_r"] = 16
    elif case == "targets":
        warm["target_modules"] = ["q_proj", "v_proj"]
    elif case == "nan":
        weights = load_file(adapter / "adapter_model.safetensors")
        next(iter(weights.values()))[0, 0] = float("nan")
        save_file(weights, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    else:
        (adapter / "adapter_config.json").unlink()
    events = Events()
    with pytest.raises(UserError, match=expected) as caught:
        run_in_process(warm, events=events)
    assert (caught.value.reason, caught.value.field) == ("INVALID_INIT_ADAPTER", "init_adapter")
    assert "started" not in events.types
