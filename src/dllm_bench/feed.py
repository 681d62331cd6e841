"""The prompts a case's generate calls read: one batch per round, chosen between rounds.

A case draws its rounds' batches from its task before anything is timed, moves them to
the model's device, and selects round r's batch untimed before round r's call. The timed
call reads `input_ids` and `attention_mask` of the selected batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dllm_bench.tasks import PromptBatch


@dataclass
class PromptFeed:
    """The batches of every round of a case (on the model's device) and the selected one."""

    batches: Sequence[PromptBatch]
    device: torch.device
    _ids: list[torch.Tensor] = field(init=False)
    _masks: list[torch.Tensor | None] = field(init=False)
    _full_masks: list[torch.Tensor] = field(init=False)
    index: int = 0

    def __post_init__(self) -> None:
        if not self.batches:
            raise ValueError("a case needs at least one batch of prompts")
        self._ids = [batch.input_ids.to(self.device) for batch in self.batches]
        self._masks = [batch.attention_mask.to(self.device) if batch.padded else None for batch in self.batches]
        # Built here, not in the timed call: an all-ones mask for each batch without padding.
        self._full_masks = [
            torch.ones_like(ids) if mask is None else mask for ids, mask in zip(self._ids, self._masks, strict=True)
        ]

    def select(self, round_index: int) -> None:
        """Make round `round_index`'s batch the one the next call reads."""
        self.index = round_index

    @property
    def input_ids(self) -> torch.Tensor:
        return self._ids[self.index]

    @property
    def attention_mask(self) -> torch.Tensor | None:
        """The selected batch's mask when it has left padding, else None (nothing to mask)."""
        return self._masks[self.index]

    def full_mask(self) -> torch.Tensor:
        """The selected batch's mask, all ones when it has no padding."""
        return self._full_masks[self.index]
