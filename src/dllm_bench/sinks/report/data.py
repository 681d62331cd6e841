"""The report's data preparation: pure functions from typed rows to what the page shows.

No plotting and no HTML here, so every figure's numbers can be unit-tested: strategy labels,
the speed/quality trade-off with its Pareto front, the speedup of each diffusion case over
the autoregressive (AR) case of the same task and shape, and the per-case changes against a
reference run. Rows are told apart by their kind's family (`dllm_bench.kinds`), never by
the kind's name.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dllm_bench.kinds import KindSpec, is_autoregressive, is_diffusion, spec_of
from dllm_bench.rows import MEASUREMENT_COLUMNS, Row, number
from dllm_bench.sinks.csvfiles import latest_per_case
from dllm_bench.sinks.gate import GateRule, change_in, check_gate

AR_LABEL = "AR"
DEFAULT_TASK = "random"

# Quality measures in order of preference: accuracy where a task scores answers, else the
# agreement with the exact decode (the random task has no answers to score).
QUALITY_METRICS = ("accuracy", "agreement_exact")

# A change is shown in percent of the reference value, except for shares in 0..1 whose change
# reads better in percentage points.
POINTS_METRICS = frozenset({"accuracy", "agreement_exact"})
PERCENT = "%"
POINTS = "pp"

Shape = tuple[int | None, int | None, int | None]

def task_of(row: Row) -> str:
    """The row's task; rows written before the task column existed are the random task."""
    return row.task or DEFAULT_TASK


def shape_of(row: Row) -> Shape:
    return (row.prompt_length, row.gen_length, row.batch_size)


def strategy_label(row: Row) -> str:
    """A diffusion row's decoding settings as its case id writes them (its kind's settings'
    `id_parts`, e.g. `s64-k32-cdual`, `k32-cdual-th0.9`). An autoregressive row is labelled
    with its kind's label (`AR`), a row of a kind this version does not know `AR` too."""
    spec = spec_of(row.kind)
    if spec is None:
        return AR_LABEL
    if not spec.is_diffusion:
        return spec.label
    return _settings_label(spec, tuple(getattr(row, name) for name in spec.column_names))


@functools.lru_cache(maxsize=1024)
def _settings_label(spec: KindSpec, values: tuple[object, ...]) -> str:
    """The label of one set of a kind's decoding settings (its setting columns' values), made
    once per distinct set: a run of thousands of rows has a few."""
    return spec.strategy(dict(zip(spec.column_names, values, strict=True)))


@dataclass(frozen=True)
class Labeller:
    """Series labels: the strategy, prefixed with the model's name when a run has several
    diffusion models (`AR` is followed by the AR model's name when it has several AR models)."""

    several_diffusion: bool
    several_references: bool

    @classmethod
    def for_rows(cls, rows: Iterable[Row]) -> Labeller:
        diffusion = {row.model for row in rows if row.model and is_diffusion(row.kind)}
        references = {row.model for row in rows if row.model and is_autoregressive(row.kind)}
        return cls(several_diffusion=len(diffusion) > 1, several_references=len(references) > 1)

    def label(self, row: Row) -> str:
        strategy = strategy_label(row)
        if is_diffusion(row.kind):
            return f"{row.model} {strategy}" if self.several_diffusion else strategy
        if self.several_references:
            return f"{strategy} {row.model}"
        return strategy


def positive(row: Row, name: str) -> float | None:
    """A numeric column's value when it is finite and above 0 (a speed, a latency), else None."""
    value = number(row, name)
    return value if value is not None and math.isfinite(value) and value > 0 else None


def ok_rows(rows: Iterable[Row]) -> list[Row]:
    return [row for row in rows if row.ok]


def failed_rows(rows: Iterable[Row]) -> list[Row]:
    return [row for row in rows if not row.ok]


# --- values no measurement can take, columns a CSV lacks -------------------------------------

# Measurements that are a share of a whole (0 to 1); every measurement is 0 or more.
SHARE_MEASUREMENTS = frozenset({"accuracy", "accuracy_se", "agreement_exact", "outside_forward_share"})
_MEASUREMENTS = frozenset(MEASUREMENT_COLUMNS)


def is_possible(column: str, value: float) -> bool:
    """Whether a measurement column (`MEASUREMENT_COLUMNS`) can hold `value`: 0 or more, and at
    most 1 for a share. Other columns are not checked."""
    if value < 0 or (value > 1 and column in SHARE_MEASUREMENTS):  # NaN is neither
        return column not in _MEASUREMENTS
    return True


@dataclass(frozen=True)
class Impossible:
    """A value that no measurement of its column can take (a damaged or edited CSV, or a bug)."""

    case_id: str
    column: str
    value: float

    def describe(self) -> str:
        possible = "0 to 1" if self.column in SHARE_MEASUREMENTS else "0 or more"
        return f"{self.case_id}: {self.column} = {self.value:g} (possible: {possible})"


