"""GGUF export: read back with gguf-py; load and run with llama.cpp (node-llama-cpp) vs transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ragtune_worker.gguf_export import GGUFExportError, export_base_gguf, export_lora_gguf, permute_qk

REPO_ROOT = Path(__file__).resolve().parents[4]
TOKENIZER_DIR = REPO_ROOT / "libs" / "text" / "src" / "tokenizers" / "mistral"
CHECK_SCRIPT = Path(__file__).with_name("llama_cpp_check.mjs")
N_HEAD, N_KV = 4, 2
PROMPT = "The quick brown fox jumps over the lazy dog. Retrieval augmented generation"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (2 layers, hidden 128, 4 heads, 2 kv heads) with the Mistral tokenizer; random weights."""
    if not (TOKENIZER_DIR / "tokenizer.json").is_file():
        pytest.skip(f"tokenizer fixture missing: {TOKENIZER_DIR}")
    out = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger than the default init so next-token distributions are peaked
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
            else:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(out)
    shutil.copy(TOKENIZER_DIR / "tokenizer.json", out)
    shutil.copy(TOKENIZER_DIR / "tokenizer_config.json", out)
    return out


@pytest.fixture(scope="module")
def base_gguf(tiny_model_dir: Path) -> Path:
    return export_base_gguf(tiny_model_dir, tiny_model_dir / "model-f32.gguf", dtype="f32")


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path) -> Path:
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    out = tiny_model_dir / "adapter"
    peft_model.save_pretrained(out)
    return out


def field(reader: gguf.GGUFReader, key: str) -> Any:
    f = reader.get_field(key)
    assert f is not None, key
    return f.contents()


# ------------------------------------------------------------------------------ read back with gguf-py


def test_base_gguf_metadata_and_tensors(tiny_model_dir: Path, base_gguf: Path) -> None:
    reader = gguf.GGUFReader(base_gguf)
    assert field(reader, "general.architecture") == "llama"
    expected = {
        "llama.context_length": 512,
        "llama.embedding_length": 128,
        "llama.block_count": 2,
        "llama.feed_forward_length": 352,
        "llama.rope.dimension_count": 32,
        "llama.attention.head_count": N_HEAD,
        "llama.attention.head_count_kv": N_KV,
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
    }
    for key, value in expected.items():
        assert field(reader, key) == value, key
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert field(reader, "llama.rope.freq_base") == pytest.approx(10000.0)
    tokens = field(reader, "tokenizer.ggml.tokens")
    hf_vocab = json.loads((tiny_model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(tokens) == 32000 and all(tokens[i] == t for t, i in hf_vocab.items())
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == types[2] == gguf.TokenType.CONTROL
    assert types[3] == gguf.TokenType.BYTE and types[1000] == gguf.TokenType.NORMAL
    scores = field(reader, "tokenizer.ggml.scores")
    assert scores[hf_vocab["▁t"]] == 0.0 and scores[hf_vocab["in"]] == -1.0  # ranks of the first merges

    names = {t.name: t for t in reader.tensors}
    per_layer = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    want = {"token_embd.weight", "output_norm.weight", "output.weight"}
    want |= {f"blk.{i}.{n}.weight" for i in range(2) for n in [*per_layer, "attn_norm", "ffn_norm"]}
    assert set(names) == want
    hf = load_file(tiny_model_dir / "model.safetensors")
    shapes = {
        "attn_q": (128, 128),
        "attn_k": (64, 128),
        "attn_v": (64, 128),
        "attn_output": (128, 128),
        "ffn_gate": (352, 128),
        "ffn_up": (352, 128),
        "ffn_down": (128, 352),
    }
    for n, shape in shapes.items():
        assert names[f"blk.1.{n}.weight"].data.shape == shape, n
    assert names["token_embd.weight"].data.shape == (32000, 128)
    assert names["blk.0.attn_norm.weight"].data.shape == (128,)
    for i in range(2):
        q = hf[f"model.layers.{i}.self_attn.q_proj.weight"]
        k = hf[f"model.layers.{i}.self_attn.k_proj.weight"]
        v = hf[f"model.layers.{i}.self_attn.v_proj.weight"]
        assert np.array_equal(names[f"blk.{i}.attn_q.weight"].data, permute_qk(q, N_HEAD, N_HEAD).numpy())
        assert np.array_equal(names[f"blk.{i}.attn_k.weight"].data, permute_qk(k, N_HEAD, N_KV).numpy())
        assert np.array_equal(names[f"blk.{i}.attn_v.weight"].data, v.numpy())  # v is not permuted
        assert not np.array_equal(names[f"blk.{i}.attn_q.weight"].data, q.numpy())


def test_permutation_interleaves_rotary_halves() -> None:
    # one head of dim 4 on a 1-column weight: rows (a0, a1, b0, b1) → (a0, b0, a1, b1)
    w = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0], [11.0], [12.0], [13.0]])
    assert permute_qk(w, 2).view(-1).tolist() == [0.0, 2.0, 1.0, 3.0, 10.0, 12.0, 11.0, 13.0]


