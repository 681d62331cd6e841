"""The report's figures: matplotlib on its Agg canvas, returned as PNG bytes.

Figures are built with `matplotlib.figure.Figure` and `FigureCanvasAgg` directly, not with
pyplot: no global figure state, no backend switch in the process that runs the benchmarks.
Every function takes the prepared data of `data.py` and returns one PNG.

Panels are placed at fixed sizes in inches (`Grid`), with the room for tick labels and the
legend estimated from their text: matplotlib's automatic layouts measure every text by
drawing it, which doubled the time of a figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import XAxis, YAxis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex, to_rgba_array
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from dllm_bench.kinds import is_diffusion
from dllm_bench.sinks.report.data import (
    POINTS,
    Comparison,
    Cost,
    Point,
    Shape,
    Speedup,
    Spread,
    TradeOff,
    shape_name,
)

DPI = 100
PANEL_WIDTH_IN = 3.0
PANEL_HEIGHT_IN = 2.4
MAX_COLUMNS = 4
BAR_HEIGHT_IN = 0.17
# Room (inches) left of a panel with numeric y tick labels and a y label; below and above it.
NUMERIC_LEFT_IN = 0.75
BOTTOM_IN = 0.55
TOP_IN = 0.4
# Average width of a character as a share of the font size (DejaVu Sans).
CHAR_WIDTH = 0.6
SMALL_PT = 8.3
X_SMALL_PT = 6.9
# At most this many cases per comparison panel: the largest changes; the table has them all.
MAX_COMPARED_CASES = 60
LEGEND_ROWS = 18
MAX_NFE_TICKS = 8

AR_COLOR = "#222222"
FRONT_COLOR = "#444444"
LOSS_COLOR = "#fbe3e0"
REGRESSION_COLOR = "#c0392b"
NEUTRAL_COLOR = "#8a9bb0"
LINE_STYLES = ("-", "--", "-.", ":")
# Colour-blind-friendly qualitative colours (Okabe-Ito, then Tableau's), cycled for many series.
PALETTE = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#56b4e9",
    "#d55e00",
    "#f0e442",
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#b07aa1",
    "#9c755f",
    "#edc948",
    "#76b7b2",
    "#ff9da7",
    "#bab0ac",
)


def is_ar(label: str) -> bool:
    return label == "AR" or label.startswith("AR ")


def color_map(labels: Iterable[str]) -> dict[str, str]:
    """A fixed colour per series label (sorted, so every figure of a page agrees); AR is dark grey."""
    colors: dict[str, str] = {}
    diffusion = 0
    for label in sorted(set(labels)):
        if is_ar(label):
            colors[label] = AR_COLOR
        else:
            colors[label] = PALETTE[diffusion % len(PALETTE)]
            diffusion += 1
    return colors


def png(figure: Figure) -> bytes:
    """The figure as PNG bytes, drawn on the Agg canvas."""
    FigureCanvasAgg(figure)  # attaches itself to the figure: savefig draws with Agg
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def text_width_in(texts: Iterable[str], points: float = SMALL_PT) -> float:
    """The estimated width in inches of the longest of `texts` at a font size."""
    longest = max((len(text) for text in texts), default=0)
    return longest * points * CHAR_WIDTH / 72.0


@dataclass(frozen=True)
class Grid:
    """Panels of a fixed size in a grid, each with `left` inches for its y tick labels, and a
    column of `legend` inches on the right."""

    count: int
    width: float = PANEL_WIDTH_IN
    height: float = PANEL_HEIGHT_IN
    left: float = NUMERIC_LEFT_IN
    legend: float = 0.0
    columns_max: int = MAX_COLUMNS

    @property
    def columns(self) -> int:
        return min(self.columns_max, max(1, self.count))

    @property
    def lines(self) -> int:
        return math.ceil(max(1, self.count) / self.columns)

    def build(self) -> tuple[Figure, list[Axes]]:
        cell_width, cell_height = self.left + self.width + 0.25, TOP_IN + self.height + BOTTOM_IN
        total_width = self.columns * cell_width + self.legend
        total_height = self.lines * cell_height
        figure = Figure(figsize=(total_width, total_height), dpi=DPI)
        axes = []
        for index in range(self.count):
            line, column = divmod(index, self.columns)
            x = (column * cell_width + self.left) / total_width
            y = (total_height - (line + 1) * cell_height + BOTTOM_IN) / total_height
            axes.append(figure.add_axes((x, y, self.width / total_width, self.height / total_height)))
        return figure, axes


def legend_width_in(labels: Iterable[str]) -> float:
    shown = list(labels)
    columns = max(1, math.ceil(len(shown) / LEGEND_ROWS))
    return columns * (text_width_in(shown) + 0.55) + 0.1


def _legend_labels(labels: Iterable[str], *, ar_points: bool = True) -> list[str]:
    return [
        label for label in sorted(set(labels), key=lambda label: (is_ar(label), label)) if ar_points or not is_ar(label)
    ]


def _legend(figure: Figure, colors: Mapping[str, str], shown: Sequence[str], extra: Sequence[Line2D] = ()) -> None:
    """One legend for the figure, in its right column: diffusion series (dots), AR (stars), then `extra`."""
    handles = [
        Line2D([], [], marker="*" if is_ar(label) else "o", ls="", color=colors[label], label=label) for label in shown
    ]
    handles += list(extra)
    if handles:
        figure.legend(
            handles=handles,
            loc="upper right",
            bbox_to_anchor=(1.0, 1.0),
            ncols=math.ceil(len(handles) / LEGEND_ROWS),
            fontsize="small",
            frameon=False,
        )


def _plain(value: float, _position: int | None = None) -> str:
    return f"{value:g}"


def _ratio(value: float, _position: int | None = None) -> str:
    return f"{value:g}x"


def _twos_and_fives(value: float, _position: int | None = None) -> str:
    """Minor log ticks: label 2 and 5 times a power of ten, nothing else."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def _readable_log(axis: XAxis | YAxis) -> None:
    """Plain numbers on a log axis (20, 50, 100), not powers of ten."""
    axis.set_major_formatter(FuncFormatter(_plain))
    axis.set_minor_formatter(FuncFormatter(_twos_and_fives))


