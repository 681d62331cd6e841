"""The factor rule (Fast-dLLM): with the block's masked confidences sorted descending
(c_1 >= c_2 >= ...), commit the longest run of ranks n = 1, 2, ... with
(n + 1) * (1 - c_n) < f, the first always."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dllm_bench.sampling.rules.base import ConfidenceRule, Problem, finite

if TYPE_CHECKING:
    from torch import Tensor


class Factor(ConfidenceRule):
    key = "factor"
    id_prefix = "f"
    doc = "LLaDA parallel decoding by the factor rule (llada.factor); empty for fixed steps and for other kinds"

    @classmethod
    def problems(cls, value: object) -> list[Problem]:
        f = finite(value)
        if f is None or f <= 0:
            return [(cls.key, f"factor must be null or a finite number > 0, got {value!r}")]
        return []

    def select(self, confidence: Tensor, masked: Tensor, step: int) -> Tensor:
        order = confidence.sort(dim=1, descending=True, stable=True).indices
        ranked = factor_run(confidence.gather(1, order), masked.gather(1, order), self.value)
        return masked.new_zeros(masked.shape).scatter_(1, order, ranked) & masked


def factor_run(sorted_confidence: Tensor, sorted_masked: Tensor, factor: float) -> Tensor:
    """(B, W) bool over the ranks: the longest run n = 1, 2, ... with (n + 1) * (1 - c_n) < factor, the first always."""
    wide = sorted_confidence.double()
    n = wide.new_ones(wide.shape[1]).cumsum(0)  # 1.0, 2.0, ... (exact in float64)
    passes = (n + 1) * (1 - wide) < factor
    passes[:, 0] = True
    return (passes.char().cumprod(dim=1) > 0) & sorted_masked
