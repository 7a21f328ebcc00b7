"""The builtin NF4 base on CUDA, against bitsandbytes' NF4 kernels (tools/bench/gpu-check.sh runs these).

Skipped on machines without a CUDA GPU and bitsandbytes; the GPU check installs both and fails if any is
skipped there. Both backends quantize the same checkpoint with the same format (NF4, blocks of 64, double
quantized statistics), so the dequantized weights agree to bf16 rounding and the loss of the same batch, with
and without the same LoRA update, agrees within a tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ragtune_worker.nf4 import NF4Linear, load_quantized_base


def _cuda_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "bitsandbytes is not installed"
    return None


_REASON = _cuda_reason()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"needs CUDA + bitsandbytes: {_REASON}")

# Loss of a random 4-layer model on random tokens, bf16 compute: the two backends' matmuls differ in rounding.
LOSS_TOLERANCE = 2e-2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    out = tmp_path_factory.mktemp("cuda-nf4") / "model"
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def test_builtin_and_bitsandbytes_dequantize_to_the_same_weights(checkpoint: Path) -> None:
    import bitsandbytes.functional as bnbf

    builtin = load_quantized_base(checkpoint, "builtin", torch.bfloat16).to("cuda")
    bnb_model = load_quantized_base(checkpoint, "bitsandbytes", torch.bfloat16)
    ours = builtin.model.layers[0].mlp.down_proj
    theirs = bnb_model.model.layers[0].mlp.down_proj
    assert isinstance(ours, NF4Linear)
    w_ours = ours.dequantized_weight(torch.float32)
    w_theirs = bnbf.dequantize_4bit(theirs.weight.data, theirs.weight.quant_state).float()
    assert w_ours.shape == w_theirs.shape
    assert torch.allclose(w_ours, w_theirs, rtol=1e-2, atol=1e-3)


def test_builtin_and_bitsandbytes_agree_on_the_loss(checkpoint: Path) -> None:
    ids = torch.randint(3, 512, (2, 64), generator=torch.Generator().manual_seed(1)).to("cuda")
    builtin = load_quantized_base(checkpoint, "builtin", torch.bfloat16).to("cuda")
    bnb_model = load_quantized_base(checkpoint, "bitsandbytes", torch.bfloat16)
    with torch.no_grad():
        ours = float(builtin(input_ids=ids, labels=ids).loss)
        theirs = float(bnb_model(input_ids=ids, labels=ids).loss)
    print(f"loss builtin NF4 {ours:.5f}, bitsandbytes NF4 {theirs:.5f}")
    assert abs(ours - theirs) <= LOSS_TOLERANCE * abs(theirs)


def test_builtin_nf4_gives_the_same_loss_on_cuda_as_on_cpu(checkpoint: Path) -> None:
    ids = torch.randint(3, 512, (2, 64), generator=torch.Generator().manual_seed(2))
    cpu = load_quantized_base(checkpoint, "builtin", torch.float32)
    cuda = load_quantized_base(checkpoint, "builtin", torch.float32).to("cuda")
    with torch.no_grad():
        on_cpu = float(cpu(input_ids=ids, labels=ids).loss)
        on_cuda = float(cuda(input_ids=ids.to("cuda"), labels=ids.to("cuda")).loss)
    assert abs(on_cpu - on_cuda) <= 1e-3 * abs(on_cpu)
