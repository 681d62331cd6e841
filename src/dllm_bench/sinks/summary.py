"""The compact end-of-run tables for the terminal; these functions return lines, the caller prints them.

Headers are CSV column names, so a figure on the terminal is found under the same name in
raw_metrics.csv.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dllm_bench.rows import Row, number
from dllm_bench.sinks.quality import CurveKey, curve_key
from dllm_bench.sinks.text import format_ratio, format_significant

MISSING = "-"
COLUMN_GAP = "  "
INDENT = "  "

RELATIVE_SPEED_HEADER = (
    "LLaDA speed relative to the AR baseline at the same task, prompt length, gen length and batch size "
    "(tokens_per_s ratio; >1 means LLaDA is faster; with a scored task, the accuracy difference in points)"
)
AUP_HEADER = "Accuracy under parallelism (AUP) per LLaDA model, task and shape (see the README's 'Quality')"
NOISE_NOTE = (
    "noise_warning: the machine was busy (load) or the rounds varied (cv); those timings are not reliable, "
    "see the README's 'Stable numbers'"
)

Shape = tuple[object, ...]
Cell = Callable[[Row], str]


def _text(value: object) -> str:
    return MISSING if value is None or value == "" else str(value)


def _float_cell(name: str, spec: str) -> Cell:
    def cell(row: Row) -> str:
        value = number(row, name)
        return MISSING if value is None else format(value, spec)

    return cell


def _latency_cell(row: Row) -> str:
    value = number(row, "latency_mean_s")
    return MISSING if value is None else format_significant(value)


def _columns(rows: Sequence[Row]) -> list[tuple[str, bool, Cell]]:
    """(header, right-aligned, cell) per column; memory is the CUDA peak when any row has it."""
    memory = (
        "peak_memory_allocated_mb"
        if any(r.peak_memory_allocated_mb is not None for r in rows)
        else "peak_rss_increase_mb"
    )
    columns: list[tuple[str, bool, Cell]] = [
        ("case_id", False, lambda r: _text(r.case_id)),
        ("status", False, lambda r: _text(r.status)),
        ("latency_mean_s", True, _latency_cell),
        ("tokens_per_s", True, _float_cell("tokens_per_s", ".1f")),
        ("nfe", True, lambda r: MISSING if r.nfe is None else format(r.nfe, "g")),
    ]
    if any(r.kind == "llada" and r.tokens_per_forward is not None for r in rows):
        columns.append(("tokens_per_forward", True, _float_cell("tokens_per_forward", ".2f")))
    if any(r.accuracy is not None for r in rows):
        columns.append(("accuracy", True, _float_cell("accuracy", ".3f")))
    columns.append((memory, True, _float_cell(memory, ".1f")))
    if any(r.noise_warning for r in rows):
        columns.append(("noise_warning", False, lambda r: r.noise_warning or ""))
    return columns


def summary_lines(rows: Sequence[Row]) -> list[str]:
    """A header line and one aligned line per row, then a note if any case was noisy."""
    columns = _columns(rows)
    table = [[header for header, _, _ in columns], *([cell(row) for _, _, cell in columns] for row in rows)]
    widths = [max(len(cells[i]) for cells in table) for i in range(len(columns))]
    lines = [
        COLUMN_GAP.join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, (_, right, _) in zip(cells, widths, columns, strict=True)
        ).rstrip()
        for cells in table
    ]
    if any(r.noise_warning for r in rows):
        lines.append(NOISE_NOTE)
    return lines


def _shape(row: Row) -> Shape:
    return (row.task, row.task_options, row.prompt_length, row.gen_length, row.batch_size)


def _ratio_line(llada: Row, baseline: Row) -> str:
    pair = f"{INDENT}{llada.case_id} vs {baseline.case_id}"
    llada_speed = number(llada, "tokens_per_s")
    baseline_speed = number(baseline, "tokens_per_s")
    if llada_speed is None or baseline_speed is None or baseline_speed <= 0:
        return f"{pair}: no tokens_per_s to compare"
    line = f"{pair}: {format_ratio(llada_speed / baseline_speed)}"
    if llada.accuracy is not None and baseline.accuracy is not None:
        line += f", accuracy {100 * (llada.accuracy - baseline.accuracy):+.1f} pp"
    return line


def relative_speed_lines(rows: Sequence[Row]) -> list[str]:
    """Each ok LLaDA row's tokens_per_s over each ok AR baseline row's of the same shape; [] without LLaDA rows.

    Shape is (prompt_length, gen_length, batch_size); a shape with no ok baseline row is named once.
    """
    lladas = [row for row in rows if row.kind == "llada" and row.ok]
    if not lladas:
        return []
    baselines: dict[Shape, list[Row]] = {}
    for row in rows:
        if row.kind == "baseline" and row.ok:
            baselines.setdefault(_shape(row), []).append(row)
    lines = [RELATIVE_SPEED_HEADER]
    named: set[Shape] = set()
    for llada in lladas:
        shape = _shape(llada)
        if shape in baselines:
            lines.extend(_ratio_line(llada, baseline) for baseline in baselines[shape])
        elif shape not in named:
            named.add(shape)
            task, _, prompt_length, gen_length, batch_size = shape
            where = f"p{prompt_length} g{gen_length} b{batch_size}" + ("" if task in (None, "random") else f" {task}")
            lines.append(f"{INDENT}no baseline at {where}")
    return lines


def aup_lines(rows: Sequence[Row]) -> list[str]:
    """One line per LLaDA model, task and shape with an AUP (the rows of raw_metrics.csv)."""
    seen: dict[CurveKey, float] = {}
    for row in rows:
        if row.aup is not None:
            seen.setdefault(curve_key(row), row.aup)  # the curve AUP was computed over
    if not seen:
        return []
    lines = [AUP_HEADER]
    for (model, _, task, options, prompt_length, gen_length, batch_size), score in seen.items():
        where = f"{model} {task}" + (f" ({options})" if options else "")
        lines.append(f"{INDENT}{where} p{prompt_length} g{gen_length} b{batch_size}: {score:.1f}")
    return lines
