"""The compact end-of-run tables for the terminal; these functions return lines, the caller prints them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dllm_bench.gate import format_significant, metric_value

MISSING = "-"
COLUMN_GAP = "  "
INDENT = "  "

# (header, right-aligned); numbers are right-aligned so their digits line up.
SUMMARY_COLUMNS: tuple[tuple[str, bool], ...] = (
    ("case", False),
    ("status", False),
    ("latency_mean_s", True),
    ("tokens/s", True),
    ("nfe", True),
    ("peak_mem_mb", True),
)

RELATIVE_SPEED_HEADER = (
    "LLaDA speed relative to the AR baseline at the same prompt length, gen length and batch size "
    "(tokens/s ratio; >1 means LLaDA is faster)"
)

Shape = tuple[str, str, str]


def _text(row: Mapping[str, object], column: str) -> str:
    value = row.get(column)
    return MISSING if value is None or value == "" else str(value)


def _number_cell(value: float | None, spec: str) -> str:
    return MISSING if value is None else format(value, spec)


def _count_cell(value: float | None) -> str:
    if value is None:
        return MISSING
    return str(int(value)) if value.is_integer() else format(value, "g")


def _latency_cell(row: Mapping[str, object]) -> str:
    value = metric_value(row, "latency_mean_s")
    return MISSING if value is None else format_significant(value)


def peak_memory_mb(row: Mapping[str, object]) -> float | None:
    """Peak CUDA memory allocated when the row has it, else the CPU peak RSS increase, else None."""
    cuda = metric_value(row, "peak_memory_allocated_mb")
    return cuda if cuda is not None else metric_value(row, "peak_rss_increase_mb")


def _summary_cells(row: Mapping[str, object]) -> tuple[str, ...]:
    return (
        _text(row, "case_id"),
        _text(row, "status"),
        _latency_cell(row),
        _number_cell(metric_value(row, "tokens_per_s"), ".1f"),
        _count_cell(metric_value(row, "nfe")),
        _number_cell(peak_memory_mb(row), ".1f"),
    )


def _column_widths(table: Sequence[Sequence[str]]) -> list[int]:
    return [max(len(cells[i]) for cells in table) for i in range(len(SUMMARY_COLUMNS))]


def _render(cells: Sequence[str], widths: Sequence[int]) -> str:
    parts = [
        cell.rjust(width) if right else cell.ljust(width)
        for cell, width, (_, right) in zip(cells, widths, SUMMARY_COLUMNS, strict=True)
    ]
    return COLUMN_GAP.join(parts)


def summary_lines(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """A header line and one aligned line per row: case, status, latency, tokens/s, nfe, peak memory."""
    table = [tuple(header for header, _ in SUMMARY_COLUMNS), *(_summary_cells(row) for row in rows)]
    widths = _column_widths(table)
    return [_render(cells, widths) for cells in table]


def _shape(row: Mapping[str, object]) -> Shape:
    return (str(row.get("prompt_length", "")), str(row.get("gen_length", "")), str(row.get("batch_size", "")))


def _ok_rows_of_kind(rows: Sequence[Mapping[str, object]], kind: str) -> list[Mapping[str, object]]:
    return [row for row in rows if row.get("kind") == kind and row.get("status") == "ok"]


def _rows_by_shape(rows: Sequence[Mapping[str, object]]) -> dict[Shape, list[Mapping[str, object]]]:
    grouped: dict[Shape, list[Mapping[str, object]]] = {}
    for row in rows:
        grouped.setdefault(_shape(row), []).append(row)
    return grouped


def format_ratio(ratio: float) -> str:
    """Two decimals (0.42x, 3.00x); two significant digits below 0.01 so a tiny ratio is not 0.00."""
    return f"{ratio:.2f}x" if ratio >= 0.01 else f"{format_significant(ratio, 2)}x"


def _ratio_line(llada: Mapping[str, object], baseline: Mapping[str, object]) -> str:
    pair = f"{INDENT}{_text(llada, 'case_id')} vs {_text(baseline, 'case_id')}"
    llada_speed = metric_value(llada, "tokens_per_s")
    baseline_speed = metric_value(baseline, "tokens_per_s")
    if llada_speed is None or baseline_speed is None or baseline_speed <= 0:
        return f"{pair}: no tokens/s to compare"
    return f"{pair}: {format_ratio(llada_speed / baseline_speed)} tokens/s"


def _no_baseline_line(shape: Shape) -> str:
    prompt_length, gen_length, batch_size = shape
    return f"{INDENT}no baseline at p{prompt_length} g{gen_length} b{batch_size}"


def relative_speed_lines(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """Each ok LLaDA row's tokens/s over each ok AR baseline row's of the same shape; [] without LLaDA rows.

    Shape is (prompt_length, gen_length, batch_size); a shape with no ok baseline row is named once.
    """
    lladas = _ok_rows_of_kind(rows, "llada")
    if not lladas:
        return []
    baselines = _rows_by_shape(_ok_rows_of_kind(rows, "baseline"))
    lines = [RELATIVE_SPEED_HEADER]
    named: set[Shape] = set()
    for llada in lladas:
        shape = _shape(llada)
        if shape in baselines:
            lines.extend(_ratio_line(llada, baseline) for baseline in baselines[shape])
        elif shape not in named:
            named.add(shape)
            lines.append(_no_baseline_line(shape))
    return lines
