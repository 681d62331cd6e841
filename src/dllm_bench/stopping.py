"""Stop control of a run: the signal handlers, the stop requests, and under xdist the stop
file that carries a stop from the controller to every worker.

A stop happens between cases: the pytest session's `shouldstop`, and under xdist the
controller's too and a stop file that each worker checks after its case (a signal sent to
the controller alone does not reach the workers). Signal handlers never log (see
`dllm_bench.signals`); what they noted is written to the run's log files at the next safe
point by `log_notes`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dllm_bench.logs import log_file_handlers, write_to_log_files
from dllm_bench.signals import GracefulStop, note_records
from dllm_bench.xdist import STOP_FILE, stop_requested, write_stop_file

LOG = logging.getLogger("dllm_bench")


@dataclass
class StopControl:
    """The run's signal handlers and stop requests."""

    pytest_config: pytest.Config
    output_dir: Path
    log_handlers: list[logging.Handler]
    storage_error: Callable[[], str]
    pytest_session: pytest.Session | None = None
    stopper: GracefulStop | None = None
    # Set once the running manifest is written: from then on workers read the stop file.
    stop_file_on: bool = False
    interrupted_by: str | None = field(default=None)

    def install(self, pytest_session: pytest.Session) -> None:
        """The signal handlers, from pytest_sessionstart on."""
        self.pytest_session = pytest_session
        self.stopper = GracefulStop(self.request, console=True)
        self.stopper.install()

    def request(self, reason: str) -> str | None:
        """Stop between cases. Called from a signal handler, so it does not log: returns the
        error text when the stop file could not be written."""
        text = (
            f"received {reason}: stopped after the running case"
            if reason != "storage"
            else (f"stopped: {self.storage_error()}")
        )
        if self.pytest_session is not None:
            self.pytest_session.shouldstop = text
        dsession = self.pytest_config.pluginmanager.getplugin("dsession")
        if dsession is not None:
            dsession.shouldstop = text
            if self.stop_file_on:
                try:
                    write_stop_file(self.output_dir, text)
                except OSError as exc:
                    return f"could not write the stop file for the workers: {exc}"
        return None

    def held(self) -> AbstractContextManager[None]:
        """A signal arriving inside is acted on when the block ends."""
        return self.stopper.held() if self.stopper is not None else nullcontext()

    def interrupted(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """pytest_keyboard_interrupt: remember what stopped the run (a signal, or the stop
        the suite asked for itself after a storage error), and from now on let nothing
        interrupt the save."""
        received = self.stopper.received if self.stopper else []
        requested = isinstance(excinfo.value, pytest.Session.Interrupted)
        if received:
            self.interrupted_by = received[-1]
        elif not (requested and self.storage_error()):
            self.interrupted_by = "SIGINT"
        self.defer()
        self.log_notes()

    def defer(self) -> None:
        """Signals are recorded, not acted on (the save)."""
        if self.stopper is not None:
            self.stopper.defer()

    def worker_after_case(self, pytest_session: pytest.Session) -> None:
        """An xdist worker stops after this case when the controller asked for a stop."""
        if not pytest_session.shouldstop:
            reason = stop_requested(self.output_dir)
            if reason:
                pytest_session.shouldstop = reason

    def remove_stop_file(self) -> None:
        (self.output_dir / STOP_FILE).unlink(missing_ok=True)

    def log_notes(self) -> None:
        """What the signal handlers noted since the last call, into the log file (they
        wrote their console line themselves). Called only outside handlers."""
        if self.stopper is None:
            return
        notes = self.stopper.take_notes()
        if notes:
            write_to_log_files(log_file_handlers(self.pytest_config, self.log_handlers), note_records(notes, LOG))

    def restore(self) -> None:
        """The previous signal handlers back."""
        if self.stopper is not None:
            self.stopper.restore()
