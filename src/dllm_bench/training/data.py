"""Training batches of the built-in list tasks, drawn from a seeded generator.

All rows of one batch have the same item count ``n`` (so the same prompt length) and,
for LLaDA, the same canvas length ``gen_length``: the answer followed by ``<eos>``
padding up to ``gen_length``, as LLaDA's instruction tuning pads responses. Each row's
task is drawn from the mixture, its items and (for ``permute``) its answer order from
the generator.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dllm_bench.tasks.synthetic import draw_example, training_answer
from dllm_bench.tasks.vocab import TASK_VOCAB, TaskVocab

__all__ = ["DataSpec", "TrainBatch", "draw_train_batch"]


@dataclass(frozen=True)
class DataSpec:
    """What the training batches hold."""

    tasks: tuple[str, ...] = ("copy", "permute")
    min_items: int = 8
    max_items: int = 8
    max_gen_length: int = 12
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("at least one task is needed")
        if not 1 <= self.min_items <= self.max_items:
            raise ValueError(f"need 1 <= min_items <= max_items, got {self.min_items} and {self.max_items}")
        if self.max_gen_length <= self.max_items:
            raise ValueError(f"max_gen_length ({self.max_gen_length}) must exceed max_items ({self.max_items})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class TrainBatch:
    """``ids`` (batch, prompt_length + answer_length): prompts then answers. For LLaDA the
    answer part is the canvas (answer then ``<eos>`` padding); for the AR model it is the
    answer and one ``<eos>``."""

    ids: torch.Tensor
    prompt_length: int

    @property
    def answer_length(self) -> int:
        return int(self.ids.shape[1]) - self.prompt_length


def _rows(
    spec: DataSpec, rng: random.Random, n_items: int, vocab: TaskVocab
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    rows = []
    for _ in range(spec.batch_size):
        example = draw_example(rng.choice(spec.tasks), n_items, rng, vocab)
        rows.append((example.prompt_ids(vocab), training_answer(example, rng, vocab)))
    return rows


def _stack(rows: Sequence[tuple[int, ...]]) -> torch.Tensor:
    return torch.tensor([list(row) for row in rows], dtype=torch.long)


def draw_train_batch(spec: DataSpec, rng: random.Random, *, canvas: bool, vocab: TaskVocab = TASK_VOCAB) -> TrainBatch:
    """One batch. ``canvas=True`` (LLaDA): answers padded with ``<eos>`` to a canvas length
    drawn uniformly from ``n + 1 .. max_gen_length``; ``canvas=False`` (AR): one ``<eos>``."""
    n_items = rng.randint(spec.min_items, spec.max_items)
    answer_length = rng.randint(n_items + 1, spec.max_gen_length) if canvas else n_items + 1
    rows = _rows(spec, rng, n_items, vocab)
    pad = (vocab.eos_id,)
    sequences = [prompt + answer + pad * (answer_length - len(answer)) for prompt, answer in rows]
    return TrainBatch(ids=_stack(sequences), prompt_length=len(rows[0][0]))
