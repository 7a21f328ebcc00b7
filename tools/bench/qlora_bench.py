"""Benchmark: builtin NF4 QLoRA vs plain LoRA on an fp32 base (same checkpoint, data and settings).

Run: services/trainer/worker/.venv/bin/python tools/bench/qlora_bench.py [--steps N] [--seq N]

A randomly initialised Llama-shaped checkpoint is written once (safetensors, sharded); each variant loads it in
its own subprocess as the worker does (fp32: transformers' from_pretrained; NF4: the worker's streaming
load_quantized_base) and trains on the same batches. Memory is the kernel's high-water mark of the process's
resident set (VmHWM), reset (/proc/self/clear_refs) before the load and again before training, both counted from
the resident set before the load (the interpreter and libraries left out): the load column is what loading
needed, the training column what the process held while training, not the lifetime maximum. transformers maps an
fp32 safetensors checkpoint lazily, so the fp32 base's pages become resident only when training reads them.
Prints markdown: the measured table, ratios against the fp32-LoRA anchor, and the memory budget of QLoRA on
Mistral-7B on a 24 GB L4 computed with the project's quantizer arithmetic (NF4Linear buffer sizes).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "services" / "trainer" / "worker"
sys.path.insert(0, str(WORKER))

SHAPE = {"layers": 4, "hidden": 1024, "intermediate": 2816, "heads": 16, "kv_heads": 4, "vocab": 32000}


def _status_bytes(field: str) -> int:
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def _reset_peak() -> int:
    """Reset the resident-set high-water mark; returns the resident set now."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def write_checkpoint(out: Path, seq: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=SHAPE["vocab"],
        hidden_size=SHAPE["hidden"],
        intermediate_size=SHAPE["intermediate"],
        num_hidden_layers=SHAPE["layers"],
        num_attention_heads=SHAPE["heads"],
        num_key_value_heads=SHAPE["kv_heads"],
        max_position_embeddings=max(512, seq),
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(out, max_shard_size="100MB")
    return out


