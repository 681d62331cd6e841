"""Stop a run cleanly on SIGTERM / SIGUSR2 (SLURM, scancel, CI cancel), and never let a
signal interrupt the saving of results.

While cases run, the first SIGTERM or SIGUSR2 asks for a stop after the running case; a
second one interrupts at once (raised as KeyboardInterrupt, which pytest handles like
Ctrl+C). Ctrl+C (SIGINT) interrupts at once, as Python's default handler does. From the
moment a run is interrupted (the handler itself switches before it raises, so a second
Ctrl+C while pytest reports the first is caught too) or starts to save its results,
SIGINT, SIGTERM and SIGUSR2 are only recorded and logged: the save finishes. `restore`
puts the previous handlers back.

Inside `held()` (a finished case's row being appended and counted) a signal is kept and
acted on when the block ends, so that a row on disk is always a counted row.

A handler runs between any two bytecodes of the main thread, even inside a log call or a
write to the console, and may be re-entered by the next signal. So a handler never logs:
it says what it did in one console line written with `os.write` (once per message) and
leaves a note that the session logs to the log file at its next safe point (`take_notes`).
Logging from a handler was seen to raise into the interrupted code (RecursionError inside
logging under a burst of signals), which lost the save.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType, TracebackType

import pytest

LOG = logging.getLogger("dllm_bench.signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
SAVE_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


CONSOLE_PREFIX = "dllm-bench: "


def drop_lineless_frames(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Remove the traceback entries that have no line number from an interrupt and from the
    exceptions chained to it.

    A signal can land on an instruction with no line (Python 3.11+ then reports `tb_lineno`
    None); pytest's terminal reporter, formatting the KeyboardInterrupt, then fails with a
    TypeError and the run exits 1 (internal error) instead of 2 (interrupted). Seen in CI on
    a double Ctrl+C. The entries left are the ones pytest can show."""
    seen: set[int] = set()
    exc: BaseException | None = excinfo.value
    pending = [exc]
    while pending:
        exc = pending.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        kept = _with_lines(exc.__traceback__)
        if kept is not None:
            exc.__traceback__ = kept
        pending += [exc.__cause__, exc.__context__]
    head = _with_lines(excinfo.tb)
    if head is not None:
        excinfo.traceback = type(excinfo.traceback)(head)


def _with_lines(tb: TracebackType | None) -> TracebackType | None:
    """The entries of `tb` that have a line number, linked in order; None when none has."""
    kept: list[TracebackType] = []
    while tb is not None:
        if tb.tb_lineno is not None:
            kept.append(tb)
        tb = tb.tb_next
    for entry, following in zip(kept, [*kept[1:], None], strict=True):
        entry.tb_next = following
    return kept[0] if kept else None


@dataclass(frozen=True)
class SignalNote:
    """What a handler did, for the log file: when, how bad, what."""

    created: float
    level: int
    message: str


def note_records(notes: list[SignalNote], logger: logging.Logger) -> list[logging.LogRecord]:
    """Log records for notes, a run of identical messages as one record with its count,
    each stamped with the time its first signal arrived."""
    records: list[logging.LogRecord] = []
    for message, group in itertools.groupby(notes, key=lambda note: note.message):
        run = list(group)
        first, count = run[0], len(run)
        text = message if count == 1 else f"{message} ({count} times)"
        record = logger.makeRecord(logger.name, first.level, "(signal)", 0, text, (), None)
        record.created = first.created
        record.msecs = (first.created % 1) * 1000
        records.append(record)
    return records


class GracefulStop:
    """Signal handlers for one session. `request_stop(reason)` asks for a stop after the
    running case and returns an error text when part of that failed (else None). With
    `console`, handlers write their one line to a duplicate of stderr taken by `install`
    (at session start, while pytest does not capture it) and closed by `restore`."""

    def __init__(self, request_stop: Callable[[str], str | None], *, console: bool = False) -> None:
        self._request_stop = request_stop
        self._console = console
        self._console_fd: int | None = None
        self._previous: dict[int, Handler] = {}
        self.received: list[str] = []
        self._holding = False
        self._pending: list[int] = []
        self._notes: list[SignalNote] = []
        self._said: set[str] = set()

    def _set(self, signals: tuple[signal.Signals, ...], handler: Callable[[int, FrameType | None], None]) -> None:
        if threading.current_thread() is not threading.main_thread():
            LOG.warning("not on the main thread: signals cannot be handled by the suite")
            return
        for sig in signals:
            previous = signal.signal(sig, handler)
            self._previous.setdefault(sig, previous)

    def install(self) -> None:
        if self._console and self._console_fd is None:
            with contextlib.suppress(OSError):
                self._console_fd = os.dup(2)
        self._set(STOP_SIGNALS, self._handle)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._set((signal.SIGINT,), self._interrupt)

    def defer(self) -> None:
        """From now on, signals are recorded, not acted on: the results are being saved."""
        self._set(SAVE_SIGNALS, self._record)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Signals arriving in the block are acted on when it ends (in arrival order, by
        the handler then in place), not in the middle of it."""
        if self._holding:
            yield
            return
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            self._act_on_pending()

    def _act_on_pending(self) -> None:
        pending, self._pending = self._pending, []
        for signum in pending:  # once one raises, the run is interrupted: the rest are moot
            handler = signal.getsignal(signum)
            if callable(handler):
                handler(signum, None)

    def _kept(self, signum: int) -> bool:
        """Inside `held()`: keep the signal for its end."""
        if self._holding:
            self._pending.append(signum)
        return self._holding

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        if self._console_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._console_fd)
            self._console_fd = None

    def take_notes(self) -> list[SignalNote]:
        """The notes left by handlers since the last call (not from a handler: for logging)."""
        notes, self._notes = self._notes, []
        return notes

    def _note(self, level: int, message: str) -> None:
        """From a handler: a note for the log, and the message on the console once."""
        self._notes.append(SignalNote(time.time(), level, message))
        if self._console_fd is None or message in self._said:
            return
        self._said.add(message)
        with contextlib.suppress(OSError):
            os.write(self._console_fd, f"{CONSOLE_PREFIX}{message}\n".encode())

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._kept(signum):
            return
        name = signal.Signals(signum).name
        self.received.append(name)
        if len(self.received) == 1:
            stopping = "stopping after the running case (send it again to stop at once)"
            self._note(logging.WARNING, f"received {name}: {stopping}")
            error = self._request_stop(name)
            if error:
                self._note(logging.ERROR, error)
            return
        self._note(logging.WARNING, f"received {name} again: interrupting now")
        self.defer()
        raise KeyboardInterrupt(f"second stop signal ({name})")

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        """Ctrl+C: interrupt now, as Python's default handler, but from here on record
        further signals instead of letting them break the save."""
        if self._kept(signum):
            return
        self.received.append(signal.Signals(signum).name)
        self.defer()
        raise KeyboardInterrupt

    def _record(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self._note(logging.WARNING, f"received {name} while saving the results; the save finishes first")