def impossible_values(rows: Iterable[Row]) -> list[Impossible]:
    """Every measurement of the rows that its column cannot hold, in row then column order."""
    found: list[Impossible] = []
    for row in rows:
        for column in MEASUREMENT_COLUMNS:
            value = getattr(row, column)
            if value is not None and not is_possible(column, value):
                found.append(Impossible(row.case_id, column, float(value)))
    return found


def missing_metric_columns(header: Sequence[str]) -> list[str]:
    """The measurement columns (`MEASUREMENT_COLUMNS`) a results CSV's header lacks, in column order."""
    present = set(header)
    return [column for column in MEASUREMENT_COLUMNS if column not in present]


# --- speed against quality ----------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates larger being better
    (a point dominates another when it is at least as good in both and better in one).
    Equal points are all on the front. Sorted by the first coordinate.

    One sweep from the largest first coordinate down (n log n): a point is dominated by a point
    of a larger first coordinate whose second is at least as large, or by one of the same first
    coordinate whose second is larger."""
    by_x: dict[float, list[int]] = {}
    for i, (x, _) in enumerate(points):
        by_x.setdefault(x, []).append(i)
    front: list[int] = []
    best_right = -math.inf  # the largest second coordinate among larger first coordinates
    for x in sorted(by_x, reverse=True):
        top = max(points[i][1] for i in by_x[x])
        if top > best_right:
            front += [i for i in by_x[x] if points[i][1] == top]
        best_right = max(best_right, top)
    return sorted(front, key=lambda i: (points[i][0], points[i][1]))


@dataclass(frozen=True)
class Point:
    """One case on the trade-off plot."""

    case_id: str
    label: str
    speed: float
    quality: float | None
    quality_se: float | None = None
    on_front: bool = False


@dataclass(frozen=True)
class TradeOff:
    """The cases of one task and shape: speed (tokens_per_s) against `metric`."""

    task: str
    shape: Shape
    metric: str | None
    diffusion: list[Point]
    references: list[Point]

    @property
    def title(self) -> str:
        return f"{self.task} {shape_name(self.shape)}"


def shape_name(shape: Shape) -> str:
    prompt_length, gen_length, batch_size = shape
    return f"p{prompt_length} g{gen_length} b{batch_size}"


def quality_metric(rows: Iterable[Row]) -> str | None:
    """The first of QUALITY_METRICS that any of the rows has; None when none has one."""
    held = list(rows)
    for metric in QUALITY_METRICS:
        if any(getattr(row, metric) is not None for row in held):
            return metric
    return None


def _point(row: Row, label: str, metric: str | None) -> Point | None:
    speed = positive(row, "tokens_per_s")
    if speed is None:
        return None
    quality = number(row, metric) if metric else None
    if quality is not None and not math.isfinite(quality):
        quality = None
    se = number(row, "accuracy_se") if metric == "accuracy" else None
    return Point(case_id=row.case_id, label=label, speed=speed, quality=quality, quality_se=se)


def _mark_front(points: list[Point]) -> list[Point]:
    scored = [i for i, p in enumerate(points) if p.quality is not None]
    coordinates = [(points[i].speed, points[i].quality or 0.0) for i in scored]
    front = {scored[j] for j in pareto_front(coordinates)}
    return [dataclasses.replace(p, on_front=i in front) for i, p in enumerate(points)]


def _group_key(row: Row) -> tuple[str, Shape]:
    return (task_of(row), shape_of(row))


def _sort_key(key: tuple[str, Shape]) -> tuple[str, tuple[int, ...]]:
    task, shape = key
    return (task, tuple(-1 if value is None else value for value in shape))


def trade_offs(rows: Sequence[Row]) -> list[TradeOff]:
    """One TradeOff per task and shape that has an ok diffusion row with a speed, in task, then shape order.

    The quality metric is chosen per task (accuracy if any of its rows has one, else
    agreement_exact, else None); the Pareto front is over the diffusion points with a quality value.
    """
    labeller = Labeller.for_rows(rows)
    groups: dict[tuple[str, Shape], list[Row]] = {}
    for row in ok_rows(rows):
        groups.setdefault(_group_key(row), []).append(row)
    metric_of_task = {
        task: quality_metric(row for row in ok_rows(rows) if task_of(row) == task)
        for task in {task for task, _ in groups}
    }
    result: list[TradeOff] = []
    for key in sorted(groups, key=_sort_key):
        task, shape = key
        metric = metric_of_task[task]
        diffusion = [p for r in groups[key] if is_diffusion(r.kind) and (p := _point(r, labeller.label(r), metric))]
        if not diffusion:
            continue
        references = [
            p for r in groups[key] if is_autoregressive(r.kind) and (p := _point(r, labeller.label(r), metric))
        ]
        result.append(
            TradeOff(task=task, shape=shape, metric=metric, diffusion=_mark_front(diffusion), references=references)
        )
    return result


# --- speedup against AR ------------------------------------------------------------------


@dataclass(frozen=True)
class Speedup:
    """A diffusion case's tokens_per_s over the AR case's of the same `pair_key` (task and its
    options, shape, seed); `task` and `shape` are the pair's. `label` is the
    diffusion series label; `setting` adds the AR model's name when the run has several."""

    label: str
    setting: str
    diffusion_case: str
    reference_case: str
    reference_model: str
    task: str
    shape: Shape
    ratio: float

    @property
    def diffusion_loses(self) -> bool:
        return self.ratio < 1.0


