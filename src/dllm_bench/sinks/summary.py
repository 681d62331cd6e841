"""The compact end-of-run tables for the terminal; these functions return lines, the caller prints them.

Headers are CSV column names, so a figure on the terminal is found under the same name in
raw_metrics.csv.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from dllm_bench.kinds import KIND_SPECS, is_autoregressive, is_diffusion
from dllm_bench.rows import Row, number
from dllm_bench.sinks.quality import CurveKey, curve_key
from dllm_bench.sinks.text import format_ratio, format_significant

MISSING = "-"
COLUMN_GAP = "  "
INDENT = "  "



def diffusion_labels(rows: Iterable[Row]) -> str:
    """The labels of the diffusion kinds of `rows`, as the headers name them (`LLaDA`,
    `LLaDA / DiffusionGemma`), in the registry's order."""
    kinds = {row.kind for row in rows}
    return " / ".join(spec.label for spec in KIND_SPECS if spec.is_diffusion and spec.kind in kinds)


def relative_speed_header(labels: str) -> str:
    return (
        f"{labels} speed relative to the AR model at the same task, prompt length, gen length and batch size "
        f"(tokens_per_s ratio; >1 means {labels} is faster; with a scored task, the accuracy difference in points)"
    )


def aup_header(labels: str) -> str:
    return f"Accuracy under parallelism (AUP) per {labels} model, task and shape (see the README's 'Quality')"


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
    if any(is_diffusion(r.kind) and r.tokens_per_forward is not None for r in rows):
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


def _ratio_line(diffusion: Row, reference: Row) -> str:
    pair = f"{INDENT}{diffusion.case_id} vs {reference.case_id}"
    speed = number(diffusion, "tokens_per_s")
    reference_speed = number(reference, "tokens_per_s")
    if speed is None or reference_speed is None or reference_speed <= 0:
        return f"{pair}: no tokens_per_s to compare"
    line = f"{pair}: {format_ratio(speed / reference_speed)}"
    if diffusion.accuracy is not None and reference.accuracy is not None:
        line += f", accuracy {100 * (diffusion.accuracy - reference.accuracy):+.1f} pp"
    return line


def relative_speed_lines(rows: Sequence[Row]) -> list[str]:
    """Each ok diffusion row's tokens_per_s over each ok autoregressive row's of the same shape; [] without
    diffusion rows.

    Shape is (prompt_length, gen_length, batch_size); a shape with no ok AR row is named once.
    """
    diffusion = [row for row in rows if is_diffusion(row.kind) and row.ok]
    if not diffusion:
        return []
    references: dict[Shape, list[Row]] = {}
    for row in rows:
        if is_autoregressive(row.kind) and row.ok:
            references.setdefault(_shape(row), []).append(row)
    lines = [relative_speed_header(diffusion_labels(diffusion))]
    named: set[Shape] = set()
    for row in diffusion:
        shape = _shape(row)
        if shape in references:
            lines.extend(_ratio_line(row, reference) for reference in references[shape])
        elif shape not in named:
            named.add(shape)
            task, _, prompt_length, gen_length, batch_size = shape
            where = f"p{prompt_length} g{gen_length} b{batch_size}" + ("" if task in (None, "random") else f" {task}")
            lines.append(f"{INDENT}no AR model at {where}")
    return lines


def aup_lines(rows: Sequence[Row]) -> list[str]:
    """One line per diffusion model, task and shape with an AUP (the rows of raw_metrics.csv)."""
    seen: dict[CurveKey, float] = {}
    for row in rows:
        if row.aup is not None:
            seen.setdefault(curve_key(row), row.aup)  # the curve AUP was computed over
    if not seen:
        return []
    lines = [aup_header(diffusion_labels(row for row in rows if row.aup is not None))]
    for (model, _, task, options, prompt_length, gen_length, batch_size), score in seen.items():
        where = f"{model} {task}" + (f" ({options})" if options else "")
        lines.append(f"{INDENT}{where} p{prompt_length} g{gen_length} b{batch_size}: {score:.1f}")
    return lines
