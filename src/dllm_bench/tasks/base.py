"""What every task gives the runner: a batch of prompt ids with its attention mask, and a
scorer of the generate call's output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

__all__ = ["PromptBatch", "Reference", "Task", "example_indices", "generated_part", "left_pad"]

#: What a scorer compares an output with: the prompt's items (built-in list tasks) or the
#: reference answer text (jsonl).
Reference = tuple[int, ...] | str


@dataclass(frozen=True)
class PromptBatch:
    """One batch of prompts of a task.

    ``input_ids`` and ``attention_mask`` are (batch, prompt_length) int64 tensors, left
    padded (mask 0 on padding). ``indices`` are the positions of the examples in the
    task's example stream, ``references`` what each row is scored against (empty tuple
    for tasks without scoring).
    """

    task: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    indices: tuple[int, ...]
    references: tuple[Reference, ...]

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def prompt_length(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def padded(self) -> bool:
        """Whether any row has left padding (then the attention mask must be passed on)."""
        return not bool(self.attention_mask.bool().all())


class Task(Protocol):
    """A value of the ``task`` axis."""

    @property
    def name(self) -> str: ...

    @property
    def scored(self) -> bool:
        """False for tasks measured for speed only (``random``)."""
        ...

    def min_prompt_length(self) -> int:
        """The shortest ``prompt_length`` this task can fill (1 when any length works)."""
        ...

    def batch(self, *, batch_size: int, prompt_length: int | None, seed: int, round_index: int) -> PromptBatch:
        """The prompts of measured round ``round_index`` (0, 1, ...): examples
        ``round_index * batch_size`` up to ``(round_index + 1) * batch_size - 1`` of the
        stream drawn from ``seed``. ``prompt_length=None`` means the shortest that fits."""
        ...

    def score(self, batch: PromptBatch, output: torch.Tensor) -> list[bool]:
        """Per row, whether the output answers its prompt; ``output`` is the generate
        call's (batch, prompt_length + generated) tensor, the prompt first."""
        ...


def example_indices(*, batch_size: int, round_index: int) -> tuple[int, ...]:
    """Positions in the example stream of the rows of round ``round_index``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if round_index < 0:
        raise ValueError(f"round_index must be >= 0, got {round_index}")
    start = round_index * batch_size
    return tuple(range(start, start + batch_size))


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of shape (len(rows), length): each row right-aligned after ``pad_id``
    padding, the mask 1 on the row's own tokens. A row longer than ``length`` is refused."""
    longest = max((len(row) for row in rows), default=0)
    if longest > length:
        raise ValueError(
            f"a prompt has {longest} tokens, more than prompt_length {length}; "
            f"raise prompt_length to at least {longest}"
        )
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, length - len(row) :] = torch.tensor(list(row), dtype=torch.long)
            mask[i, length - len(row) :] = 1
    return ids, mask


def generated_part(batch: PromptBatch, output: torch.Tensor) -> torch.Tensor:
    """The generated positions of ``output`` (on the CPU), after checking that it starts
    with the batch's prompt."""
    if output.dim() != 2 or output.shape[0] != batch.batch_size or output.shape[1] < batch.prompt_length:
        raise ValueError(
            f"output of shape {tuple(output.shape)} does not continue prompts of shape {tuple(batch.input_ids.shape)}"
        )
    output = output.detach().to("cpu")
    if not torch.equal(output[:, : batch.prompt_length], batch.input_ids):
        raise ValueError("the output does not start with the batch's prompt ids: was it generated from this batch?")
    return output[:, batch.prompt_length :]
