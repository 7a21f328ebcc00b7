"""The tiny model generator: a loadable Llama folder with the real tokenizer, deterministic per seed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import WORKER_DIR
from safetensors.torch import load_file

from ragtune_worker.tiny_model import read_documents, write_tiny_model


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_shape_tokenizer_and_chat_template(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["hidden_size"]) == (2, 128)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (
        4,
        2,
        352,
    )
    assert config["vocab_size"] == 32000
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<unk>",
        "<unk>",
    )
    assert tokenizer.convert_ids_to_tokens(tokenizer("Hello world")["input_ids"]) == [
        "<s>",
        "▁Hello",
        "▁world",
    ]
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}], tokenize=False
    )
    assert chat == "<s>[INST] Hi? [/INST] Hello.</s>"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 22557, 1526]])).logits
    assert logits.shape == (1, 3, 32000) and torch.isfinite(logits).all()


def test_same_seed_same_bytes_other_seed_other_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    again = write_tiny_model(tmp_path / "again", seed=0, gguf=False)
    assert sha256(again / "model.safetensors") == sha256(tiny_model_dir / "model.safetensors")
    other = write_tiny_model(tmp_path / "other", seed=1, gguf=False)
    a = load_file(tiny_model_dir / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    b = load_file(other / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(a, b)


def test_warm_up_on_documents_changes_the_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Buckets\n\nThe Orion bucket keeps access logs for 30 days. " * 20)
    (docs / "b.html").write_text(
        "<html><style>p{}</style><body><p>Deploys to the Lyra cluster run every Tuesday.</p></body></html>"
        * 20
    )
    texts = read_documents(docs)
    assert len(texts) == 2 and "<p>" not in texts[1] and "p{}" not in texts[1]
    warmed = write_tiny_model(tmp_path / "warm", seed=0, warmup_docs=docs, warmup_steps=2, gguf=False)
    a = load_file(tiny_model_dir / "model.safetensors")["model.embed_tokens.weight"]
    b = load_file(warmed / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.equal(a, b)


def test_command_line_writes_the_folder_and_gguf(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ragtune_worker.tiny_model",
            "--out",
            str(out),
            "--layers",
            "1",
            "--hidden",
            "64",
        ],
        cwd=WORKER_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert (out / "model.gguf").stat().st_size > 0
