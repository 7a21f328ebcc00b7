"""Completion-only encoding, the collator's masks, the learned EOS, and dataset/tokenizer validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TRAIN_FILE

from ragtune_worker.data import IGNORE_INDEX, CompletionCollator, encode_row, load_examples, load_tokenizer
from ragtune_worker.spec import UserError

VOCAB = 32000


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(tiny_model_dir, VOCAB)


def test_prompt_is_masked_and_completion_with_eos_is_labelled(tokenizer) -> None:
    prompt = "[INST] Context: Nova is written in Go.\nQuestion: Which language is Nova written in? [/INST]"
    example = encode_row(tokenizer, prompt, "Go.")
    prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer("Go.", add_special_tokens=False)["input_ids"]
    assert prompt_ids[0] == tokenizer.bos_token_id == 1
    assert example.input_ids == prompt_ids + completion_ids + [tokenizer.eos_token_id]
    assert example.labels == [IGNORE_INDEX] * len(prompt_ids) + completion_ids + [tokenizer.eos_token_id]
    assert example.labels[-1] == 2  # </s> is a target: the model learns to stop


def test_collator_masks_padding_by_position_so_eos_stays_labelled_even_if_pad_equals_eos(tokenizer) -> None:
    short = encode_row(tokenizer, "[INST] Q? [/INST]", "A.")
    long = encode_row(tokenizer, "[INST] A longer question about the context? [/INST]", "A longer answer.")
    for pad_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):  # the second is the seed's pad = EOS
        batch = CompletionCollator(pad_id)(
            [{"input_ids": e.input_ids, "labels": e.labels} for e in (short, long)]
        )
        width = len(long.input_ids)
        assert (
            batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
        )
        n = len(short.input_ids)
        assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (width - n)
        assert batch["attention_mask"][1].tolist() == [1] * width
        assert batch["labels"][0].tolist() == short.labels + [IGNORE_INDEX] * (width - n)
        assert batch["labels"][1].tolist() == long.labels
        assert batch["labels"][0, n - 1].item() == tokenizer.eos_token_id
        assert batch["labels"][1, -1].item() == tokenizer.eos_token_id
        assert (batch["input_ids"][0, n:] == pad_id).all()
        # exactly the prompt tokens and the padding are ignored
        ignored = (batch["labels"] == IGNORE_INDEX).sum().item()
        prompt_tokens = sum(label == IGNORE_INDEX for label in short.labels + long.labels)
        assert ignored == prompt_tokens + (width - n)


def test_tiny_model_pads_with_unk_not_eos(tokenizer) -> None:
    assert tokenizer.pad_token == "<unk>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_fixture_rows_all_encode_within_64_tokens(tokenizer) -> None:
    examples = load_examples(TRAIN_FILE, tokenizer, 64)
    assert len(examples) == 36
    assert all(e.labels[-1] == tokenizer.eos_token_id for e in examples)
    assert max(len(e.input_ids) for e in examples) <= 64


def write_rows(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


GOOD = json.dumps({"prompt": "[INST] Q? [/INST]", "completion": "A."})

# name → (file bytes, reason, line, message pattern after "train_file <path> line N: ")
BAD_FILES: dict[str, tuple[bytes, str, int, str]] = {
    "latin-1 byte": (
        f"{GOOD}\n".encode() + '{"prompt": "caf\u00e9", "completion": "A."}\n'.encode("latin-1"),
        "INVALID_UTF8",
        2,
        r"not valid UTF-8 \(byte 0xe9 at byte 16 of the line: invalid continuation byte\); "
        r"save the file as UTF-8",
    ),
    "UTF-16 file": (
        f"{GOOD}\n".encode("utf-16"),
        "INVALID_UTF8",
        1,
        r"not valid UTF-8 \(byte 0xff at byte 1 .*UTF-16 byte order mark",
    ),
    "a PNG image": (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4,
        "INVALID_UTF8",
        1,
        r"not valid UTF-8 \(byte 0x89 at byte 1 of the line: invalid start byte\)",
    ),
    "lone surrogate escape": (
        f'{GOOD}\n{GOOD}\n{{"prompt": "Q \\ud800", "completion": "A."}}\n'.encode(),
        "INVALID_UTF8",
        3,
        r"prompt holds an unpaired surrogate escape \(\\ud800 at character 3\)",
    ),
    "not JSON": (
        f"{GOOD}\n{{oops\n".encode(),
        "INVALID_JSON",
        2,
        r"not valid JSON \(Expecting property name",
    ),
    "not an object": (
        b"[1, 2]\n",
        "INVALID_ROW",
        1,
        "a row must be a JSON object with prompt and completion, got list",
    ),
    "no completion": (
        f'{GOOD}\n\n{{"prompt": "[INST] Q? [/INST]"}}\n'.encode(),
        "MISSING_FIELD",
        3,
        "completion is missing",
    ),
    "no prompt": (b'{"completion": "A."}\n', "MISSING_FIELD", 1, "prompt is missing"),
    "prompt not a string": (
        b'{"prompt": 7, "completion": "A."}\n',
        "INVALID_ROW",
        1,
        "prompt must be a string, got int",
    ),
    "blank completion": (
        b'{"prompt": "[INST] Q? [/INST]", "completion": "  "}\n',
        "EMPTY_COMPLETION",
        1,
        "completion is empty",
    ),
    "row over max_seq_len": (
        f"{GOOD}\n".encode()
        + json.dumps({"prompt": "[INST] " + "word " * 80 + "[/INST]", "completion": "A."}).encode()
        + b"\n",
        "ROW_TOO_LONG",
        2,
        r"row is \d+ tokens after tokenization .* over max_seq_len 64",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_rows_are_user_errors_naming_file_line_and_reason(case: str, tmp_path: Path, tokenizer) -> None:
    content, reason, line, message = BAD_FILES[case]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=rf"^train_file {path} line {line}: {message}") as caught:
        load_examples(path, tokenizer, 64)
    assert (caught.value.reason, caught.value.field, caught.value.line) == (reason, "train_file", line)


def test_a_utf8_byte_order_mark_and_crlf_line_ends_are_fine(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + f"{GOOD}\r\n{GOOD}\r\n".encode())
    assert len(load_examples(path, tokenizer, 64)) == 2


def test_missing_and_empty_files_name_the_spec_field(tmp_path: Path, tokenizer) -> None:
    with pytest.raises(UserError, match="holds no rows") as caught:
        load_examples(write_rows(tmp_path / "e.jsonl", [""]), tokenizer, 64)
    assert (caught.value.reason, caught.value.field) == ("EMPTY_DATASET", "train_file")
    with pytest.raises(UserError, match="val_file .* does not exist") as caught:
        load_examples(tmp_path / "missing.jsonl", tokenizer, 64, field_name="val_file")
    assert (caught.value.reason, caught.value.field) == ("FILE_NOT_FOUND", "val_file")


def copy_with_tokenizer_config(source: Path, target: Path, **changes: object) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "tokenizer_config.json").read_text())
    config.update(changes)
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    return target


def test_tokenizer_without_eos_is_a_user_error(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = copy_with_tokenizer_config(tiny_model_dir, tmp_path / "no-eos", eos_token=None)
    with pytest.raises(UserError, match="has no EOS token"):
        load_tokenizer(model, VOCAB)


def test_pad_equal_to_eos_is_replaced_by_unk_or_a_dedicated_pad(tmp_path: Path, tiny_model_dir: Path) -> None:
    pad_is_eos = copy_with_tokenizer_config(tiny_model_dir, tmp_path / "pad-eos", pad_token="</s>")
    tokenizer = load_tokenizer(pad_is_eos, VOCAB)
    assert tokenizer.pad_token == "<unk>"

    no_unk = copy_with_tokenizer_config(tiny_model_dir, tmp_path / "no-unk", pad_token="</s>", unk_token=None)
    with pytest.raises(UserError, match="no spare row for a dedicated pad token"):
        load_tokenizer(no_unk, VOCAB)
    roomy = load_tokenizer(no_unk, VOCAB + 64)  # an embedding matrix with spare rows, as Qwen2 has
    assert roomy.pad_token == "<pad>"
    assert roomy.pad_token_id == VOCAB
    assert roomy.pad_token_id != roomy.eos_token_id


def test_collated_batch_trains_on_completion_tokens_only(tokenizer) -> None:
    example = encode_row(tokenizer, "[INST] Q? [/INST]", "A.")
    batch = CompletionCollator(tokenizer.pad_token_id)(
        [{"input_ids": example.input_ids, "labels": example.labels}]
    )
    labelled = batch["input_ids"][batch["labels"] != IGNORE_INDEX]
    assert torch.equal(labelled, torch.tensor(tokenizer("A.", add_special_tokens=False)["input_ids"] + [2]))
