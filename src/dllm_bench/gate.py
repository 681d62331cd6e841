"""Regression gate: compare a run's ok rows with a baseline run's, case by case, on chosen metrics.

A rule such as `tokens_per_s:-10%` fails a case whose tokens_per_s fell by more than 10% against
the baseline; `latency_mean_s:+15%` fails a case whose mean latency rose by more than 15%. Cases are
matched by their full parameter set (`dllm_bench.resume.row_key`), never by case_id alone.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dllm_bench.results import COLUMN_NAMES, FINAL_CSV, PARTIAL_CSV, read_rows
from dllm_bench.resume import CaseKey, latest_per_case, row_key

LOG = logging.getLogger("dllm_bench.gate")

GATE_FORM = "METRIC:+N% (fail on a rise of more than N%) or METRIC:-N% (fail on a fall of more than N%)"
GATE_EXAMPLES = "e.g. tokens_per_s:-10% or latency_mean_s:+15%"

# Numeric measurements a rule may name. Case parameters, environment columns and text are left out; a name
# here counts only once it is a column of `COLUMN_NAMES`.
MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "latency_mean_s",
    "latency_median_s",
    "latency_min_s",
    "latency_max_s",
    "latency_stddev_s",
    "tokens_per_s",
    "tokens_until_eos",
    "eos_tokens_per_s",
    "nfe",
    "tokens_per_forward",
    "forward_mean_s",
    "outside_forward_share",
    "ttft_s",
    "tpot_s",
    "peak_memory_allocated_mb",
    "peak_memory_reserved_mb",
    "peak_rss_increase_mb",
    "energy_j",
    "energy_per_token_j",
)

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


class GateError(ValueError):
    """A gate spec or baseline that cannot be used; the message says what was expected."""


@dataclass(frozen=True)
class GateRule:
    """Fail a case when `metric` changes by more than `change_pct` percent in the sign's direction."""

    metric: str
    change_pct: float

    @property
    def rise_is_bad(self) -> bool:
        # copysign keeps the direction of "-0%" (fail on any fall).
        return math.copysign(1.0, self.change_pct) > 0

    def is_violated(self, change_pct: float) -> bool:
        """Past the limit; a change equal to it (up to float rounding: 1.0 -> 1.15 is +15.000000000000002%) passes."""
        if math.isclose(change_pct, self.change_pct, rel_tol=1e-9, abs_tol=1e-9):
            return False
        if self.rise_is_bad:
            return change_pct > self.change_pct
        return change_pct < self.change_pct


@dataclass(frozen=True)
class GateFailure:
    """One case whose metric moved past a rule's limit."""

    case_id: str
    metric: str
    baseline: float
    current: float
    change_pct: float
    limit_pct: float

    def describe(self) -> str:
        """E.g. `tiny-llada-p32-g32-b1-s8-k32: tokens_per_s 812.4 -> 650.1 (-20.0%, limit -10%)`."""
        return (
            f"{self.case_id}: {self.metric} {format_significant(self.baseline)} -> "
            f"{format_significant(self.current)} ({self.change_pct:+.1f}%, limit {self.limit_pct:+g}%)"
        )


@dataclass(frozen=True)
class GateResult:
    """What the gate found: failures, how many (case, rule) pairs it compared, and cases it could not match."""

    failures: list[GateFailure]
    compared: int
    unmatched: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures


def gate_metrics() -> tuple[str, ...]:
    """The result columns a rule may name: numeric measurements, in CSV order."""
    return tuple(name for name in COLUMN_NAMES if name in MEASUREMENT_COLUMNS)


def _gate_error(spec: str, reason: str) -> GateError:
    return GateError(f"bad gate {spec!r}: {reason}; expected {GATE_FORM}, {GATE_EXAMPLES}")


def _check_metric(spec: str, metric: str) -> None:
    choices = ", ".join(gate_metrics())
    if metric not in COLUMN_NAMES:
        raise _gate_error(spec, f"unknown metric {metric!r} (numeric columns: {choices})")
    if metric not in gate_metrics():
        raise _gate_error(spec, f"{metric!r} is not a numeric measurement (numeric columns: {choices})")


def _parse_change(spec: str, change: str) -> float:
    if not change or change[0] not in "+-":
        raise _gate_error(spec, "the change needs a sign: + fails on a rise, - fails on a fall")
    if not change.endswith("%"):
        raise _gate_error(spec, "the change must end with %")
    digits = change[1:-1]
    if not _NUMBER.fullmatch(digits):
        raise _gate_error(spec, f"{digits!r} is not a number")
    magnitude = float(digits)
    return -magnitude if change[0] == "-" else magnitude