def _speed_scale(axis: Axes, values: Sequence[float]) -> None:
    """A log tokens_per_s axis when the values span more than a factor of 20."""
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 20:
        axis.set_xscale("log")
        _readable_log(axis.xaxis)


# --- 1. speed against quality --------------------------------------------------------------


def _front_line(axis: Axes, points: Sequence[Point]) -> None:
    front = sorted((p.speed, p.quality) for p in points if p.on_front and p.quality is not None)
    speeds, qualities = [speed for speed, _ in front], [quality for _, quality in front]
    if len(front) > 1:
        axis.plot(speeds, qualities, "--", color=FRONT_COLOR, lw=1, zorder=1)
    axis.scatter(speeds, qualities, s=110, facecolors="none", edgecolors=FRONT_COLOR, lw=1.2, zorder=3)


def _quality_panel(axis: Axes, panel: TradeOff, colors: Mapping[str, str]) -> None:
    # One scatter and one errorbar artist per label, however many cases (seeds) the panel has.
    by_label: dict[str, list[tuple[float, float, float | None]]] = {}
    for p in panel.diffusion:
        if p.quality is not None:
            by_label.setdefault(p.label, []).append((p.speed, p.quality, p.quality_se))
    for label, scored in by_label.items():
        speeds, qualities = np.array([x for x, _, _ in scored]), np.array([y for _, y, _ in scored])
        axis.scatter(speeds, qualities, c=colors[label], zorder=2)
        bars = [(x, y, se) for x, y, se in scored if se is not None]
        if bars:
            axis.errorbar(
                np.array([x for x, _, _ in bars]),
                np.array([y for _, y, _ in bars]),
                yerr=np.array([se for _, _, se in bars]),
                fmt="none",
                ecolor=colors[label],
                zorder=2,
            )
    _front_line(axis, panel.diffusion)
    # One artist per AR label, however many AR cases (seeds) the panel has.
    for label in dict.fromkeys(b.label for b in panel.references):
        mine = [b for b in panel.references if b.label == label]
        unscored = sorted({b.speed for b in mine if b.quality is None})
        if unscored:
            axis.vlines(unscored, 0, 1, transform=axis.get_xaxis_transform(), colors=colors[label], ls=":", lw=1.2)
        stars = [(b.speed, b.quality) for b in mine if b.quality is not None]
        if stars:
            axis.plot([x for x, _ in stars], [y for _, y in stars], "*", ls="", color=colors[label], ms=12, zorder=4)
    axis.set_ylabel(panel.metric or "", fontsize="small")
    _speed_scale(axis, [p.speed for p in [*panel.diffusion, *panel.references]])


