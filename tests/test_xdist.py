"""Several workers (pytest-xdist): one row per case, models loaded once per worker,
clean stops on signals to the process group and to the controller alone, and resume."""

from __future__ import annotations

import csv
import os
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import (
    FINAL,
    PARTIAL,
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


def test_two_workers_one_row_per_case_one_load_per_model(grid_project: Path) -> None:
    project = grid_project
    proc = start_pytest(project, "-n", "2")
    assert_exit(proc, project, 0)
    out = project / "out"
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
    (project / "conftest.py").write_text(SLOW_FINISH_CONFTEST)
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
