"""The threshold rule (Fast-dLLM): commit every masked position of the block whose
confidence is >= tau, and always the most confident one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dllm_bench.sampling.rules.base import ConfidenceRule, Problem, finite

if TYPE_CHECKING:
    from torch import Tensor


class Threshold(ConfidenceRule):
    key = "threshold"
    id_prefix = "th"
    doc = (
        "LLaDA parallel decoding: commit every masked position of the block with confidence >= threshold "
        "(llada.threshold); empty for fixed steps and for other kinds"
    )

    @classmethod
    def problems(cls, value: object) -> list[Problem]:
        tau = finite(value)
        if tau is None or not 0 < tau <= 1:
            return [(cls.key, f"threshold must be null or a number in (0, 1], got {value!r}")]
        return []

    def select(self, confidence: Tensor, masked: Tensor, step: int) -> Tensor:
        chosen = masked & (confidence.double() >= self.value)
        # Always the most confident masked position (the first one on ties) of every row that has one.
        best = confidence.max(dim=1).indices.unsqueeze(1)
        return chosen | (masked.new_zeros(masked.shape).scatter_(1, best, True) & masked)
