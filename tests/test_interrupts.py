"""Nothing finished is lost: real pytest processes receive real signals.

Each test starts `python -m pytest` on a small grid whose cases take long enough to be
interrupted, in its own process group with the default SIGINT handler, waits until some
rows are on disk, sends the signal, and then checks the files and a `--resume` run.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from dllm_bench.backends.llada import write_llada_folder
from dllm_bench.rows import COLUMN_NAMES, Row
from tests.helpers import (
    BENCH_TEST_FILE,
    FINAL,
    PARTIAL,
    TINY_LLADA_ARCH,
    add_conftest,
    assert_exit,
    case_ids,
    manifest,
    output_of,
    rows,
    slow_grid,
    start_pytest,
    tiny_config,
    wait_for,
    wait_rows,
    write_config,
)

pytestmark = pytest.mark.slow
LOG = logging.getLogger(__name__)

CASE_IDS = case_ids()

# A conftest that makes the end of the session slow and says when it started, so that a
# signal can be sent while the suite saves its results.
SLOW_FINISH_CONFTEST = """
import pathlib
import time

import pytest


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    pathlib.Path("finishing").touch()
    time.sleep(1.5)
"""

# A conftest that holds each case in its call while the file `hold` exists (and says so
# with `held`), so that a signal can be sent while a case is certainly running, however busy
# the machine. It sleeps in short steps: a signal handler runs between them, and one that
# raises ends the hold.
HOLD_CASE_CONFTEST = """
import pathlib
import time

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    deadline = time.monotonic() + 300
    while pathlib.Path("hold").exists() and time.monotonic() < deadline:
        pathlib.Path("held").touch()
        time.sleep(0.05)
"""


def _resume_to_completion(project: Path, ids: list[str] = CASE_IDS) -> None:
    proc = start_pytest(project, "--resume")
    assert_exit(proc, project, 0)
    out = project / "out"
    ok_ids = [row.case_id for row in rows(out / PARTIAL) if row.ok]
    assert sorted(ok_ids) == ids, "each case exactly once, none missing"
    assert sorted(row.case_id for row in rows(out / FINAL)) == ids
    assert manifest(out)["status"] == "complete"


def _run_until_rows(project: Path, count: int, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the slow grid and return once `count` cases have their row on disk."""
    slow_grid(project)
    out = project / "out"
    proc = start_pytest(project, *args)
    wait_rows(out / PARTIAL, count, proc)
    return proc, out


def _assert_saved(out: Path, signal_name: str) -> list[Row]:
    partial = rows(out / PARTIAL)
    final = rows(out / FINAL)
    assert sorted(final, key=lambda r: r.case_id) == sorted(partial, key=lambda r: r.case_id), (
        "raw_metrics.csv holds every finished case"
    )
    assert 1 <= len(final) < len(CASE_IDS)
    record = manifest(out)
    assert record["status"] == "interrupted"
    assert record["signal"] == signal_name
    counts = record["counts"]
    assert counts["ok"] + counts["failed"] == len(final)
    assert counts["planned"] == len(CASE_IDS)
    assert counts["ok"] + counts["failed"] + counts["skipped"] + counts["not_run"] == counts["planned"]
    return final


def test_sigterm_stops_after_the_running_case_and_resume_completes(project: Path) -> None:
    proc, out = _run_until_rows(project, 1)
    os.killpg(proc.pid, signal.SIGTERM)
    assert_exit(proc, project, pytest.ExitCode.INTERRUPTED)
    saved = _assert_saved(out, "SIGTERM")
    output = output_of(project)
    # A clean stop: the case that was running finished and has its row, nothing failed.
    assert all(row.ok for row in saved)
    assert manifest(out)["counts"]["failed"] == 0
    assert "resume with: pytest" in output
    assert "Traceback" not in output
    log = (out / "benchmark.log").read_text()
    assert "received SIGTERM" in log
    assert f"saved {len(saved)} rows" in log
    _resume_to_completion(project)


def test_sigusr2_stops_cleanly_like_sigterm(project: Path) -> None:
    proc, out = _run_until_rows(project, 1)
    os.killpg(proc.pid, signal.SIGUSR2)
    assert_exit(proc, project, pytest.ExitCode.INTERRUPTED)
    _assert_saved(out, "SIGUSR2")
    _resume_to_completion(project)


def test_second_sigterm_interrupts_at_once_and_still_saves(project: Path) -> None:
    add_conftest(project, HOLD_CASE_CONFTEST)
    proc, out = _run_until_rows(project, 1)
    # Both signals land while the next case is held in its call: on a busy machine a case
    # could otherwise finish between them, and the second would land in the save instead.
    (project / "hold").touch()
    wait_for(lambda: (project / "held").exists(), proc, "a held case")
    os.killpg(proc.pid, signal.SIGTERM)
    # The second one is sent once the first was handled (its console line is out): two
    # SIGTERMs still pending when the process next runs are merged into one by the kernel.
    wait_for(lambda: "dllm-bench: received SIGTERM: stopping" in output_of(project), proc, "the first SIGTERM")
    os.killpg(proc.pid, signal.SIGTERM)
    assert_exit(proc, project, pytest.ExitCode.INTERRUPTED)
    _assert_saved(out, "SIGTERM")
    assert "received SIGTERM again" in (out / "benchmark.log").read_text()
    (project / "hold").unlink()
    _resume_to_completion(project)


