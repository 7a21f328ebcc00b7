"""Completion-only training data: tokenizer special tokens, row encoding with a learned EOS, and the collator.

Rows are JSON lines {"prompt": ..., "completion": ...}; the prompt is already in the model's chat template.
The prompt is tokenized with the tokenizer's own special tokens (BOS where the model uses one), the completion
without them and with EOS appended. Labels are -100 on the prompt and on padding only, so the EOS token is a
learned target and the model learns to stop. Padding is masked by position (attention mask and labels), never
by comparing token ids with the pad id, so the choice of pad token can never hide an EOS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ragtune_worker.spec import UserError

IGNORE_INDEX = -100
DEDICATED_PAD_TOKEN = "<pad>"


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def load_tokenizer(model_dir: Path, embedding_rows: int):
    """Load the model folder's tokenizer and make sure it has an EOS token and a pad token that is not EOS.

    Pad choice: the tokenizer's own pad token unless it is EOS; else its unk token; else a dedicated `<pad>`
    token added to the tokenizer, provided its id fits into the embedding matrix (`embedding_rows`), so that
    the base model and its adapters keep their shapes.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - any loader failure is a problem of the folder's tokenizer files
        raise UserError(
            f"could not load the tokenizer from {model_dir}: {error}",
            reason="INVALID_TOKENIZER",
            field="model_dir",
        ) from error
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError(
            f"tokenizer in {model_dir} has no EOS token (set eos_token in tokenizer_config.json); "
            "the EOS token is needed so the model learns to end its answers",
            reason="INVALID_TOKENIZER",
            field="model_dir",
        )
    if not 0 <= eos < embedding_rows:
        raise UserError(
            f"tokenizer EOS id {eos} is outside the model's vocabulary of {embedding_rows} rows",
            reason="INVALID_TOKENIZER",
            field="model_dir",
        )
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != eos:
        pass
    elif tokenizer.unk_token_id is not None and tokenizer.unk_token_id != eos:
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer.add_special_tokens({"pad_token": DEDICATED_PAD_TOKEN})
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id >= embedding_rows:
            raise UserError(
                f"tokenizer in {model_dir} has no pad token other than EOS and no unk token, and the "
                f"embedding matrix ({embedding_rows} rows) has no spare row for a dedicated pad token; "
                "add a pad_token (not the EOS token) to tokenizer_config.json",
                reason="INVALID_TOKENIZER",
                field="model_dir",
            )
    tokenizer.padding_side = "right"
    return tokenizer


def encode_row(tokenizer, prompt: str, completion: str) -> Example:
    """Token ids and labels of one row: prompt (with the tokenizer's BOS) masked, completion + EOS learned."""
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if prompt_ids and prompt_ids[-1] == eos and not prompt.endswith(tokenizer.eos_token):
        prompt_ids = prompt_ids[:-1]  # a tokenizer configured with add_eos_token must not end the prompt
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if not completion_ids or completion_ids[-1] != eos:
        completion_ids.append(eos)
    return Example(
        input_ids=prompt_ids + completion_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + completion_ids,
    )


def _decode_line(raw: bytes, number: int, where: str, field_name: str) -> str:
    """One line of a training file as text; bytes that are not UTF-8 are a user error naming the line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        hint = (
            "; the file starts with a UTF-16 byte order mark: save it as UTF-8"
            if number == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff")
            else "; save the file as UTF-8"
        )
        raise UserError(
            f"{where}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at byte {error.start + 1} of the line: "
            f"{error.reason}){hint}",
            reason="INVALID_UTF8",
            field=field_name,
            line=number,
        ) from error
    return text.removeprefix("\ufeff") if number == 1 else text  # a UTF-8 byte order mark is fine


def _text_field(row: dict[str, Any], name: str, where: str, field_name: str, number: int) -> str:
    """The row's `prompt` or `completion`: present, a string, and text that UTF-8 can hold."""
    if name not in row or row[name] is None:
        raise UserError(f"{where}: {name} is missing", reason="MISSING_FIELD", field=field_name, line=number)
    value = row[name]
    if not isinstance(value, str):
        raise UserError(
            f"{where}: {name} must be a string, got {type(value).__name__}",
            reason="INVALID_ROW",
            field=field_name,
            line=number,
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        # Valid JSON can escape a lone UTF-16 surrogate ("\ud800"), which is no character at all.
        raise UserError(
            f"{where}: {name} holds an unpaired surrogate escape (\\u{ord(value[error.start]):04x} at "
            f"character {error.start + 1}), which is not valid text",
            reason="INVALID_UTF8",
            field=field_name,
            line=number,
        ) from error
    return value


def load_examples(
    path: Path, tokenizer, max_seq_len: int, *, field_name: str = "train_file"
) -> list[Example]:
    """Encode every row of a JSON-lines file; any bad row is a UserError naming the file and line.

    Each error carries a reason (FILE_NOT_FOUND, INVALID_UTF8, INVALID_JSON, INVALID_ROW, MISSING_FIELD,
    EMPTY_COMPLETION, ROW_TOO_LONG, EMPTY_DATASET), `field_name` as its field and the line number.
    """
    if not path.is_file():
        raise UserError(f"{field_name} {path} does not exist", reason="FILE_NOT_FOUND", field=field_name)
    examples: list[Example] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{field_name} {path} line {number}"
            line = _decode_line(raw, number, where, field_name)
            if not line.strip():
                continue
            try:
                row: Any = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(
                    f"{where}: not valid JSON ({error.msg} at column {error.colno})",
                    reason="INVALID_JSON",
                    field=field_name,
                    line=number,
                ) from error
            if not isinstance(row, dict):
                raise UserError(
                    f"{where}: a row must be a JSON object with prompt and completion, "
                    f"got {type(row).__name__}",
                    reason="INVALID_ROW",
                    field=field_name,
                    line=number,
                )
            prompt = _text_field(row, "prompt", where, field_name, number)
            completion = _text_field(row, "completion", where, field_name, number)
            if not completion.strip():
                raise UserError(
                    f"{where}: completion is empty; every row needs an answer to learn",
                    reason="EMPTY_COMPLETION",
                    field=field_name,
                    line=number,
                )
            example = encode_row(tokenizer, prompt, completion)
            if len(example.input_ids) > max_seq_len:
                prompt_len = sum(1 for label in example.labels if label == IGNORE_INDEX)
                raise UserError(
                    f"{where}: row is {len(example.input_ids)} tokens after tokenization "
                    f"(prompt {prompt_len}, completion with EOS {len(example.input_ids) - prompt_len}), "
                    f"over max_seq_len {max_seq_len}",
                    reason="ROW_TOO_LONG",
                    field=field_name,
                    line=number,
                )
            examples.append(example)
    if not examples:
        raise UserError(f"{field_name} {path} holds no rows", reason="EMPTY_DATASET", field=field_name)
    return examples


class ExampleDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        example = self.examples[index]
        return {"input_ids": example.input_ids, "labels": example.labels}


class CompletionCollator:
    """Pads a batch on the right to its longest row: attention mask 0 and label -100 on padding."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        for row, feature in enumerate(features):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.tensor(feature["input_ids"], dtype=torch.long)
            attention_mask[row, :length] = 1
            labels[row, :length] = torch.tensor(feature["labels"], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
