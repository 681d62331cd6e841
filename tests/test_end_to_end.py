"""The whole path in a real pytest process: YAML grid -> cases -> models -> rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dllm_bench.results import COLUMN_NAMES, read_rows
from tests.helpers import tiny_config, write_config


def _run_dirs(project: pytest.Pytester) -> list[Path]:
    return sorted(p for p in (project.path / "results").iterdir() if p.is_dir())


def test_default_output_dir_gets_one_row_per_case_and_a_new_dir_per_run(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    json_path = bench_project.path / "bench.json"
    first = bench_project.runpytest_subprocess("--config", str(path), f"--benchmark-json={json_path}")
    assert first.ret == pytest.ExitCode.OK, first.stdout.str()
    first.assert_outcomes(passed=3)
    (run_dir,) = _run_dirs(bench_project)
    assert run_dir.name.startswith("grid-")

    rows = read_rows(run_dir / "raw_metrics.csv")
    assert rows == read_rows(run_dir / "raw_metrics_partial.csv")
    assert list(rows[0]) == list(COLUMN_NAMES)
    by_id = {row["case_id"]: row for row in rows}
    assert sorted(by_id) == ["tiny-llada-p8-g8-b2-s4-k8", "tiny-llada-p8-g8-b2-s8-k8", "tiny-llama-p8-g8-b2"]
    for row in rows:
        assert row["status"] == "ok"
        assert row["generated_tokens"] == "16"
        assert row["device"] == "cpu"
        assert row["dtype"] == "float32"
        mean = float(row["latency_mean_s"])
        assert float(row["latency_min_s"]) <= float(row["latency_median_s"]) <= float(row["latency_max_s"])
        assert mean > 0
        assert float(row["tokens_per_s"]) == pytest.approx(16 / mean, rel=1e-3)
    assert by_id["tiny-llada-p8-g8-b2-s4-k8"]["nfe"] == "4"
    assert by_id["tiny-llada-p8-g8-b2-s8-k8"]["nfe"] == "8"
    assert by_id["tiny-llama-p8-g8-b2"]["nfe"] == "8"

    report = json.loads(json_path.read_text())
    names = sorted(b["name"] for b in report["benchmarks"])
    assert names == sorted(f"test_{k}[{i}]" for i, k in [(i, by_id[i]["kind"]) for i in by_id])
    for entry in report["benchmarks"]:
        assert entry["stats"]["rounds"] == 2
        assert float(entry["extra_info"]["tokens_per_s"]) > 0

    second = bench_project.runpytest_subprocess("--config", str(path), "-k", "s4")
    assert second.ret == pytest.ExitCode.OK
    assert len(_run_dirs(bench_project)) == 2
    assert read_rows(run_dir / "raw_metrics.csv") == rows


def test_explicit_output_dir_with_results_is_refused(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    out = bench_project.path / "out"
    first = bench_project.runpytest_subprocess("--config", str(path), "--output-dir", str(out), "-k", "s4")
    assert first.ret == pytest.ExitCode.OK
    before = (out / "raw_metrics.csv").read_bytes()
    again = bench_project.runpytest_subprocess("--config", str(path), "--output-dir", str(out))
    assert again.ret == pytest.ExitCode.USAGE_ERROR
    assert "already holds results" in again.stderr.str()
    assert (out / "raw_metrics.csv").read_bytes() == before


def test_unwritable_output_dir_fails_before_any_model_loads(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    blocker = bench_project.path / "a-file"
    blocker.write_text("not a directory")
    result = bench_project.runpytest("--config", str(path), "--output-dir", str(blocker / "out"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "is not writable" in result.stderr.str()
    assert "loaded model" not in result.stdout.str() + result.stderr.str()


def test_resume_of_a_finished_grid_runs_nothing_and_says_so(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    first = bench_project.runpytest_subprocess("--config", str(path))
    assert first.ret == pytest.ExitCode.OK
    (run_dir,) = _run_dirs(bench_project)
    before = (run_dir / "raw_metrics_partial.csv").read_bytes()
    # Without --output-dir, --resume takes the newest run of the same config.
    again = bench_project.runpytest_subprocess("--config", str(path), "--resume")
    assert again.ret == pytest.ExitCode.OK
    output = again.stdout.str() + again.stderr.str()
    assert "all 3 selected cases already have ok rows" in output
    assert "3 deselected" in output
    assert _run_dirs(bench_project) == [run_dir]
    assert (run_dir / "raw_metrics_partial.csv").read_bytes() == before


def test_resume_matches_cases_by_parameters_not_position(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    first = bench_project.runpytest_subprocess("--config", str(path), "--output-dir", "out", "-k", "s4")
    assert first.ret == pytest.ExitCode.OK
    # A changed setting makes every case a new one, even with the same ids.
    write_config(bench_project.path, tiny_config(measured_rounds=3))
    changed = bench_project.runpytest_subprocess("--config", str(path), "--output-dir", "out", "--resume")
    assert changed.ret == pytest.ExitCode.OK
    changed.assert_outcomes(passed=3)
    rows = read_rows(bench_project.path / "out" / "raw_metrics_partial.csv")
    assert [row["measured_rounds"] for row in rows] == ["2", "3", "3", "3"]
    # raw_metrics.csv holds the cases of the config that ran; the older row stays in the
    # partial file only.
    final = read_rows(bench_project.path / "out" / "raw_metrics.csv")
    assert sorted((r["case_id"], r["measured_rounds"]) for r in final) == [
        ("tiny-llada-p8-g8-b2-s4-k8", "3"),
        ("tiny-llada-p8-g8-b2-s8-k8", "3"),
        ("tiny-llama-p8-g8-b2", "3"),
    ]
