"""Write a run's report: `report.html` (self-contained) and its figures beside it as PNG files.

`write_report` never raises for bad data: a section whose data or figure cannot be made says
so on the page (and the log has the traceback); only a file that cannot be written raises
`StorageError`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dllm_bench.rows import COLUMN_DOCS, Row
from dllm_bench.sinks.atomic import storage_error, write_bytes_atomic, write_text_atomic
from dllm_bench.sinks.csvfiles import FINAL_CSV, PARTIAL_CSV
from dllm_bench.sinks.gate import GateRule
from dllm_bench.sinks.manifest import MANIFEST
from dllm_bench.sinks.report import data, figures, page
from dllm_bench.sinks.report.page import Image

LOG = logging.getLogger("dllm_bench.report")

REPORT_HTML = "report.html"
FIGURES_DIR = "report_figures"
LINKED_FILES = (FINAL_CSV, PARTIAL_CSV, MANIFEST, "benchmark.log")


def _figure(name: str, alt: str, make: Callable[[], bytes]) -> Image:
    """One figure, or an Image that carries why it could not be drawn."""
    try:
        return Image(name=name, data=make(), alt=alt)
    except Exception as exc:  # a figure must never fail the run that writes the report
        LOG.exception("report: the figure %s could not be drawn", name)
        return Image(name=name, data=b"", alt=alt, error=f"{type(exc).__name__}: {exc}")


def _guarded(title: str, build: Callable[[], str]) -> str:
    try:
        return build()
    except Exception as exc:  # a section must never fail the run that writes the report
        LOG.exception("report: the section %r could not be drawn", title)
        return page.section_error_html(title, exc)


class _Report:
    """The sections of one report and the figures they made."""

    def __init__(
        self,
        rows: Sequence[Row],
        manifest: Mapping[str, Any] | None,
        reference_rows: Sequence[Row] | None,
        reference_name: str,
        gate_rules: Sequence[GateRule],
        gate_allow_missing: bool = False,
    ) -> None:
        self.rows = rows
        self.manifest = manifest
        self.reference_rows = reference_rows
        self.reference_name = reference_name
        self.gate_rules = gate_rules
        self.gate_allow_missing = gate_allow_missing
        self.images: list[Image] = []
        labeller = data.Labeller.for_rows(rows)
        labels = [labeller.label(row) for row in data.ok_rows(rows)]
        self.colors = figures.color_map(labels)

    def _image(self, name: str, alt: str, make: Callable[[], bytes]) -> Image:
        image = _figure(name, alt, make)
        self.images.append(image)
        return image

    def trade_off(self) -> str:
        panels = data.trade_offs(self.rows)
        image = (
            self._image(
                "speed_quality.png",
                "tokens_per_s against quality per task and shape, Pareto front marked, AR as reference",
                lambda: figures.trade_off_figure(panels, self.colors),
            )
            if panels
            else None
        )
        return page.trade_off_html(panels, image)

    @functools.cached_property
    def pairing(self) -> data.Pairing:
        """The speedup pairs, made once for the speedup section and the table."""
        return data.pair_with_ar(self.rows)

    def speedup(self) -> str:
        items = self.pairing.speedups
        image = (
            self._image(
                "speedup.png",
                "speedup of each diffusion setting over AR by batch size and generation length",
                lambda: figures.speedup_figure(items, self.colors),
            )
            if items
            else None
        )
        return page.speedup_html(items, self.pairing.without_ar, image)

    def cost(self) -> str:
        items = data.costs(self.rows)
        spreads = data.tokens_per_forward_by_strategy(self.rows)
        image = (
            self._image(
                "latency_nfe.png",
                "latency against NFE, and tokens per forward by strategy",
                lambda: figures.cost_figure(items, spreads, self.colors),
            )
            if items
            else None
        )
        return page.cost_html(image)

    def comparison(self) -> str:
        if self.reference_rows is None:
            return page.comparison_html(None, "", None)
        comparison = data.compare(
            self.rows, self.reference_rows, self.gate_rules, allow_missing=self.gate_allow_missing
        )
        image = (
            self._image(
                "comparison.png",
                "per-case change against the reference run, the gate's limits dashed",
                lambda: figures.comparison_figure(comparison),
            )
            if comparison.changes
            else None
        )
        return page.comparison_html(comparison, self.reference_name, image)

    def table(self) -> str:
        return page.table_html(self.rows, self.pairing.by_case(), dict(COLUMN_DOCS))

    def environment(self) -> str:
        return page.environment_html(self.manifest, self.rows)


def impossible_values(rows: Sequence[Row]) -> list[data.Impossible]:
    """The rows' impossible values (`data.impossible_values`), logged as one warning."""
    found = data.impossible_values(rows)
    if found:
        shown = "; ".join(item.describe() for item in found[:3])
        LOG.warning(
            "report: %d impossible values (a measurement below 0, or a share above 1): %s%s",
            len(found),
            shown,
            "; ..." if len(found) > 3 else "",
        )
    return found


