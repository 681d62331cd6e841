"""Regression gate: compare a run's ok rows with a reference run's, case by case, on chosen metrics.

A rule such as `tokens_per_s:-10%` fails a case whose tokens_per_s fell by more than 10% against
the reference; `latency_mean_s:+15%` fails a case whose mean latency rose by more than 15%. Cases are
matched by their full parameter set (`Row.key`), never by case_id alone.

A gate that compares nothing is not a passed gate: when no pair could be compared, or when a case
that has a reference row could not be compared (a value missing on either side), the gate is an
error unless the user allowed it (`--gate-allow-missing`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dllm_bench.rows import COLUMN_NAMES, MEASUREMENT_COLUMNS, CaseKey, Row, number
from dllm_bench.sinks.csvfiles import FINAL_CSV, PARTIAL_CSV, ResultsFileError, latest_per_case, read_results
from dllm_bench.sinks.manifest import GateRecord
from dllm_bench.sinks.text import format_significant

LOG = logging.getLogger("dllm_bench.gate")

GATE_FORM = (
    "METRIC:+N% (fail on a rise of more than N%) or METRIC:-N% (fail on a fall of more than N%); "
    "for a share column (accuracy, agreement_exact, outside_forward_share) also METRIC:-Npp (percentage points)"
)
GATE_EXAMPLES = "e.g. tokens_per_s:-10%, latency_mean_s:+15% or accuracy:-2pp"
# Columns holding a share in 0..1, which a rule may limit in percentage points.
SHARE_COLUMNS = ("agreement_exact", "accuracy", "outside_forward_share")

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


class GateError(ValueError):
    """A gate spec or reference run that cannot be used; the message says what was expected."""


@dataclass(frozen=True)
class GateRule:
    """Fail a case when `metric` changes by more than `change` in the sign's direction: in
    percent of the reference value (unit `%`), or in percentage points of a share (`pp`)."""

    metric: str
    change: float
    unit: str = "%"

    @property
    def rise_is_bad(self) -> bool:
        # copysign keeps the direction of "-0%" (fail on any fall).
        return math.copysign(1.0, self.change) > 0

    def is_violated(self, change: float) -> bool:
        """Past the limit; a change equal to it (up to float rounding: 1.0 -> 1.15 is +15.000000000000002%) passes."""
        if math.isclose(change, self.change, rel_tol=1e-9, abs_tol=1e-9):
            return False
        if self.rise_is_bad:
            return change > self.change
        return change < self.change

    def change_of(self, before: float, current: float) -> float:
        """The change from `before` to `current` in this rule's unit."""
        return change_in(self.unit, before, current)

    def spec(self) -> str:
        sign = "+" if self.rise_is_bad else "-"
        return f"{self.metric}:{sign}{abs(self.change):g}{self.unit}"


@dataclass(frozen=True)
class GateFailure:
    """One case whose metric moved past a rule's limit."""

    case_id: str
    metric: str
    reference: float
    current: float
    change: float
    limit: float
    unit: str = "%"

    def describe(self) -> str:
        """E.g. `tiny-p32-g32-b1-s8-k32: tokens_per_s 812.4 -> 650.1 (-20.0%, limit -10%)`."""
        space = " " if self.unit == "pp" else ""
        return (
            f"{self.case_id}: {self.metric} {format_significant(self.reference)} -> "
            f"{format_significant(self.current)} ({self.change:+.1f}{space}{self.unit}, "
            f"limit {self.limit:+g}{space}{self.unit})"
        )


