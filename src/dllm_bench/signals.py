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
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

LOG = logging.getLogger("dllm_bench.signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
SAVE_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class GracefulStop:
    """Signal handlers for one session."""

    def __init__(self, request_stop: Callable[[str], None]) -> None:
        self._request_stop = request_stop
        self._previous: dict[int, Handler] = {}
        self.received: list[str] = []
        self._holding = False
        self._pending: list[int] = []

    def _set(self, signals: tuple[signal.Signals, ...], handler: Callable[[int, FrameType | None], None]) -> None:
        if threading.current_thread() is not threading.main_thread():
            LOG.warning("not on the main thread: signals cannot be handled by the suite")
            return
        for sig in signals:
            previous = signal.signal(sig, handler)
            self._previous.setdefault(sig, previous)

    def install(self) -> None:
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

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._kept(signum):
            return
        name = signal.Signals(signum).name
        self.received.append(name)
        if len(self.received) == 1:
            LOG.warning("received %s: stopping after the running case (send it again to stop at once)", name)
            self._request_stop(name)
            return
        LOG.warning("received %s again: interrupting now", name)
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
        LOG.warning("received %s while saving the results; the save finishes first", signal.Signals(signum).name)