def shape_colors(shapes: Iterable[Shape]) -> dict[Shape, str]:
    """A colour per shape, in shape order, from a sequential map (small to large)."""
    ordered = sorted(set(shapes), key=lambda shape: tuple(v or 0 for v in shape))
    cmap = colormaps["viridis"]
    return {shape: to_hex(cmap(0.9 * i / max(1, len(ordered) - 1))) for i, shape in enumerate(ordered)}


def _speed_only_panel(axis: Axes, task: str, panels: Sequence[TradeOff], by_shape: Mapping[Shape, str]) -> None:
    """A task without a quality measure: tokens_per_s of each strategy (one line each, AR
    last) at every shape (one colour each, moved up or down a little so that dots do not hide
    each other)."""
    diffusion = sorted({p.label for panel in panels for p in panel.diffusion})
    references = sorted({b.label for panel in panels for b in panel.references})
    position = {label: i for i, label in enumerate([*diffusion, *references])}
    step = min(0.12, 0.7 / max(1, len(panels)))
    for index, panel in enumerate(panels):
        points = [*panel.diffusion, *panel.references]
        offset = (index - (len(panels) - 1) / 2) * step
        axis.scatter(
            [p.speed for p in points],
            [position[p.label] + offset for p in points],
            marker="o",
            color=by_shape[panel.shape],
            zorder=2,
        )
    axis.set_yticks(list(position.values()), list(position), fontsize="small")
    axis.set_ylim(len(position) - 0.5, -0.5)
    _speed_scale(axis, [p.speed for panel in panels for p in [*panel.diffusion, *panel.references]])
    axis.set_title(f"{task}: no quality measure", fontsize="medium")


def trade_off_figure(panels: Sequence[TradeOff], colors: Mapping[str, str]) -> bytes:
    """One panel per task and shape: tokens_per_s against the quality measure, the Pareto front
    circled and dashed, AR as a star (a dotted line where it has no value of the measure). A
    task without a quality measure gets one panel: tokens_per_s per strategy, one colour per shape."""
    scored = [panel for panel in panels if panel.metric]
    speed_only: dict[str, list[TradeOff]] = {}
    for panel in panels:
        if not panel.metric:
            speed_only.setdefault(panel.task, []).append(panel)
    by_shape = shape_colors(panel.shape for group in speed_only.values() for panel in group)
    ar_points = any(p.quality is not None for panel in scored for p in panel.references)
    labels = (p.label for panel in scored for p in [*panel.diffusion, *panel.references])
    shown = _legend_labels(labels, ar_points=ar_points)
    extra = []
    if scored:
        extra.append(Line2D([], [], marker="o", ls="--", color=FRONT_COLOR, mfc="none", label="Pareto front"))
    if any(p.quality is None for panel in scored for p in panel.references):
        extra.append(Line2D([], [], ls=":", color=AR_COLOR, label="AR tokens_per_s"))
    extra += [
        Line2D([], [], marker="o", ls="", color=color, label=shape_name(shape)) for shape, color in by_shape.items()
    ]
    categories = [
        p.label for group in speed_only.values() for panel in group for p in [*panel.diffusion, *panel.references]
    ]
    left = max(NUMERIC_LEFT_IN, text_width_in(categories) + 0.25) if categories else NUMERIC_LEFT_IN
    lines = len(set(categories))
    height = max(PANEL_HEIGHT_IN, BAR_HEIGHT_IN * 1.4 * lines)
    legend = legend_width_in([*shown, *(str(e.get_label()) for e in extra)])
    figure, axes = Grid(len(scored) + len(speed_only), height=height, left=left, legend=legend).build()
    for axis, panel in zip(axes, scored, strict=False):
        _quality_panel(axis, panel, colors)
        axis.set_title(panel.title, fontsize="medium")
    for axis, (task, group) in zip(axes[len(scored) :], speed_only.items(), strict=True):
        _speed_only_panel(axis, task, group, by_shape)
    for axis in axes:
        axis.set_xlabel("tokens_per_s", fontsize="small")
        axis.grid(True, alpha=0.3)
    _legend(figure, colors, shown, extra)
    return png(figure)


# --- 2. speedup against AR -----------------------------------------------------------------


