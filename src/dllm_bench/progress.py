"""Progress for the person at the terminal (tqdm bars) or in a job log (periodic lines).

Bars never redraw inside a timed region: during measured rounds the inner bar's counter
is only incremented; it is redrawn between rounds. tqdm's monitor thread is off.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TextIO

from tqdm import tqdm

from dllm_bench.sinks.manifest import Counts

LOG = logging.getLogger("dllm_bench.progress")

LOG_EVERY_SECONDS = 30.0
LOG_EVERY_FRACTION = 0.1


def choose_mode(requested: str, *, is_tty: bool, is_worker: bool) -> str:
    """`auto` is `bar` on a terminal and `log` elsewhere; xdist workers draw nothing."""
    if is_worker:
        return "off"
    if requested == "auto":
        return "bar" if is_tty else "log"
    return requested


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class TerminalStream:
    """A file-like object that writes to the real stderr even while pytest captures
    output: each write runs inside `suspend()` (the capture manager's
    `global_and_fixture_disabled`)."""

    def __init__(self, suspend: Callable[[], AbstractContextManager[object]]) -> None:
        self._suspend = suspend

    def write(self, text: str) -> int:
        with self._suspend():
            sys.stderr.write(text)
            sys.stderr.flush()
        return len(text)

    def flush(self) -> None:
        """Every write is flushed already."""


def progress_line(counts: Counts, started: float) -> str:
    """`progress: 14/28 cases (0 failed, 0 skipped), elapsed 0:00:12, ETA 0:00:11`."""
    done = counts.finished()
    elapsed = time.monotonic() - started
    eta = elapsed / done * (counts.planned - done) if 0 < done < counts.planned else None
    return (
        f"progress: {done}/{counts.planned} cases ({counts.failed} failed, {counts.skipped} skipped), "
        f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta) if eta is not None else '-'}"
    )


class CaseProgress:
    """The inner bar of one case: forward passes of the warm-up and measured rounds."""

    def __init__(self, bar: tqdm[Any] | None, expected_nfe: int, warmup_rounds: int, measured_rounds: int) -> None:
        self._bar = bar
        self._expected_nfe = expected_nfe
        self._warmup_rounds = warmup_rounds
        self._measured_rounds = measured_rounds
        self._round = 0
        self.timed = False

    def round_started(self) -> None:
        """Called between calls (outside any timed region): redraw here."""
        self._round += 1
        if self._bar is None:
            return
        if self._round <= self._warmup_rounds:
            label, self.timed = f"warm-up {self._round}/{self._warmup_rounds}", False
        else:
            label, self.timed = f"round {self._round - self._warmup_rounds}/{self._measured_rounds}", True
        self._bar.n = (self._round - 1) * self._expected_nfe
        self._bar.set_description_str(label, refresh=False)
        self._bar.refresh()

    def forward(self, *_: object) -> None:
        """Called after each forward pass; never draws during a timed round."""
        if self._bar is None:
            return
        if self.timed:
            self._bar.n += 1
        else:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Progress:
    """What the session reports to; `mode` is bar, log or off. It shows the session's own
    counts (`counts`), it does not keep any."""

    def __init__(self, mode: str, counts: Counts, stream: TextIO | TerminalStream | None = None) -> None:
        if mode not in ("bar", "log", "off"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        self.counts = counts
        self.started = time.monotonic()
        self._stream = stream
        self._outer: tqdm[Any] | None = None
        self._last_log = time.monotonic()
        self._logged_done = 0
        tqdm.monitor_interval = 0

    def start(self, total: int) -> None:
        """Show the bar (or the first line) for `total` cases; the session set counts.planned."""
        self.started = time.monotonic()
        if self.mode == "bar" and self._outer is None:
            self._outer = tqdm(
                total=total, desc="cases", unit="case", position=0, file=self._stream, dynamic_ncols=True, leave=True
            )
        elif self.mode == "log":
            LOG.info("progress: 0/%d cases", total)

    def case_started(self, case_id: str) -> None:
        if self._outer is not None:
            self._outer.set_postfix_str(case_id, refresh=True)

    def case_finished(self) -> None:
        """Redraw after the session counted a finished case."""
        if self._outer is not None:
            self._outer.set_description_str(self._outer_label(), refresh=False)
            self._outer.update(1)
        elif self.mode == "log" and self._log_due():
            LOG.info(progress_line(self.counts, self.started))
            self._last_log = time.monotonic()
            self._logged_done = self.counts.finished()

    def _outer_label(self) -> str:
        failed = f" {self.counts.failed} failed" if self.counts.failed else ""
        skipped = f" {self.counts.skipped} skipped" if self.counts.skipped else ""
        return f"cases{failed}{skipped}"

    def _log_due(self) -> bool:
        every = max(1, round(self.counts.planned * LOG_EVERY_FRACTION))
        done = self.counts.finished()
        return (
            done >= self.counts.planned
            or done - self._logged_done >= every
            or time.monotonic() - self._last_log >= LOG_EVERY_SECONDS
        )

    def case_bar(self, expected_nfe: int, warmup_rounds: int, measured_rounds: int) -> CaseProgress:
        bar = None
        if self.mode == "bar":
            bar = tqdm(
                total=expected_nfe * (warmup_rounds + measured_rounds),
                unit="fwd",
                position=1,
                leave=False,
                file=self._stream,
                dynamic_ncols=True,
                mininterval=0.2,
            )
        return CaseProgress(bar, expected_nfe, warmup_rounds, measured_rounds)

    def loading(self, model_name: str) -> AbstractContextManager[object]:
        if self.mode != "bar":
            return nullcontext()
        return self._loading_bar(model_name)

    @contextmanager
    def _loading_bar(self, model_name: str) -> Iterator[None]:
        bar = tqdm(total=None, desc=f"loading {model_name}", position=1, leave=False, file=self._stream)
        try:
            yield
        finally:
            bar.close()

    def write(self, line: str) -> None:
        """A line above the bars (log records while bars are drawn)."""
        tqdm.write(line, file=self._stream)

    def close(self) -> None:
        if self._outer is not None:
            self._outer.close()
            self._outer = None


class BarLogHandler(logging.Handler):
    """Prints log records above the bars instead of through them."""

    def __init__(self, progress: Progress, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._progress.write(self.format(record))
        except Exception:  # a broken terminal must not fail the run
            self.handleError(record)
