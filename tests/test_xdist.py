"""Several workers (pytest-xdist): one row per case, models loaded once per worker, rows
fully measured, the controller's progress lines, clean stops on signals to the process group
and to the controller alone, and resume.

The tests that only read a complete run share one (`complete_run`, a module fixture)."""

from __future__ import annotations

import csv
import os
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import (
    BENCH_TEST_FILE,
    FINAL,
    PARTIAL,
    add_conftest,
    assert_exit,
    case_ids,
    finish,
    manifest,
    output_of,
    rows,
    slow_grid,
    start_pytest,
    wait_for,
    wait_rows,
)
from tests.prestarted import PRESTARTED_ENV, PrestartedInterpreter

pytestmark = pytest.mark.slow

STEPS = (64, 128)


@pytest.fixture
def grid_project(project: Path) -> Path:
    slow_grid(project, steps=STEPS, measured_rounds=3)
    return project


def _check_complete(out: Path) -> None:
    ids = Counter(row.case_id for row in rows(out / PARTIAL) if row.ok)
    assert sorted(ids) == case_ids(STEPS), "none missing"
    assert max(ids.values()) == 1, "none twice"
    assert sorted(row.case_id for row in rows(out / FINAL)) == case_ids(STEPS)


@pytest.fixture(scope="module")
def complete_run(
    tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path, prestarted_interpreter: PrestartedInterpreter
) -> Path:
    """A folder with one complete run of the slow grid with two workers (`-n 2`), its output
    in a file (no terminal), for the tests that only read it."""
    project = tmp_path_factory.mktemp("complete-run")
    (project / "test_bench.py").write_text(BENCH_TEST_FILE, encoding="utf-8")
    slow_grid(project, steps=STEPS, measured_rounds=3)
    env = {"DLLM_BENCH_CACHE": str(model_cache_dir), PRESTARTED_ENV: str(prestarted_interpreter.socket_path)}
    proc = start_pytest(project, "-n", "2", env=env)
    assert_exit(proc, project, 0)
    return project


def test_two_workers_one_row_per_case_one_load_per_model(complete_run: Path) -> None:
    out = complete_run / "out"
    _check_complete(out)
    assert len(rows(out / PARTIAL)) == len(case_ids(STEPS))
    lines = list(csv.reader((out / PARTIAL).read_text().splitlines()))
    assert {len(cells) for cells in lines} == {len(lines[0])}, "every line has every column"
    loads: Counter[str] = Counter()
    for worker_log in out.glob("benchmark-gw*.log"):
        loads.update(re.findall(r"loaded model (\S+)", worker_log.read_text()))
    # Scheduling by model: every model is loaded once, by one worker.
    assert loads == {"tiny-llada": 1, "tiny-llama": 1}
    assert "loaded model" not in (out / "benchmark.log").read_text(), "the controller loads nothing"


def test_under_xdist_the_rows_are_still_measured(complete_run: Path) -> None:
    """pytest-benchmark is off under xdist; the suite's own measurement fills every row."""
    assert re.search(r"pytest-benchmark is off under xdist.*fully measured in raw_metrics.csv", output_of(complete_run))
    out = complete_run / "out"
    final = rows(out / FINAL)
    assert sorted(row.case_id for row in final) == case_ids(STEPS)
    assert sorted(rows(out / PARTIAL), key=lambda r: r.case_id) == sorted(final, key=lambda r: r.case_id)
    for row in final:
        assert row.status == "ok"
        assert row.measured_rounds == 3
        assert row.latency_min_s is not None and row.latency_mean_s is not None and row.latency_max_s is not None
        assert row.latency_min_s <= row.latency_mean_s <= row.latency_max_s
        assert row.nfe in set(STEPS)  # LLaDA: its steps; the AR baseline: gen_length 64
        assert row.xdist_worker in {"gw0", "gw1"}


def test_the_controller_writes_progress_lines_without_a_terminal(complete_run: Path) -> None:
    """Output in a file, not a terminal: the controller counts the workers' cases in lines."""
    output = output_of(complete_run)
    total = len(case_ids(STEPS))
    assert f"progress: {total}/{total} cases (0 failed, 0 skipped)" in output
    assert "\r" not in output, "no carriage returns in a log"
    assert f"progress: {total}/{total} cases" in (complete_run / "out" / "benchmark.log").read_text()


@pytest.mark.parametrize(("sig", "target"), [("SIGTERM", "group"), ("SIGINT", "group"), ("SIGTERM", "controller")])
def test_signal_stops_workers_cleanly_and_resume_completes(grid_project: Path, sig: str, target: str) -> None:
    project = grid_project
    out = project / "out"
    proc = start_pytest(project, "-n", "2")
    wait_rows(out / PARTIAL, 2, proc)
    signum = getattr(signal, sig)
    if target == "group":
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    # Every row on disk now was written before the signal or by a case running when it came.
    at_signal = len(rows(out / PARTIAL))
    assert_exit(proc, project, pytest.ExitCode.INTERRUPTED)
    partial = rows(out / PARTIAL)
    final = rows(out / FINAL)
    assert sorted(r.case_id for r in final) == sorted(r.case_id for r in partial), "every finished case saved"
    assert len({r.case_id for r in partial}) == len(partial), "no duplicates"
    assert all(r.ok for r in partial), "a clean stop fails nothing"
    record = manifest(out)
    assert record["status"] == "interrupted"
    assert record["signal"] == sig
    # Each of the 2 workers ends at most the case it was running: the grid was not run to its end.
    assert len(partial) <= at_signal + 2 < len(case_ids(STEPS)), (at_signal, len(partial))
    assert "Traceback" not in output_of(project)
    resumed = start_pytest(project, "-n", "2", "--resume")
    assert finish(resumed) == 0, output_of(project)[-3000:]
    _check_complete(out)


SLOW_FINISH_CONFTEST = """
import pathlib
import time

import pytest


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):
        pathlib.Path("finishing").touch()
        time.sleep(1.5)
"""


def test_a_second_signal_during_worker_teardown_loses_nothing(grid_project: Path) -> None:
    project = grid_project
    add_conftest(project, SLOW_FINISH_CONFTEST)
    out = project / "out"
    proc = start_pytest(project, "-n", "2")
    wait_rows(out / PARTIAL, 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    wait_for(lambda: (project / "finishing").exists(), proc, "the controller's end of session")
    os.killpg(proc.pid, signal.SIGTERM)
    assert_exit(proc, project, pytest.ExitCode.INTERRUPTED)
    partial = rows(out / PARTIAL)
    assert len(partial) >= 2
    assert sorted(r.case_id for r in rows(out / FINAL)) == sorted(r.case_id for r in partial)
    assert manifest(out)["status"] == "interrupted"
    assert "Traceback" not in output_of(project)
