"""Split a grid into K shards of about equal cost, the same on every node."""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence

from dllm_bench.cases import Case

SHARD_PATTERN = re.compile(r"^(\d+)/(\d+)$")
MAX_SHARDS = 100_000


def parse_shard(spec: str) -> tuple[int, int]:
    """`I/K` with 0 <= I < K <= MAX_SHARDS, e.g. `0/3`."""
    match = SHARD_PATTERN.match(spec.strip())
    expected = f"--shard {spec!r}: expected I/K with 0 <= I < K <= {MAX_SHARDS}, e.g. 0/3"
    if not match:
        raise ValueError(expected)
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count or count > MAX_SHARDS:
        raise ValueError(expected)
    return index, count


def case_cost(case: Case) -> float:
    """An estimate of a case's run time: its kind's work per call (token-forwards) times
    the warm-up and measured rounds."""
    per_call = case.settings.work_per_call(case.prompt_length, case.gen_length, case.batch_size)
    return per_call * (case.warmup_rounds + case.measured_rounds)


def assign_shards(cases: Sequence[Case], count: int) -> dict[str, int]:
    """Case id -> shard: the longest cases first, each to the least loaded shard (ties to
    the lower shard index), so the split depends only on the cases."""
    loads = [(0.0, index) for index in range(min(count, len(cases)))]
    assignment: dict[str, int] = {}
    for case in sorted(cases, key=lambda c: (-case_cost(c), c.case_id)):
        load, shard = heapq.heappop(loads)
        assignment[case.case_id] = shard
        heapq.heappush(loads, (load + case_cost(case), shard))
    return assignment