PairKey = tuple[str, str | None, Shape, int | None]


def pair_key(row: Row) -> PairKey:
    """What a diffusion case and the AR case it is compared with share: the task and its options,
    the shape and the prompt seed (the same prompts)."""
    return (task_of(row), row.task_options, shape_of(row), row.seed)


@dataclass(frozen=True)
class Pairing:
    """The speedup pairs of a run (`pair_with_ar`), made once for the figure, the table and the
    list of shapes without an AR case."""

    speedups: list[Speedup]
    without_ar: list[tuple[str, Shape]]

    def by_case(self) -> dict[str, float]:
        """Each diffusion case's speedup over AR; with several AR models, the one of the first."""
        result: dict[str, float] = {}
        for item in self.speedups:
            result.setdefault(item.diffusion_case, item.ratio)
        return result


def pair_with_ar(rows: Sequence[Row]) -> Pairing:
    """Each ok diffusion row paired with the ok autoregressive rows of the same `pair_key`
    (task, task options, prompt_length, gen_length, batch_size and seed): one pair per AR model.
    Rows without a positive tokens_per_s are left out. With several AR models the setting names
    the AR model it is compared with. Linear in the rows: each row is looked up once by its key."""
    labeller = Labeller.for_rows(rows)
    references: dict[PairKey, list[tuple[Row, float]]] = {}
    diffusion: list[tuple[Row, float | None]] = []
    for row in ok_rows(rows):
        speed = positive(row, "tokens_per_s")
        if is_autoregressive(row.kind) and speed is not None:
            references.setdefault(pair_key(row), []).append((row, speed))
        elif is_diffusion(row.kind):
            diffusion.append((row, speed))
    result: list[Speedup] = []
    missing: set[tuple[str, Shape]] = set()
    for row, speed in diffusion:
        partners = references.get(pair_key(row), [])
        if not partners:
            missing.add(_group_key(row))
        if speed is None or not partners:
            continue
        label = labeller.label(row)
        task, shape = _group_key(row)
        for reference, reference_speed in partners:
            result.append(
                Speedup(
                    label=label,
                    setting=f"{label} vs {reference.model}" if labeller.several_references else label,
                    diffusion_case=row.case_id,
                    reference_case=reference.case_id,
                    reference_model=reference.model or "",
                    task=task,
                    shape=shape,
                    ratio=speed / reference_speed,
                )
            )
    return Pairing(result, sorted(missing, key=_sort_key))


def speedups(rows: Sequence[Row]) -> list[Speedup]:
    """The speedup pairs of `pair_with_ar`."""
    return pair_with_ar(rows).speedups


def shapes_without_ar(rows: Sequence[Row]) -> list[tuple[str, Shape]]:
    """Task and shape of the ok diffusion rows that have no AR case to compare with (none ok, none
    with a tokens_per_s, or none of the same task options and seed), sorted."""
    return pair_with_ar(rows).without_ar


# --- latency, NFE and tokens per forward ---------------------------------------------------


@dataclass(frozen=True)
class Cost:
    """One ok case's latency and forward passes."""

    case_id: str
    label: str
    kind: str
    batch_size: int | None
    latency_s: float
    nfe: float


def costs(rows: Sequence[Row]) -> list[Cost]:
    """The ok rows that have both latency_mean_s and nfe."""
    labeller = Labeller.for_rows(rows)
    result: list[Cost] = []
    for row in ok_rows(rows):
        latency, nfe = positive(row, "latency_mean_s"), positive(row, "nfe")
        if latency is not None and nfe is not None:
            result.append(Cost(row.case_id, labeller.label(row), row.kind or "", row.batch_size, latency, nfe))
    return result


def tokens_per_forward(row: Row) -> float | None:
    """The tokens_per_forward column, or gen_length / nfe (its definition) where it is empty."""
    if row.tokens_per_forward is not None:
        return positive(row, "tokens_per_forward")
    nfe = positive(row, "nfe")
    if row.gen_length is None or nfe is None:
        return None
    return row.gen_length / nfe


@dataclass(frozen=True)
class Spread:
    """Values of one label: their mean, minimum and maximum."""

    label: str
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)


