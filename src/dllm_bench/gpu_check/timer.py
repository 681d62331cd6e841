"""The `timer` item: the suite's synchronized timer against CUDA events on the same calls."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch

from dllm_bench.gpu_check.outcome import CheckResult, failed, passed
from dllm_bench.timing import synchronized_timer

TIMER_LIMIT = 0.02  # relative difference allowed between the two timers


def compare_timers(host_s: Sequence[float], event_s: Sequence[float]) -> CheckResult:
    """The synchronized timer and CUDA events timed the same calls: totals and the median call agree."""
    if not host_s or len(host_s) != len(event_s) or min(event_s) <= 0:
        return failed("timer", f"no comparable timings (host {len(host_s)}, events {len(event_s)})")
    total = abs(sum(host_s) - sum(event_s)) / sum(event_s)
    per_call = statistics.median(abs(h - e) / e for h, e in zip(host_s, event_s, strict=True))
    detail = (
        f"{len(host_s)} calls of {statistics.median(event_s) * 1e3:.1f} ms: total differs by {total:.2%}, "
        f"median call by {per_call:.2%} (limit {TIMER_LIMIT:.0%})"
    )
    return passed("timer", detail) if max(total, per_call) <= TIMER_LIMIT else failed("timer", detail)


def time_with_both_timers(work: Callable[[], None], calls: int, warmup: int = 3) -> tuple[list[float], list[float]]:
    """Seconds per call of `work` from the synchronized timer and from CUDA events, the same calls."""
    for _ in range(warmup):
        work()
    host, event = [], []
    for _ in range(calls):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        t0 = synchronized_timer()
        start.record()
        work()
        end.record()
        t1 = synchronized_timer()
        host.append(t1 - t0)
        event.append(start.elapsed_time(end) / 1000.0)
    return host, event


def check_timer(calls: int = 20) -> CheckResult:
    """Matrix products of about 20 ms per call, timed both ways."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def work() -> None:
        for _ in range(10):
            torch.mm(a, a)

    host, event = time_with_both_timers(work, calls)
    return compare_timers(host, event)
