"""Split a grid into K shards of about equal cost, the same on every node."""

from __future__ import annotations

import re
from collections.abc import Sequence

from dllm_bench.cases import Case

SHARD_PATTERN = re.compile(r"^(\d+)/(\d+)$")


def parse_shard(spec: str) -> tuple[int, int]:
    """`I/K` with 0 <= I < K, e.g. `0/3`."""
    match = SHARD_PATTERN.match(spec.strip())
    if not match:
        raise ValueError(f"--shard {spec!r}: expected I/K with 0 <= I < K, e.g. 0/3")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f"--shard {spec!r}: expected I/K with 0 <= I < K, e.g. 0/3")
    return index, count


def case_cost(case: Case) -> float:
    """An estimate of a case's run time, in token-forwards per round.

    LLaDA: every step runs the whole (batch, prompt + gen) canvas, doubled with cfg.
    Baseline: a prefill of the prompt, then one token per row and step (KV cache).
    Warm-up and measured rounds multiply both the same way.
    """
    rounds = case.warmup_rounds + case.measured_rounds
    if case.kind == "llada":
        cfg = 2 if case.cfg_scale else 1
        per_call = (case.steps or 1) * case.batch_size * (case.prompt_length + case.gen_length) * cfg
    else:
        per_call = case.batch_size * (case.prompt_length + case.gen_length)
    return float(per_call * rounds)


def assign_shards(cases: Sequence[Case], count: int) -> dict[str, int]:
    """Case id -> shard: the longest cases first, each to the least loaded shard (ties to
    the lower shard index), so the split depends only on the cases."""
    loads = [0.0] * count
    assignment: dict[str, int] = {}
    for case in sorted(cases, key=lambda c: (-case_cost(c), c.case_id)):
        shard = min(range(count), key=lambda i: (loads[i], i))
        assignment[case.case_id] = shard
        loads[shard] += case_cost(case)
    return assignment
