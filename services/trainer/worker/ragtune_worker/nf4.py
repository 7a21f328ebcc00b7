"""The project's own 4-bit NF4 base for QLoRA, on CPU and CUDA with the same code.

Format (QLoRA paper, Dettmers et al. 2023; bitsandbytes ``quant_type="nf4"``,
``compress_statistics=True``):

* The weight is flattened (row-major) and cut into blocks of ``BLOCK_SIZE`` = 64 values (the last
  block is zero-padded). Each block is divided by its absmax and every value is mapped to the nearest
  of the 16 NF4 code values (``NF4_CODE``, the exact table of the paper / bitsandbytes).
* Two 4-bit codes per byte. Nibble order as in bitsandbytes' kernels: flat element ``2*i`` is in the
  HIGH nibble of byte ``i``, element ``2*i + 1`` in the LOW nibble.
* Double quantization ("nested" statistics), as bitsandbytes' ``quantize_4bit(compress_statistics=
  True)`` does it: ``offset = mean(absmax)``; ``absmax - offset`` is quantized blockwise with 8 bits
  in blocks of ``STATS_BLOCK_SIZE`` = 256 with one fp32 scale (the block's absmax) per block, each
  normalized value mapped to the nearest entry of bitsandbytes' signed 8-bit *dynamic* map
  (``create_dynamic_map(signed=True)``: a dynamic-exponent code with more resolution near zero).
  Dequantization: ``absmax = map[code] * scale + offset``.

Storage per parameter: 4 bits (codes) + 8/64 (absmax codes) + 32/(64*256) (scales) ≈ 4.127 bits.

``NF4Linear`` holds the packed buffers and computes ``x @ W.T (+ b)`` through
``NF4MatmulFunction``, which dequantizes ``W`` in forward and again in backward, saving only the
packed tensors in between. ``W`` is frozen.

peft wraps ``NF4Linear`` through its custom-module API: ``prepare_lora_config(config)`` registers
``NF4LoraLinear`` (a ``LoraLayer``) for ``NF4Linear`` on a ``LoraConfig``; pass that config to
``get_peft_model`` and, when loading a saved adapter onto an NF4 base, to
``PeftModel.from_pretrained(..., config=...)``. The adapter files are the standard peft layout (the
same keys as for an ``nn.Linear`` base).
"""

from __future__ import annotations

import ctypes
import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812
from peft.tuners.lora.layer import LoraLayer
from torch import Tensor, nn

BLOCK_SIZE = 64
STATS_BLOCK_SIZE = 256

# The 16 NF4 values, exactly as published in the QLoRA paper (Appendix E) and bitsandbytes (functional.py,
# get_4bit_type("nf4")): quantiles of N(0, 1) normalized to [-1, 1] with an exact zero.
NF4_CODE: tuple[float, ...] = (
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
)

_QUANT_CHUNK = 1 << 22  # elements quantized at once (bounds the temporary memory of quantize_nf4)


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> Tensor:
    """bitsandbytes' 8-bit dynamic (tree) quantization map, 256 sorted fp32 values in [-1, 1]."""
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = (
            2 ** (i + non_sign_bits - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        )
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + i)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scale = 10 ** (-(max_exponent_bits - 1) + max_exponent_bits - 1)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data.append(0.0)
    data.append(1.0)
    data += [0.0] * (2**total_bits - len(data))
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


DYNAMIC_MAP: Tensor = create_dynamic_map(signed=True)


