"""The fixed schedule (LLaDA's own): a block's masked positions are split evenly over the
block's share of ``steps`` (``steps / num_blocks``), the first steps taking the remainder;
each step commits its count of the most confident ones. Steps that would commit nothing
are skipped (no forward)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dllm_bench.sampling.rules.base import StepRule

if TYPE_CHECKING:
    from torch import Tensor

KEY = "steps"
ID_PREFIX = "s"


def transfer_schedule(masked: int, steps: int) -> list[int]:
    """Tokens committed at each of ``steps`` steps when ``masked`` positions are masked.

    ``masked`` is split evenly; the first ``masked % steps`` steps commit one more.
    Steps may commit nothing when ``steps > masked``.
    """
    base, remainder = divmod(masked, steps)
    return [base + 1 if i < remainder else base for i in range(steps)]


class FixedSchedule(StepRule):
    def __init__(self, steps: int, num_blocks: int, block_length: int) -> None:
        self.counts = tuple(k for k in transfer_schedule(block_length, steps // num_blocks) if k > 0)

    def select(self, confidence: Tensor, masked: Tensor, step: int) -> Tensor:
        order = confidence.sort(dim=1, descending=True, stable=True).indices
        ranked = masked.new_zeros(masked.shape)
        ranked[:, : self.counts[step]] = True
        return masked.new_zeros(masked.shape).scatter_(1, order, ranked) & masked

    def block_done(self, step: int, masked: Tensor) -> bool:
        return step == len(self.counts)
