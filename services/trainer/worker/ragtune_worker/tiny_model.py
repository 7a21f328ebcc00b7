"""A tiny Llama-architecture causal LM with random weights and a real tokenizer, for tests and the demo.

    python -m ragtune_worker.tiny_model --out DIR [--layers 2 --hidden 128 --seed 0]
        [--tokenizer DIR] [--warmup-docs DIR --warmup-steps N] [--no-gguf]

Writes a Hugging Face model folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with
a Mistral [INST] chat template) and, when the GGUF exporter is available, model.gguf. The vocabulary is the
real Mistral-7B SentencePiece-BPE tokenizer vendored in libs/text/src/tokenizers/mistral. The
same seed always gives byte-identical model.safetensors.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

TOKENIZER_FOLDER = Path("libs/text/src/tokenizers/mistral")

# Mistral-7B-Instruct's chat template: BOS, then [INST] user [/INST] assistant</s> turns.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)


def find_tokenizer_dir(start: Path | None = None) -> Path:
    """Walk up from this module (or `start`) to the checkout holding the vendored Mistral tokenizer."""
    here = (start or Path(__file__)).resolve()
    for parent in [here, *here.parents]:
        candidate = parent / TOKENIZER_FOLDER
        if (candidate / "tokenizer.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"tokenizer not found: no {TOKENIZER_FOLDER}/tokenizer.json above {here}; "
        "run from a checkout of the repository or pass --tokenizer DIR"
    )


def write_tokenizer(tokenizer_dir: Path, out: Path) -> None:
    """Copy tokenizer.json and write a tokenizer_config.json with explicit special tokens and a chat template.

    The pad token is <unk> (id 0), never </s>: padding is masked by the attention mask and labels, and the EOS
    token must stay a learned target.
    """
    shutil.copyfile(tokenizer_dir / "tokenizer.json", out / "tokenizer.json")
    source_config_path = tokenizer_dir / "tokenizer_config.json"
    config = json.loads(source_config_path.read_text()) if source_config_path.is_file() else {}
    config.update(
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<unk>",
            "padding_side": "right",
            "model_max_length": 2048,
            "chat_template": MISTRAL_CHAT_TEMPLATE,
        }
    )
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_model(
    layers: int, hidden: int, heads: int, kv_heads: int, intermediate: int, vocab: int, seed: int
):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.to(torch.float32)
    return model


def read_documents(folder: Path) -> list[str]:
    """Text of every .md/.txt/.html file under `folder` (HTML tags stripped crudely), in a stable order."""
    texts: list[str] = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in {".md", ".txt", ".html", ".htm"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix.lower() in {".html", ".htm"}:
            text = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", text)
            text = re.sub(r"(?s)<[^>]+>", " ", text)
            text = re.sub(r"&nbsp;", " ", text)
            text = re.sub(r"&amp;", "&", text)
            text = re.sub(r"&lt;", "<", text)
            text = re.sub(r"&gt;", ">", text)
        text = re.sub(r"[ \t]+", " ", text)
        text = re.sub(r"\n\s*\n+", "\n\n", text).strip()
        if text:
            texts.append(text)
    return texts


def warm_up(model, tokenizer, docs_dir: Path, steps: int, seed: int, block_size: int = 128) -> float:
    """Full fine-tune of the tiny model as a plain causal LM on the documents' text; returns the last loss."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    texts = read_documents(docs_dir)
    if not texts:
        raise ValueError(f"no .md/.txt/.html documents with text under {docs_dir}")
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(tokenizer.eos_token_id)
    blocks = [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]
    if not blocks:
        raise ValueError(f"documents under {docs_dir} hold fewer than {block_size} tokens")

    class Blocks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(blocks)

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            tensor = torch.tensor(blocks[index], dtype=torch.long)
            return {"input_ids": tensor, "labels": tensor.clone()}

    losses: list[float] = []

    class LossLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                print(f"warmup step {state.global_step}/{steps} loss {logs['loss']:.4f}", file=sys.stderr)

    import tempfile

    with tempfile.TemporaryDirectory(prefix="tiny-warmup-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=steps,
            per_device_train_batch_size=8,
            learning_rate=3e-3,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, steps // 10),
            weight_decay=0.0,
            logging_steps=max(1, steps // 10),
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            seed=seed,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[LossLog()])
        trainer.train()
    return losses[-1] if losses else float("nan")


def write_tiny_model(
    out: Path,
    *,
    layers: int = 2,
    hidden: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 352,
    seed: int = 0,
    tokenizer_dir: Path | None = None,
    warmup_docs: Path | None = None,
    warmup_steps: int = 60,
    gguf: bool = True,
) -> Path:
    """Write the model folder to `out` and return it; model.gguf too when `gguf` is set."""
    from transformers import AutoTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(Path(tokenizer_dir) if tokenizer_dir else find_tokenizer_dir(), out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = build_model(layers, hidden, heads, kv_heads, intermediate, len(tokenizer), seed)
    if warmup_docs is not None:
        warm_up(model, tokenizer, Path(warmup_docs), warmup_steps, seed)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    if gguf:
        from ragtune_worker import gguf_export  # a missing gguf package fails here, naming it

        gguf_export.export_base_gguf(out, out / "model.gguf")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ragtune_worker.tiny_model", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to write the model into")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=352)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tokenizer", type=Path, help="folder with tokenizer.json (default: libs/text's Mistral tokenizer)"
    )
    parser.add_argument("--warmup-docs", type=Path, help="folder of .md/.html/.txt documents to warm up on")
    parser.add_argument("--warmup-steps", type=int, default=60)
    parser.add_argument("--no-gguf", action="store_true", help="do not write model.gguf")
    args = parser.parse_args(argv)
    if args.hidden % args.heads or args.heads % args.kv_heads:
        parser.error("--hidden must be divisible by --heads, and --heads by --kv-heads")
    out = write_tiny_model(
        args.out,
        layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate=args.intermediate,
        seed=args.seed,
        tokenizer_dir=args.tokenizer,
        warmup_docs=args.warmup_docs,
        warmup_steps=args.warmup_steps,
        gguf=not args.no_gguf,
    )
    print(str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