def test_sigint_mid_case_saves_finished_cases(project: Path) -> None:
    proc, out = _run_until_rows(project, 2)
    time.sleep(0.2)  # inside the next case
    os.killpg(proc.pid, signal.SIGINT)
    assert_exit(proc, project, pytest.ExitCode.INTERRUPTED)
    _assert_saved(out, "SIGINT")
    assert "interrupted by SIGINT" in (out / "benchmark.log").read_text()
    _resume_to_completion(project)


# Where each SIGKILL lands: during start-up (imports, collection, model loads; a random
# moment within the first second), or a random moment within half a second after the run
# wrote its next row (in the middle of the next case or of its row write).
KILL_POINTS = ("row", "start", "row", "row", "start", "row")


def test_sigkill_at_random_moments_loses_no_finished_row(project: Path) -> None:
    steps = (64, 128)
    slow_grid(project, steps=steps, measured_rounds=5)
    out = project / "out"
    rng = random.Random(1234)
    kills = 0
    for attempt, point in enumerate(KILL_POINTS):
        args = ("--resume",) if attempt else ()
        held = len(rows(out / PARTIAL)) if (out / PARTIAL).exists() else 0
        proc = start_pytest(project, *args)
        if point == "row":
            wait_rows(out / PARTIAL, held + 1, proc)
            time.sleep(rng.uniform(0.0, 0.5))
        else:
            time.sleep(rng.uniform(0.0, 1.0))
        assert proc.poll() is None, f"kill {attempt} ({point}): pytest ended before it, exit {proc.returncode}"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        lines = (out / PARTIAL).read_text().splitlines(keepends=True)
        assert lines[0] == ",".join(COLUMN_NAMES) + "\n", "header written once, first"
        complete = [line for line in lines[1:] if line.endswith("\n")]
        assert len(rows(out / PARTIAL)) == len(complete), "every complete line parses"
        ids = Counter(row.case_id for row in rows(out / PARTIAL))
        assert max(ids.values()) == 1, "no case recorded twice"
    assert kills == len(KILL_POINTS)
    # Each "row" kill came after a new row; the grid's 9 cases were not all done before the last kill.
    saved = len(rows(out / PARTIAL))
    assert KILL_POINTS.count("row") <= saved < len(case_ids(steps)), saved
    LOG.info("SIGKILL: %d kills, %d rows on disk before the final resume", kills, saved)
    _resume_to_completion(project, case_ids(steps))


def test_double_ctrl_c_while_saving_still_saves_without_a_traceback(project: Path) -> None:
    add_conftest(project, SLOW_FINISH_CONFTEST)
    proc, out = _run_until_rows(project, 2)
    os.killpg(proc.pid, signal.SIGINT)
    wait_for(lambda: (project / "finishing").exists(), proc, "the session's end")
    os.killpg(proc.pid, signal.SIGINT)
    assert_exit(proc, project, pytest.ExitCode.INTERRUPTED)
    _assert_saved(out, "SIGINT")
    output = output_of(project)
    assert "Traceback" not in output
    assert "received SIGINT while saving the results" in (out / "benchmark.log").read_text()
    _resume_to_completion(project)


def test_a_flood_of_ctrl_c_does_not_break_the_save(project: Path) -> None:
    """Signals sent as fast as one process can send them from the second row to the end of
    the save (a stuck key, a supervisor in a loop). When handlers logged, a handler
    re-entered inside its own log call and the save was lost (manifest left 'running')."""
    add_conftest(project, SLOW_FINISH_CONFTEST)
    proc, out = _run_until_rows(project, 2)
    sent = 0
    deadline = time.monotonic() + 120
    while not (project / "finishing").exists() and proc.poll() is None and time.monotonic() < deadline:
        os.killpg(proc.pid, signal.SIGINT)
        sent += 1
    assert_exit(proc, project, pytest.ExitCode.INTERRUPTED)
    LOG.info("flood: %d SIGINTs sent", sent)
    assert sent > 100
    _assert_saved(out, "SIGINT")
    assert "Traceback" not in output_of(project)
    assert "received SIGINT while saving the results" in (out / "benchmark.log").read_text()


@pytest.mark.parametrize("gap_s", [0.0, 0.05, 0.3])
def test_double_ctrl_c_mid_run_saves_and_says_interrupted(project: Path, gap_s: float) -> None:
    """The second Ctrl+C lands while pytest reports the first one (before the save starts)."""
    proc, out = _run_until_rows(project, 2)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(gap_s)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
    assert_exit(proc, project, pytest.ExitCode.INTERRUPTED)
    _assert_saved(out, "SIGINT")
    assert "Traceback" not in output_of(project)