def parse_gate(spec: str) -> GateRule:
    """`METRIC:+N%` or `METRIC:-N%` as a rule; GateError says what is wrong otherwise."""
    text = spec.strip()
    metric, colon, change = text.partition(":")
    if not colon:
        raise _gate_error(spec, "no ':' between the metric and the change")
    metric = metric.strip()
    _check_metric(spec, metric)
    return GateRule(metric=metric, change_pct=_parse_change(spec, change.strip()))


def _baseline_file(path: Path) -> Path:
    """The CSV to read: the path itself, or a run directory's final (else partial) CSV."""
    if not path.exists():
        raise GateError(f"baseline {path} does not exist; pass a results CSV or a run directory holding {FINAL_CSV}")
    if not path.is_dir():
        return path
    for name in (FINAL_CSV, PARTIAL_CSV):
        candidate = path / name
        if candidate.is_file() and read_rows(candidate):
            return candidate
    raise GateError(f"baseline directory {path} holds no results: no rows in {FINAL_CSV} or {PARTIAL_CSV}")


def load_baseline(path: Path) -> list[dict[str, str]]:
    """The rows of a baseline results CSV, or of a run directory's raw_metrics(.partial).csv."""
    csv_path = _baseline_file(path)
    rows = read_rows(csv_path)
    if not rows:
        raise GateError(f"baseline {csv_path} has no result rows")
    missing = [name for name in ("case_id", "status") if name not in rows[0]]
    if missing:
        raise GateError(f"baseline {csv_path} is not a results CSV: no column {', '.join(missing)}")
    LOG.info("gate baseline: %d rows from %s", len(rows), csv_path)
    return rows


def metric_value(row: Mapping[str, object], metric: str) -> float | None:
    """A row's finite number in `metric`, or None when it is absent, empty or not a number."""
    raw = row.get(metric)
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = float(str(raw))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def percent_change(baseline: float, current: float) -> float:
    """Signed change from baseline to current in percent; a change from 0 is infinite."""
    if baseline == 0:
        return 0.0 if current == 0 else math.copysign(math.inf, current)
    return (current - baseline) / abs(baseline) * 100.0


def format_significant(value: float, digits: int = 4) -> str:
    """Fixed notation, `digits` significant digits (0.001234, 1.500, 812.4); integer parts stay whole (12346)."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return f"{0.0:.{digits - 1}f}"
    rounded = float(f"{value:.{digits - 1}e}")  # round first: 9.99996 becomes 10.00, not 10.000
    magnitude = math.floor(math.log10(abs(rounded)))
    if magnitude >= digits - 1:
        return f"{value:.0f}"
    return f"{rounded:.{digits - 1 - magnitude}f}"


def _ok_latest(rows: Iterable[Mapping[str, object]]) -> list[Mapping[str, object]]:
    """The ok rows among the latest row of each case."""
    return [row for row in latest_per_case(rows) if row.get("status") == "ok"]


def _baseline_by_key(baseline_rows: Iterable[Mapping[str, object]]) -> dict[CaseKey, Mapping[str, object]]:
    """The latest ok baseline row of each case."""
    return {row_key(row): row for row in baseline_rows if row.get("status") == "ok"}


def _check_rule(
    row: Mapping[str, object], reference: Mapping[str, object], rule: GateRule
) -> tuple[bool, GateFailure | None]:
    """Whether the pair was comparable (both values present), and the failure if the rule is broken."""
    current = metric_value(row, rule.metric)
    baseline = metric_value(reference, rule.metric)
    if current is None or baseline is None:
        return False, None
    change = percent_change(baseline, current)
    if not rule.is_violated(change):
        return True, None
    failure = GateFailure(
        case_id=str(row.get("case_id", "")),
        metric=rule.metric,
        baseline=baseline,
        current=current,
        change_pct=change,
        limit_pct=rule.change_pct,
    )
    return True, failure


def check_gate(
    rows: Iterable[Mapping[str, object]],
    baseline_rows: Iterable[Mapping[str, object]],
    rules: Sequence[GateRule],
) -> GateResult:
    """Compare each current ok case with the latest ok baseline row of the same parameters.

    For the current run only each case's latest row counts (an ok row later rerun into an error
    is not compared). A pair where either side lacks the metric is not counted in `compared`.
    """
    reference = _baseline_by_key(baseline_rows)
    failures: list[GateFailure] = []
    unmatched: list[str] = []
    compared = 0
    for row in _ok_latest(rows):
        base = reference.get(row_key(row))
        if base is None:
            unmatched.append(str(row.get("case_id", "")))
            continue
        for rule in rules:
            was_compared, failure = _check_rule(row, base, rule)
            compared += was_compared
            if failure is not None:
                failures.append(failure)
    return GateResult(failures=failures, compared=compared, unmatched=unmatched)