def _nearest_code(values: Tensor, sorted_code: Tensor) -> Tensor:
    """Index of the nearest entry of ``sorted_code`` for every value (ties go to the lower code)."""
    midpoints = (sorted_code[1:] + sorted_code[:-1]) / 2
    return torch.bucketize(values, midpoints.to(values.device, values.dtype))


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight in NF4 with double-quantized statistics. All tensors live on the same device."""

    packed: Tensor  # uint8 [ceil(numel / 64) * 32]: two NF4 codes per byte, element 2i in the high nibble
    absmax_codes: Tensor  # uint8 [n_blocks]: 8-bit dynamic-map codes of (absmax - absmax_offset) / scale
    absmax_scales: Tensor  # float32 [ceil(n_blocks / 256)]: one scale per block of 256 absmax values
    absmax_offset: Tensor  # float32 scalar: mean of the fp32 absmax values
    shape: tuple[int, ...]
    dtype: torch.dtype  # dtype of the original weight

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_blocks(self) -> int:
        return self.absmax_codes.numel()

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized representation (codes + statistics)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self.packed, self.absmax_codes, self.absmax_scales, self.absmax_offset)


def quantize_absmax(absmax: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Double quantization of fp32 block absmax values → (uint8 codes, fp32 scales per 256, fp32 offset)."""
    absmax = absmax.float()
    offset = absmax.mean()
    centered = absmax - offset
    n = centered.numel()
    n_groups = -(-n // STATS_BLOCK_SIZE)
    padded = F.pad(centered, (0, n_groups * STATS_BLOCK_SIZE - n)).view(n_groups, STATS_BLOCK_SIZE)
    scales = padded.abs().amax(dim=1)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = _nearest_code(padded / safe[:, None], DYNAMIC_MAP).to(torch.uint8).view(-1)[:n]
    return codes.contiguous(), scales.contiguous(), offset.reshape(())


def dequantize_absmax(
    codes: Tensor, scales: Tensor, offset: Tensor, dtype: torch.dtype = torch.float32
) -> Tensor:
    values = DYNAMIC_MAP.to(codes.device)[codes.long()]
    expanded = scales.repeat_interleave(STATS_BLOCK_SIZE)[: codes.numel()]
    return (values * expanded + offset).to(dtype)


def quantize_nf4(w: Tensor) -> QuantizedWeight:
    """Quantize ``w`` (any float dtype and shape) to NF4 with double-quantized absmax statistics."""
    if not w.is_floating_point():
        raise TypeError(f"quantize_nf4 needs a floating point tensor, got {w.dtype}")
    if w.numel() == 0:
        raise ValueError("quantize_nf4 got an empty tensor")
    if not torch.isfinite(w).all():
        raise ValueError("quantize_nf4 got a tensor with NaN or inf values")
    flat = w.detach().reshape(-1)
    n = flat.numel()
    n_blocks = -(-n // BLOCK_SIZE)
    code = torch.tensor(NF4_CODE, dtype=torch.float32, device=w.device)
    absmax = torch.empty(n_blocks, dtype=torch.float32, device=w.device)
    packed = torch.empty(n_blocks * BLOCK_SIZE // 2, dtype=torch.uint8, device=w.device)
    blocks_per_chunk = _QUANT_CHUNK // BLOCK_SIZE
    for b0 in range(0, n_blocks, blocks_per_chunk):
        b1 = min(n_blocks, b0 + blocks_per_chunk)
        part = flat[b0 * BLOCK_SIZE : min(n, b1 * BLOCK_SIZE)].float()
        part = F.pad(part, (0, (b1 - b0) * BLOCK_SIZE - part.numel())).view(b1 - b0, BLOCK_SIZE)
        block_absmax = part.abs().amax(dim=1)
        absmax[b0:b1] = block_absmax
        safe = torch.where(block_absmax > 0, block_absmax, torch.ones_like(block_absmax))
        codes = _nearest_code(part / safe[:, None], code).to(torch.uint8).view(-1, 2)
        packed[b0 * BLOCK_SIZE // 2 : b1 * BLOCK_SIZE // 2] = (codes[:, 0] << 4) | codes[:, 1]
    absmax_codes, absmax_scales, absmax_offset = quantize_absmax(absmax)
    return QuantizedWeight(
        packed=packed,
        absmax_codes=absmax_codes,
        absmax_scales=absmax_scales,
        absmax_offset=absmax_offset,
        shape=tuple(w.shape),
        dtype=w.dtype,
    )


_PAIR_TABLES: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _pair_table(device: torch.device, dtype: torch.dtype) -> Tensor:
    """[256, 2] table: byte → (NF4 value of the high nibble, NF4 value of the low nibble), in ``dtype``."""
    key = (device, dtype)
    table = _PAIR_TABLES.get(key)
    if table is None:
        code = torch.tensor(NF4_CODE, dtype=torch.float32)
        byte = torch.arange(256)
        table = torch.stack([code[byte >> 4], code[byte & 0xF]], dim=1).to(device=device, dtype=dtype)
        _PAIR_TABLES[key] = table
    return table


def dequantize_nf4(q: QuantizedWeight, dtype: torch.dtype | None = None) -> Tensor:
    """Dequantize to a dense tensor of ``q.shape`` in ``dtype`` (default: the original dtype).

    One embedding lookup per byte (a 256 x 2 table of NF4 value pairs, in ``dtype``) and one multiply by the
    dequantized block absmax; no Python loop over blocks.
    """
    dtype = dtype or q.dtype
    pairs = F.embedding(q.packed.int(), _pair_table(q.packed.device, dtype))  # [n_bytes, 2]
    absmax = dequantize_absmax(q.absmax_codes, q.absmax_scales, q.absmax_offset, dtype)
    blocks = pairs.view(-1, BLOCK_SIZE).mul_(absmax[:, None])  # in place: one allocation of the dense size
    return blocks.view(-1)[: q.numel].view(q.shape)


class NF4MatmulFunction(torch.autograd.Function):
    """``y = x @ dequant(W).T + b`` with ``W`` dequantized in forward and again in backward.

    Only the packed tensors (and ``x`` is NOT needed: ``W`` is frozen, so no weight gradient) are saved for
    backward; the dense ``W`` is a temporary of each pass.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        packed: Tensor,
        absmax_codes: Tensor,
        absmax_scales: Tensor,
        absmax_offset: Tensor,
        shape: tuple[int, int],
        bias: Tensor | None,
    ) -> Tensor:
        q = QuantizedWeight(packed, absmax_codes, absmax_scales, absmax_offset, shape, x.dtype)
        w = dequantize_nf4(q, x.dtype)
        out = F.linear(x, w, None if bias is None else bias.to(x.dtype))
        ctx.save_for_backward(packed, absmax_codes, absmax_scales, absmax_offset)
        ctx.shape = shape
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        packed, absmax_codes, absmax_scales, absmax_offset = ctx.saved_tensors
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            q = QuantizedWeight(packed, absmax_codes, absmax_scales, absmax_offset, ctx.shape, grad_out.dtype)
            grad_x = grad_out @ dequantize_nf4(q, grad_out.dtype)
        if ctx.has_bias and ctx.needs_input_grad[6]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, None, None, None, None, None, grad_bias


def nf4_linear(x: Tensor, q: QuantizedWeight, bias: Tensor | None = None) -> Tensor:
    """Functional form: ``x @ dequant(q).T + bias`` through ``NF4MatmulFunction``."""
    if len(q.shape) != 2:
        raise ValueError(f"nf4_linear needs a 2-D weight, got shape {q.shape}")
    return NF4MatmulFunction.apply(x, *q.tensors(), q.shape, bias)


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is stored in NF4 (packed, double-quantized statistics).

    The fp32 statistics are stored as int32 bit patterns so that ``model.to(dtype)`` (which casts
    floating point buffers) cannot degrade them. ``compute_dtype`` is the dtype the weight is
    dequantized to and the matmul runs in (the input is cast to it, the output back to the input's
    dtype).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = False,
        compute_dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"NF4Linear needs positive sizes, got in={in_features} out={out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = compute_dtype
        n = in_features * out_features
        n_blocks = -(-n // BLOCK_SIZE)
        n_groups = -(-n_blocks // STATS_BLOCK_SIZE)
        self.register_buffer(
            "packed", torch.zeros(n_blocks * BLOCK_SIZE // 2, dtype=torch.uint8, device=device)
        )
        self.register_buffer("absmax_codes", torch.zeros(n_blocks, dtype=torch.uint8, device=device))
        self.register_buffer("absmax_scales_bits", torch.zeros(n_groups, dtype=torch.int32, device=device))
        self.register_buffer("absmax_offset_bits", torch.zeros((), dtype=torch.int32, device=device))
        self.weight_dtype = torch.float32
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(
                torch.zeros(out_features, device=device), requires_grad=False
            )
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, compute_dtype: torch.dtype | None = None) -> NF4Linear:
        """Quantize an ``nn.Linear``'s weight; the bias (if any) is kept in its dtype, frozen."""
        weight = linear.weight.detach()
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype or weight.dtype,
            device=weight.device,
        )
        layer.load_quantized(quantize_nf4(weight))
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return layer

    def load_quantized(self, q: QuantizedWeight) -> None:
        if q.shape != (self.out_features, self.in_features):
            raise ValueError(
                f"quantized weight has shape {q.shape}, layer expects {(self.out_features, self.in_features)}"
            )
        self.packed = q.packed
        self.absmax_codes = q.absmax_codes
        self.absmax_scales_bits = q.absmax_scales.float().view(torch.int32)
        self.absmax_offset_bits = q.absmax_offset.float().reshape(()).view(torch.int32)
        self.weight_dtype = q.dtype

    @property
    def quantized(self) -> QuantizedWeight:
        """The weight as a ``QuantizedWeight`` (zero-copy views of the buffers)."""
        return QuantizedWeight(
            packed=self.packed,
            absmax_codes=self.absmax_codes,
            absmax_scales=self.absmax_scales_bits.view(torch.float32),
            absmax_offset=self.absmax_offset_bits.view(torch.float32),
            shape=(self.out_features, self.in_features),
            dtype=self.weight_dtype,
        )

    @property
    def qweight(self) -> Tensor:
        """The packed codes under the name peft (and GPTQ-style layers) use for a packed quantized weight.

        peft reads ``qweight`` of a base layer to place the LoRA modules on the base layer's device.
        """
        return self.packed

    @property
    def quantized_nbytes(self) -> int:
        return self.quantized.nbytes

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> Tensor:
        return dequantize_nf4(self.quantized, dtype or self.compute_dtype)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"NF4Linear expects last dim {self.in_features}, got input of shape {tuple(x.shape)}"
            )
        out = nf4_linear(x.to(self.compute_dtype), self.quantized, self.bias)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, compute_dtype={self.compute_dtype}"
        )


# ------------------------------------------------------------------------------------------------
# peft integration


class NF4LoraLinear(nn.Module, LoraLayer):
    """peft LoRA layer on an ``NF4Linear`` base (registered via ``LoraConfig._register_custom_module``).

    Modeled on peft's bitsandbytes ``Linear4bit`` LoRA layer: base output + the sum over active
    adapters of ``lora_B(lora_A(dropout(x))) * scaling``. Merging into the 4-bit base is refused
    (merge into a full-precision copy of the base instead); DoRA and other variants are not supported.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: Any,
        r: int = 0,
        lora_alpha: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        if not isinstance(module, NF4Linear):
            raise TypeError(f"NF4LoraLinear wraps NF4Linear, got {type(module).__name__}")
        return module.in_features, module.out_features

    def resolve_lora_variant(self, *, config: Any, **kwargs: Any) -> None:
        if config.use_dora or getattr(config, "alora_invocation_tokens", None) is not None:
            raise ValueError("LoRA variants (DoRA, aLoRA) are not supported on the builtin NF4 base")
        return None

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(
            "merging a LoRA adapter into the 4-bit NF4 base is not supported; "
            "load the base in full precision and merge there"
        )

    def unmerge(self) -> None:
        raise ValueError("NF4 base layers are never merged, nothing to unmerge")

    def get_delta_weight(self, adapter: str) -> Tensor:
        return (self.lora_B[adapter].weight @ self.lora_A[adapter].weight) * self.scaling[adapter]

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self._check_forward_args(x, *args, **kwargs)
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError(
                "mixed-adapter batches (adapter_names) are not supported on the builtin NF4 base"
            )
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        for active_adapter in self.active_adapters:
            if active_adapter not in self.lora_A:
                continue
            lora_a = self.lora_A[active_adapter]
            lora_b = self.lora_B[active_adapter]
            dropout = self.lora_dropout[active_adapter]
            scaling = self.scaling[active_adapter]
            if torch.is_autocast_enabled(x.device.type):
                output = lora_b(lora_a(dropout(x))) * scaling
            else:
                xa = self._cast_input_dtype(x, lora_a.weight.dtype)
                output = (lora_b(lora_a(dropout(xa))) * scaling).to(result.dtype)
            result = result + output
        return result

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def prepare_lora_config(config: Any) -> Any:
    """Register the NF4 LoRA layer on a peft ``LoraConfig`` (in place; returns it for chaining)."""
    config._register_custom_module({NF4Linear: NF4LoraLinear})
    return config


# ------------------------------------------------------------------------------------------------
# whole models


@dataclass(frozen=True)
class QuantizationStats:
    layers: int  # number of nn.Linear layers replaced by NF4Linear
    params: int  # parameters in those layers' weights
    bytes_before: int  # bytes of those weights before quantization
    bytes_after: int  # bytes of the NF4 codes + statistics

    @property
    def bits_per_param(self) -> float:
        return 8 * self.bytes_after / self.params if self.params else 0.0

    @property
    def ratio(self) -> float:
        return self.bytes_after / self.bytes_before if self.bytes_before else 0.0


def _skipped(name: str, skip_modules: Iterable[str]) -> bool:
    parts = name.split(".")
    return any(s == name or s in parts for s in skip_modules)


def quantize_model(
    model: nn.Module,
    *,
    compute_dtype: torch.dtype = torch.float32,
    skip_modules: Iterable[str] = ("lm_head",),
) -> QuantizationStats:
    """Replace every ``nn.Linear`` of ``model`` (except modules named in ``skip_modules``) with ``NF4Linear``.

    Works in place, one layer at a time: only the names of the layers are collected up front, so the
    full-precision weight of a layer is freed as soon as the layer is replaced (unless the caller holds it).
    Embeddings are not ``nn.Linear`` and stay as they are. For a checkpoint on disk,
    ``load_quantized_base`` streams instead, never holding the full-precision model.
    """
    skip = tuple(skip_modules)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not _skipped(name, skip)
    ]
    layers = params = before = after = 0
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        nf4 = NF4Linear.from_linear(linear, compute_dtype=compute_dtype)
        layers += 1
        params += linear.weight.numel()
        before += linear.weight.numel() * linear.weight.element_size()
        after += nf4.quantized_nbytes
        setattr(parent, child, nf4)
        del linear
    return QuantizationStats(layers=layers, params=params, bytes_before=before, bytes_after=after)


# ------------------------------------------------------------------------------------------------
# streaming a checkpoint into an NF4 model


def safetensors_shards(model_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files in order (the index's shards, or the single file); [] if none."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        shards = list(dict.fromkeys(weight_map.values()))
        missing = [name for name in shards if not (model_dir / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are missing: {', '.join(missing[:3])}")
        return [model_dir / name for name in shards]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    return sorted(model_dir.glob("*.safetensors"))


def _set_tensor(model: nn.Module, key: str, value: Tensor) -> bool:
    """Put a checkpoint tensor in place of the (meta) parameter or buffer it names; False if there is none."""
    module_name, _, attr = key.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        return False
    if attr in module._parameters:
        current = module._parameters[attr]
        if current is not None and tuple(current.shape) != tuple(value.shape):
            raise ValueError(
                f"checkpoint tensor {key} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(current.shape)}"
            )
        module._parameters[attr] = nn.Parameter(value, requires_grad=False)
        return True
    if attr in module._buffers:
        module._buffers[attr] = value
        return True
    return False


def _glibc_malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _glibc_malloc_trim()


def _return_freed_memory() -> None:
    """Give the pages of freed tensors back to the OS (glibc keeps them in its heap otherwise).

    The temporaries of one tensor's quantization are freed between shapes of long-lived NF4 buffers, so
    the heap cannot shrink from its top and would grow by every tensor's temporaries; ``malloc_trim``
    releases the free pages inside it, keeping the resident set at what is alive.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


_NF4_BUFFERS = frozenset({"packed", "absmax_codes", "absmax_scales_bits", "absmax_offset_bits"})


def load_nf4_streaming(
    model_dir: Path,
    compute_dtype: torch.dtype,
    *,
    skip_modules: Iterable[str] = ("lm_head",),
) -> nn.Module:
    """Build the model without weights, then fill it from the safetensors shards one tensor at a time.

    The model is created from ``config.json`` with its parameters on the meta device (no memory; buffers such
    as rotary frequencies are computed as usual), and each ``nn.Linear`` to quantize is swapped for an
    empty ``NF4Linear`` before any weight is read. Each checkpoint tensor is then read from its shard
    (memory-mapped), cast to ``compute_dtype`` and either quantized straight into its ``NF4Linear`` or kept
    as the parameter it names, and dropped: the host holds the NF4 weights, the unquantized parameters
    (embeddings, norms, ``lm_head``) and one full-precision tensor at a time, never the full model.
    """
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=compute_dtype)
    skip = tuple(skip_modules)
    nf4_layers: dict[str, NF4Linear] = {}
    for name in [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not _skipped(n, skip)]:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        layer = NF4Linear(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            device="meta",
        )
        setattr(parent, child, layer)
        nf4_layers[name] = layer

    layers = params = before = after = 0
    quantized: set[str] = set()
    for shard in safetensors_shards(model_dir):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensor = f.get_tensor(key)
                if tensor.is_floating_point():
                    tensor = tensor.to(compute_dtype)
                module_name, _, attr = key.rpartition(".")
                layer = nf4_layers.get(module_name)
                if layer is not None and attr == "weight":
                    if tuple(tensor.shape) != (layer.out_features, layer.in_features):
                        raise ValueError(
                            f"checkpoint tensor {key} has shape {tuple(tensor.shape)}, "
                            f"the model expects {(layer.out_features, layer.in_features)}"
                        )
                    layer.load_quantized(quantize_nf4(tensor))
                    quantized.add(module_name)
                    layers += 1
                    params += tensor.numel()
                    before += tensor.numel() * tensor.element_size()
                    after += layer.quantized_nbytes
                else:
                    # A copy: the tensor read may be a view of the memory-mapped shard, which a kept view
                    # would hold mapped (and resident) for the model's lifetime. Keys the model lacks are
                    # ignored, as transformers does.
                    _set_tensor(model, key, tensor.clone())
                del tensor
                _return_freed_memory()
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    # Named as in the checkpoint: an NF4 layer's buffers come from its ".weight".
    missing = [f"{name}.weight" for name in nf4_layers if name not in quantized]
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        owner, _, attr = name.rpartition(".")
        if t.is_meta and not (owner in nf4_layers and attr in _NF4_BUFFERS):
            missing.append(name)
    if missing:
        raise ValueError(
            f"the checkpoint in {model_dir} lacks {len(missing)} weights the model needs, "
            f"e.g. {', '.join(missing[:3])}"
        )
    model.config.name_or_path = str(model_dir)
    model.nf4_stats = QuantizationStats(layers=layers, params=params, bytes_before=before, bytes_after=after)
    return model


