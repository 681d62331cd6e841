"""The ``jsonl`` task: prompts and reference answers from a file, for real checkpoints.

Each line of the file is a JSON object ``{"prompt": "...", "answer": "..."}`` (other keys
are ignored; a number as answer is read as its text). A prompt is wrapped in the
tokenizer's chat template as one user turn when the tokenizer has a template (and
``chat_template`` is on), else tokenized as it is, with the tokenizer's own special tokens.

Scoring: the generated ids are cut at the first end-of-sequence id, decoded without
special tokens, and an extractor picks the answer out of the text:

* ``last_number`` (default, as GSM8K graders do): the last number in the text, commas
  and a leading ``$`` removed; equal when it has the same numeric value as the
  reference (``72.0`` equals ``72``);
* ``exact``: the whole decoded text, whitespace-trimmed, equals the trimmed reference;
* ``regex:PATTERN``: the last match of PATTERN (its first group if it has groups),
  trimmed, equals the trimmed reference. The pattern is compiled when the config is
  read; it is matched against the last ``REGEX_TEXT_LIMIT`` characters of the text only,
  so a model that writes a very long text cannot make the match run without bound.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import torch

from dllm_bench.tasks.base import PromptBatch, example_indices, generated_part, left_pad

__all__ = [
    "EXTRACTORS",
    "REGEX_TEXT_LIMIT",
    "JsonlRecord",
    "JsonlTask",
    "answer_matches",
    "check_extractor",
    "extract_answer",
    "read_records",
]

#: Names of the built-in extractors; ``regex:PATTERN`` is accepted besides.
EXTRACTORS: tuple[str, ...] = ("last_number", "exact")
#: A ``regex:`` extractor sees at most this many characters: the end of the decoded text.
REGEX_TEXT_LIMIT = 4096

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")


@dataclass(frozen=True)
class JsonlRecord:
    prompt: str
    answer: str


def _record(line_number: int, value: object, path: Path) -> JsonlRecord:
    if not isinstance(value, dict) or not isinstance(value.get("prompt"), str) or "answer" not in value:
        raise ValueError(f"{path}:{line_number}: expected an object with a string 'prompt' and an 'answer'")
    answer = value["answer"]
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise ValueError(f"{path}:{line_number}: 'answer' must be a string or a number, got {type(answer).__name__}")
    return JsonlRecord(prompt=value["prompt"], answer=str(answer))


def read_records(path: Path) -> tuple[JsonlRecord, ...]:
    """The records of a JSONL file (blank lines skipped); a malformed line names its number."""
    if not path.is_file():
        raise FileNotFoundError(f"jsonl task file {path} does not exist")
    records = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"{path}:{number}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                    "save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON: {exc.msg}") from exc
            records.append(_record(number, value, path))
    if not records:
        raise ValueError(f"jsonl task file {path} holds no records")
    return tuple(records)


def _last_number(text: str) -> str | None:
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return str(matches[-1]).replace(",", "").replace("$", "")


def extract_answer(text: str, extractor: str) -> str | None:
    """The answer ``extractor`` finds in ``text``, or None when it finds none."""
    if extractor == "last_number":
        return _last_number(text)
    if extractor == "exact":
        return text.strip()
    if extractor.startswith("regex:"):
        matches = list(re.finditer(extractor.removeprefix("regex:"), text[-REGEX_TEXT_LIMIT:]))
        if not matches:
            return None
        last = matches[-1]
        return (last.group(1) if last.re.groups else last.group(0)).strip()
    raise ValueError(f"unknown extractor {extractor!r}; expected one of {', '.join(EXTRACTORS)} or 'regex:PATTERN'")


def check_extractor(extractor: str) -> None:
    """Refuse an unknown extractor name or a regex that does not compile."""
    if extractor in EXTRACTORS:
        return
    if extractor.startswith("regex:"):
        try:
            re.compile(extractor.removeprefix("regex:"))
        except re.error as exc:
            raise ValueError(f"extractor {extractor!r}: the pattern does not compile: {exc}") from exc
        return
    raise ValueError(f"unknown extractor {extractor!r}; expected one of {', '.join(EXTRACTORS)} or 'regex:PATTERN'")


def _as_number(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", "").replace("$", "").strip().rstrip("."))
    except InvalidOperation:
        return None


def answer_matches(extracted: str | None, reference: str, extractor: str) -> bool:
    """Whether an extracted answer counts as the reference (numeric equality for ``last_number``)."""
    if extracted is None:
        return False
    if extractor == "last_number":
        got, want = _as_number(extracted), _as_number(reference)
        if got is not None and want is not None:
            return got == want
    return extracted.strip() == reference.strip()


def _cut_at_eos(ids: list[int], eos_ids: frozenset[int]) -> list[int]:
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[:position]
    return ids


def _token_ids(value: Any) -> list[int]:
    """Token ids from what a tokenizer returns (a list, or a mapping with ``input_ids``)."""
    if isinstance(value, dict) or hasattr(value, "keys"):
        value = value["input_ids"]
    return [int(token) for token in value]


@dataclass(frozen=True)
class JsonlTask:
    """Prompts of a JSONL file, encoded with ``tokenizer`` (a transformers tokenizer)."""

    path: Path
    tokenizer: Any
    extractor: str = "last_number"
    chat_template: bool = True
    eos_ids: tuple[int, ...] = ()
    records: tuple[JsonlRecord, ...] = field(init=False)

    def __post_init__(self) -> None:
        check_extractor(self.extractor)
        object.__setattr__(self, "records", read_records(Path(self.path)))
        if self._pad_id() is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token id; the jsonl task needs one to pad")

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def scored(self) -> bool:
        return True

    @property
    def uses_chat_template(self) -> bool:
        return self.chat_template and bool(getattr(self.tokenizer, "chat_template", None))

    def _pad_id(self) -> int | None:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.tokenizer, "eos_token_id", None)
        return None if pad is None else int(pad)

    def _stop_ids(self) -> frozenset[int]:
        stops = set(self.eos_ids)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is not None:
            stops.add(int(eos))
        return frozenset(stops)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of one prompt, through the chat template when there is one."""
        if self.uses_chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            return _token_ids(self.tokenizer(text, add_special_tokens=False))
        return _token_ids(self.tokenizer(prompt))

    def order(self, seed: int) -> list[int]:
        """The order in which ``seed`` draws the records (a seeded shuffle)."""
        order = list(range(len(self.records)))
        random.Random(f"jsonl|seed={seed}").shuffle(order)
        return order

    def record_at(self, seed: int, index: int) -> JsonlRecord:
        """Example ``index`` of the stream: the records in ``order(seed)``, repeated after the last."""
        order = self.order(seed)
        return self.records[order[index % len(order)]]

    def min_prompt_length(self) -> int:
        """The longest encoded prompt of the file (a batch must fit its longest prompt)."""
        return max(len(self.encode(record.prompt)) for record in self.records)

    def batch(self, *, batch_size: int, prompt_length: int | None, seed: int, round_index: int) -> PromptBatch:
        indices = example_indices(batch_size=batch_size, round_index=round_index)
        order = self.order(seed)
        records = [self.records[order[i % len(order)]] for i in indices]
        rows = [self.encode(record.prompt) for record in records]
        length = max(len(row) for row in rows) if prompt_length is None else prompt_length
        pad_id = self._pad_id()
        assert pad_id is not None  # checked in __post_init__
        ids, mask = left_pad(rows, length, pad_id)
        return PromptBatch(
            task="jsonl",
            input_ids=ids,
            attention_mask=mask,
            indices=indices,
            references=tuple(record.answer for record in records),
        )

    def decode(self, ids: Sequence[int]) -> str:
        """The text of generated ids up to the first end-of-sequence id."""
        text: str = self.tokenizer.decode(_cut_at_eos(list(ids), self._stop_ids()), skip_special_tokens=True)
        return text

    def score(self, batch: PromptBatch, output: torch.Tensor) -> list[bool]:
        generated = generated_part(batch, output).tolist()
        return [
            answer_matches(extract_answer(self.decode(row), self.extractor), str(reference), self.extractor)
            for reference, row in zip(batch.references, generated, strict=True)
        ]
