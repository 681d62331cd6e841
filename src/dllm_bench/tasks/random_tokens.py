"""The ``random`` task: uniformly drawn token prompts, measured for speed only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllm_bench.prompts import make_prompt
from dllm_bench.tasks.base import PromptBatch, example_indices

__all__ = ["RandomTask"]


@dataclass(frozen=True)
class RandomTask:
    """Prompts of ids drawn uniformly from the vocabulary minus ``forbidden_ids``.

    Round ``r`` draws its batch with seed ``seed + r``, so round 0 is exactly the prompt
    ``dllm_bench.prompts.make_prompt`` gives for ``seed``. Nothing is scored.
    """

    vocab_size: int
    forbidden_ids: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return "random"

    @property
    def scored(self) -> bool:
        return False

    def min_prompt_length(self) -> int:
        return 1

    def batch(self, *, batch_size: int, prompt_length: int | None, seed: int, round_index: int) -> PromptBatch:
        if prompt_length is None or prompt_length < 1:
            raise ValueError(f"the random task needs a prompt_length >= 1, got {prompt_length}")
        indices = example_indices(batch_size=batch_size, round_index=round_index)
        ids = make_prompt(
            batch_size=batch_size,
            prompt_length=prompt_length,
            vocab_size=self.vocab_size,
            forbidden_ids=self.forbidden_ids,
            seed=seed + round_index,
        )
        return PromptBatch(
            task="random", input_ids=ids, attention_mask=torch.ones_like(ids), indices=indices, references=()
        )

    def score(self, batch: PromptBatch, output: torch.Tensor) -> list[bool]:
        """Nothing to score: always an empty list."""
        return []