# ------------------------------------------------------------------------------------------------
# loading a base model per backend

QuantBackend = Literal["builtin", "bitsandbytes", "none"]


class QuantBackendUnavailableError(RuntimeError):
    """The requested quantization backend cannot run on this machine (package or GPU missing)."""


def bitsandbytes_config(compute_dtype: torch.dtype = torch.bfloat16) -> Any:
    """transformers ``BitsAndBytesConfig`` with the seed's QLoRA settings (NF4, double quant, bf16 compute).

    Raises ``QuantBackendUnavailableError`` when bitsandbytes is not installed or no CUDA GPU is present.
    """
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise QuantBackendUnavailableError(
            "quant_backend 'bitsandbytes' needs the bitsandbytes package (pip install bitsandbytes); "
            "use quant_backend 'builtin' on machines without it"
        ) from err
    if not torch.cuda.is_available():
        raise QuantBackendUnavailableError(
            "quant_backend 'bitsandbytes' needs a CUDA GPU and none is available; use quant_backend 'builtin'"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_quantized_base(
    model_dir: Path | str,
    backend: QuantBackend,
    compute_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Load a local Hugging Face causal LM, quantized per ``backend``, all base parameters frozen.

    * ``builtin``: every linear layer except ``lm_head`` an ``NF4Linear``, the rest in ``compute_dtype`` (wrap
      with peft using ``prepare_lora_config(LoraConfig(...))``). A safetensors checkpoint is streamed into the
      NF4 model tensor by tensor (``load_nf4_streaming``), so the host never holds the full-precision model.
    * ``bitsandbytes``: loaded with ``bitsandbytes_config(compute_dtype)`` on the GPU (CUDA only).
    * ``none``: loaded in ``compute_dtype`` as is (plain LoRA).

    The quantization statistics of the builtin backend are attached as ``model.nf4_stats``.
    """
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"model folder {model_dir} has no config.json")
    if backend == "bitsandbytes":
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            quantization_config=bitsandbytes_config(compute_dtype),
            dtype=compute_dtype,
            device_map={"": torch.cuda.current_device()},
            local_files_only=True,
        )
    elif backend == "builtin" and safetensors_shards(model_dir):
        model = load_nf4_streaming(model_dir, compute_dtype)
    elif backend in ("builtin", "none"):
        # "none", or pytorch_model*.bin files only (not memory-mappable): load whole, then quantize.
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute_dtype, local_files_only=True)
        if backend == "builtin":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.nf4_stats = quantize_model(model, compute_dtype=compute_dtype)
    else:
        raise ValueError(f"unknown quant_backend {backend!r}; expected builtin, bitsandbytes or none")
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model
