"""Streaming NF4 load: a safetensors checkpoint goes into the NF4 model tensor by tensor.

The result must be the model that loading whole and then quantizing gives (same NF4 codes and statistics,
same unquantized weights, same logits, same name the adapters record), for one file and for a sharded
checkpoint, and the host's peak memory while loading must stay near one shard plus what the model keeps
(NF4 weights, embeddings, norms): measured in a subprocess from the kernel's high-water mark of its
resident set, reset after the imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from ragtune_worker.nf4 import (
    NF4Linear,
    load_nf4_streaming,
    load_quantized_base,
    quantize_model,
    safetensors_shards,
)

WORKER_DIR = Path(__file__).resolve().parents[1]


def load_whole_then_quantize(model_dir: Path, dtype: torch.dtype) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.nf4_stats = quantize_model(model, compute_dtype=dtype)
    return model


def assert_same_model(streamed: torch.nn.Module, reference: torch.nn.Module) -> None:
    ref_state = reference.state_dict()
    state = streamed.state_dict()
    assert sorted(state) == sorted(ref_state)
    for key, value in ref_state.items():
        assert state[key].dtype == value.dtype, key
        assert torch.equal(state[key], value), key
    nf4 = [name for name, m in streamed.named_modules() if isinstance(m, NF4Linear)]
    assert nf4 == [name for name, m in reference.named_modules() if isinstance(m, NF4Linear)]
    assert len(nf4) > 0
    assert streamed.nf4_stats == reference.nf4_stats
    assert streamed.config.name_or_path == reference.config.name_or_path
    ids = torch.randint(3, streamed.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(streamed(input_ids=ids).logits, reference(input_ids=ids).logits)


def write_sharded_llama(out: Path, *, layers: int, hidden: int, intermediate: int, shard: str) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out, max_shard_size=shard)
    return out


def test_streaming_load_of_the_tiny_model_equals_loading_whole_then_quantizing(tiny_model_dir: Path) -> None:
    assert safetensors_shards(tiny_model_dir) == [tiny_model_dir / "model.safetensors"]
    for dtype in (torch.float32, torch.bfloat16):
        streamed = load_quantized_base(tiny_model_dir, "builtin", dtype)
        assert_same_model(streamed, load_whole_then_quantize(tiny_model_dir, dtype))
        assert streamed.config.name_or_path == str(tiny_model_dir)
        assert not any(p.requires_grad for p in streamed.parameters())


def test_streaming_load_of_a_sharded_checkpoint(tmp_path: Path) -> None:
    model_dir = write_sharded_llama(tmp_path / "m", layers=3, hidden=128, intermediate=384, shard="300KB")
    shards = safetensors_shards(model_dir)
    assert len(shards) >= 3
    assert (model_dir / "model.safetensors.index.json").is_file()
    assert_same_model(
        load_nf4_streaming(model_dir, torch.float32), load_whole_then_quantize(model_dir, torch.float32)
    )


def test_a_checkpoint_missing_a_weight_is_refused_with_its_name(tmp_path: Path, tiny_model_dir: Path) -> None:
    model_dir = tmp_path / "broken"
    model_dir.mkdir()
    for f in tiny_model_dir.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (model_dir / f.name).write_bytes(f.read_bytes())
    tensors = load_file(tiny_model_dir / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 weights.*model\.layers\.1\.mlp\.down_proj"):
        load_quantized_base(model_dir, "builtin", torch.float32)


def test_an_index_naming_a_missing_shard_is_refused(tmp_path: Path) -> None:
    model_dir = write_sharded_llama(tmp_path / "m", layers=2, hidden=64, intermediate=128, shard="50KB")
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (model_dir / first).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_quantized_base(model_dir, "builtin", torch.float32)


# --- host memory while loading ---------------------------------------------------------------------

MEASURE = r"""
import json, re, sys
from pathlib import Path
import torch
from ragtune_worker.nf4 import load_quantized_base, quantize_model
from transformers import AutoModelForCausalLM

def status(field):
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

model_dir, mode = Path(sys.argv[1]), sys.argv[2]
Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark: only the load is measured
before = status("VmRSS")
if mode == "streaming":
    model = load_quantized_base(model_dir, "builtin", torch.float32)
else:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
    quantize_model(model, compute_dtype=torch.float32)
kept = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
print(json.dumps({"peak": status("VmHWM") - before, "kept": kept}))
"""


def measure_load(model_dir: Path, mode: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(model_dir), mode],
        cwd=WORKER_DIR,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc (peak RSS reset)")
def test_streaming_load_peaks_near_one_shard_plus_the_kept_weights(tmp_path: Path) -> None:
    # 8 layers of hidden 512 / intermediate 2048: 134 MB of fp32 linear weights in shards of at most 40 MB.
    model_dir = write_sharded_llama(tmp_path / "m", layers=8, hidden=512, intermediate=2048, shard="40MB")
    shards = safetensors_shards(model_dir)
    assert len(shards) >= 3
    checkpoint = sum(s.stat().st_size for s in shards)
    largest_shard = max(s.stat().st_size for s in shards)

    streaming = measure_load(model_dir, "streaming")
    whole = measure_load(model_dir, "whole")
    mib = 2**20
    print(
        f"checkpoint {checkpoint / mib:.0f} MiB in {len(shards)} shards "
        f"(largest {largest_shard / mib:.0f} MiB); "
        f"kept after load {streaming['kept'] / mib:.0f} MiB; peak above the start: streaming "
        f"{streaming['peak'] / mib:.0f} MiB, whole then quantize {whole['peak'] / mib:.0f} MiB"
    )
    assert streaming["kept"] == whole["kept"]
    # The whole-model path holds the full fp32 model at once: the measurement sees it.
    assert whole["peak"] > checkpoint
    # Streaming: one shard's pages (memory-mapped while it is read) + the kept weights + quantization
    # temporaries of one tensor, allocator slack included.
    assert streaming["peak"] < largest_shard + streaming["kept"] + 48 * mib
    assert streaming["peak"] < 0.6 * whole["peak"]
