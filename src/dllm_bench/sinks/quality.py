"""Accuracy under parallelism (AUP) for the final rows: one figure per model, task and shape.

For each diffusion model (a kind of the diffusion family), task (with its options) and shape (prompt_length, gen_length,
batch_size), the ok rows with an accuracy are points (tokens_per_forward, accuracy in
percent) of one curve; `dllm_bench.tasks.aup` turns the curve into one score, written to
the `aup` column of each of those rows in raw_metrics.csv.
"""

from __future__ import annotations

from collections.abc import Sequence

from dllm_bench.kinds import is_diffusion
from dllm_bench.rows import Row
from dllm_bench.tasks import aup

CurveKey = tuple[object, ...]


def curve_key(row: Row) -> CurveKey:
    return (row.model, row.model_id, row.task, row.task_options, row.prompt_length, row.gen_length, row.batch_size)


def _is_point(row: Row) -> bool:
    return (
        row.ok
        and is_diffusion(row.kind)
        and row.accuracy is not None
        and row.tokens_per_forward is not None
        and row.tokens_per_forward > 0
    )


def aup_by_curve(rows: Sequence[Row]) -> dict[CurveKey, float]:
    """The AUP of every curve that has at least one point."""
    points: dict[CurveKey, list[tuple[float, float]]] = {}
    for row in rows:
        if _is_point(row):
            assert row.tokens_per_forward is not None and row.accuracy is not None
            points.setdefault(curve_key(row), []).append((row.tokens_per_forward, 100.0 * row.accuracy))
    return {key: aup(curve) for key, curve in points.items()}


def with_aup(rows: Sequence[Row]) -> list[Row]:
    """The rows with `aup` set on each point of a curve (other rows unchanged)."""
    scores = aup_by_curve(rows)
    return [row.with_values({"aup": scores[curve_key(row)]}) if _is_point(row) else row for row in rows]
