"""Accuracy with its standard error, and AUP (accuracy under parallelism).

AUP follows the definition published by hao-ai-lab with d3LLM (blog "AUP: when Accuracy
Meets Parallelism in Diffusion Language Models", hao-ai-lab.github.io/blogs/text-diffusion;
Qian et al., "d3LLM: Ultra-Fast Diffusion LLM using Pseudo-Trajectory Distillation",
ICML 2026; reference code ``AUP_leaderboard/aup_utils.py`` of hao-ai-lab/d3LLM).

Given points (rho_i, y_i) of tokens per forward and accuracy in percent, sorted by rho:

* the cutoff drops every point with y_i < y_1 - 5, y_1 being the accuracy of the point
  of smallest rho (the exact decode: one token per forward);
* the weight W(y) = min(exp(-alpha * (1 - y / y_max)), 1) with alpha = 3 discounts
  accuracy below y_max (by default the best accuracy among the points);
* AUP = rho_1 * y_1 + sum_{i>=2} (rho_i - rho_{i-1}) * (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2
  over the kept points.

hao-ai-lab's function stops with an assertion when the point of largest rho falls below
the cutoff; here such points are dropped like the others, which gives the same value
whenever theirs returns one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "AUP_ALPHA",
    "AUP_CUTOFF_POINTS",
    "AccuracyStats",
    "accuracy_stats",
    "aup",
    "aup_weight",
]

#: hao-ai-lab's penalty weight for accuracy below y_max.
AUP_ALPHA = 3.0
#: hao-ai-lab's cutoff: points more than this many accuracy points below the exact decode are dropped.
AUP_CUTOFF_POINTS = 5.0


@dataclass(frozen=True)
class AccuracyStats:
    """``accuracy`` is the share of scored prompts answered correctly (0..1),
    ``accuracy_se`` its binomial standard error sqrt(p (1 - p) / n), ``n_scored`` n.
    Both are None when nothing was scored."""

    accuracy: float | None
    accuracy_se: float | None
    n_scored: int
    n_correct: int


def accuracy_stats(results: Iterable[bool]) -> AccuracyStats:
    """Accuracy, standard error and counts of per-prompt results."""
    values = list(results)
    n = len(values)
    correct = sum(1 for value in values if value)
    if n == 0:
        return AccuracyStats(accuracy=None, accuracy_se=None, n_scored=0, n_correct=0)
    p = correct / n
    return AccuracyStats(accuracy=p, accuracy_se=math.sqrt(p * (1.0 - p) / n), n_scored=n, n_correct=correct)


def aup_weight(y: float, y_max: float, alpha: float = AUP_ALPHA) -> float:
    """W(y) = min(exp(-alpha * (1 - y / y_max)), 1); 1 when y_max is 0."""
    if y_max <= 0:
        return 1.0
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


def _check_points(points: Sequence[tuple[float, float]]) -> None:
    if not points:
        raise ValueError("AUP needs at least one (tokens_per_forward, accuracy) point")
    for rho, y in points:
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"tokens per forward must be a positive number, got {rho}")
        if not (math.isfinite(y) and 0.0 <= y <= 100.0):
            raise ValueError(f"accuracy must be in percent, 0..100, got {y}")


def aup(
    points: Sequence[tuple[float, float]],
    *,
    y_max: float | None = None,
    alpha: float = AUP_ALPHA,
    cutoff: float = AUP_CUTOFF_POINTS,
) -> float:
    """AUP of (tokens_per_forward, accuracy_percent) points (see the module docstring).

    ``y_max`` defaults to the largest accuracy among ``points``; hao-ai-lab uses the
    largest accuracy of all methods compared on the task, which a caller comparing
    several models passes explicitly.
    """
    _check_points(points)
    ordered = sorted(points, key=lambda point: point[0])
    top = max(y for _, y in ordered) if y_max is None else y_max
    floor = ordered[0][1] - cutoff
    kept = [(rho, y) for rho, y in ordered if y >= floor]
    score = kept[0][0] * kept[0][1]
    for (rho_prev, y_prev), (rho, y) in itertools.pairwise(kept):
        weighted = y * aup_weight(y, top, alpha) + y_prev * aup_weight(y_prev, top, alpha)
        score += (rho - rho_prev) * weighted / 2.0
    return score
