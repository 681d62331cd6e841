"""The built-in list tasks, generated from a seed and scored exactly.

``copy`` (a unique answer): the prompt ``<bos> copy x1 .. xn =`` asks for ``x1 .. xn``;
the n items are drawn with replacement from 16 letters.

``permute`` (many valid answers): the prompt ``<bos> permute x1 .. xn =`` asks for the
n items in capitals, in any order (``permute c a f =`` is answered by ``A C F``, ``F A C``
and four more); the items are distinct letters, and each of the n! orderings is correct.
Capitals are tokens of their own, so a model tells what it already wrote from what the
prompt holds by the tokens alone. Each answer position alone is uniform over the
capitals, so a decoder that commits several positions from their separate marginals in
one step can repeat one; a decoder that commits one position per step sees what is
already written. (ParallelBench's point.)

The answer is read from the first n generated tokens, n being the prompt's item count;
what follows them is not scored (the models end with ``<eos>`` padding, but an AR
model may be forced to go on past its ``<eos>``). An ``<eos>`` or any other token
that is not part of a correct answer among the first n makes the answer wrong.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from dllm_bench.tasks.base import PromptBatch, example_indices, generated_part, left_pad
from dllm_bench.tasks.vocab import TASK_VOCAB, TaskVocab

__all__ = [
    "LIST_TASKS",
    "PROMPT_OVERHEAD",
    "ListExample",
    "ListTask",
    "answer_is_correct",
    "draw_example",
    "training_answer",
]

#: Names of the built-in list tasks.
LIST_TASKS: tuple[str, ...] = ("copy", "permute")
#: Prompt tokens besides the items: ``<bos>``, the task word and ``=``.
PROMPT_OVERHEAD = 3


@dataclass(frozen=True)
class ListExample:
    """One prompt of a list task: the task name and the item ids in prompt order."""

    task: str
    items: tuple[int, ...]

    def prompt_ids(self, vocab: TaskVocab = TASK_VOCAB) -> tuple[int, ...]:
        return (vocab.bos_id, vocab.id_of(self.task), *self.items, vocab.sep_id)


def _check_task(task: str) -> None:
    if task not in LIST_TASKS:
        raise ValueError(f"unknown list task {task!r}; expected one of {', '.join(LIST_TASKS)}")


def _check_items(task: str, n_items: int, vocab: TaskVocab) -> None:
    available = len(vocab.item_ids)
    if n_items < 1:
        raise ValueError(f"items must be >= 1, got {n_items}")
    if task == "permute" and n_items > available:
        raise ValueError(f"permute needs distinct items: items must be <= {available}, got {n_items}")


def draw_example(task: str, n_items: int, rng: random.Random, vocab: TaskVocab = TASK_VOCAB) -> ListExample:
    """A random example: items with replacement for ``copy``, distinct for ``permute``."""
    _check_task(task)
    _check_items(task, n_items, vocab)
    pool = vocab.item_ids
    if task == "permute":
        return ListExample(task=task, items=tuple(rng.sample(pool, n_items)))
    return ListExample(task=task, items=tuple(rng.choice(pool) for _ in range(n_items)))


def training_answer(example: ListExample, rng: random.Random, vocab: TaskVocab = TASK_VOCAB) -> tuple[int, ...]:
    """A correct answer to train on: the items themselves, or their capitals in a uniformly random order."""
    if example.task == "copy":
        return example.items
    order = [vocab.capital_of(item) for item in example.items]
    rng.shuffle(order)
    return tuple(order)


def answer_is_correct(task: str, items: tuple[int, ...], generated: list[int], vocab: TaskVocab = TASK_VOCAB) -> bool:
    """Whether the first ``len(items)`` generated ids answer the prompt with ``items``."""
    _check_task(task)
    answer = generated[: len(items)]
    if len(answer) < len(items):
        return False
    if task == "copy":
        return tuple(answer) == items
    return sorted(answer) == sorted(vocab.capital_of(item) for item in items)


def example_key(task: str, n_items: int, seed: int, index: int) -> str:
    """The seed string of one example of the stream: examples do not depend on the
    batch size or the round they land in, only on their position in the stream."""
    return f"{task}|items={n_items}|seed={seed}|example={index}"


@dataclass(frozen=True)
class ListTask:
    """``copy`` or ``permute`` with ``n_items`` items per prompt."""

    task: str
    n_items: int = 8
    vocab: TaskVocab = TASK_VOCAB

    def __post_init__(self) -> None:
        _check_task(self.task)
        _check_items(self.task, self.n_items, self.vocab)

    @property
    def name(self) -> str:
        return self.task

    @property
    def scored(self) -> bool:
        return True

    def min_prompt_length(self) -> int:
        return self.n_items + PROMPT_OVERHEAD

    def min_gen_length(self) -> int:
        """Generated positions the answer needs."""
        return self.n_items

    def example(self, seed: int, index: int) -> ListExample:
        rng = random.Random(example_key(self.task, self.n_items, seed, index))
        return draw_example(self.task, self.n_items, rng, self.vocab)

    def batch(self, *, batch_size: int, prompt_length: int | None, seed: int, round_index: int) -> PromptBatch:
        indices = example_indices(batch_size=batch_size, round_index=round_index)
        examples = [self.example(seed, i) for i in indices]
        length = self.min_prompt_length() if prompt_length is None else prompt_length
        ids, mask = left_pad([ex.prompt_ids(self.vocab) for ex in examples], length, self.vocab.pad_id)
        return PromptBatch(
            task=self.task,
            input_ids=ids,
            attention_mask=mask,
            indices=indices,
            references=tuple(ex.items for ex in examples),
        )

    def score(self, batch: PromptBatch, output: torch.Tensor) -> list[bool]:
        generated = generated_part(batch, output).tolist()
        results = []
        for reference, row in zip(batch.references, generated, strict=True):
            if not isinstance(reference, tuple):
                raise TypeError(f"a {self.task} batch holds item tuples as references, got {type(reference).__name__}")
            results.append(answer_is_correct(self.task, reference, row, self.vocab))
        return results