@dataclass(frozen=True)
class GateResult:
    """What the gate found: failures, how many (case, rule) pairs it compared, the cases
    without a reference row, and the (case, metric) pairs that had one but no values."""

    failures: list[GateFailure]
    compared: int
    unmatched: list[str]
    incomparable: list[str] = field(default_factory=list)

    def problem(self, *, allow_missing: bool) -> str:
        """Why this result cannot count as a check ("" when it can)."""
        if allow_missing:
            return ""
        if self.compared == 0:
            return (
                "compared 0 case/metric pairs: no case of this run has an ok reference row with the metric "
                "(same parameters, including measured_rounds and the model entry); pass --gate-allow-missing "
                "to accept that"
            )
        if self.incomparable:
            return (
                f"{len(self.incomparable)} case/metric pairs have a reference row but no value to compare "
                f"({', '.join(self.incomparable[:3])}{', ...' if len(self.incomparable) > 3 else ''}); "
                "pass --gate-allow-missing to accept that"
            )
        return ""

    def passed(self, *, allow_missing: bool) -> bool:
        return not self.failures and not self.problem(allow_missing=allow_missing)

    def lines(self, *, allow_missing: bool) -> list[str]:
        """What the terminal and the log say; lines of a failure start with `gate FAILED`."""
        lines = [f"gate: compared {self.compared} case/metric pairs against the reference run"]
        if self.unmatched:
            lines.append(f"gate: {len(self.unmatched)} cases have no ok reference row and were not gated")
        problem = self.problem(allow_missing=allow_missing)
        if problem:
            lines.append(f"gate FAILED: {problem}")
        lines += [f"gate FAILED: {failure.describe()}" for failure in self.failures]
        return lines

    def record(self, rules: Sequence[GateRule], reference: Path, *, allow_missing: bool) -> GateRecord:
        return GateRecord(
            rules=[rule.spec() for rule in rules],
            reference=str(reference),
            passed=self.passed(allow_missing=allow_missing),
            compared=self.compared,
            failures=[asdict(failure) for failure in self.failures],
            unmatched=list(self.unmatched),
            incomparable=list(self.incomparable),
            error=self.problem(allow_missing=allow_missing),
        )


def gate_metrics() -> tuple[str, ...]:
    """The result columns a rule may name: numeric measurements, in CSV order."""
    return MEASUREMENT_COLUMNS


def _gate_error(spec: str, reason: str) -> GateError:
    return GateError(f"bad gate {spec!r}: {reason}; expected {GATE_FORM}, {GATE_EXAMPLES}")


def _check_metric(spec: str, metric: str) -> None:
    choices = ", ".join(gate_metrics())
    if metric not in COLUMN_NAMES:
        raise _gate_error(spec, f"unknown metric {metric!r} (numeric columns: {choices})")
    if metric not in gate_metrics():
        raise _gate_error(spec, f"{metric!r} is not a numeric measurement (numeric columns: {choices})")


def _parse_change(spec: str, change: str, metric: str) -> tuple[float, str]:
    if not change or change[0] not in "+-":
        raise _gate_error(spec, "the change needs a sign: + fails on a rise, - fails on a fall")
    unit = "pp" if change.endswith("pp") else "%" if change.endswith("%") else ""
    if not unit:
        raise _gate_error(spec, "the change must end with % (or pp for a share column)")
    if unit == "pp" and metric not in SHARE_COLUMNS:
        raise _gate_error(spec, f"pp (percentage points) applies to the share columns {', '.join(SHARE_COLUMNS)}")
    digits = change[1 : -len(unit)]
    if not _NUMBER.fullmatch(digits):
        raise _gate_error(spec, f"{digits!r} is not a number")
    magnitude = float(digits)
    return (-magnitude if change[0] == "-" else magnitude), unit


def parse_gate(spec: str) -> GateRule:
    """`METRIC:+N%` or `METRIC:-N%` as a rule; GateError says what is wrong otherwise."""
    text = spec.strip()
    metric, colon, change = text.partition(":")
    if not colon:
        raise _gate_error(spec, "no ':' between the metric and the change")
    metric = metric.strip()
    _check_metric(spec, metric)
    value, unit = _parse_change(spec, change.strip(), metric)
    return GateRule(metric=metric, change=value, unit=unit)


def load_reference(path: Path) -> list[Row]:
    """The rows of the reference run: a results CSV, or a run directory's raw_metrics.csv
    (else, when that has no rows, its raw_metrics_partial.csv). Each file is read once."""
    if not path.exists():
        raise GateError(
            f"gate reference {path} does not exist; pass a results CSV or a run directory holding {FINAL_CSV}"
        )
    candidates = [path / name for name in (FINAL_CSV, PARTIAL_CSV)] if path.is_dir() else [path]
    for csv_path in candidates:
        if csv_path is not path and not csv_path.is_file():
            continue
        rows = _rows(csv_path)
        if rows:
            LOG.info("gate reference: %d rows from %s", len(rows), csv_path)
            return rows
    if not path.is_dir():
        raise GateError(f"gate reference {path} has no result rows")
    raise GateError(f"gate reference directory {path} holds no results: no rows in {FINAL_CSV} or {PARTIAL_CSV}")


def _rows(path: Path) -> list[Row]:
    try:
        return read_results(path)
    except ResultsFileError as exc:
        raise GateError(f"gate reference: {exc}") from exc


def percent_change(before: float, current: float) -> float:
    """Signed change from before to current in percent; a change from 0 is infinite."""
    if before == 0:
        return 0.0 if current == 0 else math.copysign(math.inf, current)
    return (current - before) / abs(before) * 100.0


