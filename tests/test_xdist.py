"""Several workers (pytest-xdist): one row per case, models loaded once per worker,
clean stops on signals to the process group and to the controller alone, and resume."""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from dllm_bench.results import read_rows
from tests.helpers import BENCH_TEST_FILE
from tests.test_interrupts import _case_ids, _finish, _manifest, _slow_grid, _start, _wait_rows

pytestmark = pytest.mark.slow

STEPS = (64, 128)


@pytest.fixture
def project(tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DLLM_BENCH_CACHE", str(model_cache_dir))
    (tmp_path / "test_bench.py").write_text(BENCH_TEST_FILE, encoding="utf-8")
    _slow_grid(tmp_path, steps=STEPS, measured_rounds=3)
    return tmp_path


def _check_complete(out: Path) -> None:
    partial = read_rows(out / "raw_metrics_partial.csv")
    ids = Counter(row["case_id"] for row in partial if row["status"] == "ok")
    assert sorted(ids) == _case_ids(STEPS), "none missing"
    assert max(ids.values()) == 1, "none twice"
    assert sorted(row["case_id"] for row in read_rows(out / "raw_metrics.csv")) == _case_ids(STEPS)


def test_two_workers_one_row_per_case_one_load_per_model(project: Path) -> None:
    proc = _start(project, "-n", "2")
    assert _finish(proc) == 0, (project / "pytest-output.txt").read_text()[-3000:]
    out = project / "out"
    _check_complete(out)
    assert len(read_rows(out / "raw_metrics_partial.csv")) == len(_case_ids(STEPS))
    for line in (out / "raw_metrics_partial.csv").read_text().splitlines():
        assert line.count(",") == (out / "raw_metrics_partial.csv").read_text().splitlines()[0].count(",")
    loads: Counter[str] = Counter()
    for worker_log in out.glob("benchmark-gw*.log"):
        loads.update(re.findall(r"loaded model (\S+)", worker_log.read_text()))
    # --dist loadgroup by model: every model is loaded once, by one worker.
    assert loads == {"tiny-llada": 1, "tiny-llama": 1}
    assert "loaded model" not in (out / "benchmark.log").read_text(), "the controller loads nothing"


@pytest.mark.parametrize(("sig", "target"), [("SIGTERM", "group"), ("SIGINT", "group"), ("SIGTERM", "controller")])
def test_signal_stops_workers_cleanly_and_resume_completes(project: Path, sig: str, target: str) -> None:
    out = project / "out"
    proc = _start(project, "-n", "2")
    _wait_rows(out / "raw_metrics_partial.csv", 2, proc)
    signum = getattr(signal, sig)
    if target == "group":
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    started = time.monotonic()
    assert _finish(proc) == pytest.ExitCode.INTERRUPTED
    stop_s = time.monotonic() - started
    partial = read_rows(out / "raw_metrics_partial.csv")
    final = read_rows(out / "raw_metrics.csv")
    assert sorted(r["case_id"] for r in final) == sorted(r["case_id"] for r in partial), "every finished case saved"
    assert len({r["case_id"] for r in partial}) == len(partial), "no duplicates"
    assert all(r["status"] == "ok" for r in partial), "a clean stop fails nothing"
    manifest = _manifest(out)
    assert manifest["status"] == "interrupted"
    assert manifest["signal"] == sig
    assert stop_s < 120
    resumed = _start(project, "-n", "2", "--resume")
    assert _finish(resumed) == 0, (project / "pytest-output.txt").read_text()[-3000:]
    _check_complete(out)
