"""Timers that are correct for device work, and latency statistics."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def synchronize() -> None:
    """Wait for queued GPU work; a no-op on a CPU-only process."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()


def synchronized_timer() -> float:
    """`time.perf_counter()` read after the device has finished its queued work.

    Used as pytest-benchmark's timer (`--benchmark-timer`) and by the suite's own loop, so
    a round's duration covers the kernels it launched, not only their launch.
    """
    synchronize()
    return time.perf_counter()


def time_rounds(
    call: Callable[[], object],
    *,
    warmup_rounds: int,
    measured_rounds: int,
    before_round: Callable[[], None] | None = None,
) -> list[float]:
    """Run `call` untimed `warmup_rounds` times, then time `measured_rounds` calls.
    `before_round` runs before every call, outside the timed region."""
    for _ in range(warmup_rounds):
        if before_round is not None:
            before_round()
        call()
    durations = []
    for _ in range(measured_rounds):
        if before_round is not None:
            before_round()
        start = synchronized_timer()
        call()
        durations.append(synchronized_timer() - start)
    return durations


@dataclass(frozen=True)
class LatencyStats:
    mean: float
    median: float
    min: float
    max: float
    stddev: float
    rounds: int

    @classmethod
    def from_durations(cls, durations: Sequence[float]) -> LatencyStats:
        if not durations:
            raise ValueError("no measured rounds to summarize")
        return cls(
            mean=statistics.fmean(durations),
            median=statistics.median(durations),
            min=min(durations),
            max=max(durations),
            stddev=statistics.stdev(durations) if len(durations) > 1 else 0.0,
            rounds=len(durations),
        )