def change_in(unit: str, before: float, current: float) -> float:
    """The change from `before` to `current`: percentage points of a share (`pp`, shares x
    100), else percent of `before`."""
    if unit == "pp":
        return (current - before) * 100.0
    return percent_change(before, current)


def _reference_by_key(reference_rows: Iterable[Row]) -> dict[CaseKey, Row]:
    """The latest ok reference row of each case."""
    return {row.key(): row for row in latest_per_case(row for row in reference_rows if row.ok)}


def _compare(row: Row, reference: Row, rule: GateRule) -> GateFailure | None:
    current = number(row, rule.metric)
    before = number(reference, rule.metric)
    assert current is not None and before is not None
    change = rule.change_of(before, current)
    if not rule.is_violated(change):
        return None
    return GateFailure(
        case_id=row.case_id,
        metric=rule.metric,
        reference=before,
        current=current,
        change=change,
        limit=rule.change,
        unit=rule.unit,
    )


def check_gate(rows: Iterable[Row], reference_rows: Iterable[Row], rules: Sequence[GateRule]) -> GateResult:
    """Compare each current ok case with the latest ok reference row of the same parameters.

    For the current run only each case's latest row counts (an ok row later rerun into an error
    is not compared). A pair where either side lacks the metric is `incomparable`.
    """
    reference = _reference_by_key(reference_rows)
    failures: list[GateFailure] = []
    unmatched: list[str] = []
    incomparable: list[str] = []
    compared = 0
    for row in latest_per_case(rows):
        if not row.ok:
            continue
        base = reference.get(row.key())
        if base is None:
            unmatched.append(row.case_id)
            continue
        for rule in rules:
            if number(row, rule.metric) is None or number(base, rule.metric) is None:
                incomparable.append(f"{row.case_id}:{rule.metric}")
                continue
            compared += 1
            failure = _compare(row, base, rule)
            if failure is not None:
                failures.append(failure)
    return GateResult(failures=failures, compared=compared, unmatched=unmatched, incomparable=incomparable)


@dataclass
class Gate:
    """A run's gate: its rules, the reference run, and once applied its result and wording."""

    rules: list[GateRule]
    reference_path: Path
    reference_rows: list[Row]
    allow_missing: bool
    result: GateResult | None = None

    @classmethod
    def from_options(cls, gates: Sequence[str], reference: Path | None, allow_missing: bool) -> Gate | None:
        """The gate the options ask for (None without --gate); raises GateError."""
        if not gates:
            if reference is not None:
                raise GateError("--gate-reference without --gate: add a rule such as --gate tokens_per_s:-10%")
            return None
        if reference is None:
            raise GateError("--gate needs --gate-reference PATH (a raw_metrics.csv or a run directory)")
        rules = [parse_gate(spec) for spec in gates]
        return cls(rules, reference, load_reference(reference), allow_missing)

    @property
    def passed(self) -> bool:
        return self.result is not None and self.result.passed(allow_missing=self.allow_missing)

    def apply(self, rows: Sequence[Row]) -> None:
        """Compare the rows with the reference."""
        self.result = check_gate(rows, self.reference_rows, self.rules)

    def lines(self) -> list[str]:
        if self.result is None:
            return []
        return self.result.lines(allow_missing=self.allow_missing)

    def record(self) -> GateRecord | None:
        if self.result is None:
            return None
        return self.result.record(self.rules, self.reference_path, allow_missing=self.allow_missing)

    def failure(self) -> tuple[str, str] | None:
        """("gate" or "gate failed", what) when the gate failed the run: a problem that kept
        it from counting as a check, else the regressed pairs; None without a failed gate."""
        if self.result is None or self.passed:
            return None
        problem = self.result.problem(allow_missing=self.allow_missing)
        if problem:
            return "gate", problem
        metrics = ", ".join(sorted({f.metric for f in self.result.failures}))
        return "gate failed", f"{len(self.result.failures)} case/metric pairs regressed ({metrics})"

    def reason(self) -> str:
        """Why the gate failed the run ("" when it passed or was not applied)."""
        failure = self.failure()
        return "" if failure is None else f"{failure[0]}: {failure[1]}"

    def closing_line(self) -> str | None:
        """The last line of the terminal output when the gate failed the run."""
        failure = self.failure()
        if failure is None:
            return None
        return f"dllm-bench: GATE FAILED against {self.reference_path}: {failure[1]}; exit code 1"