# A conftest that sends the pytest process a real SIGINT right after the second row is
# on disk, before the suite has counted that case: the signal lands in that window. Once
# only (a marker file), so that the resume runs through.
SIGINT_AFTER_ROW_CONFTEST = """
import pathlib
import signal

import dllm_bench.recorder

_append_row = dllm_bench.recorder.append_row
_written = []


def _append_then_interrupt(path, row):
    _append_row(path, row)
    _written.append(row.case_id)
    marker = pathlib.Path("interrupted-once")
    if len(_written) == 2 and not marker.exists():
        marker.touch()
        signal.raise_signal(signal.SIGINT)


dllm_bench.recorder.append_row = _append_then_interrupt
"""


def test_ctrl_c_right_after_a_row_is_written_still_counts_that_row(project: Path) -> None:
    add_conftest(project, SIGINT_AFTER_ROW_CONFTEST)
    slow_grid(project)
    proc = start_pytest(project)
    assert_exit(proc, project, pytest.ExitCode.INTERRUPTED)
    out = project / "out"
    saved = _assert_saved(out, "SIGINT")  # the manifest's counts add up to the rows on disk
    assert len(saved) == 2
    assert manifest(out)["counts"]["ok"] == 2
    assert "Traceback" not in output_of(project)
    _resume_to_completion(project)


def test_a_signal_while_a_finished_run_saves_changes_nothing(project: Path) -> None:
    add_conftest(project, SLOW_FINISH_CONFTEST)
    write_config(project, tiny_config())
    proc = start_pytest(project)
    wait_for(lambda: (project / "finishing").exists(), proc, "the session's end")
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    assert_exit(proc, project, pytest.ExitCode.OK)
    out = project / "out"
    assert len(rows(out / FINAL)) == 3
    assert manifest(out)["status"] == "complete"
    assert "Traceback" not in output_of(project)
    assert "received SIGTERM while saving the results" in (out / "benchmark.log").read_text()


def test_ctrl_c_during_start_up_is_a_clean_interrupt(project: Path) -> None:
    """Ctrl+C while torch is being imported (the first seconds): pytest's interrupt, exit 2."""
    slow_grid(project)
    proc = start_pytest(project, fresh=True)  # a new interpreter: this test is about its imports

    def torch_loading() -> bool:
        try:
            return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return False

    wait_for(torch_loading, proc, "torch is loading", timeout=120)
    os.killpg(proc.pid, signal.SIGINT)
    assert_exit(proc, project, pytest.ExitCode.INTERRUPTED)
    output = output_of(project)
    assert "KeyboardInterrupt" in output
    assert "Traceback (most recent call last)" not in output
    assert not (project / "out" / PARTIAL).exists()
    assert not (project / "out").exists() or not list((project / "out").glob("*.csv"))


def test_oom_case_is_recorded_and_the_next_case_runs(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path_factory.mktemp("oom") / "oom-llada"
    write_llada_folder(folder, TINY_LLADA_ARCH, seed=0, dtype=torch.float32)
    modeling = folder / "modeling_llada.py"
    # A model that runs out of memory for batches of 2 or more, loaded the real way (its own
    # remote code, opted into with trust_remote_code).
    modeling.write_text(
        modeling.read_text() + "\n\n_original_forward = LLaDAModelLM.forward\n\n\n"
        "def _oom_forward(self, input_ids, *args, **kwargs):\n"
        "    if input_ids.shape[0] >= 2:\n"
        "        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')\n"
        "    return _original_forward(self, input_ids, *args, **kwargs)\n\n\n"
        "LLaDAModelLM.forward = _oom_forward\n"
    )
    config = tiny_config(grid={"prompt_length": [8], "gen_length": [8], "batch_size": [2, 1]})
    config["models"][0] = {
        "name": "oom-llada",
        "kind": "llada",
        "source": str(folder),
        "device": "cpu",
        "trust_remote_code": True,
    }
    write_config(project, config)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("modules")))
    proc = start_pytest(project)
    assert_exit(proc, project, pytest.ExitCode.TESTS_FAILED)
    by_id = {row.case_id: row for row in rows(project / "out" / FINAL)}
    assert by_id["oom-llada-p8-g8-b2-s4-k8"].status == "oom"
    assert (by_id["oom-llada-p8-g8-b2-s4-k8"].error or "").startswith("OutOfMemoryError: CUDA out of memory")
    assert by_id["oom-llada-p8-g8-b1-s4-k8"].status == "ok"
    assert by_id["tiny-llama-p8-g8-b2"].status == "ok"
    assert len(by_id) == 6
    assert manifest(project / "out")["status"] == "failed"

    second = project / "allow"
    second.mkdir()
    (second / "test_bench.py").write_text(BENCH_TEST_FILE)
    write_config(second, config)
    proc = start_pytest(second, "--allow-oom")
    assert_exit(proc, second, pytest.ExitCode.OK)
    assert "4 passed, 2 skipped" in output_of(second)
    statuses = Counter(row.status for row in rows(second / "out" / FINAL))
    assert statuses == {"ok": 4, "oom": 2}
    counts = manifest(second / "out")["counts"]
    # Each case counted once: the OOM cases are skipped (with --allow-oom), not also failed.
    assert (counts["planned"], counts["ok"], counts["failed"], counts["skipped"], counts["not_run"]) == (6, 4, 0, 2, 0)
