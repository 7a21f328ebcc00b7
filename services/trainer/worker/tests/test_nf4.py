"""Tests of the builtin NF4 base: format, error bounds, autograd function, peft integration."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from ragtune_worker.nf4 import (
    DYNAMIC_MAP,
    NF4Linear,
    NF4LoraLinear,
    NF4MatmulFunction,
    QuantBackendUnavailableError,
    bitsandbytes_config,
    dequantize_absmax,
    dequantize_nf4,
    load_quantized_base,
    nf4_linear,
    prepare_lora_config,
    quantize_model,
    quantize_nf4,
)

# The NF4 data type as published (QLoRA paper, Appendix E; bitsandbytes get_4bit_type("nf4")),
# written out here independently of the module under test.
PUBLISHED_NF4 = torch.tensor(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=torch.float64,
)
HALF_MAX_GAP = float((PUBLISHED_NF4[1:] - PUBLISHED_NF4[:-1]).max() / 2)


def nearest_published(values: torch.Tensor) -> torch.Tensor:
    return (values.double()[:, None] - PUBLISHED_NF4[None, :]).abs().argmin(dim=1)


def block_absmax(w: torch.Tensor) -> torch.Tensor:
    flat = w.reshape(-1).double()
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 64))
    return flat.view(-1, 64).abs().amax(dim=1)


def unpack_high_low(packed: torch.Tensor) -> torch.Tensor:
    """Nibble order of the format: element 2i in the high nibble of byte i, element 2i+1 in the low nibble."""
    return torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1).long()


# ---------------------------------------- format


def test_codes_and_packing_on_hand_built_blocks() -> None:
    gen = torch.Generator().manual_seed(0)
    # block 0: absmax 2.0 reached by a positive value; block 1: absmax 0.5 reached by a negative value
    chosen0 = torch.randint(0, 16, (64,), generator=gen)
    chosen1 = torch.randint(0, 16, (64,), generator=gen)
    chosen0[5] = 15
    chosen1[9] = 0
    chosen0[chosen0 == 0] = 1  # keep +2.0 the unique absmax of block 0
    chosen1[chosen1 == 15] = 14  # keep -0.5 the unique absmax of block 1
    # values near (not at) code points: a jitter of at most a fifth of the smallest gap keeps the nearest code
    min_gap = float((PUBLISHED_NF4[1:] - PUBLISHED_NF4[:-1]).min())
    jitter = (torch.rand(2, 64, generator=gen, dtype=torch.float64) - 0.5) * 0.4 * min_gap
    jitter[0, 5] = 0.0
    jitter[1, 9] = 0.0
    block0 = (PUBLISHED_NF4[chosen0] + jitter[0]).clamp(-0.999, 1.0) * 2.0
    block1 = (PUBLISHED_NF4[chosen1] + jitter[1]).clamp(-1.0, 0.999) * 0.5
    w = torch.cat([block0, block1]).float().view(4, 32)

    q = quantize_nf4(w)

    assert q.packed.dtype == torch.uint8 and q.packed.numel() == 64
    expected = torch.cat([nearest_published(w.view(-1)[:64] / 2.0), nearest_published(w.view(-1)[64:] / 0.5)])
    assert torch.equal(expected[:64], chosen0) and torch.equal(expected[64:], chosen1)
    assert torch.equal(unpack_high_low(q.packed), expected)
    # bytes computed by hand from the expected codes: high nibble = even element
    expected_bytes = (expected[0::2] * 16 + expected[1::2]).to(torch.uint8)
    assert torch.equal(q.packed, expected_bytes)
    # exact absmax maps to the ±1 codes
    assert int(unpack_high_low(q.packed)[5]) == 15
    assert int(unpack_high_low(q.packed)[64 + 9]) == 0
    # dequantization: code value × (double-quantized) absmax of the block
    absmax = dequantize_absmax(q.absmax_codes, q.absmax_scales, q.absmax_offset).double()
    want = torch.cat([PUBLISHED_NF4[expected[:64]] * absmax[0], PUBLISHED_NF4[expected[64:]] * absmax[1]])
    assert torch.allclose(dequantize_nf4(q, torch.float64).view(-1), want, atol=1e-6)
    assert q.shape == (4, 32) and q.dtype == torch.float32


def test_padding_of_a_partial_last_block() -> None:
    w = torch.randn(3, 50)  # 150 values: 2 full blocks + 22 in a zero-padded third block
    q = quantize_nf4(w)
    assert q.n_blocks == 3 and q.packed.numel() == 96
    codes = unpack_high_low(q.packed)
    assert torch.all(codes[150:] == 7)  # padding quantizes to the exact zero code
    assert dequantize_nf4(q).shape == (3, 50)


@pytest.mark.parametrize("shape", [(256, 192), (37, 50), (1024, 1024)])
def test_round_trip_error_bound(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(shape, generator=gen) * 0.02
    w.view(-1)[::997] *= 40.0  # outliers, so blocks have very different absmax values
    q = quantize_nf4(w)
    true_absmax = block_absmax(w)
    deq_absmax = dequantize_absmax(q.absmax_codes, q.absmax_scales, q.absmax_offset).double()
    per_elem_true = true_absmax.repeat_interleave(64)[: w.numel()]
    per_elem_deq_err = (true_absmax - deq_absmax).abs().repeat_interleave(64)[: w.numel()]
    err = (dequantize_nf4(q, torch.float64).reshape(-1) - w.double().reshape(-1)).abs()
    # nearest code: ≤ half the largest NF4 gap × absmax,
    # plus the double-quantization error of the absmax (|code| ≤ 1)
    bound = HALF_MAX_GAP * per_elem_true + per_elem_deq_err + 1e-7
    assert torch.all(err <= bound), float((err - bound).max())


def test_double_quantization_error_bound() -> None:
    gen = torch.Generator().manual_seed(2)
    absmax = torch.rand(1000, generator=gen) * 0.3 + 0.01  # 4 groups of 256 (last one partial)
    w = torch.zeros(1000, 64)
    w[:, 0] = absmax
    q = quantize_nf4(w)
    assert q.absmax_codes.dtype == torch.uint8 and q.absmax_codes.numel() == 1000
    assert q.absmax_scales.dtype == torch.float32 and q.absmax_scales.numel() == 4
    assert torch.allclose(q.absmax_offset, absmax.mean())
    centered = (absmax - absmax.mean()).double()
    scales = torch.nn.functional.pad(centered, (0, 24)).view(4, 256).abs().amax(dim=1)
    assert torch.allclose(q.absmax_scales.double(), scales, rtol=1e-6)
    # worst distance from any value in [-1, 1] to its nearest entry of the 8-bit dynamic map
    dmap = DYNAMIC_MAP.double()
    worst = max(float((dmap[1:] - dmap[:-1]).max() / 2), float(dmap[0] + 1), float(1 - dmap[-1]))
    assert worst < 0.01
    err = (
        dequantize_absmax(q.absmax_codes, q.absmax_scales, q.absmax_offset).double() - absmax.double()
    ).abs()
    assert torch.all(err <= worst * scales.repeat_interleave(256)[:1000] + 1e-7)


def test_dynamic_map_is_bitsandbytes_signed_8bit_map() -> None:
    assert DYNAMIC_MAP.numel() == 256 and DYNAMIC_MAP.unique().numel() == 256
    assert torch.all(DYNAMIC_MAP[1:] > DYNAMIC_MAP[:-1])
    assert float(DYNAMIC_MAP.max()) == 1.0 and 0.0 in DYNAMIC_MAP.tolist()
    # smallest magnitude 1e-6 scale (0.1..1 tree), largest negative -(0.9859375 + 1) / 2
    assert float(DYNAMIC_MAP.abs()[DYNAMIC_MAP != 0].min()) == pytest.approx(0.55e-6, rel=1e-5)
    assert float(DYNAMIC_MAP.min()) == pytest.approx(-(1 + (1 - 0.9 / 64)) / 2, rel=1e-6)


def test_weight_bytes_per_parameter_4096x4096() -> None:
    w = torch.randn(4096, 4096)
    q = quantize_nf4(w)
    bits = 8 * q.nbytes / w.numel()
    assert q.packed.dtype == torch.uint8 and q.packed.numel() == w.numel() // 2
    assert 4.12 < bits <= 4.2, bits
    layer = NF4Linear(4096, 4096)
    layer.load_quantized(q)
    assert layer.quantized_nbytes == q.nbytes
    buffer_bytes = sum(b.numel() * b.element_size() for b in layer.buffers())
    assert buffer_bytes == q.nbytes  # the module holds nothing but the packed codes and statistics
    assert buffer_bytes / (w.numel() * 4) < 0.13


def test_bad_input_is_rejected() -> None:
    with pytest.raises(TypeError, match="floating point"):
        quantize_nf4(torch.ones(64, dtype=torch.int64))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_nf4(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="empty"):
        quantize_nf4(torch.empty(0))
    with pytest.raises(ValueError, match="last dim 16"):
        NF4Linear.from_linear(nn.Linear(16, 8))(torch.randn(2, 15))


def test_model_to_dtype_keeps_fp32_statistics() -> None:
    layer = NF4Linear.from_linear(nn.Linear(128, 64))
    before = layer.dequantized_weight(torch.float32).clone()
    model = nn.Sequential(layer).to(torch.bfloat16)
    assert model[0].quantized.absmax_scales.dtype == torch.float32
    assert torch.equal(model[0].dequantized_weight(torch.float32), before)


# ---------------------------------------- autograd


def test_gradcheck_of_the_autograd_function() -> None:
    torch.manual_seed(3)
    q = quantize_nf4(torch.randn(12, 64))
    x = torch.randn(3, 64, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x_, b_: NF4MatmulFunction.apply(x_, *q.tensors(), q.shape, b_), (x, bias), eps=1e-6, atol=1e-6
    )


def test_gradients_match_float64_reference_with_lora() -> None:
    torch.manual_seed(4)
    base = nn.Linear(96, 80, bias=True)
    layer = NF4Linear.from_linear(base)
    w_ref = dequantize_nf4(layer.quantized, torch.float64)
    lora_a = torch.randn(8, 96) * 0.1
    lora_b = torch.randn(80, 8) * 0.1
    x = torch.randn(3, 7, 96)
    g = torch.randn(3, 7, 80)

    def run(dtype: torch.dtype, reference: bool) -> tuple[torch.Tensor, ...]:
        xi = x.to(dtype).clone().requires_grad_(True)
        a = lora_a.to(dtype).clone().requires_grad_(True)
        b = lora_b.to(dtype).clone().requires_grad_(True)
        y = xi @ w_ref.T + base.bias.detach().double() if reference else layer(xi)
        y = y + (xi @ a.T) @ b.T * 2.0
        (y * g.to(dtype)).sum().backward()
        return y.detach().double(), xi.grad.double(), a.grad.double(), b.grad.double()

    got = run(torch.float32, reference=False)
    want = run(torch.float64, reference=True)
    for name, g_, w_ in zip(("output", "grad x", "grad lora_A", "grad lora_B"), got, want, strict=True):
        assert torch.allclose(g_, w_, rtol=1e-4, atol=1e-4), name
    assert not any(p.requires_grad for p in layer.parameters())


def _record_saved(fn: object) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()  # type: ignore[operator]
    return saved


def test_saved_tensors_hold_no_dequantized_weight() -> None:
    torch.manual_seed(5)
    out_f, in_f = 192, 128
    layer = NF4Linear.from_linear(nn.Linear(in_f, out_f))
    lora_a = nn.Linear(in_f, 4, bias=False)
    lora_b = nn.Linear(4, out_f, bias=False)
    x = torch.randn(2, 3, in_f, requires_grad=True)
    holder: dict[str, torch.Tensor] = {}

    def forward() -> None:
        holder["y"] = layer(x) + lora_b(lora_a(x))

    saved = _record_saved(forward)
    dense = [t for t in saved if t.is_floating_point() and t.numel() >= out_f * in_f]
    assert dense == [], [(tuple(t.shape), t.dtype) for t in dense]
    assert not any(tuple(t.shape) in ((out_f, in_f), (in_f, out_f)) for t in saved)
    packed_bytes = layer.quantized_nbytes
    activation_bytes = (
        x.numel() * 4 * 2 + 2 * 3 * 4 * 4 + lora_a.weight.numel() * 4 + lora_b.weight.numel() * 4
    )
    saved_bytes = sum({t.data_ptr(): t.numel() * t.element_size() for t in saved}.values())
    assert saved_bytes <= packed_bytes + activation_bytes
    assert any(t.dtype == torch.uint8 and t.numel() == out_f * in_f // 2 for t in saved)  # the packed codes
    holder["y"].sum().backward()  # backward still works from what was saved
    assert x.grad is not None and lora_a.weight.grad is not None


def test_saved_tensor_check_detects_a_dense_weight() -> None:
    """Control: the same check flags the dense weight a plain linear layer with a trainable input saves."""
    out_f, in_f = 192, 128
    w = torch.randn(out_f, in_f)
    x = torch.randn(2, 3, in_f, requires_grad=True)
    saved = _record_saved(lambda: x @ w.T)
    assert any(t.is_floating_point() and t.numel() >= out_f * in_f for t in saved)


# ---------------------------------------- peft


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def nf4_peft_model(seed: int = 0) -> tuple[nn.Module, LlamaForCausalLM]:
    model = tiny_llama(seed)
    quantize_model(model)
    for p in model.parameters():
        p.requires_grad_(False)
    config = prepare_lora_config(LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS))
    return get_peft_model(model, config), model


def test_quantize_model_replaces_linears_except_lm_head() -> None:
    model = tiny_llama()
    linears = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    stats = quantize_model(model)
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, NF4Linear)
    nf4 = [n for n, m in model.named_modules() if isinstance(m, NF4Linear)]
    assert len(nf4) == stats.layers == 2 * 7
    assert stats.params == sum(v for n, v in linears.items() if n != "lm_head")
    assert stats.bytes_before == 4 * stats.params
    assert stats.bytes_after == sum(m.quantized_nbytes for m in model.modules() if isinstance(m, NF4Linear))
    assert stats.ratio < 0.14
    assert isinstance(model.model.embed_tokens, nn.Embedding)


def test_peft_lora_on_nf4_llama_trains_only_lora() -> None:
    peft_model, base = nf4_peft_model()
    wrapped = [m for m in peft_model.modules() if isinstance(m, NF4LoraLinear)]
    assert len(wrapped) == 2 * 4
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    buffers_before = {n: b.clone() for n, b in peft_model.named_buffers()}
    params_before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}

    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    peft_model.train()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        out = peft_model(input_ids=ids, labels=ids)
        out.loss.backward()
        for n, p in peft_model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, n
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0]
    for n, b in peft_model.named_buffers():
        assert torch.equal(b, buffers_before[n]), n
    for n, p in peft_model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, params_before[n]), n


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointing in (False, True):
        peft_model, base = nf4_peft_model(seed=7)
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(hash(name) % 1000))
        if checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
            base.enable_input_require_grads()
        peft_model.train()
        peft_model(input_ids=ids, labels=ids).loss.backward()
        assert base.model.gradient_checkpointing == checkpointing
        grads.append({n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_adapter_save_and_load_back_on_nf4_base(tmp_path: Path) -> None:
    peft_model, _ = nf4_peft_model(seed=11)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1)
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    peft_model.eval()
    with torch.no_grad():
        logits = peft_model(input_ids=ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")

    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    # the standard peft layout, the same keys a LoRA on a plain nn.Linear base has (vLLM loads these)
    plain = get_peft_model(tiny_llama(11), LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    plain_keys = set(__import__("peft").get_peft_model_state_dict(plain).keys())
    assert set(tensors) == plain_keys
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in tensors)

    fresh = tiny_llama(11)
    quantize_model(fresh)
    config = prepare_lora_config(LoraConfig.from_pretrained(tmp_path / "adapter"))
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter", config=config)
    loaded.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, logits, atol=1e-5)
    # the adapter changes the output (it was not a no-op)
    with loaded.disable_adapter(), torch.no_grad():
        assert not torch.allclose(loaded(input_ids=ids).logits, logits, atol=1e-3)


def test_nf4_base_logits_are_close_to_full_precision() -> None:
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(3))
    full = tiny_llama(13)
    quant = copy.deepcopy(full)
    quantize_model(quant)
    with torch.no_grad():
        a = full(input_ids=ids).logits
        b = quant(input_ids=ids).logits
        other = tiny_llama(14)(input_ids=ids).logits
    rel = float((a - b).norm() / a.norm())
    assert rel < 0.25, rel
    assert rel < 0.25 * float((a - other).norm() / a.norm())
    # nf4_linear on the identity returns the dequantized weight (transposed)
    q_proj = quant.model.layers[0].self_attn.q_proj
    assert torch.allclose(nf4_linear(torch.eye(64), q_proj.quantized).T, q_proj.dequantized_weight())


# ---------------------------------------- loading


def test_load_quantized_base_builtin_and_none(tmp_path: Path) -> None:
    tiny_llama(17).save_pretrained(tmp_path / "m")
    model = load_quantized_base(tmp_path / "m", "builtin", torch.float32)
    assert isinstance(model.model.layers[0].mlp.down_proj, NF4Linear)
    assert not any(p.requires_grad for p in model.parameters())
    assert model.nf4_stats.layers == 14
    plain = load_quantized_base(tmp_path / "m", "none", torch.float32)
    assert isinstance(plain.model.layers[0].mlp.down_proj, nn.Linear)
    assert not any(p.requires_grad for p in plain.parameters())
    with pytest.raises(ValueError, match="unknown quant_backend 'int3'"):
        load_quantized_base(tmp_path / "m", "int3", torch.float32)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_quantized_base(tmp_path / "missing", "builtin", torch.float32)


def _bitsandbytes_reason() -> str | None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "bitsandbytes is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def test_bitsandbytes_backend_reports_what_is_missing() -> None:
    reason = _bitsandbytes_reason()
    if reason is None:
        pytest.skip("bitsandbytes and CUDA are present; the error path cannot be exercised")
    with pytest.raises(QuantBackendUnavailableError, match="bitsandbytes"):
        bitsandbytes_config()


def test_bitsandbytes_backend_loads_nf4(tmp_path: Path) -> None:
    reason = _bitsandbytes_reason()
    if reason is not None:
        pytest.skip(f"bitsandbytes backend needs bitsandbytes + CUDA: {reason}")
    cfg = bitsandbytes_config()
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "nf4" and cfg.bnb_4bit_use_double_quant
    assert cfg.bnb_4bit_compute_dtype == torch.bfloat16
    tiny_llama(19).save_pretrained(tmp_path / "m")
    model = load_quantized_base(tmp_path / "m", "bitsandbytes", torch.bfloat16)
    import bitsandbytes as bnb

    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    ids = torch.randint(0, 128, (1, 8), device="cuda")
    peft_model(input_ids=ids, labels=ids).loss.backward()
