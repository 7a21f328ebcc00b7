"""GGUF export for llama.cpp: a Hugging Face Llama/Mistral model folder and PEFT LoRA adapters.

Follows what llama.cpp's ``convert_hf_to_gguf.py`` (``LlamaModel``) and ``convert_lora_to_gguf.py`` do:

* hparams under ``llama.*``, tensor names from gguf-py's ``TENSOR_NAMES`` (``token_embd``,
  ``blk.N.attn_q`` ... ``output_norm``, ``output``), 1-D tensors always f32;
* the Q/K rotary permutation: HF Llama checkpoints store q_proj/k_proj with the rotary halves
  de-interleaved (rotate_half layout); llama.cpp expects the interleaved (GPT-J) layout, so rows are
  permuted per head: ``w.reshape(n_head, 2, head_dim // 2, in).swapaxes(1, 2).reshape(w.shape)``
  (with ``n_head = n_head_kv`` for k_proj);
* a LoRA adapter is ``general.type = "adapter"``, ``adapter.type = "lora"``,
  ``adapter.lora.alpha``, tensors ``<base tensor name>.lora_a`` (r x in) and ``.lora_b`` (out x r);
  since ``W + B·A`` is permuted row-wise, only ``lora_b`` of q/k gets the permutation.

Tokenizers (from tokenizer.json + tokenizer_config.json):

* SentencePiece-style BPE with byte fallback (Llama 2 / Mistral): ``tokenizer.ggml.model = "llama"``.
  llama.cpp's SPM tokenizer merges the adjacent pair whose merged token has the highest score, so the
  score of a token is minus the rank of the first BPE merge that produces it (0 for tokens that no
  merge produces). That reproduces the HF BPE merge order (llama.cpp's own HF fallback writes -1000
  for every token, which does not).
* byte-level BPE (Llama 3, Qwen2): ``tokenizer.ggml.model = "gpt2"`` with the merges and a
  pre-tokenizer name (``llama-bpe`` or ``qwen2``) recognized from the pre-tokenizer regex.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")

_LAYER_TENSORS: dict[str, gguf.MODEL_TENSOR] = {
    "self_attn.q_proj": gguf.MODEL_TENSOR.ATTN_Q,
    "self_attn.k_proj": gguf.MODEL_TENSOR.ATTN_K,
    "self_attn.v_proj": gguf.MODEL_TENSOR.ATTN_V,
    "self_attn.o_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "mlp.gate_proj": gguf.MODEL_TENSOR.FFN_GATE,
    "mlp.up_proj": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.down_proj": gguf.MODEL_TENSOR.FFN_DOWN,
    "input_layernorm": gguf.MODEL_TENSOR.ATTN_NORM,
    "post_attention_layernorm": gguf.MODEL_TENSOR.FFN_NORM,
}
_GLOBAL_TENSORS: dict[str, gguf.MODEL_TENSOR] = {
    "model.embed_tokens": gguf.MODEL_TENSOR.TOKEN_EMBD,
    "model.norm": gguf.MODEL_TENSOR.OUTPUT_NORM,
    "lm_head": gguf.MODEL_TENSOR.OUTPUT,
}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# Pre-tokenizer regexes of the byte-level BPE tokenizers llama.cpp knows (fragments are enough to tell).
_GPT2_PRE = (
    ("qwen2", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"),
    ("llama-bpe", r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"),
)


class GGUFExportError(ValueError):
    """The model or adapter folder cannot be converted (names the file or setting at fault)."""


# ------------------------------------------------------------------------------------------------
# model config


class LlamaHParams:
    def __init__(self, model_dir: Path) -> None:
        path = model_dir / "config.json"
        if not path.is_file():
            raise GGUFExportError(f"model folder {model_dir} has no config.json")
        try:
            cfg: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise GGUFExportError(f"{path} is not valid JSON: {err}") from err
        archs = cfg.get("architectures") or []
        if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
            raise GGUFExportError(
                f"{path}: architecture {archs} is not supported for GGUF export "
                f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
            )
        try:
            self.n_vocab = int(cfg["vocab_size"])
            self.n_embd = int(cfg["hidden_size"])
            self.n_layer = int(cfg["num_hidden_layers"])
            self.n_ff = int(cfg["intermediate_size"])
            self.n_head = int(cfg["num_attention_heads"])
        except KeyError as err:
            raise GGUFExportError(f"{path} lacks {err.args[0]}") from err
        self.n_head_kv = int(cfg.get("num_key_value_heads") or self.n_head)
        self.head_dim = int(cfg.get("head_dim") or self.n_embd // self.n_head)
        self.n_ctx = int(cfg.get("max_position_embeddings", 4096))
        self.rms_eps = float(cfg.get("rms_norm_eps", 1e-6))
        rope = cfg.get("rope_parameters") or {}
        self.rope_theta = float(cfg.get("rope_theta") or rope.get("rope_theta") or 10000.0)
        scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
            raise GGUFExportError(f"{path}: rope scaling {scaling} is not supported for GGUF export")
        self.tied = bool(cfg.get("tie_word_embeddings", False))
        self.name = str(cfg.get("_name_or_path") or model_dir.name) or model_dir.name


def permute_qk(weights: torch.Tensor, n_head: int, n_head_kv: int | None = None) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute``: HF rotate_half row order → interleaved rotary row order."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_tensor_name(hf_name: str) -> tuple[str, str | None]:
    """HF parameter name → (GGUF tensor name, the HF module kind such as ``self_attn.q_proj``)."""
    stem, _, suffix = hf_name.rpartition(".")
    if suffix != "weight":
        raise GGUFExportError(f"tensor {hf_name} has no GGUF counterpart (only .weight tensors are expected)")
    if stem in _GLOBAL_TENSORS:
        return gguf.TENSOR_NAMES[_GLOBAL_TENSORS[stem]] + ".weight", None
    m = _LAYER_RE.match(stem)
    if m and m.group(2) in _LAYER_TENSORS:
        kind = m.group(2)
        return gguf.TENSOR_NAMES[_LAYER_TENSORS[kind]].format(bid=int(m.group(1))) + ".weight", kind
    raise GGUFExportError(f"tensor {hf_name} has no GGUF counterpart in the llama layout")


def _load_model_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise GGUFExportError(f"model folder {model_dir} has no *.safetensors weights")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensors[key] = st.get_tensor(key)
    return tensors


# ------------------------------------------------------------------------------------------------
# tokenizer


def _add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, n_vocab: int) -> None:
    tok_path = model_dir / "tokenizer.json"
    if not tok_path.is_file():
        raise GGUFExportError(f"model folder {model_dir} has no tokenizer.json")
    tok = json.loads(tok_path.read_text())
    cfg_path = model_dir / "tokenizer_config.json"
    tok_cfg: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise GGUFExportError(
            f"{tok_path}: tokenizer model {model.get('type')!r} is not supported (BPE only)"
        )
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: (int(t["id"]), bool(t.get("special"))) for t in tok.get("added_tokens", [])}
    for content, (tid, _) in added.items():
        vocab.setdefault(content, tid)
    if len(set(vocab.values())) != len(vocab) or max(vocab.values()) >= n_vocab + 1_000_000:
        raise GGUFExportError(f"{tok_path}: token ids are not unique")
    size = max(n_vocab, max(vocab.values()) + 1)
    by_id: list[str | None] = [None] * size
    for text, tid in vocab.items():
        by_id[tid] = text
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special_ids = {tid for tid, special in added.values() if special}
    types = gguf.TokenType

    if model.get("byte_fallback"):
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        merge_rank: dict[str, int] = {}
        for rank, merge in enumerate(merges):
            merge_rank.setdefault(merge.replace(" ", "", 1), rank)
        tokens: list[str] = []
        scores: list[float] = []
        toktypes: list[int] = []
        for tid, text in enumerate(by_id):
            if text is None:
                tokens.append(f"[PAD{tid}]")
                scores.append(-1000.0)
                toktypes.append(types.UNUSED)
                continue
            tokens.append(text)
            scores.append(-float(merge_rank[text]) if text in merge_rank else 0.0)
            if text == model.get("unk_token"):
                toktypes.append(types.UNKNOWN)
            elif tid in special_ids:
                toktypes.append(types.CONTROL)
            elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
                toktypes.append(types.BYTE)
            elif text in added:
                toktypes.append(types.USER_DEFINED)
            else:
                toktypes.append(types.NORMAL)
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(toktypes)
    else:
        pre_json = json.dumps(tok.get("pre_tokenizer"))
        pre = next((name for name, frag in _GPT2_PRE if json.dumps(frag)[1:-1] in pre_json), None)
        if pre is None:
            raise GGUFExportError(
                f"{tok_path}: byte-level BPE pre-tokenizer not recognized (llama-bpe, qwen2)"
            )
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list([t if t is not None else f"[PAD{i}]" for i, t in enumerate(by_id)])
        writer.add_token_types(
            [
                types.UNUSED
                if t is None
                else types.CONTROL
                if i in special_ids
                else types.USER_DEFINED
                if t in added
                else types.NORMAL
                for i, t in enumerate(by_id)
            ]
        )
        writer.add_token_merges(merges)

    def token_id(key: str) -> int | None:
        value = tok_cfg.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if value is None:
            return None
        if value not in vocab:
            raise GGUFExportError(f"{cfg_path}: {key} {value!r} is not in the vocabulary")
        return vocab[value]

    bos, eos, unk, pad = (token_id(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token"))
    if eos is None:
        raise GGUFExportError(f"{model_dir}: tokenizer_config.json names no eos_token")
    if bos is not None:
        writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    if unk is not None:
        writer.add_unk_token_id(unk)
    if pad is not None:
        writer.add_pad_token_id(pad)
    writer.add_add_bos_token(bool(tok_cfg.get("add_bos_token", bos is not None)))
    writer.add_add_eos_token(bool(tok_cfg.get("add_eos_token", False)))
    template = tok_cfg.get("chat_template")
    if isinstance(template, str):
        writer.add_chat_template(template)


# ------------------------------------------------------------------------------------------------
# base model


def _open_writer(out_path: Path) -> gguf.GGUFWriter:
    """A llama-architecture GGUF writer on `<out_path>.partial`; `_finish` moves it into place."""
    return gguf.GGUFWriter(_partial(out_path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])


def _finish(writer: gguf.GGUFWriter, out_path: Path) -> Path:
    """Write header, metadata and tensors, then rename, so a reader never sees a half-written file."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _partial(out_path).replace(out_path)
    return out_path


