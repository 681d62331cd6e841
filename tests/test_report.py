"""The report: its data preparation (strategy labels, Pareto front, speedup pairing, comparison
deltas), the page `write_report` writes (also for failed, partial and damaged runs) and the
`dllm-bench-report` command. The page in a real browser: tests/test_report_browser.py."""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import random
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dllm_bench.rows import Row
from dllm_bench.sampling.schedule import LladaSettings
from dllm_bench.sinks.csvfiles import FINAL_CSV, PARTIAL_CSV, write_rows_atomic
from dllm_bench.sinks.gate import parse_gate
from dllm_bench.sinks.manifest import Counts, GateRecord, Manifest, read_manifest, write_manifest
from dllm_bench.sinks.report import FIGURES_DIR, REPORT_HTML, data, figures, write_report
from dllm_bench.sinks.report.cli import load_run
from dllm_bench.sinks.report.cli import main as report_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- rows ----------------------------------------------------------------------------------


def llada(
    batch: int = 1,
    *,
    tokens_per_s: float | None = 100.0,
    task: str | None = None,
    steps: int | None = 16,
    block: int = 32,
    gen: int = 64,
    prompt: int = 32,
    **values: Any,
) -> Row:
    """An ok LLaDA row; its case id is built as the suite builds it."""
    row = Row(case_id="").with_values(
        {
            "model": "tiny-llada",
            "kind": "llada",
            "model_id": "aaaaaaaaaaaa",
            "source": "random-init",
            "prompt_length": prompt,
            "gen_length": gen,
            "batch_size": batch,
            "seed": 0,
            "task": task,
            "steps": steps,
            "block_length": block,
            "remasking": "low_confidence",
            "temperature": 0.0,
            "cfg_scale": 0.0,
            "warmup_rounds": 1,
            "measured_rounds": 3,
            "status": "ok",
            "tokens_per_s": tokens_per_s,
            "latency_mean_s": batch * gen / tokens_per_s if tokens_per_s else None,
            "nfe": float(steps or 8),
            "tokens_per_forward": gen / (steps or 8),
            **values,
        }
    )
    task_part = f"-{task}" if task and task != "random" else ""
    case_id = f"tiny-llada-p{prompt}-g{gen}-b{batch}{task_part}-{data.strategy_label(row)}"
    return dataclasses.replace(row, case_id=case_id)


def ar(
    batch: int = 1,
    *,
    tokens_per_s: float | None = 50.0,
    task: str | None = None,
    gen: int = 64,
    prompt: int = 32,
    model: str = "tiny-llama",
    **values: Any,
) -> Row:
    """An ok AR (baseline kind) row."""
    task_part = f"-{task}" if task and task != "random" else ""
    return Row(case_id=f"{model}-p{prompt}-g{gen}-b{batch}{task_part}").with_values(
        {
            "model": model,
            "kind": "baseline",
            "model_id": "bbbbbbbbbbbb",
            "source": "random-init",
            "prompt_length": prompt,
            "gen_length": gen,
            "batch_size": batch,
            "seed": 0,
            "task": task,
            "warmup_rounds": 1,
            "measured_rounds": 3,
            "status": "ok",
            "tokens_per_s": tokens_per_s,
            "latency_mean_s": batch * gen / tokens_per_s if tokens_per_s else None,
            "nfe": float(gen),
            "tokens_per_forward": 1.0,
            **values,
        }
    )


def quality_grid() -> list[Row]:
    """Two tasks x two batch sizes: fixed steps, dual cache, threshold and factor decoding with
    accuracy, the AR baseline scored on the same prompts, and one failed and one oom case."""
    rows: list[Row] = []
    for task, base in (("copy", 0.98), ("permute", 0.9)):
        for batch in (1, 4):
            rows += [
                llada(
                    batch,
                    task=task,
                    steps=64,
                    tokens_per_s=40.0 * batch,
                    accuracy=base,
                    accuracy_se=0.01,
                    agreement_exact=1.0,
                    n_scored=64,
                ),
                llada(
                    batch,
                    task=task,
                    steps=16,
                    tokens_per_s=150.0 * batch,
                    accuracy=base - 0.3,
                    accuracy_se=0.05,
                    agreement_exact=0.6,
                    n_scored=64,
                ),
                llada(
                    batch,
                    task=task,
                    steps=64,
                    cache="dual",
                    tokens_per_s=120.0 * batch,
                    accuracy=base - 0.01,
                    accuracy_se=0.01,
                    agreement_exact=0.97,
                    n_scored=64,
                ),
                llada(
                    batch,
                    task=task,
                    steps=None,
                    cache="dual",
                    threshold=0.9,
                    tokens_per_s=300.0 * batch,
                    accuracy=base - 0.05,
                    accuracy_se=0.02,
                    agreement_exact=0.9,
                    n_scored=64,
                    nfe=12.5,
                    nfe_min=11,
                    nfe_max=14,
                    tokens_per_forward=64 / 12.5,
                ),
                llada(
                    batch,
                    task=task,
                    steps=None,
                    factor=1.0,
                    tokens_per_s=200.0 * batch,
                    accuracy=base - 0.5,
                    accuracy_se=0.06,
                    agreement_exact=0.4,
                    n_scored=64,
                    nfe=20.0,
                ),
                ar(batch, task=task, tokens_per_s=100.0 * batch, accuracy=base + 0.01, accuracy_se=0.01, n_scored=64),
            ]
    rows.append(llada(8, task="copy", steps=64, status="oom", error="CUDA out of memory", tokens_per_s=None))
    rows.append(ar(8, task="copy", status="error", error="RuntimeError: boom", tokens_per_s=None))
    return rows


