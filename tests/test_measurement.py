"""pytest-benchmark storage and comparison on the suite's cases, the --gate regression
check, the end-of-run summary, and the xdist fallback (the suite's own rows)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dllm_bench.results import read_rows
from tests.helpers import tiny_config, write_config


def _only_run_dir(project: pytest.Pytester) -> Path:
    (run_dir,) = [p for p in (project.path / "results").iterdir() if p.is_dir()]
    return run_dir


def test_autosave_and_compare_work_on_the_suite_cases(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    storage = bench_project.path / "storage"
    first = bench_project.runpytest_subprocess(
        "--config", str(path), "--benchmark-autosave", f"--benchmark-storage={storage}"
    )
    assert first.ret == pytest.ExitCode.OK
    (saved,) = storage.rglob("*.json")
    data = json.loads(saved.read_text())
    groups = {b["group"] for b in data["benchmarks"]}
    assert groups == {"p8-g8-b2"}
    assert all("nfe" in b["extra_info"] and "tokens_per_s" in b["extra_info"] for b in data["benchmarks"])
    assert "dllm_bench" in data["machine_info"]
    assert data["machine_info"]["dllm_bench"]["torch_version"]
    assert all(b["options"]["timer"] == "synchronized_timer" for b in data["benchmarks"])

    second = bench_project.runpytest_subprocess(
        "--config",
        str(path),
        f"--benchmark-storage={storage}",
        "--benchmark-compare",
        "--benchmark-compare-fail=mean:100000%",
    )
    assert second.ret == pytest.ExitCode.OK
    assert "Comparing against benchmarks from" in second.stdout.str() + second.stderr.str()
    # The comparison table shows this run next to the saved one.
    assert "(NOW)" in second.stdout.str()
    assert "(0001_unversi" in second.stdout.str()


def _scaled_baseline(run_dir: Path, target: Path, factor: float, only: str | None = None) -> Path:
    """A baseline CSV with tokens_per_s scaled by `factor` (for the cases matching `only`;
    the others are scaled to 1% so that machine noise cannot fail them)."""
    rows = read_rows(run_dir / "raw_metrics.csv")
    for row in rows:
        scale = factor if only is None or only in row["case_id"] else 0.01
        row["tokens_per_s"] = str(float(row["tokens_per_s"]) * scale)
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return target


def test_gate_passes_and_fails_against_a_baseline(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    first = bench_project.runpytest_subprocess("--config", str(path), "--output-dir", "base")
    assert first.ret == pytest.ExitCode.OK
    base_dir = bench_project.path / "base"

    # A baseline at a tenth of the speed: this run is faster, the gate passes.
    slower = _scaled_baseline(base_dir, bench_project.path / "slower.csv", 0.1)
    ok = bench_project.runpytest_subprocess(
        "--config", str(path), "--output-dir", "run-ok", "--gate", "tokens_per_s:-10%", "--gate-baseline", str(slower)
    )
    assert ok.ret == pytest.ExitCode.OK, ok.stdout.str()
    ok.stdout.fnmatch_lines(["*gate: compared 3 case/metric pairs against the baseline*"])

    # A baseline 100x faster for the s4 case only: exactly that case fails the gate.
    faster = _scaled_baseline(base_dir, bench_project.path / "faster.csv", 100.0, only="-s4-")
    bad = bench_project.runpytest_subprocess(
        "--config", str(path), "--output-dir", "run-bad", "--gate", "tokens_per_s:-10%", "--gate-baseline", str(faster)
    )
    assert bad.ret == pytest.ExitCode.TESTS_FAILED
    failed = [line for line in bad.stdout.lines if line.startswith("gate FAILED")]
    assert len(failed) == 1
    assert "tiny-llada-p8-g8-b2-s4-k8: tokens_per_s" in failed[0]
    assert "limit -10%" in failed[0]


def test_gate_needs_a_baseline_and_a_valid_rule(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    no_base = bench_project.runpytest("--config", str(path), "--gate", "tokens_per_s:-10%")
    assert no_base.ret == pytest.ExitCode.USAGE_ERROR
    assert "--gate-baseline" in no_base.stderr.str()
    baseline = bench_project.path / "b.csv"
    baseline.write_text("case_id,status\nx,ok\n")
    bad_rule = bench_project.runpytest(
        "--config", str(path), "--gate", "tokens_per_s-10", "--gate-baseline", str(baseline)
    )
    assert bad_rule.ret == pytest.ExitCode.USAGE_ERROR
    assert "bad gate 'tokens_per_s-10'" in bad_rule.stderr.str()


def test_summary_table_and_relative_speed(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    result = bench_project.runpytest_subprocess("--config", str(path), "--benchmark-disable")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*dllm-bench summary*",
            "case*status*latency_mean_s*tokens/s*nfe*peak_mem_mb*",
            "tiny-llada-p8-g8-b2-s4-k8*ok*4*",
            "LLaDA speed relative to the AR baseline*",
            "  tiny-llada-p8-g8-b2-s4-k8 vs tiny-llama-p8-g8-b2: *x tokens/s",
        ]
    )
    rows = read_rows(_only_run_dir(bench_project) / "raw_metrics.csv")
    assert len(rows) == 3
    assert all(float(row["latency_mean_s"]) > 0 for row in rows)


def test_under_xdist_the_rows_are_still_measured(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    result = bench_project.runpytest_subprocess("--config", str(path), "-n", "2", "--output-dir", "out")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*pytest-benchmark is off under xdist*fully measured in raw_metrics.csv*"])
    rows = read_rows(bench_project.path / "out" / "raw_metrics.csv")
    assert sorted(row["case_id"] for row in rows) == [
        "tiny-llada-p8-g8-b2-s4-k8",
        "tiny-llada-p8-g8-b2-s8-k8",
        "tiny-llama-p8-g8-b2",
    ]
    assert read_rows(bench_project.path / "out" / "raw_metrics_partial.csv") == rows
    for row in rows:
        assert row["status"] == "ok"
        assert int(row["measured_rounds"]) == 2
        assert float(row["latency_min_s"]) <= float(row["latency_mean_s"]) <= float(row["latency_max_s"])
        assert row["nfe"] in {"4", "8"}
