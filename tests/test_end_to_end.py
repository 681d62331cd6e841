"""The whole path in a real pytest process: YAML grid -> cases -> models -> rows, and the
output-directory rules around it."""

from __future__ import annotations

import copy
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dllm_bench.kinds import MODEL_KINDS
from dllm_bench.rows import COLUMN_NAMES
from tests.helpers import FINAL, PARTIAL, TINY_LLADA_ARCH, rows, tiny_config, write_config

pytestmark = pytest.mark.slow


def _run_dirs(project: pytest.Pytester) -> list[Path]:
    return sorted(p for p in (project.path / "results").iterdir() if p.is_dir())


def test_default_output_dir_gets_one_row_per_case_and_a_new_dir_per_run(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    json_path = bench_project.path / "bench.json"
    first = bench_project.runpytest_inprocess("--config", str(path), f"--benchmark-json={json_path}")
    assert first.ret == pytest.ExitCode.OK, first.stdout.str()
    first.assert_outcomes(passed=3)
    (run_dir,) = _run_dirs(bench_project)
    assert run_dir.name.startswith("grid-")

    final = rows(run_dir / FINAL)
    assert final == rows(run_dir / PARTIAL)
    assert (run_dir / FINAL).read_text().splitlines()[0] == ",".join(COLUMN_NAMES)
    by_id = {row.case_id: row for row in final}
    assert sorted(by_id) == ["tiny-llada-p8-g8-b2-s4-k8", "tiny-llada-p8-g8-b2-s8-k8", "tiny-llama-p8-g8-b2"]
    for row in final:
        assert row.status == "ok"
        assert row.generated_tokens == 16
        assert row.device == "cpu"
        assert row.dtype == "float32"
        assert row.latency_mean_s is not None and row.latency_mean_s > 0
        assert row.latency_min_s is not None and row.latency_median_s is not None and row.latency_max_s is not None
        assert row.latency_min_s <= row.latency_median_s <= row.latency_max_s
        assert row.tokens_per_s == pytest.approx(16 / row.latency_mean_s, rel=1e-3)
        assert row.seed == 0 and row.model_seed == 0 and row.model_id is not None and len(row.model_id) == 12
        assert row.torch_threads == 1 and row.cpu_count is not None and row.cpu_model
        assert row.load_avg_1m is not None and row.cpu_time_ratio is not None and row.latency_cv is not None
    assert by_id["tiny-llada-p8-g8-b2-s4-k8"].nfe == 4
    assert by_id["tiny-llada-p8-g8-b2-s8-k8"].nfe == 8
    assert by_id["tiny-llama-p8-g8-b2"].nfe == 8

    report = json.loads(json_path.read_text())
    names = sorted(b["name"] for b in report["benchmarks"])
    assert names == sorted(f"test_{row.kind}[{row.case_id}]" for row in final)
    for entry in report["benchmarks"]:
        assert entry["stats"]["rounds"] == 2
        assert float(entry["extra_info"]["tokens_per_s"]) > 0

    second = bench_project.runpytest_inprocess("--config", str(path), "-k", "s4")
    assert second.ret == pytest.ExitCode.OK
    assert len(_run_dirs(bench_project)) == 2
    assert rows(run_dir / FINAL) == final


def test_explicit_output_dir_with_results_is_refused_and_resume_suggested(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    out = bench_project.path / "out"
    first = bench_project.runpytest_inprocess("--config", str(path), "--output-dir", str(out), "-k", "s4")
    assert first.ret == pytest.ExitCode.OK
    before = (out / FINAL).read_bytes()
    again = bench_project.runpytest_inprocess("--config", str(path), "--output-dir", str(out))
    assert again.ret == pytest.ExitCode.USAGE_ERROR
    assert "already holds results" in again.stderr.str()
    assert "Add --resume" in again.stderr.str()
    assert (out / FINAL).read_bytes() == before


@pytest.mark.parametrize(
    ("output_dir", "words"),
    [("missing-parent/deeper/out", "does not exist; create it first"), ("", "--output-dir is empty")],
)
def test_an_output_dir_that_would_surprise_is_refused(
    bench_project: pytest.Pytester, output_dir: str, words: str
) -> None:
    path = write_config(bench_project.path, tiny_config())
    result = bench_project.runpytest_inprocess("--config", str(path), "--output-dir", output_dir)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert words in result.stderr.str()
    assert not (bench_project.path / "missing-parent").exists()
    assert not list(bench_project.path.glob(PARTIAL))


def test_unwritable_output_dir_fails_before_any_model_loads(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    blocker = bench_project.path / "a-file"
    blocker.write_text("not a directory")
    result = bench_project.runpytest_inprocess("--config", str(path), "--output-dir", str(blocker / "out"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "a-file" in result.stderr.str()
    assert "loaded model" not in result.stdout.str() + result.stderr.str()


def test_resume_of_a_finished_grid_runs_nothing_and_says_so_in_the_log(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    first = bench_project.runpytest_inprocess("--config", str(path))
    assert first.ret == pytest.ExitCode.OK
    (run_dir,) = _run_dirs(bench_project)
    before = (run_dir / PARTIAL).read_bytes()
    # Without --output-dir, --resume takes the newest run of the same config.
    again = bench_project.runpytest_inprocess("--config", str(path), "--resume")
    assert again.ret == pytest.ExitCode.OK
    output = again.stdout.str() + again.stderr.str()
    assert "all 3 selected cases already have ok rows" in output
    # The 3 done cases, and the test of each kind the config has no model of (it has 2 kinds).
    assert f"{3 + len(MODEL_KINDS) - 2} deselected" in output
    assert "all 3 selected cases already have ok rows" in (run_dir / "benchmark.log").read_text()
    assert _run_dirs(bench_project) == [run_dir]
    assert (run_dir / PARTIAL).read_bytes() == before


def _change_seed(raw: dict[str, Any]) -> None:
    raw["seed"] = 7


def _change_model_seed(raw: dict[str, Any]) -> None:
    raw["models"][0]["seed"] = 3


def _change_arch(raw: dict[str, Any]) -> None:
    raw["models"][0]["arch"] = {**TINY_LLADA_ARCH, "n_layers": 2}


def _change_dtype(raw: dict[str, Any]) -> None:
    raw["models"][0]["dtype"] = "float32"


def _change_rounds(raw: dict[str, Any]) -> None:
    raw["measured_rounds"] = 3


@pytest.mark.parametrize(
    "change", [_change_seed, _change_model_seed, _change_arch, _change_dtype, _change_rounds], ids=lambda f: f.__name__
)
def test_resume_matches_cases_by_every_parameter_and_keeps_every_row(
    bench_project: pytest.Pytester, change: Callable[[dict[str, Any]], None]
) -> None:
    raw = tiny_config()
    path = write_config(bench_project.path, raw)
    first = bench_project.runpytest_inprocess("--config", str(path), "--output-dir", "out", "-k", "s4")
    assert first.ret == pytest.ExitCode.OK
    changed = copy.deepcopy(raw)
    change(changed)
    write_config(bench_project.path, changed)
    again = bench_project.runpytest_inprocess("--config", str(path), "--output-dir", "out", "--resume")
    assert again.ret == pytest.ExitCode.OK, again.stdout.str()
    # A changed parameter makes every case a new one, even with the same ids.
    again.assert_outcomes(passed=3)
    partial = rows(bench_project.path / "out" / PARTIAL)
    assert len(partial) == 4
    final = rows(bench_project.path / "out" / FINAL)
    # The final file holds every case the directory has: this grid's three first, then the
    # older case of the changed config.
    assert len(final) == 4
    assert final[3] == partial[0]
    assert sorted(r.case_id for r in final[:3]) == [
        "tiny-llada-p8-g8-b2-s4-k8",
        "tiny-llada-p8-g8-b2-s8-k8",
        "tiny-llama-p8-g8-b2",
    ]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_result_and_cache_files_respect_the_umask(bench_project: pytest.Pytester, umask: int) -> None:
    path = write_config(bench_project.path, tiny_config())
    cache = bench_project.path / "cache"
    old = os.umask(umask)
    try:
        result = bench_project.runpytest_inprocess(
            "--config", str(path), "--output-dir", "out", "-k", "s4", "--model-cache-dir", str(cache)
        )
    finally:
        os.umask(old)
    assert result.ret == pytest.ExitCode.OK
    out = bench_project.path / "out"
    expected = 0o666 & ~umask
    for name in (FINAL, PARTIAL, "run_manifest.json", "benchmark.log", "report.html"):
        assert stat.S_IMODE((out / name).stat().st_mode) == expected, name
    written = [f for folder in cache.iterdir() if folder.is_dir() for f in folder.iterdir()]
    assert {f.name for f in written} >= {"model.safetensors", "config.json", "dllm-bench-cache.json"}
    shared = 0o644 & ~umask  # cache files: never writable by group or others, whatever the umask
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in written} == {f.name: shared for f in written}


def test_without_pytests_logging_plugin_the_suite_logs_to_its_file(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    result = bench_project.runpytest_inprocess(
        "--config", str(path), "--output-dir", "out", "-k", "s4", "-p", "no:logging"
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert "case tiny-llada-p8-g8-b2-s4-k8: done" in (bench_project.path / "out" / "benchmark.log").read_text()