def default_grid_like() -> list[Row]:
    """Like today's default grid: random task, no quality columns, steps x blocks x batch sizes."""
    rows = [
        llada(batch, steps=steps, block=block, tokens_per_s=4000.0 / steps * batch**0.5)
        for batch in (1, 2, 4, 8)
        for steps in (16, 32, 64)
        for block in (32, 64)
    ]
    return rows + [ar(batch, tokens_per_s=60.0 * batch) for batch in (1, 2, 4, 8)]


def run_manifest(out: Path, *, status: str = "complete", gate: GateRecord | None = None, **counts: int) -> None:
    write_manifest(
        out,
        Manifest(
            status=status,
            config_path="/configs/my-grid.yaml",
            config={"grid": {"batch_size": [1, 4]}},
            command_line=["pytest", "benchmarks", "--output-dir", str(out)],
            output_dir=str(out),
            started_at="2026-01-01T00:00:00+00:00",
            counts=Counts(**counts),
            gate=gate,
            environment={
                "gpu_name": "NVIDIA H100",
                "driver_version": "550.54",
                "cuda_version": "12.4",
                "torch_version": "2.13.0",
                "git_commit": "0123abcd",
            },
        ),
    )


def run_dir(path: Path, rows: list[Row], **manifest: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_rows_atomic(path / FINAL_CSV, rows)
    run_manifest(path, **manifest)
    return path


# --- reading the page ----------------------------------------------------------------------


class PageParser(HTMLParser):
    """The images, the ids of elements and the rows of each table (by its class) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.ids: set[str] = set()
        self.table_rows: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(str(attributes["id"]))
        if tag == "img":
            self.images.append(attributes)
        elif tag == "table":
            self._table = (attributes.get("class") or "").replace("sortable", "").strip()
            self.table_rows.setdefault(self._table, [])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.table_rows[self._table].append(self._row)
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None

    def handle_data(self, text: str) -> None:
        if self._cell is not None:
            self._cell.append(text)


def parse_page(path: Path) -> tuple[str, PageParser]:
    text = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(text)
    return text, parser


def table_case_ids(parser: PageParser) -> list[str]:
    return [cells[0] for cells in parser.table_rows["rows"]]


# --- strategy labels -----------------------------------------------------------------------


def llada_settings(**values: object) -> LladaSettings:
    """LladaSettings with the given values that it has as fields (the cache, threshold and factor
    axes arrive with the accelerated-decoding work; then these tests check them too)."""
    names = {f.name for f in dataclasses.fields(LladaSettings)}
    return LladaSettings(**{name: value for name, value in values.items() if name in names})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "settings",
    [
        llada_settings(steps=16, block_length=32),
        llada_settings(steps=64, block_length=8, remasking="random"),
        llada_settings(steps=32, block_length=32, temperature=0.5, cfg_scale=1.5),
        llada_settings(steps=32, block_length=32, temperature=2.0),
        llada_settings(steps=32, block_length=32, remasking="random", temperature=0.5, cache="dual", threshold=0.9),
        llada_settings(steps=32, block_length=32, cfg_scale=1.5, cache="prefix", factor=1.0),
    ],
)
def test_strategy_label_is_the_case_id_part_of_the_settings(settings: LladaSettings) -> None:
    row = Row(case_id="x").with_values({"kind": "llada", **settings.columns()})
    assert data.strategy_label(row) == "-".join(settings.id_parts())


def test_strategy_label_names_cache_threshold_and_factor_only_when_not_default() -> None:
    base = {
        "kind": "llada",
        "steps": 16,
        "block_length": 32,
        "remasking": "low_confidence",
        "temperature": 0.0,
        "cfg_scale": 0.0,
    }
    assert data.strategy_label(Row(case_id="x").with_values({**base, "cache": "none"})) == "s16-k32"
    assert data.strategy_label(Row(case_id="x").with_values({**base, "cache": "dual", "threshold": 0.9})) == (
        "s16-k32-cdual-th0.9"
    )
    assert data.strategy_label(Row(case_id="x").with_values({**base, "steps": None, "factor": 1.0})) == "k32-f1"
    assert data.strategy_label(Row(case_id="x").with_values({"kind": "baseline"})) == "AR"


def test_labels_name_the_model_when_a_run_has_several() -> None:
    rows = [llada(1), llada(1).with_values({"model": "other-llada"}), ar(1)]
    labeller = data.Labeller.for_rows(rows)
    assert [labeller.label(row) for row in rows] == ["tiny-llada s16-k32", "other-llada s16-k32", "AR"]
    two_ar = data.Labeller.for_rows([*rows, ar(1, model="tiny-qwen")])
    assert two_ar.label(ar(1, model="tiny-qwen")) == "AR tiny-qwen"


# --- Pareto front --------------------------------------------------------------------------


def test_pareto_front_keeps_exactly_the_undominated_points() -> None:
    points = [(1.0, 0.9), (2.0, 0.8), (3.0, 0.5), (2.0, 0.7), (1.5, 0.85), (3.0, 0.4), (0.5, 0.95), (0.4, 0.6)]
    front = data.pareto_front(points)
    assert [points[i] for i in front] == [(0.5, 0.95), (1.0, 0.9), (1.5, 0.85), (2.0, 0.8), (3.0, 0.5)]


def test_pareto_front_keeps_equal_points_and_handles_trivial_input() -> None:
    assert data.pareto_front([]) == []
    assert data.pareto_front([(1.0, 1.0)]) == [0]
    assert data.pareto_front([(1.0, 1.0), (1.0, 1.0), (0.5, 0.5)]) == [0, 1]
    # Same speed, lower quality: dominated; same quality, lower speed: dominated.
    assert data.pareto_front([(2.0, 0.5), (2.0, 0.4), (1.0, 0.5)]) == [0]


def test_trade_offs_use_accuracy_per_task_and_shape_and_mark_the_front() -> None:
    panels = data.trade_offs(quality_grid())
    assert [(p.task, p.shape) for p in panels] == [
        ("copy", (32, 64, 1)),
        ("copy", (32, 64, 4)),
        ("permute", (32, 64, 1)),
        ("permute", (32, 64, 4)),
    ]
    copy_b1 = panels[0]
    assert copy_b1.metric == "accuracy"
    front = {p.label for p in copy_b1.diffusion if p.on_front}
    # s16-k32 (150 tok/s, 0.68) is beaten by k32-cdual-th0.9 (300, 0.93); k32-f1 (200, 0.48) too.
    assert front == {"s64-k32", "s64-k32-cdual", "k32-cdual-th0.9"}
    assert [(b.label, b.speed) for b in copy_b1.references] == [("AR", 100.0)]
    assert copy_b1.references[0].quality == pytest.approx(0.99)
    assert all(p.quality_se is not None for p in copy_b1.diffusion)


def test_trade_offs_leave_failed_cases_out_and_fall_back_to_agreement_then_to_no_measure() -> None:
    rows = quality_grid()
    assert all(p.case_id != rows[-2].case_id for panel in data.trade_offs(rows) for p in panel.diffusion)
    agreement = [dataclasses.replace(row, accuracy=None, accuracy_se=None) for row in rows]
    panels = data.trade_offs(agreement)
    assert {p.metric for p in panels} == {"agreement_exact"}
    assert all(b.quality is None for p in panels for b in p.references)  # AR has no agreement value
    assert {p.metric for p in data.trade_offs(default_grid_like())} == {None}


# --- speedup against AR --------------------------------------------------------------------


def test_speedup_pairs_each_llada_case_with_the_ar_case_of_the_same_task_and_shape() -> None:
    rows = [
        llada(1, tokens_per_s=100.0),
        llada(2, tokens_per_s=90.0),
        llada(1, tokens_per_s=300.0, gen=128),
        llada(1, tokens_per_s=100.0, task="copy"),
        ar(1, tokens_per_s=50.0),
        ar(2, tokens_per_s=180.0),
        ar(1, tokens_per_s=10.0, gen=128, prompt=64),  # another prompt length: not a pair
        ar(4, tokens_per_s=400.0),  # no LLaDA case at b4
        ar(1, tokens_per_s=25.0, task="copy"),
    ]
    pairs = {(s.diffusion_case, s.reference_case): s.ratio for s in data.speedups(rows)}
    assert pairs == {
        ("tiny-llada-p32-g64-b1-s16-k32", "tiny-llama-p32-g64-b1"): 2.0,
        ("tiny-llada-p32-g64-b2-s16-k32", "tiny-llama-p32-g64-b2"): 0.5,
        ("tiny-llada-p32-g64-b1-copy-s16-k32", "tiny-llama-p32-g64-b1-copy"): 4.0,
    }
    assert [s.diffusion_loses for s in data.speedups(rows)] == [False, True, False]
    assert data.shapes_without_ar(rows) == [("random", (32, 128, 1))]


def test_speedup_ignores_failed_cases_and_names_the_ar_model_when_there_are_several() -> None:
    rows = [llada(1, tokens_per_s=100.0), ar(1, tokens_per_s=50.0), ar(1, tokens_per_s=25.0, model="tiny-qwen")]
    assert sorted((s.setting, s.ratio) for s in data.speedups(rows)) == [
        ("s16-k32 vs tiny-llama", 2.0),
        ("s16-k32 vs tiny-qwen", 4.0),
    ]
    failed = [rows[0], dataclasses.replace(rows[1], status="error"), ar(1, model="x", tokens_per_s=0.0)]
    assert data.speedups(failed) == []
    assert data.shapes_without_ar(failed) == [("random", (32, 64, 1))]


def test_rows_without_a_task_pair_with_random_task_rows() -> None:
    assert [s.ratio for s in data.speedups([llada(1, tokens_per_s=100.0), ar(1, task="random")])] == [2.0]


# --- latency, nfe, tokens per forward ------------------------------------------------------


def test_tokens_per_forward_comes_from_the_column_else_from_its_definition() -> None:
    assert data.tokens_per_forward(llada(1, steps=16)) == 4.0
    assert data.tokens_per_forward(llada(1, steps=16, tokens_per_forward=None)) == 4.0
    assert data.tokens_per_forward(llada(1, tokens_per_forward=None, nfe=None)) is None
    spreads = data.tokens_per_forward_by_strategy(quality_grid())
    assert [s.label for s in spreads][-1] == "AR"
    threshold = next(s for s in spreads if s.label == "k32-cdual-th0.9")
    assert threshold.mean == pytest.approx(64 / 12.5)
    assert len(threshold.values) == 4  # two tasks x two batch sizes


def test_costs_keep_ok_rows_with_latency_and_nfe() -> None:
    rows = quality_grid()
    costs = data.costs(rows)
    assert len(costs) == sum(1 for row in rows if row.ok)
    assert all(c.latency_s > 0 and c.nfe > 0 for c in costs)


# --- comparison with a reference run -------------------------------------------------------


def test_comparison_deltas_in_percent_for_speed_and_points_for_accuracy() -> None:
    reference = [
        llada(1, tokens_per_s=100.0, task="copy", accuracy=0.90),
        llada(4, tokens_per_s=200.0, task="copy", accuracy=0.80),
        ar(1, tokens_per_s=50.0, task="copy", accuracy=0.95),
    ]
    current = [
        llada(1, tokens_per_s=80.0, task="copy", accuracy=0.85),  # -20%, -5 pp
        llada(4, tokens_per_s=210.0, task="copy", accuracy=0.80),  # +5%, 0 pp
        ar(1, tokens_per_s=50.0, task="copy", accuracy=0.95),
    ]
    comparison = data.compare(current, reference)
    assert comparison.metrics == ["tokens_per_s", "accuracy"]
    assert comparison.units == {"tokens_per_s": "%", "accuracy": "pp"}
    changes = {(c.case_id, c.metric): c.change for c in comparison.changes}
    assert changes[("tiny-llada-p32-g64-b1-copy-s16-k32", "tokens_per_s")] == pytest.approx(-20.0)
    assert changes[("tiny-llada-p32-g64-b1-copy-s16-k32", "accuracy")] == pytest.approx(-5.0)
    assert changes[("tiny-llada-p32-g64-b4-copy-s16-k32", "tokens_per_s")] == pytest.approx(5.0)
    assert changes[("tiny-llama-p32-g64-b1-copy", "accuracy")] == pytest.approx(0.0)
    assert comparison.matched == 3
    assert comparison.regressions == [] and not any(c.regression for c in comparison.changes)


def test_comparison_names_the_gates_regressions_and_draws_its_limits() -> None:
    reference = [llada(1, tokens_per_s=100.0), llada(2, tokens_per_s=100.0)]
    current = [llada(1, tokens_per_s=85.0), llada(2, tokens_per_s=95.0)]
    rules = [parse_gate("tokens_per_s:-10%"), parse_gate("latency_mean_s:+15%")]
    comparison = data.compare(current, reference, rules)
    assert comparison.metrics == ["tokens_per_s", "latency_mean_s"]
    assert comparison.limit("tokens_per_s") == [-10.0]
    assert comparison.limit("latency_mean_s") == [15.0]
    regressed = {(c.case_id, c.metric) for c in comparison.changes if c.regression}
    assert regressed == {
        ("tiny-llada-p32-g64-b1-s16-k32", "tokens_per_s"),
        ("tiny-llada-p32-g64-b1-s16-k32", "latency_mean_s"),  # 0.64 s -> 0.753 s: +17.6%
    }
    assert len(comparison.regressions) == 2
    assert comparison.regressions[0].startswith("tiny-llada-p32-g64-b1-s16-k32: tokens_per_s 100.0 -> 85.00 (-15.0%")


def test_comparison_matches_cases_by_their_full_parameters_not_their_ids() -> None:
    reference = [llada(1, tokens_per_s=100.0, measured_rounds=5), llada(2), llada(4, status="error")]
    current = [llada(1, tokens_per_s=50.0), llada(4), llada(8)]
    comparison = data.compare(current, reference)
    assert comparison.changes == []
    assert comparison.new_cases == ["tiny-llada-p32-g64-b1-s16-k32", "tiny-llada-p32-g64-b8-s16-k32"]
    assert comparison.missing_cases == ["tiny-llada-p32-g64-b1-s16-k32", "tiny-llada-p32-g64-b2-s16-k32"]
    assert comparison.not_ok == ["tiny-llada-p32-g64-b4-s16-k32 (error -> ok)"]


def test_comparison_uses_the_latest_ok_reference_row_as_the_gate_does() -> None:
    older = llada(1, tokens_per_s=100.0, timestamp="2026-01-01T00:00:00")
    newer_failed = llada(1, tokens_per_s=None, status="error", timestamp="2026-01-02T00:00:00")
    comparison = data.compare([llada(1, tokens_per_s=50.0)], [older, newer_failed])
    assert [c.change for c in comparison.changes] == [pytest.approx(-50.0)]


# --- figures -------------------------------------------------------------------------------


def test_colors_are_fixed_per_label_and_ar_is_dark() -> None:
    colors = figures.color_map(["s64-k32", "AR", "s16-k32", "s16-k32"])
    assert colors == {"AR": figures.AR_COLOR, "s16-k32": figures.PALETTE[0], "s64-k32": figures.PALETTE[1]}


@pytest.mark.slow
def test_each_figure_is_a_png_of_a_sensible_size() -> None:
    rows = quality_grid()
    colors = figures.color_map(data.Labeller.for_rows(rows).label(r) for r in rows)
    speed_only = default_grid_like()
    speed_only_colors = figures.color_map(data.strategy_label(r) for r in speed_only)
    reference = [dataclasses.replace(r, tokens_per_s=r.tokens_per_s * 1.2) if r.tokens_per_s else r for r in rows]
    images = [
        figures.trade_off_figure(data.trade_offs(rows), colors),
        figures.trade_off_figure(data.trade_offs(speed_only), speed_only_colors),
        figures.trade_off_figure(data.trade_offs(rows + speed_only), colors | speed_only_colors),
        figures.speedup_figure(data.speedups(rows), colors),
        figures.cost_figure(data.costs(rows), data.tokens_per_forward_by_strategy(rows), colors),
        figures.comparison_figure(data.compare(rows, reference, [parse_gate("tokens_per_s:-10%")])),
    ]
    for image in images:
        assert image.startswith(PNG_MAGIC)
        width, height = int.from_bytes(image[16:20], "big"), int.from_bytes(image[20:24], "big")
        assert 300 <= width <= 4000 and 150 <= height <= 4000


# --- the page ------------------------------------------------------------------------------


def test_write_report_writes_the_page_and_its_figures(tmp_path: Path) -> None:
    rows = quality_grid()
    path = write_report(tmp_path, rows, None, partial=False)
    assert path == tmp_path / REPORT_HTML
    text, page = parse_page(path)
    assert "could not be drawn" not in text
    assert table_case_ids(page) == [row.case_id for row in rows]
    assert len(page.images) == 3
    for image in page.images:
        assert str(image["src"]).startswith("data:image/png;base64,")
        assert (tmp_path / FIGURES_DIR / str(image["data-file"])).read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in (tmp_path / FIGURES_DIR).iterdir()) == [
        "latency_nfe.png",
        "speed_quality.png",
        "speedup.png",
    ]
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left
    assert "partial" not in page.ids


def test_the_page_lists_failed_cases_and_plots_the_rest(tmp_path: Path) -> None:
    rows = quality_grid()
    text, page = parse_page(write_report(tmp_path, rows, None, partial=False))
    assert "failed" in page.ids
    failed = re.search(r'<div class="failed" id="failed">(.*?)</div>', text, re.S)
    assert failed is not None
    assert "2 of 26 cases did not finish ok" in failed.group(1)
    assert "CUDA out of memory" in failed.group(1) and "RuntimeError: boom" in failed.group(1)
    # The speedup table has one column per task and shape with an ok pair (b8 has none).
    assert len(page.table_rows["speedups"]) == 5
    assert all(len(cells) == 5 for cells in page.table_rows["speedups"])


def test_a_partial_run_is_labelled(tmp_path: Path) -> None:
    manifest = {"status": "interrupted", "signal": "SIGINT", "counts": {"planned": 30, "ok": 20, "not_run": 10}}
    text, page = parse_page(write_report(tmp_path, default_grid_like(), manifest, partial=True))
    assert "partial" in page.ids
    assert "Partial run" in text and "SIGINT" in text
    assert "30 planned, 20 ok, 0 failed, 0 skipped, 10 not run" in text


def test_the_page_of_a_run_without_quality_says_so(tmp_path: Path) -> None:
    text, page = parse_page(write_report(tmp_path, default_grid_like(), None, partial=False))
    assert "no quality measure yet" in text
    assert len(page.images) == 3
    assert table_case_ids(page) == [row.case_id for row in default_grid_like()]


def test_the_environment_comes_from_the_manifest_and_the_rows(tmp_path: Path) -> None:
    rows = [llada(1, host="node-1", torch_threads=1), llada(2, host="node-2", torch_threads=1)]
    run_manifest(tmp_path)
    text, _ = parse_page(write_report(tmp_path, rows, read_manifest(tmp_path), partial=False))
    environment = text[text.index('id="environment"') :]
    for expected in ("NVIDIA H100", "550.54", "12.4", "0123abcd", "pytest benchmarks --output-dir", "node-1, node-2"):
        assert expected in environment


def test_write_report_never_raises_for_bad_data(tmp_path: Path) -> None:
    bad = [
        Row(case_id="only-an-id"),
        llada(1, tokens_per_s=0.0, latency_mean_s=0.0, nfe=0.0),
        llada(2, tokens_per_s=math.inf, nfe=None),
        ar(1, tokens_per_s=-5.0),
        llada(4, kind="something-else"),
        llada(8, status=None, error="<script>alert(1)</script>"),
    ]
    for index, rows in enumerate(([], bad, [bad[0]])):
        out = tmp_path / str(index)
        out.mkdir()
        text, page = parse_page(write_report(out, rows, {"status": 3, "counts": "many"}, partial=True))
        assert "could not be drawn" not in text
        assert len(table_case_ids(page)) == len(rows)
        assert "<script>alert(1)" not in text


def test_a_failing_figure_becomes_a_note_and_the_page_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> bytes:
        raise ValueError("no such axis")

    monkeypatch.setattr(figures, "speedup_figure", broken)
    text, page = parse_page(write_report(tmp_path, quality_grid(), None, partial=False))
    assert "The figure speedup.png could not be drawn (ValueError: no such axis)" in text
    assert len(page.images) == 2
    assert not (tmp_path / FIGURES_DIR / "speedup.png").exists()


@pytest.mark.slow
def test_the_comparison_section_and_its_figure(tmp_path: Path) -> None:
    rows = quality_grid()
    reference = [dataclasses.replace(r, tokens_per_s=r.tokens_per_s * 1.25) if r.tokens_per_s else r for r in rows]
    path = write_report(
        tmp_path,
        rows,
        None,
        reference_rows=reference,
        reference_name="results/last-week",
        gate_rules=[parse_gate("tokens_per_s:-10%")],
        partial=False,
    )
    text, page = parse_page(path)
    assert len(page.images) == 4
    assert "results/last-week" in text
    assert "regressions" in page.ids
    assert "24 regressions" in text  # every ok case fell by 20%
    assert len(page.table_rows["changes"]) == 24
    # A report without the reference removes the comparison figure of the earlier one.
    write_report(tmp_path, rows, None, partial=False)
    assert not (tmp_path / FIGURES_DIR / "comparison.png").exists()


# --- the command ---------------------------------------------------------------------------


def test_cli_writes_the_report_of_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_dir(tmp_path / "run", quality_grid(), planned=26, ok=24, failed=2)
    assert report_main([str(run)]) == 0
    assert capsys.readouterr().out.strip() == str(run / REPORT_HTML)
    text, page = parse_page(run / REPORT_HTML)
    assert len(table_case_ids(page)) == 26
    assert "my-grid" in text and "NVIDIA H100" in text
    assert "No reference run" in text
    assert f'href="{FINAL_CSV}"' in text


def test_cli_combines_shards_and_labels_an_unfinished_one_partial(tmp_path: Path) -> None:
    rows = default_grid_like()
    first = run_dir(tmp_path / "shard-0", rows[::2])
    second = run_dir(tmp_path / "shard-1", rows[1::2], status="interrupted", planned=20, ok=14, not_run=6)
    assert report_main([str(first), str(second)]) == 2  # two directories: name the output
    out = tmp_path / "merged-report"
    assert report_main([str(first), str(second), "-o", str(out)]) == 0
    text, page = parse_page(out / REPORT_HTML)
    assert sorted(table_case_ids(page)) == sorted(row.case_id for row in rows)
    header = text[: text.index("<h2")]
    assert f"{first}, {second}" in header
    assert "partial" in page.ids
    assert "No reference run" in text


@pytest.mark.slow
def test_cli_compares_two_runs_of_the_same_cases(tmp_path: Path) -> None:
    rows = quality_grid()
    old = run_dir(tmp_path / "old", [dataclasses.replace(r, tokens_per_s=(r.tokens_per_s or 1) * 2) for r in rows])
    new = run_dir(tmp_path / "new", rows)
    assert report_main([str(old), str(new), "--gate", "tokens_per_s:-10%"]) == 1  # the gate failed
    text, page = parse_page(new / REPORT_HTML)
    assert len(page.images) == 4
    assert f"Reference: <code>{old}</code>" in text
    assert "24 regressions" in text
    assert not (old / REPORT_HTML).exists()


@pytest.mark.slow
def test_cli_uses_the_runs_gate_reference_and_rules(tmp_path: Path) -> None:
    rows = default_grid_like()
    reference = run_dir(tmp_path / "reference", rows)
    gate = GateRecord(rules=["tokens_per_s:-10%"], reference=str(reference), passed=True, compared=28)
    run = run_dir(
        tmp_path / "run", [dataclasses.replace(r, tokens_per_s=(r.tokens_per_s or 1) * 0.5) for r in rows], gate=gate
    )
    (run / PARTIAL_CSV).write_text("", encoding="utf-8")
    assert report_main([str(run)]) == 0
    text, page = parse_page(run / REPORT_HTML)
    assert len(page.table_rows["changes"]) == len(rows)
    assert "<code>tokens_per_s:-10%</code>" in text
    assert f"{len(rows)} regressions" in text


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp: [str(tmp / "missing")], "does not exist"),
        (lambda tmp: [str(tmp / "empty")], "holds no result rows"),
        (lambda tmp: [str(tmp / "run"), "--gate", "speed:-10%"], "unknown metric"),
        (lambda tmp: [str(tmp / "run"), "-o", str(tmp / "run" / FINAL_CSV)], "is a file"),
    ],
)
def test_cli_refuses_what_it_cannot_report_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make_args: Any, message: str
) -> None:
    run_dir(tmp_path / "run", default_grid_like())
    (tmp_path / "empty").mkdir()
    assert report_main(make_args(tmp_path)) == 2
    assert message in caplog.text


def test_the_report_command_does_not_import_torch() -> None:
    """dllm-bench-report reads CSVs and draws: importing torch cost it 5 to 8 s of start-up."""
    code = (
        "import sys, dllm_bench.sinks.report.cli; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# --- pairing by the full comparison key, at scale ------------------------------------------


def seeded_copies(row: Row, seeds: range) -> list[Row]:
    """Copies of a row, copy i with prompt seed i and its own case id."""
    return [dataclasses.replace(row, seed=seed, case_id=f"{row.case_id}-seed{seed}") for seed in seeds]


def test_a_2000_row_run_pairs_each_llada_seed_with_the_ar_case_of_that_seed_only(tmp_path: Path) -> None:
    seeds = range(1000)
    rows = [r for pair in zip(seeded_copies(llada(1), seeds), seeded_copies(ar(1), seeds), strict=True) for r in pair]
    run = load_run([run_dir(tmp_path / "run", rows)])
    assert len(run.rows) == 2000
    items = data.speedups(run.rows)
    assert len(items) == 1000
    assert all(item.diffusion_case.rsplit("-", 1)[1] == item.reference_case.rsplit("-", 1)[1] for item in items)
    assert data.shapes_without_ar(run.rows) == []


def test_a_llada_case_without_an_ar_case_of_its_seed_is_not_paired_and_is_listed() -> None:
    rows = [*seeded_copies(llada(1), range(2)), *seeded_copies(ar(1), range(1))]
    assert [(s.diffusion_case, s.reference_case) for s in data.speedups(rows)] == [
        ("tiny-llada-p32-g64-b1-s16-k32-seed0", "tiny-llama-p32-g64-b1-seed0")
    ]
    assert data.shapes_without_ar(rows) == [("random", (32, 64, 1))]
    # Other task options are other prompts: no pair either.
    assert data.speedups([llada(1, task_options='{"n": 4}'), ar(1)]) == []


def test_the_speedup_table_shows_the_median_over_prompt_seeds(tmp_path: Path) -> None:
    speeds = {0: 100.0, 1: 300.0, 2: 400.0}  # AR at 50 tokens/s: 2x, 6x, 8x
    rows = [dataclasses.replace(r, tokens_per_s=speeds[r.seed or 0]) for r in seeded_copies(llada(1), range(3))]
    rows += seeded_copies(ar(1), range(3))
    _, page = parse_page(write_report(tmp_path, rows, None, partial=False))
    assert page.table_rows["speedups"] == [["s16-k32", "6.00x"]]


def test_pareto_front_agrees_with_its_definition_on_many_tied_points() -> None:
    generator = random.Random(7)
    points = [(float(generator.randint(0, 30)), float(generator.randint(0, 30))) for _ in range(400)]
    dominated = {
        i for i, (x, y) in enumerate(points) if any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points)
    }
    assert sorted(data.pareto_front(points)) == sorted(set(range(len(points))) - dominated)


# --- impossible values and missing columns -------------------------------------------------


def test_impossible_values_are_named_on_the_page_marked_in_the_table_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [llada(1, accuracy=-5.0), ar(1, latency_mean_s=-0.5), llada(2, agreement_exact=1.5), llada(4)]
    assert [(i.case_id, i.column, i.value) for i in data.impossible_values(rows)] == [
        (rows[0].case_id, "accuracy", -5.0),
        (rows[1].case_id, "latency_mean_s", -0.5),
        (rows[2].case_id, "agreement_exact", 1.5),
    ]
    with caplog.at_level(logging.WARNING, logger="dllm_bench.report"):
        text, page = parse_page(write_report(tmp_path, rows, None, partial=False))
    assert "impossible" in page.ids
    assert "3 impossible values" in text
    assert "accuracy = -5 (possible: 0 to 1)" in text and "latency_mean_s = -0.5 (possible: 0 or more)" in text
    assert text.count('class="num impossible"') == 3
    assert "3 impossible values" in caplog.text


def without_columns(path: Path, dropped: set[str]) -> None:
    """Rewrite a results CSV without some columns, as an older suite or a hand edit leaves it."""
    with path.open(newline="", encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    keep = [i for i, name in enumerate(lines[0]) if name not in dropped]
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows([[line[i] for i in keep] for line in lines])


def test_the_report_command_names_the_metric_columns_a_results_file_lacks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = run_dir(tmp_path / "run", default_grid_like())
    without_columns(run / FINAL_CSV, {"nfe", "accuracy", "model"})
    assert report_main([str(run)]) == 0
    text, page = parse_page(run / REPORT_HTML)
    assert "missing-columns" in page.ids
    assert f"<code>{run / FINAL_CSV}</code> has no nfe, accuracy</li>" in text  # measurement columns only
    assert "has no nfe, accuracy column" in caplog.text
    # A complete file names nothing.
    assert report_main([str(run_dir(tmp_path / "complete", default_grid_like()))]) == 0
    assert "missing-columns" not in parse_page(tmp_path / "complete" / REPORT_HTML)[1].ids


# --- the command's gate: exit codes ----------------------------------------------------------


def test_the_report_commands_gate_fails_when_it_compared_nothing_unless_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = default_grid_like()
    # Other measured_rounds: other cases, so no case of the run has a reference row.
    reference = run_dir(tmp_path / "reference", [dataclasses.replace(r, measured_rounds=5) for r in rows])
    run = run_dir(tmp_path / "run", rows)
    gate = [str(run), "--reference", str(reference), "--gate", "tokens_per_s:-10%"]
    assert report_main(gate) == 1
    text = (run / REPORT_HTML).read_text(encoding="utf-8")
    assert "The gate compared nothing (0 case/metric pairs)" in text
    assert "No regression past the gate's limits" not in text
    assert "gate FAILED: compared 0 case/metric pairs" in caplog.text
    assert report_main([*gate, "--gate-allow-missing"]) == 0
    assert "The gate compared nothing" in (run / REPORT_HTML).read_text(encoding="utf-8")


def test_the_report_commands_exit_code_follows_its_gate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = default_grid_like()
    reference = run_dir(tmp_path / "reference", rows)
    same = run_dir(tmp_path / "same", rows)
    slower = run_dir(
        tmp_path / "slower", [dataclasses.replace(r, tokens_per_s=(r.tokens_per_s or 1) / 2) for r in rows]
    )
    assert report_main([str(same), "--reference", str(reference), "--gate", "tokens_per_s:-10%"]) == 0
    assert f"No regression past the gate's limits ({len(rows)} case/metric pairs compared)" in (
        same / REPORT_HTML
    ).read_text(encoding="utf-8")
    assert report_main([str(slower), "--reference", str(reference), "--gate", "tokens_per_s:-10%"]) == 1
    # --gate without a reference run: nothing written, exit 2.
    alone = run_dir(tmp_path / "alone", rows)
    assert report_main([str(alone), "--gate", "tokens_per_s:-10%"]) == 2
    assert "--gate needs a reference run" in caplog.text
    assert not (alone / REPORT_HTML).exists()