def _speedup_panel(axis: Axes, items: Sequence[Speedup], colors: Mapping[str, str]) -> None:
    batches = sorted({item.shape[2] or 0 for item in items})
    position = {batch: i for i, batch in enumerate(batches)}
    by_setting: dict[str, list[Speedup]] = {}
    for item in items:
        by_setting.setdefault(item.setting, []).append(item)
    references = sorted({item.reference_model for item in items})
    for series in by_setting.values():
        series.sort(key=lambda item: item.shape[2] or 0)
        style = LINE_STYLES[references.index(series[0].reference_model) % len(LINE_STYLES)]
        axis.plot(
            [position[s.shape[2] or 0] for s in series],
            [s.ratio for s in series],
            marker="o",
            ls=style,
            color=colors[series[0].label],
            ms=5,
        )
    ratios = [item.ratio for item in items]
    low, high = min([*ratios, 1.0]) / 1.3, max([*ratios, 1.0]) * 1.3
    axis.set_yscale("log")
    axis.yaxis.set_major_formatter(FuncFormatter(_ratio))
    axis.yaxis.set_minor_formatter(FuncFormatter(_twos_and_fives))
    axis.set_ylim(low, high)
    axis.set_xlim(-0.3, len(batches) - 0.7)
    axis.axhspan(low, 1.0, color=LOSS_COLOR, zorder=0)
    axis.axhline(1.0, color=AR_COLOR, lw=1)
    axis.text(0.02, 0.03, "below 1x: AR is faster", transform=axis.transAxes, fontsize="small", color=REGRESSION_COLOR)
    axis.set_xticks(list(position.values()), [str(b) for b in batches])
    axis.set_xlabel("batch_size", fontsize="small")
    axis.set_ylabel("tokens_per_s / AR's", fontsize="small")


def speedup_figure(items: Sequence[Speedup], colors: Mapping[str, str]) -> bytes:
    """One panel per task, prompt length and generation length: each diffusion setting's
    speedup over AR against batch size, with the 1x line and the region where it loses shaded.
    With several AR models, each has its own line style."""
    groups: dict[tuple[str, int | None, int | None], list[Speedup]] = {}
    for item in items:
        groups.setdefault((item.task, item.shape[0], item.shape[1]), []).append(item)
    keys = sorted(groups, key=lambda k: (k[0], k[1] or 0, k[2] or 0))
    references = sorted({item.reference_model for item in items})
    extra = (
        [
            Line2D([], [], ls=LINE_STYLES[i % len(LINE_STYLES)], color=AR_COLOR, label=f"vs {name}")
            for i, name in enumerate(references)
        ]
        if len(references) > 1
        else []
    )
    shown = _legend_labels(item.label for item in items)
    legend = legend_width_in([*shown, *(str(e.get_label()) for e in extra)])
    figure, axes = Grid(len(keys), legend=legend).build()
    for axis, key in zip(axes, keys, strict=True):
        _speedup_panel(axis, groups[key], colors)
        task, prompt_length, gen_length = key
        axis.set_title(f"speedup vs AR: {task} p{prompt_length} g{gen_length}", fontsize="medium")
        axis.grid(True, alpha=0.3, which="both")
    _legend(figure, colors, shown, extra)
    return png(figure)


# --- 3. latency against NFE, tokens per forward --------------------------------------------


def _latency_panel(axis: Axes, items: Sequence[Cost], colors: Mapping[str, str]) -> None:
    for diffusion, marker, scale in ((True, "o", 1.0), (False, "*", 2.2)):
        chosen = [item for item in items if is_diffusion(item.kind) == diffusion]
        if chosen:
            axis.scatter(
                np.array([item.nfe for item in chosen]),
                np.array([item.latency_s for item in chosen]),
                s=np.array([scale * (18 + 10 * math.log2(max(1, item.batch_size or 1))) for item in chosen]),
                marker=marker,
                c=to_rgba_array([colors[item.label] for item in chosen]),
                alpha=0.85,
            )
    axis.set_xscale("log")
    axis.set_yscale("log")
    nfes = sorted({item.nfe for item in items})
    if len(nfes) <= MAX_NFE_TICKS:
        axis.set_xticks(nfes, [_plain(nfe) for nfe in nfes])
        axis.xaxis.set_minor_formatter(NullFormatter())
    else:
        _readable_log(axis.xaxis)
    _readable_log(axis.yaxis)
    axis.set_xlabel("nfe (forward passes per generate call)", fontsize="small")
    axis.set_ylabel("latency_mean_s", fontsize="small")
    axis.set_title("latency against NFE (size: batch_size)", fontsize="medium")
    axis.grid(True, alpha=0.3, which="both")