def report_title(output_dir: Path, manifest: Mapping[str, Any] | None) -> str:
    config_path = str(manifest.get("config_path") or "") if manifest else ""
    name = Path(config_path).stem if config_path else output_dir.name
    return f"dllm-bench report: {name}"


def render_report(
    output_dir: Path,
    rows: Sequence[Row],
    manifest: Mapping[str, Any] | None,
    *,
    reference_rows: Sequence[Row] | None = None,
    reference_name: str | None = None,
    gate_rules: Sequence[GateRule] | None = None,
    partial: bool,
    source: str | None = None,
    gate_allow_missing: bool = False,
    missing_columns: Mapping[str, Sequence[str]] | None = None,
) -> tuple[str, list[Image]]:
    """The page's HTML and its figures, without writing anything."""
    rows = list(rows)
    gate = manifest.get("gate") if manifest else None
    if reference_name is None:
        reference_name = str(gate.get("reference") or "") if isinstance(gate, Mapping) else ""
    report = _Report(
        rows, manifest, reference_rows, reference_name or "(given rows)", list(gate_rules or ()), gate_allow_missing
    )
    title = report_title(output_dir, manifest)
    links = [name for name in LINKED_FILES if (output_dir / name).is_file()]
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    sections = [
        _guarded(
            "header",
            lambda: page.header_html(
                title,
                source=source or str(output_dir),
                manifest=manifest,
                rows=rows,
                partial=partial,
                generated_at=generated,
                links=links,
            ),
        ),
        _guarded("failed cases", lambda: page.failures_html(rows) + page.noise_html(rows)),
        _guarded("impossible values", lambda: page.impossible_html(impossible_values(rows))),
        _guarded("missing columns", lambda: page.missing_columns_html(missing_columns or {})),
        _guarded("1. Speed against quality", report.trade_off),
        _guarded("2. Speedup against AR", report.speedup),
        _guarded("3. Latency against NFE", report.cost),
        _guarded("4. Comparison with the reference run", report.comparison),
        _guarded("5. All rows", report.table),
        _guarded("6. Environment", report.environment),
    ]
    return page.render_page(title, sections), report.images


def _write_figures(directory: Path, images: Sequence[Image]) -> None:
    """Each figure atomically; figures of an earlier report that this one did not draw are removed."""
    try:
        directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise storage_error(directory, exc) from exc
    written = {image.name for image in images if image.data}
    for image in images:
        if image.data:
            write_bytes_atomic(directory / image.name, image.data)
    for stale in directory.glob("*.png"):
        if stale.name not in written:
            stale.unlink(missing_ok=True)


def write_report(
    output_dir: Path,
    rows: Sequence[Row],
    manifest: Mapping[str, Any] | None,
    *,
    reference_rows: Sequence[Row] | None = None,
    reference_name: str | None = None,
    gate_rules: Sequence[GateRule] | None = None,
    partial: bool,
    source: str | None = None,
    gate_allow_missing: bool = False,
    missing_columns: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write `output_dir/report.html` and `output_dir/report_figures/*.png`; returns the page's path.

    `rows`: one per case (a run's final rows); failed ones are listed, the rest plotted.
    `manifest`: the run's manifest as a mapping (`read_manifest`, or `dataclasses.asdict`), or None.
    `reference_rows`: the reference run's rows (the gate's `--gate-reference`), for the comparison;
    `reference_name` names it (default: the manifest's gate reference). `gate_rules`: drawn as
    limits, and their failures named as regressions. `partial`: label the page as a partial run.
    `source`: where the rows came from, for the page's header (default: `output_dir`).
    `gate_allow_missing`: `--gate-allow-missing` (a gate that compared nothing is no problem).
    `missing_columns`: the measurement columns each results file lacks, named on the page.
    Values no measurement can take (`data.impossible_values`) are named on the page and logged.

    The figures are written first, then the page, each through a temporary file and a rename.
    Bad data never raises; a file that cannot be written raises StorageError.
    """
    html, images = render_report(
        output_dir,
        rows,
        manifest,
        reference_rows=reference_rows,
        reference_name=reference_name,
        gate_rules=gate_rules,
        partial=partial,
        source=source,
        gate_allow_missing=gate_allow_missing,
        missing_columns=missing_columns,
    )
    _write_figures(output_dir / FIGURES_DIR, images)
    path = output_dir / REPORT_HTML
    write_text_atomic(path, html)
    LOG.info("report: %s (%d figures)", path, sum(1 for image in images if image.data))
    return path


__all__ = ["FIGURES_DIR", "REPORT_HTML", "render_report", "write_report"]
