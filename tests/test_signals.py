"""The suite's signal handlers, with real signals sent to this test process."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from dllm_bench.signals import GracefulStop


@pytest.fixture
def stop() -> Iterator[tuple[GracefulStop, list[str]]]:
    requested: list[str] = []
    handlers = GracefulStop(requested.append)
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