def _tokens_per_forward_panel(axis: Axes, spreads: Sequence[Spread], colors: Mapping[str, str]) -> None:
    positions = list(range(len(spreads)))
    means = [s.mean for s in spreads]
    axis.barh(positions, means, color=[colors[s.label] for s in spreads], alpha=0.85)
    axis.errorbar(
        means,
        positions,
        xerr=[[s.mean - s.low for s in spreads], [s.high - s.mean for s in spreads]],
        fmt="none",
        ecolor=AR_COLOR,
        capsize=3,
    )
    axis.set_yticks(positions, [s.label for s in spreads], fontsize="small")
    axis.set_ylim(len(spreads) - 0.5, -0.5)
    axis.set_xlabel("tokens_per_forward (gen_length / nfe)", fontsize="small")
    axis.set_title("tokens per forward (bar: mean; line: range)", fontsize="medium")
    axis.grid(True, axis="x", alpha=0.3)


def cost_figure(items: Sequence[Cost], spreads: Sequence[Spread], colors: Mapping[str, str]) -> bytes:
    """Left: latency_mean_s against nfe (log-log; marker size grows with batch size). Right:
    tokens_per_forward per strategy, the bar at the mean and the line from minimum to maximum."""
    shown = _legend_labels(item.label for item in items)
    height = max(PANEL_HEIGHT_IN + 0.4, BAR_HEIGHT_IN * len(spreads) + 0.6)
    labels_in = text_width_in(s.label for s in spreads) + 0.25
    width = PANEL_WIDTH_IN + 0.6
    left_cell = NUMERIC_LEFT_IN + width + 0.25
    right_cell = labels_in + width + 0.25
    legend = legend_width_in(shown)
    total_width, total_height = left_cell + right_cell + legend, TOP_IN + height + BOTTOM_IN
    figure = Figure(figsize=(total_width, total_height), dpi=DPI)
    bottom, panel_height = BOTTOM_IN / total_height, height / total_height
    latency = figure.add_axes((NUMERIC_LEFT_IN / total_width, bottom, width / total_width, panel_height))
    per_forward = figure.add_axes(((left_cell + labels_in) / total_width, bottom, width / total_width, panel_height))
    _latency_panel(latency, items, colors)
    if spreads:
        _tokens_per_forward_panel(per_forward, spreads, colors)
    else:
        per_forward.set_visible(False)
    _legend(figure, colors, shown)
    return png(figure)


# --- 4. comparison with a reference run ----------------------------------------------------


def _unit_text(unit: str) -> str:
    return "percentage points" if unit == POINTS else "%"


def _comparison_panel(axis: Axes, comparison: Comparison, metric: str) -> None:
    changes = sorted(comparison.of(metric), key=lambda c: abs(c.change), reverse=True)[:MAX_COMPARED_CASES]
    changes.sort(key=lambda c: c.change)
    positions = list(range(len(changes)))
    axis.barh(
        positions,
        [c.change for c in changes],
        color=[REGRESSION_COLOR if c.regression else NEUTRAL_COLOR for c in changes],
    )
    axis.set_yticks(positions, [c.case_id for c in changes], fontsize="x-small")
    axis.set_ylim(-0.6, len(changes) - 0.4)
    axis.axvline(0.0, color=AR_COLOR, lw=0.8)
    unit = comparison.units[metric]
    for limit in comparison.limit(metric):
        axis.axvline(limit, color=REGRESSION_COLOR, ls="--", lw=1.2)
        axis.text(
            limit,
            1.0,
            f" gate {limit:+g}{unit}",
            transform=axis.get_xaxis_transform(),
            color=REGRESSION_COLOR,
            fontsize="small",
            va="bottom",
        )
    axis.set_xlabel(f"change of {metric} ({_unit_text(unit)})", fontsize="small")
    shown = f", the {len(changes)} largest" if len(comparison.of(metric)) > len(changes) else ""
    axis.set_title(f"{metric} against the reference{shown}", fontsize="medium", pad=16)
    axis.grid(True, axis="x", alpha=0.3)


def comparison_figure(comparison: Comparison) -> bytes:
    """One panel per compared metric: each case's change against the reference run, the gate's
    limits dashed, bars of the gate's regressions red."""
    metrics = [m for m in comparison.metrics if comparison.of(m)]
    cases = max(min(len(comparison.of(m)), MAX_COMPARED_CASES) for m in metrics)
    left = text_width_in((c.case_id for c in comparison.changes), X_SMALL_PT) + 0.2
    height = max(PANEL_HEIGHT_IN, BAR_HEIGHT_IN * cases)
    figure, axes = Grid(len(metrics), width=PANEL_WIDTH_IN, height=height, left=left, columns_max=len(metrics)).build()
    for axis, metric in zip(axes, metrics, strict=True):
        _comparison_panel(axis, comparison, metric)
    return png(figure)
