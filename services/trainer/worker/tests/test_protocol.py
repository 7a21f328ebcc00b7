"""The worker as a child process: stdout holds protocol JSON lines only; cancel over stdin; exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import collect, send, small_spec, start_worker

EVENT_TYPES = {"validated", "started", "metrics", "checkpoint", "finished", "failed", "cancelled"}


def parse_events(stdout: str, job_id: str | None = None) -> list[dict[str, Any]]:
    """Every stdout line must be a protocol event with an increasing seq (and the job id when given)."""
    events = [json.loads(line) for line in stdout.splitlines()]
    assert events, "no events on stdout"
    for number, event in enumerate(events, start=1):
        assert event["type"] in EVENT_TYPES, event
        assert event["seq"] == number, event
        if job_id is not None:
            assert event["job_id"] == job_id, event
    return events


def test_a_job_streams_only_protocol_events_on_stdout(tiny_model_dir: Path, tmp_path: Path) -> None:
    process = start_worker()
    spec = small_spec(tiny_model_dir, tmp_path, job_id="job-1", max_steps=3, eval_interval_steps=2)
    send(process, {"type": "train", "spec": spec})
    stdout, stderr = collect(process, timeout=600)
    assert process.returncode == 0, stderr
    events = parse_events(stdout, "job-1")
    assert [e["type"] for e in events if e["type"] != "metrics"] == [
        "validated",
        "started",
        "checkpoint",
        "finished",
    ]
    assert [e["step"] for e in events if e["type"] == "metrics" and "train_loss" in e] == [1, 2, 3]
    assert [e["step"] for e in events if "val_loss" in e] == [2, 3]
    finished = events[-1]
    assert finished["steps"] == 3 and Path(finished["adapter_dir"]) == tmp_path / "adapter"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert "'loss'" in stderr  # Trainer prints its log dicts: they went to stderr, not stdout


def test_cancel_stops_at_a_step_boundary_with_a_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> None:
    process = start_worker()
    spec = small_spec(tiny_model_dir, tmp_path, max_steps=200, val_file=None, checkpoint_interval_steps=100)
    send(process, {"type": "train", "spec": spec})
    assert process.stdout is not None
    seen: list[str] = []
    for line in process.stdout:  # wait for the first step, then cancel
        seen.append(line)
        if json.loads(line)["type"] == "metrics":
            send(process, {"type": "cancel"})
            break
    stdout, stderr = collect(process, timeout=600)
    assert process.returncode == 0, stderr
    events = parse_events("".join(seen) + stdout)
    cancelled = events[-1]
    assert cancelled["type"] == "cancelled"
    assert 1 <= cancelled["step"] < 200
    checkpoint = Path(cancelled["checkpoint_path"])
    assert checkpoint == tmp_path / "checkpoints" / f"checkpoint-{cancelled['step']}"
    assert (checkpoint / "trainer_state.json").is_file() and (checkpoint / "optimizer.pt").is_file()
    assert events[-2] == {
        "type": "checkpoint",
        "seq": cancelled["seq"] - 1,
        "step": cancelled["step"],
        "path": str(checkpoint),
    }
    assert not (tmp_path / "adapter").exists()


def test_bad_input_exits_2_with_a_user_error_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    process = start_worker()
    spec = small_spec(tiny_model_dir, tmp_path, job_id="j", lora_r=0)
    send(process, {"type": "train", "spec": spec})
    stdout, _ = collect(process, timeout=300)
    assert process.returncode == 2
    assert parse_events(stdout, "j") == [
        {
            "type": "failed",
            "seq": 1,
            "job_id": "j",
            "kind": "user_error",
            "reason": "INVALID_VALUE",
            "field": "lora_r",
            "message": "lora_r must be an integer in [1, 64], got 0",
        }
    ]

    process = start_worker()
    send(process, {"type": "train", "spec": small_spec(tiny_model_dir, tmp_path, target_modules=["nope"])})
    stdout, _ = collect(process, timeout=300)
    assert process.returncode == 2
    (event,) = parse_events(stdout)
    assert event["kind"] == "user_error" and "target_modules nope match no linear module" in event["message"]
    assert (event["reason"], event["field"]) == ("UNKNOWN_TARGET_MODULE", "target_modules[0]")

    # A training file that is not UTF-8 (here Latin-1 on line 2): a user error naming file and line.
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(
        b'{"prompt": "[INST] Q? [/INST]", "completion": "A."}\n'
        + '{"prompt": "[INST] Caf\u00e9? [/INST]", "completion": "Oui."}\n'.encode("latin-1")
    )
    process = start_worker()
    send(process, {"type": "train", "spec": small_spec(tiny_model_dir, tmp_path, train_file=str(latin1))})
    stdout, _ = collect(process, timeout=300)
    assert process.returncode == 2
    (event,) = parse_events(stdout)
    assert event["kind"] == "user_error"
    assert (event["reason"], event["field"], event["line"]) == ("INVALID_UTF8", "train_file", 2)
    assert event["message"].startswith(f"train_file {latin1} line 2: not valid UTF-8 (byte 0xe9")

    process = start_worker()
    stdout, _ = process.communicate("this is not json\n", timeout=300)
    assert process.returncode == 2
    (event,) = parse_events(stdout)
    assert event["kind"] == "user_error" and "JSON train command" in event["message"]
    assert event["reason"] == "INVALID_COMMAND" and "field" not in event


def test_a_diverging_run_exits_1_with_a_system_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    poisoned = tmp_path / "poisoned"
    poisoned.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (poisoned / name).write_bytes((tiny_model_dir / name).read_bytes())
    weights = load_file(tiny_model_dir / "model.safetensors")
    weights["model.norm.weight"][0] = float("nan")
    save_file(weights, poisoned / "model.safetensors", metadata={"format": "pt"})
    process = start_worker()
    send(process, {"type": "train", "spec": small_spec(poisoned, tmp_path / "out", val_file=None)})
    stdout, stderr = collect(process, timeout=600)
    assert process.returncode == 1, stderr
    events = parse_events(stdout)
    assert [e["type"] for e in events] == ["validated", "started", "failed"]
    assert (events[-1]["kind"], events[-1]["reason"]) == ("system_error", "NAN_LOSS")
    assert "training diverged: the loss became nan at step 1" in events[-1]["message"]


def test_stdin_closed_by_a_vanished_parent_stops_with_a_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    process = start_worker()
    spec = small_spec(tiny_model_dir, tmp_path, max_steps=200, val_file=None, checkpoint_interval_steps=100)
    send(process, {"type": "train", "spec": spec})
    assert process.stdout is not None and process.stdin is not None
    seen: list[str] = []
    for line in process.stdout:  # wait for the first step, then go away as a killed parent would
        seen.append(line)
        if json.loads(line)["type"] == "metrics":
            process.stdin.close()
            break
    stdout = process.stdout.read()
    process.wait(timeout=600)
    assert process.returncode == 0
    events = parse_events("".join(seen) + stdout)
    assert events[-1]["type"] == "cancelled"
    assert 1 <= events[-1]["step"] < 200
    assert Path(events[-1]["checkpoint_path"]).is_dir()


def test_a_missing_gguf_package_is_reported_as_a_system_error_naming_it(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import io
    import sys

    from ragtune_worker.protocol import EXIT_SYSTEM_ERROR, run

    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    monkeypatch.delitem(sys.modules, "ragtune_worker.gguf_export", raising=False)
    stdin = io.StringIO(json.dumps({"type": "train", "spec": small_spec(tiny_model_dir, tmp_path)}) + "\n")
    stdout, stderr = io.StringIO(), io.StringIO()
    assert run(stdin, stdout, stderr) == EXIT_SYSTEM_ERROR
    (event,) = parse_events(stdout.getvalue())
    assert (event["kind"], event["reason"]) == ("system_error", "MISSING_PACKAGE")
    assert "the Python package 'gguf' is missing" in event["message"]
    assert not (tmp_path / "adapter").exists()


def test_device_cuda_on_a_machine_without_cuda_exits_1_with_a_system_error(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import io

    import torch

    from ragtune_worker.protocol import EXIT_SYSTEM_ERROR, run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = small_spec(tiny_model_dir, tmp_path, job_id="job-gpu", device="cuda")
    stdin = io.StringIO(json.dumps({"type": "train", "spec": spec}) + "\n")
    stdout, stderr = io.StringIO(), io.StringIO()
    assert run(stdin, stdout, stderr) == EXIT_SYSTEM_ERROR
    (event,) = parse_events(stdout.getvalue(), job_id="job-gpu")
    assert (event["type"], event["kind"], event["reason"]) == ("failed", "system_error", "CUDA_UNAVAILABLE")
    assert "TRAINER_DEVICE=cuda" in event["message"] and "field" not in event
