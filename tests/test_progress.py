"""Progress: tqdm bars on a terminal (tested under a pseudo-terminal), progress lines in
logs without one, the controller's counts under xdist, and no redraw in timed rounds."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import re
import struct
import termios
from pathlib import Path
from types import SimpleNamespace

import pytest
from tqdm import tqdm

from dllm_bench import progress as progress_module
from dllm_bench.progress import CaseProgress, Progress, choose_mode
from dllm_bench.sinks.manifest import Counts
from tests.helpers import start_pytest, tiny_config, write_config


def test_choose_mode() -> None:
    assert choose_mode("auto", is_tty=True, is_worker=False) == "bar"
    assert choose_mode("auto", is_tty=False, is_worker=False) == "log"
    assert choose_mode("bar", is_tty=False, is_worker=False) == "bar"
    assert choose_mode("bar", is_tty=True, is_worker=True) == "off"
    assert choose_mode("off", is_tty=True, is_worker=False) == "off"


def test_inner_bar_never_draws_during_a_timed_round() -> None:
    stream = io.StringIO()
    bar = tqdm(total=30, file=stream, mininterval=0, miniters=1)
    inner = CaseProgress(bar, expected_nfe=10, warmup_rounds=1, measured_rounds=2)
    inner.round_started()  # warm-up: draws as it goes
    before = len(stream.getvalue())
    for _ in range(10):
        inner.forward()
    assert len(stream.getvalue()) > before
    inner.round_started()  # first measured round: one redraw here, between rounds
    drawn = len(stream.getvalue())
    for _ in range(10):
        inner.forward()
    assert len(stream.getvalue()) == drawn, "no output while a round is timed"
    assert bar.n == 20
    inner.round_started()
    assert len(stream.getvalue()) > drawn
    inner.close()


def test_log_mode_logs_progress_lines(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]  # each case takes 1.5 s on this clock
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    counts = Counts(planned=20)
    progress = Progress("log", counts)
    with caplog.at_level(logging.INFO, logger="dllm_bench.progress"):
        progress.start(20)
        for index in range(20):
            clock[0] += 1.5
            if index == 3:
                counts.failed += 1
            else:
                counts.ok += 1
            progress.case_finished()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "progress: 0/20 cases"
    assert lines[1] == "progress: 2/20 cases (0 failed, 0 skipped), elapsed 0:00:03, ETA 0:00:27"
    assert lines[-1].startswith("progress: 20/20 cases (1 failed, 0 skipped)")
    assert len(lines) == 11  # the start, then every 10% of the cases


def _read_to_end(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _run_in_pty(project: Path, *args: str) -> tuple[int, str]:
    """Run pytest with stdin, stdout and stderr on a pseudo-terminal of 160 x 40; return the text."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = start_pytest(project, *args, output_dir=None, env={"COLUMNS": "160", "LINES": "40"}, stdio=(slave,) * 3)
    os.close(slave)
    text = _read_to_end(master)
    return proc.wait(timeout=300), text


def _run_without_terminal(project: Path, *args: str) -> tuple[int, str]:
    """Run pytest with its output in a pipe (as in CI); return the exit code and the text."""
    read_end, write_end = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    proc = start_pytest(project, *args, output_dir=None, stdio=(null, write_end, write_end))
    os.close(null)
    os.close(write_end)
    text = _read_to_end(read_end)
    return proc.wait(timeout=300), text


@pytest.fixture
def grid_project(project: Path) -> Path:
    write_config(project, tiny_config())
    return project


def _screen_lines(text: str) -> list[str]:
    """What a terminal keeps: each carriage return starts the line over."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r\n", "\n")
    return [segment for line in plain.split("\n") for segment in [line.split("\r")[-1]] if segment.strip()]


@pytest.mark.slow
def test_bars_on_a_terminal(grid_project: Path) -> None:
    code, text = _run_in_pty(grid_project, "--output-dir", "out")
    assert code == 0, text[-3000:]
    assert re.search(r"cases: 100%\|[^|]*\| 3/3", text), text[-3000:]
    assert re.search(r"(warm-up 1/1|round \d/2):", text), "the inner bar of a running case"
    assert "tiny-llada-p8-g8-b2-s4-k8" in text
    lines = _screen_lines(text)
    # Log records are printed above the bars, each on a line of its own.
    done = [line for line in lines if "case tiny-llada-p8-g8-b2-s8-k8: done" in line]
    assert done and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d - dllm_bench - INFO - case", d) for d in done)
    # pytest's per-test letters are not written onto the bar's line.
    assert not any(re.search(r"test_bench\.py \.+", line) for line in lines)
    assert "case tiny-llada-p8-g8-b2-s8-k8: done" in (grid_project / "out" / "benchmark.log").read_text()
    assert "3 passed" in text


@pytest.mark.slow
def test_progress_lines_without_a_terminal(grid_project: Path) -> None:
    code, output = _run_without_terminal(grid_project, "--output-dir", "out")
    assert code == 0, output[-3000:]
    assert "progress: 3/3 cases (0 failed, 0 skipped)" in output
    assert "\r" not in output, "no carriage returns in a log"
    assert "progress: 3/3 cases" in (grid_project / "out" / "benchmark.log").read_text()


@pytest.mark.slow
def test_controller_counts_under_xdist(grid_project: Path) -> None:
    """On a terminal: the controller's bar counts the workers' cases. Without one (progress
    lines): tests/test_xdist.py."""
    code, text = _run_in_pty(grid_project, "--output-dir", "out", "-n", "2")
    assert code == 0, text[-3000:]
    assert re.search(r"cases: 100%\|[^|]*\| 3/3", text), text[-3000:]