def lora_training(model):
    """The frozen base wrapped for training as the budget assumes: gradient checkpointing, LoRA r=8 on
    q/k/v/o (NF4 layers included), AdamW on the LoRA parameters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from ragtune_worker.nf4 import prepare_lora_config

    for p in model.parameters():
        p.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    peft_model = get_peft_model(model, prepare_lora_config(lora))
    peft_model.train()
    opt = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.01
    )
    return peft_model, opt


def run_variant(variant: str, steps: int, seq: int, model_dir: Path) -> dict[str, float]:
    import torch
    from ragtune_worker.nf4 import NF4Linear, load_quantized_base
    from torch import nn
    from transformers import AutoModelForCausalLM

    start = _reset_peak()
    if variant == "nf4":
        model = load_quantized_base(model_dir, "builtin", torch.float32)
        linear_bytes = sum(m.quantized_nbytes for m in model.modules() if isinstance(m, NF4Linear))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
        linear_bytes = sum(
            m.weight.numel() * m.weight.element_size()
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and not n.endswith("lm_head")
        )
    load_peak = _status_bytes("VmHWM") - start
    peft_model, opt = lora_training(model)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(3, SHAPE["vocab"], (1, seq), generator=gen) for _ in range(steps + 1)]
    times = []
    losses = []
    _reset_peak()
    for i, ids in enumerate(batches):
        t0 = time.perf_counter()
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i > 0:  # step 0 is warm-up
            times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    step = statistics.median(times)
    return {
        "frozen_linear_bytes": linear_bytes,
        "step_s": step,
        "tokens_per_s": seq / step,
        "load_peak_mb": load_peak / 2**20,
        "train_rss_mb": (_status_bytes("VmHWM") - start) / 2**20,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def run_mistral_gpu(steps: int, seq: int, batch: int) -> dict[str, float]:
    """QLoRA of a randomly initialised Mistral-7B-shaped model on one CUDA GPU: the figures the budget predicts.

    The model is built without weights (meta), then each linear layer is filled on the GPU from a random bf16
    weight quantized to NF4 and dropped, so the GPU never holds the bf16 model; embeddings, norms and lm_head
    are random bf16. Same LoRA (r=8 q/k/v/o), AdamW, gradient checkpointing and sizes as the budget.
    """
    import torch
    from accelerate import init_empty_weights
    from ragtune_worker.nf4 import NF4Linear, quantize_nf4
    from torch import nn
    from transformers import AutoModelForCausalLM, MistralConfig

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible to torch: the Mistral-7B QLoRA measurement needs one GPU")
    device = torch.device("cuda")
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=max(4096, seq),
        sliding_window=None,
        tie_word_embeddings=False,
    )
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    t0 = time.perf_counter()
    for name in [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        layer = NF4Linear(
            linear.in_features, linear.out_features, compute_dtype=torch.bfloat16, device=device
        )
        weight = (
            torch.randn(linear.out_features, linear.in_features, device=device, dtype=torch.bfloat16) * 0.02
        )
        layer.load_quantized(quantize_nf4(weight))
        del weight
        setattr(parent, child, layer)
    for module in model.modules():
        for key, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                norm = "norm" in type(module).__name__.lower()
                value = (
                    torch.ones(param.shape, device=device, dtype=torch.bfloat16)
                    if norm
                    else torch.randn(param.shape, device=device, dtype=torch.bfloat16) * 0.02
                )
                module._parameters[key] = nn.Parameter(value, requires_grad=False)
    model.to(device)
    build_s = time.perf_counter() - t0
    peft_model, opt = lora_training(model)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(3, 32000, (batch, seq), generator=gen).to(device) for _ in range(steps + 1)]
    torch.cuda.synchronize()
    resident = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i, ids in enumerate(batches):
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - t1)
        losses.append(float(loss.detach()))
    step = statistics.median(times)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "build_s": build_s,
        "resident_gib": resident / 2**30,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "step_s": step,
        "tokens_per_s": batch * seq / step,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def mistral_budget() -> list[tuple[str, float, str]]:
    """QLoRA memory of Mistral-7B on one GPU, in GiB, from the project's NF4 buffer sizes."""

    from ragtune_worker.nf4 import NF4Linear

    layers, h, ff, heads, kv, vocab = 32, 4096, 14336, 32, 8, 32000
    head_dim = h // heads
    kv_dim = kv * head_dim
    shapes = [(h, h), (h, kv_dim), (h, kv_dim), (h, h), (h, ff), (h, ff), (ff, h)]  # (in, out)
    nf4 = 0
    for in_f, out_f in shapes:
        layer = NF4Linear(in_f, out_f, device="meta")
        nf4 += sum(b.numel() * b.element_size() for b in layer.buffers())
    nf4 *= layers
    n_params = layers * sum(i * o for i, o in shapes)
    emb = 2 * vocab * h * 2  # embed_tokens + lm_head in bf16
    norms = (2 * layers + 1) * h * 2
    r, b, s = 8, 4, 1024
    lora_params = layers * r * sum(i + o for i, o in shapes[:4])
    lora = lora_params * (4 + 4 + 8)  # fp32 weights + fp32 grads + AdamW m and v (fp32)
    ckpt = layers * b * s * h * 2  # checkpointed input of each decoder layer (bf16)
    layer_work = 34 * b * s * h  # one layer's recomputed activations in backward (bf16, SDPA attention)
    logits = b * s * vocab * (2 + 4 + 4)  # bf16 logits, fp32 upcast for the loss and its gradient
    dequant = ff * h * 2 * 2  # the largest dequantized weight in bf16, forward + backward transient
    cuda = 1.0 * 2**30  # CUDA context + allocator slack (estimate)
    gib = 2**30
    total = nf4 + emb + norms + lora + ckpt + layer_work + logits + dequant + cuda
    bits = 8 * nf4 / n_params
    return [
        (
            "NF4 linear weights incl. double-quant stats",
            nf4 / gib,
            f"{n_params / 1e9:.2f} B params × {bits:.3f} bit",
        ),
        ("embed_tokens + lm_head (bf16)", emb / gib, "2 × 32000 × 4096 × 2 B"),
        ("RMSNorm weights (bf16)", norms / gib, "65 × 4096 × 2 B"),
        ("LoRA r=8 q/k/v/o + grads + AdamW", lora / gib, f"{lora_params / 1e6:.1f} M params × 16 B"),
        ("checkpointed layer inputs", ckpt / gib, "32 × b4 × s1024 × 4096 × 2 B"),
        ("one layer recomputed in backward", layer_work / gib, "34 × b × s × h B (bf16, SDPA)"),
        ("logits + fp32 loss/grad", logits / gib, "b × s × 32000 × (2 + 4 + 4) B"),
        ("dequantized W transient (largest)", dequant / gib, "14336 × 4096 × 2 B × 2"),
        ("CUDA context + allocator slack", cuda / gib, "estimate"),
        ("**total**", total / gib, "of 24 GB (22.5 GiB usable) on an L4"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--variant", choices=["nf4", "fp32"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--mistral-gpu",
        action="store_true",
        help="measure QLoRA of a random Mistral-7B-shaped model on CUDA (seq 1024, micro batch 4) "
        "against the computed budget",
    )
    args = parser.parse_args()
    if args.mistral_gpu:
        seq, batch = 1024, 4
        r = run_mistral_gpu(args.steps, seq, batch)
        budget = mistral_budget()
        total = budget[-1][1]
        print(f"## QLoRA of a random Mistral-7B-shaped model on {r['gpu']} (builtin NF4, bf16 compute)\n")
        print(
            f"seq {seq}, micro batch {batch}, LoRA r=8 q/k/v/o, gradient checkpointing, AdamW; {args.steps} "
        )
        print(f"timed steps after 1 warm-up, median; model built in {r['build_s']:.0f} s\n")
        print("| figure | measured | budget (computed) |")
        print("|---|---|---|")
        print(f"| weights + LoRA resident before training | {r['resident_gib']:.2f} GiB | |")
        print(f"| peak allocated in training | {r['peak_allocated_gib']:.2f} GiB | {total:.2f} GiB |")
        print(f"| peak reserved (allocator) | {r['peak_reserved_gib']:.2f} GiB | |")
        print(f"| step time | {r['step_s']:.2f} s | |")
        print(f"| tokens/s | {r['tokens_per_s']:.0f} | |")
        print(f"| loss first → last | {r['first_loss']:.3f} → {r['last_loss']:.3f} | |")
        print(f"\n- measured peak / budget: **{r['peak_allocated_gib'] / total:.2f}**")
        print(json.dumps(r), file=sys.stderr)
        return
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.seq, args.model_dir)))
        return

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="qlora-bench-") as tmp:
        model_dir = write_checkpoint(Path(tmp) / "model", args.seq)
        for variant in ("fp32", "nf4"):
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                variant,
                "--steps",
                str(args.steps),
                "--seq",
                str(args.seq),
                "--model-dir",
                str(model_dir),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[variant] = json.loads(out.strip().splitlines()[-1])
    fp, q = results["fp32"], results["nf4"]
    s = SHAPE
    print(
        f"## QLoRA benchmark ({s['layers']} layers, hidden {s['hidden']}, intermediate {s['intermediate']}, "
    )
    print(f"vocab {s['vocab']}; seq {args.seq}, micro batch 1, LoRA r=8 q/k/v/o, gradient checkpointing, ")
    print(f"{args.steps} timed steps after 1 warm-up, median; both variants load the same checkpoint)\n")
    print(
        "| variant | frozen linear weights | load peak | RSS held in training | step time | tokens/s "
        "| loss first → last |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in (("LoRA, fp32 base", fp), ("QLoRA, builtin NF4 base", q)):
        print(
            f"| {name} | {r['frozen_linear_bytes'] / 2**20:.1f} MiB | {r['load_peak_mb']:.0f} MiB | "
            f"{r['train_rss_mb']:.0f} MiB | {r['step_s'] * 1000:.0f} ms | {r['tokens_per_s']:.0f} | "
            f"{r['first_loss']:.3f} → {r['last_loss']:.3f} |"
        )
    wb = q["frozen_linear_bytes"] / fp["frozen_linear_bytes"]
    st = q["step_s"] / fp["step_s"]
    print()
    print(
        f"- frozen-weight bytes ratio NF4 / fp32: **{wb:.4f}** "
        "(target ≤ 0.14; NF4 + double quant limit 0.129)"
    )
    print(f"- step time ratio NF4 / fp32: **{st:.2f}** (target ≤ 1.5)")
    print(f"- RSS held in training ratio NF4 / fp32: {q['train_rss_mb'] / fp['train_rss_mb']:.2f}")
    diff = q["first_loss"] - fp["first_loss"]
    print(f"- first-step loss difference NF4 − fp32 (same weights, same batch): {diff:+.4f}")
    print("\n## Memory budget: QLoRA of Mistral-7B on a 24 GB L4 (seq 1024, micro batch 4, checkpointing)\n")
    print("| item | GiB | formula |")
    print("|---|---|---|")
    for item, value, formula in mistral_budget():
        print(f"| {item} | {value:.2f} | {formula} |")


if __name__ == "__main__":
    main()
