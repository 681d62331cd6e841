"""Stop a run cleanly on SIGTERM / SIGUSR2 (SLURM, scancel, CI cancel).

The first signal asks for a stop after the running case; a second one interrupts at once
(raised as KeyboardInterrupt, which pytest handles like Ctrl+C). The previous handlers
are put back by `restore`.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

LOG = logging.getLogger("dllm_bench.signals")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class GracefulStop:
    """Signal handlers for one session."""

    def __init__(self, request_stop: Callable[[str], None]) -> None:
        self._request_stop = request_stop
        self._previous: dict[int, Handler] = {}
        self.received: list[str] = []

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            LOG.warning("not on the main thread: SIGTERM/SIGUSR2 will not stop the run cleanly")
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if len(self.received) == 1:
            LOG.warning("received %s: stopping after the running case (send it again to stop at once)", name)
            self._request_stop(name)
            return
        LOG.warning("received %s again: interrupting now", name)
        raise KeyboardInterrupt(f"second stop signal ({name})")

    @property
    def first_signal(self) -> str | None:
        return self.received[0] if self.received else None
