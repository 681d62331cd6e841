"""The suite's signal handlers, with real signals sent to this test process."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Iterator
from types import TracebackType

import pytest

from dllm_bench.signals import GracefulStop, drop_lineless_frames, note_records


@pytest.fixture(autouse=True)
def _python_default_sigint() -> Iterator[None]:
    """The suite takes over Ctrl+C only from Python's default handler; an xdist worker
    ignores SIGINT (the controller handles it), so the tests set the default themselves."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def stop() -> Iterator[tuple[GracefulStop, list[str]]]:
    requested: list[str] = []

    def request_stop(reason: str) -> None:
        requested.append(reason)

    handlers = GracefulStop(request_stop)
    handlers.install()
    try:
        yield handlers, requested
    finally:
        handlers.restore()


def test_ctrl_c_interrupts_at_once(stop: tuple[GracefulStop, list[str]]) -> None:
    handlers, _ = stop
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    assert handlers.received == ["SIGINT"]


def test_ctrl_c_inside_held_is_acted_on_when_the_block_ends(stop: tuple[GracefulStop, list[str]]) -> None:
    handlers, _ = stop
    finished = False
    with pytest.raises(KeyboardInterrupt), handlers.held():
        signal.raise_signal(signal.SIGINT)
        assert handlers.received == [], "not acted on inside the block"
        finished = True
    assert finished
    assert handlers.received == ["SIGINT"]
    # From the interrupt on, signals are recorded only: a later Ctrl+C raises nothing.
    signal.raise_signal(signal.SIGINT)


def test_one_sigterm_inside_held_asks_for_a_stop_afterwards(stop: tuple[GracefulStop, list[str]]) -> None:
    handlers, requested = stop
    with handlers.held():
        signal.raise_signal(signal.SIGTERM)
        assert requested == []
    assert requested == ["SIGTERM"]
    assert handlers.received == ["SIGTERM"]


def test_two_sigterms_inside_held_interrupt_afterwards(stop: tuple[GracefulStop, list[str]]) -> None:
    handlers, requested = stop
    with pytest.raises(KeyboardInterrupt), handlers.held():
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)
    assert requested == ["SIGTERM"]
    assert handlers.received == ["SIGTERM", "SIGTERM"]


def test_held_blocks_nest_and_the_outer_end_acts(stop: tuple[GracefulStop, list[str]]) -> None:
    handlers, requested = stop
    with handlers.held():
        with handlers.held():
            signal.raise_signal(signal.SIGUSR2)
        assert requested == [], "the inner block's end does not act"
    assert requested == ["SIGUSR2"]


def test_restore_puts_the_previous_handlers_back() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    handlers = GracefulStop(lambda name: None)
    handlers.install()
    handlers.defer()
    handlers.restore()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_handler_writes_its_console_line_once_and_leaves_notes_for_the_log(
    capfd: pytest.CaptureFixture[str],
) -> None:
    handlers = GracefulStop(lambda reason: None, console=True)
    handlers.install()  # its duplicate of stderr is pytest's capture of file descriptor 2
    try:
        signal.raise_signal(signal.SIGTERM)
        handlers.defer()
        for _ in range(3):
            signal.raise_signal(signal.SIGINT)
    finally:
        handlers.restore()
    lines = capfd.readouterr().err.splitlines()
    assert lines == [
        "dllm-bench: received SIGTERM: stopping after the running case (send it again to stop at once)",
        "dllm-bench: received SIGINT while saving the results; the save finishes first",
    ]
    notes = handlers.take_notes()
    assert [note.level for note in notes] == [logging.WARNING] * 4
    assert handlers.take_notes() == [], "taken once"
    records = note_records(notes, logging.getLogger("dllm_bench"))
    assert [record.getMessage() for record in records] == [
        "received SIGTERM: stopping after the running case (send it again to stop at once)",
        "received SIGINT while saving the results; the save finishes first (3 times)",
    ]
    assert records[0].created == notes[0].created, "stamped with the time the signal came"


def test_a_stop_that_could_not_be_fully_requested_is_noted_as_an_error() -> None:
    handlers = GracefulStop(lambda reason: f"could not write the stop file ({reason})")
    handlers.install()
    try:
        signal.raise_signal(signal.SIGUSR2)
    finally:
        handlers.restore()
    notes = handlers.take_notes()
    assert [(note.level, note.message) for note in notes][-1] == (
        logging.ERROR,
        "could not write the stop file (SIGUSR2)",
    )


def _interrupt_with_lineless_frames() -> pytest.ExceptionInfo[BaseException]:
    """A KeyboardInterrupt raised with a lost error as its context, each traceback headed by
    an entry that has no line number, as when a signal lands on an instruction with none."""

    def lineless(tb: TracebackType | None) -> TracebackType:
        return TracebackType(tb, sys._getframe(), 10**6, -1)

    try:
        try:
            raise OSError("disk full")
        except OSError as lost:
            lost.__traceback__ = lineless(lost.__traceback__)
            raise KeyboardInterrupt from None
    except KeyboardInterrupt as exc:
        exc.__suppress_context__ = False
        head = lineless(exc.__traceback__)
        exc.__traceback__ = head
        return pytest.ExceptionInfo.from_exc_info((KeyboardInterrupt, exc, head))


def test_an_interrupt_with_lineless_frames_breaks_pytests_report() -> None:
    """The failure the fix is for: pytest cannot format such an interrupt."""
    assert _interrupt_with_lineless_frames().traceback[0]._rawentry.tb_lineno is None
    with pytest.raises(TypeError):
        _interrupt_with_lineless_frames().getrepr(funcargs=True)


def test_drop_lineless_frames_lets_pytest_report_the_interrupt() -> None:
    excinfo = _interrupt_with_lineless_frames()
    drop_lineless_frames(excinfo)
    text = str(excinfo.getrepr(funcargs=True))
    assert "KeyboardInterrupt" in text
    assert "OSError: disk full" in text  # the chained error is still shown
    assert "_interrupt_with_lineless_frames" in text