def test_f16_export_halves_matrices_keeps_norms_f32(tiny_model_dir: Path) -> None:
    path = export_base_gguf(tiny_model_dir, tiny_model_dir / "model-f16.gguf", dtype="f16")
    names = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert names["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert names["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_lora_gguf_metadata_and_tensors(tiny_model_dir: Path, adapter_dir: Path) -> None:
    path = export_lora_gguf(adapter_dir, tiny_model_dir, tiny_model_dir / "adapter.gguf")
    reader = gguf.GGUFReader(path)
    assert field(reader, "general.architecture") == "llama"
    assert field(reader, "general.type") == "adapter"
    assert field(reader, "adapter.type") == "lora"
    assert field(reader, "adapter.lora.alpha") == pytest.approx(16.0)
    names = {t.name: t for t in reader.tensors}
    expected_names = {
        f"blk.{i}.{n}.weight.lora_{x}"
        for i in range(2)
        for n in ("attn_q", "attn_k", "attn_v", "attn_output")
        for x in ("a", "b")
    }
    assert set(names) == expected_names
    peft_tensors = load_file(adapter_dir / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0.self_attn"
    a_q = peft_tensors[f"{prefix}.q_proj.lora_A.weight"]
    b_q = peft_tensors[f"{prefix}.q_proj.lora_B.weight"]
    b_k = peft_tensors[f"{prefix}.k_proj.lora_B.weight"]
    b_v = peft_tensors[f"{prefix}.v_proj.lora_B.weight"]
    assert names["blk.0.attn_q.weight.lora_a"].data.shape == (8, 128)
    assert names["blk.0.attn_k.weight.lora_b"].data.shape == (64, 8)
    assert np.array_equal(names["blk.0.attn_q.weight.lora_a"].data, a_q.numpy())
    assert np.array_equal(names["blk.0.attn_q.weight.lora_b"].data, permute_qk(b_q, N_HEAD, N_HEAD).numpy())
    assert np.array_equal(names["blk.0.attn_k.weight.lora_b"].data, permute_qk(b_k, N_HEAD, N_KV).numpy())
    assert np.array_equal(names["blk.0.attn_v.weight.lora_b"].data, b_v.numpy())


def test_bad_inputs_name_the_problem(tmp_path: Path, tiny_model_dir: Path, adapter_dir: Path) -> None:
    with pytest.raises(GGUFExportError, match="no config.json"):
        export_base_gguf(tmp_path, tmp_path / "x.gguf")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(GGUFExportError, match="GPT2LMHeadModel"):
        export_base_gguf(tmp_path, tmp_path / "x.gguf")
    with pytest.raises(GGUFExportError, match="f32 or f16"):
        export_base_gguf(tiny_model_dir, tmp_path / "x.gguf", dtype="q8")  # type: ignore[arg-type]
    with pytest.raises(GGUFExportError, match="adapter_config.json"):
        export_lora_gguf(tmp_path, tiny_model_dir, tmp_path / "a.gguf")
    bad = tmp_path / "dora"
    shutil.copytree(adapter_dir, bad)
    cfg = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(GGUFExportError, match="DoRA"):
        export_lora_gguf(bad, tiny_model_dir, tmp_path / "a.gguf")


# ------------------------------------------------------------------------------ llama.cpp runs them


def run_llama_cpp(model: Path, ids: list[int], *, lora: Path | None = None, steps: int = 4) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (REPO_ROOT / "node_modules" / "node-llama-cpp").is_dir():
        pytest.skip("node and node-llama-cpp are needed to run llama.cpp")
    args = {
        "model": str(model),
        "lora": str(lora) if lora else None,
        "text": PROMPT,
        "ids": ids,
        "steps": steps,
    }
    proc = subprocess.run(
        [node, str(CHECK_SCRIPT), json.dumps(args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def hf_greedy(model: torch.nn.Module, ids: list[int], steps: int) -> list[torch.Tensor]:
    """Next-token probabilities of `steps` greedy steps."""
    probs = []
    seq = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1].double()
            p = torch.softmax(logits, dim=-1)
            probs.append(p)
            seq.append(int(p.argmax()))
    return probs


def assert_same_predictions(result: dict[str, Any], hf_probs: list[torch.Tensor]) -> None:
    assert len(result["steps"]) == len(hf_probs)
    for step, p in zip(result["steps"], hf_probs, strict=True):
        assert step["token"] == int(p.argmax())
        for token, prob in step["top"]:
            assert prob == pytest.approx(float(p[token]), abs=2e-3, rel=2e-2), token


def test_llama_cpp_loads_base_and_matches_transformers(tiny_model_dir: Path, base_gguf: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids[0] == 1
    result = run_llama_cpp(base_gguf, ids)
    assert result["tokens"] == ids[1:]  # same tokenization (llama.cpp's tokenize() adds no BOS)
    assert result["bos"] == 1 and result["eos"] == 2
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    probs = hf_greedy(model, ids, 4)
    assert max(float(p.max()) for p in probs) > 0.05  # distributions are not flat: the comparison has teeth
    assert_same_predictions(result, probs)


def test_llama_cpp_applies_lora_like_peft(tiny_model_dir: Path, base_gguf: Path, adapter_dir: Path) -> None:
    lora_path = export_lora_gguf(adapter_dir, tiny_model_dir, tiny_model_dir / "adapter-run.gguf")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer(PROMPT)["input_ids"]
    base = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    base_probs = hf_greedy(base, ids, 3)
    peft_model = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(tiny_model_dir), adapter_dir
    ).eval()
    lora_probs = hf_greedy(peft_model, ids, 3)
    assert not torch.allclose(base_probs[0], lora_probs[0], atol=1e-3)  # the adapter changes predictions
    result = run_llama_cpp(base_gguf, ids, lora=lora_path, steps=3)
    assert_same_predictions(result, lora_probs)
