"""Shared fixtures: the tiny model (generated once per session) and small job specs for it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ragtune_worker.tiny_model import write_tiny_model

WORKER_DIR = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TRAIN_FILE = FIXTURES / "train.jsonl"
VAL_FILE = FIXTURES / "val.jsonl"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny Llama model (2 layers, hidden 128, Mistral tokenizer), seed 0, without GGUF."""
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0, gguf=False)


def small_spec(model_dir: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A spec dict sized for CPU tests: plain LoRA, sequences ≤ 64 tokens, a handful of steps."""
    spec: dict[str, Any] = {
        "model_dir": str(model_dir),
        "train_file": str(TRAIN_FILE),
        "val_file": str(VAL_FILE),
        "output_dir": str(output_dir),
        "method": "lora",
        "max_seq_len": 64,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "warmup_steps": 1,
        "max_steps": 8,
        "learning_rate": 5e-3,
        "eval_interval_steps": 4,
        "checkpoint_interval_steps": 4,
        "gradient_checkpointing": False,
        "seed": 42,
    }
    spec.update(overrides)
    return spec


class Events:
    """Collects (type, fields) pairs emitted by run_job; optionally cancels when a metrics step is seen."""

    def __init__(self, cancel_after_step: int | None = None) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.cancel = threading.Event()
        self.cancel_after_step = cancel_after_step

    def __call__(self, event_type: str, **fields: Any) -> None:
        self.items.append((event_type, fields))
        if (
            event_type == "metrics"
            and self.cancel_after_step is not None
            and fields.get("step", 0) >= self.cancel_after_step
        ):
            self.cancel.set()

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [fields for kind, fields in self.items if kind == event_type]

    @property
    def types(self) -> list[str]:
        return [kind for kind, _ in self.items]

    def train_losses(self) -> list[float]:
        return [m["train_loss"] for m in self.of("metrics") if "train_loss" in m]


@pytest.fixture
def run_in_process() -> Callable[..., tuple[Any, Events]]:
    """Run a job in this process: returns (JobResult, events); exceptions propagate."""
    from ragtune_worker.spec import parse_spec
    from ragtune_worker.train import run_job

    def run(spec: dict[str, Any], *, cancel_after_step: int | None = None, events: Events | None = None):
        events = events or Events(cancel_after_step)
        result = run_job(parse_spec(spec), events, events.cancel)
        return result, events

    return run


def start_worker() -> subprocess.Popen[str]:
    """The worker as a real child process (`python -m ragtune_worker`) with piped stdio."""
    return subprocess.Popen(
        [sys.executable, "-m", "ragtune_worker"],
        cwd=WORKER_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(process: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Read stdout and stderr to the end and wait for exit, keeping stdin open.

    `communicate()` would close stdin, and the worker treats end of input as its parent going away (cancel).
    """
    import threading

    out: dict[str, str] = {}

    def drain(name: str, stream: Any) -> None:
        out[name] = stream.read()

    threads = [
        threading.Thread(target=drain, args=(name, stream), daemon=True)
        for name, stream in (("stdout", process.stdout), ("stderr", process.stderr))
    ]
    for thread in threads:
        thread.start()
    process.wait(timeout=timeout)
    for thread in threads:
        thread.join(timeout=30)
    return out.get("stdout", ""), out.get("stderr", "")


def send(process: subprocess.Popen[str], command: dict[str, Any]) -> None:
    assert process.stdin is not None
    process.stdin.write(json.dumps(command) + "\n")
    process.stdin.flush()