def tokens_per_forward_by_strategy(rows: Sequence[Row]) -> list[Spread]:
    """tokens_per_forward of the ok rows, grouped by series label (diffusion strategies first, then AR)."""
    labeller = Labeller.for_rows(rows)
    groups: dict[tuple[bool, str], list[float]] = {}
    for row in ok_rows(rows):
        value = tokens_per_forward(row)
        if value is not None:
            groups.setdefault((not is_diffusion(row.kind), labeller.label(row)), []).append(value)
    return [Spread(label, tuple(groups[(ar, label)])) for ar, label in sorted(groups)]


# --- comparison with a reference run -------------------------------------------------------


def unit_of(metric: str, rules: Sequence[GateRule] = ()) -> str:
    """How a metric's change is shown: in the unit of a gate rule on it (`pp` when its spec
    ends with pp), else in percentage points for shares (accuracy) and percent for the rest."""
    for rule in rules:
        if rule.metric == metric:
            return rule.unit
    return POINTS if metric in POINTS_METRICS else PERCENT


@dataclass(frozen=True)
class Change:
    """One case's change of one metric against the reference run."""

    case_id: str
    metric: str
    unit: str
    reference: float
    current: float
    change: float
    regression: bool = False


@dataclass(frozen=True)
class Comparison:
    """This run against a reference run, cases matched by their full parameter set."""

    metrics: list[str]
    units: dict[str, str]
    changes: list[Change]
    rules: list[GateRule]
    regressions: list[str]
    gate_problem: str
    gate_compared: int = 0
    new_cases: list[str] = field(default_factory=list)
    missing_cases: list[str] = field(default_factory=list)
    not_ok: list[str] = field(default_factory=list)

    @property
    def matched(self) -> int:
        return len({change.case_id for change in self.changes})

    def of(self, metric: str) -> list[Change]:
        return [change for change in self.changes if change.metric == metric]

    def limit(self, metric: str) -> list[float]:
        """The gate's limits on `metric`, in its unit."""
        return [rule.change for rule in self.rules if rule.metric == metric]


def comparison_metrics(rows: Sequence[Row], reference_rows: Sequence[Row], rules: Sequence[GateRule]) -> list[str]:
    """tokens_per_s, accuracy when both runs have it, then every gated metric, without repeats."""
    metrics = ["tokens_per_s"]
    if any(r.accuracy is not None for r in rows) and any(r.accuracy is not None for r in reference_rows):
        metrics.append("accuracy")
    metrics += [rule.metric for rule in rules]
    return list(dict.fromkeys(metrics))


def compare(
    rows: Sequence[Row],
    reference_rows: Sequence[Row],
    rules: Sequence[GateRule] = (),
    *,
    allow_missing: bool = False,
) -> Comparison:
    """The per-case changes of this run's ok rows against the reference run's ok rows of the
    same case (`Row.key`, as the gate matches them; the latest row of each case on each side).

    Regressions are the gate's own failures (`check_gate` with `rules`); without rules nothing
    is called a regression. `allow_missing` is `--gate-allow-missing`: a gate that compared
    nothing is then no problem.
    """
    current = latest_per_case(rows)
    # The reference row of a case is its latest ok row (the one the gate compares), else its latest row.
    reference = {row.key(): row for row in latest_per_case(reference_rows)}
    reference.update((row.key(), row) for row in latest_per_case(ok_rows(reference_rows)))
    metrics = comparison_metrics(current, list(reference.values()), rules)
    units = {metric: unit_of(metric, rules) for metric in metrics}
    gate = check_gate(current, reference_rows, rules) if rules else None
    failing = {(f.case_id, f.metric) for f in gate.failures} if gate else set()
    changes: list[Change] = []
    new_cases: list[str] = []
    not_ok: list[str] = []
    for row in current:
        before = reference.pop(row.key(), None)
        if before is None:
            new_cases.append(row.case_id)
            continue
        if not (row.ok and before.ok):
            not_ok.append(f"{row.case_id} ({before.status} -> {row.status})")
            continue
        for metric in metrics:
            old, new = number(before, metric), number(row, metric)
            if old is None or new is None:
                continue
            delta = change_in(units[metric], old, new)
            if not math.isfinite(delta):
                continue
            changes.append(
                Change(row.case_id, metric, units[metric], old, new, delta, (row.case_id, metric) in failing)
            )
    return Comparison(
        metrics=metrics,
        units=units,
        changes=changes,
        rules=list(rules),
        regressions=[failure.describe() for failure in gate.failures] if gate else [],
        gate_problem=gate.problem(allow_missing=allow_missing) if gate else "",
        gate_compared=gate.compared if gate else 0,
        new_cases=new_cases,
        missing_cases=[row.case_id for row in reference.values()],
        not_ok=not_ok,
    )