def _partial(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".partial")


def export_base_gguf(model_dir: Path, out_path: Path, *, dtype: Literal["f32", "f16"] = "f32") -> Path:
    """Convert a Hugging Face Llama/Mistral folder to a llama.cpp GGUF file; returns ``out_path``."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if dtype not in ("f32", "f16"):
        raise GGUFExportError(f"GGUF dtype must be f32 or f16, got {dtype!r}")
    hp = LlamaHParams(model_dir)
    tensors = _load_model_tensors(model_dir)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = _open_writer(out_path)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(hp.name)
    writer.add_vocab_size(hp.n_vocab)
    writer.add_context_length(hp.n_ctx)
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_layer)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    if hp.head_dim != hp.n_embd // hp.n_head:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_rope_freq_base(hp.rope_theta)
    file_type = gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(int(file_type))
    _add_tokenizer(writer, model_dir, hp.n_vocab)

    seen: set[str] = set()
    for hf_name, tensor in tensors.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        name, kind = gguf_tensor_name(hf_name)
        data = tensor.float()
        if kind == "self_attn.q_proj":
            data = permute_qk(data, hp.n_head, hp.n_head)
        elif kind == "self_attn.k_proj":
            data = permute_qk(data, hp.n_head, hp.n_head_kv)
        array = data.numpy()
        if dtype == "f16" and array.ndim > 1:
            array = array.astype(np.float16)
        writer.add_tensor(name, array)
        seen.add(name)
    expected = {"token_embd.weight", "output_norm.weight"}
    for i in range(hp.n_layer):
        expected |= {gguf.TENSOR_NAMES[t].format(bid=i) + ".weight" for t in _LAYER_TENSORS.values()}
    missing = sorted(expected - seen)
    if missing:
        raise GGUFExportError(f"{model_dir}: weights lack {', '.join(missing[:5])}")
    if "output.weight" not in seen and not hp.tied:
        raise GGUFExportError(f"{model_dir}: no lm_head.weight and tie_word_embeddings is false")

    return _finish(writer, out_path)


# ------------------------------------------------------------------------------------------------
# LoRA adapter

_PEFT_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def export_lora_gguf(adapter_dir: Path, base_model_dir: Path, out_path: Path) -> Path:
    """Convert a PEFT LoRA adapter to llama.cpp's GGUF LoRA format; returns ``out_path``."""
    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    cfg_path = adapter_dir / "adapter_config.json"
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise GGUFExportError(
            f"adapter folder {adapter_dir} needs adapter_config.json and adapter_model.safetensors"
        )
    cfg: dict[str, Any] = json.loads(cfg_path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise GGUFExportError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for key, what in (("use_dora", "DoRA"), ("use_rslora", "rank-stabilized LoRA")):
        if cfg.get(key):
            raise GGUFExportError(
                f"{cfg_path}: {what} adapters cannot be expressed in llama.cpp's LoRA format"
            )
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise GGUFExportError(
            f"{cfg_path}: rank_pattern/alpha_pattern are not supported (one alpha per file)"
        )
    if cfg.get("modules_to_save"):
        raise GGUFExportError(f"{cfg_path}: modules_to_save (full weights) cannot go into a GGUF LoRA file")
    hp = LlamaHParams(Path(base_model_dir))
    alpha = float(cfg["lora_alpha"])

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(weights_path).items():
        m = _PEFT_KEY_RE.match(key)
        if not m:
            raise GGUFExportError(f"{weights_path}: tensor {key} is not a LoRA A/B weight")
        pairs.setdefault(m.group(1) + ".weight", {})[m.group(2)] = tensor.float()
    if not pairs:
        raise GGUFExportError(f"{weights_path} holds no LoRA tensors")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = _open_writer(out_path)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(adapter_dir.name)
    for hf_name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise GGUFExportError(f"{weights_path}: {hf_name} lacks lora_{'B' if 'A' in ab else 'A'}")
        name, kind = gguf_tensor_name(hf_name)
        lora_a, lora_b = ab["A"], ab["B"]
        if lora_a.shape[0] != lora_b.shape[1]:
            raise GGUFExportError(f"{weights_path}: rank mismatch for {hf_name}")
        if kind == "self_attn.q_proj":
            lora_b = permute_qk(lora_b, hp.n_head, hp.n_head)
        elif kind == "self_attn.k_proj":
            lora_b = permute_qk(lora_b, hp.n_head, hp.n_head_kv)
        writer.add_tensor(name + ".lora_a", lora_a.contiguous().numpy())
        writer.add_tensor(name + ".lora_b", lora_b.contiguous().numpy())
    return _finish(writer, out_path)
