"""The pytest plugin: option registration and hooks, each a few lines calling the session.

Registered through the `pytest11` entry point `dllm_bench`. The plugin does nothing unless
asked: a suite option on the command line, or a conftest.py of the collected folders that
sets `DLLM_BENCH_CASES = True` (as `benchmarks/conftest.py` does). Only then does it read
the grid, load the session and its fixtures (`dllm_bench.fixture`), set pytest-benchmark's
timer and the log file, and install signal handlers. This module imports nothing heavy, so
a pytest run of another project pays nothing for it.

Hooks are laid out in the order pytest calls them.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from dllm_bench import options
from dllm_bench.devices import visible_gpus
from dllm_bench.kinds import CASE_FIXTURES

if TYPE_CHECKING:
    from dllm_bench.session import RunSession

FIXTURE_PLUGIN = "dllm_bench.fixture"
CASES_MARK = "DLLM_BENCH_CASES"
DEFAULT_TIMER = "dllm_bench.timing.synchronized_timer"
LOG = logging.getLogger("dllm_bench")
SESSION_KEY = pytest.StashKey["RunSession"]()


def _session(config: pytest.Config) -> RunSession | None:
    return config.stash.get(SESSION_KEY, None)


def _asked(config: pytest.Config, opts: options.Options) -> bool:
    """A suite option on the command line, or a cases folder among the loaded conftests."""
    plugins = config.pluginmanager.get_plugins()
    return opts.asked or any(getattr(plugin, CASES_MARK, False) is True for plugin in plugins)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.register(parser)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: one worker per visible GPU; on a CPU-only machine, half the cores (at most 4)."""
    try:
        if not _asked(config, options.read(config)):
            return None
    except options.OptionError:
        return None
    gpus = visible_gpus(os.environ)
    return len(gpus) if gpus else max(1, min(4, (os.cpu_count() or 2) // 2))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    try:
        opts = options.read(config)
    except options.OptionError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not _asked(config, opts):
        return
    try:
        config.pluginmanager.import_plugin(FIXTURE_PLUGIN)
        fixture_module: Any = config.pluginmanager.get_plugin(FIXTURE_PLUGIN)
        session = fixture_module.start_session(config, opts)
    except KeyboardInterrupt:
        # pytest's terminal reporter does not exist yet: say it here, then stop as pytest does.
        sys.stderr.write("dllm-bench: interrupted (KeyboardInterrupt) while starting; nothing ran\n")
        raise
    config.stash[SESSION_KEY] = session
    if "perf_counter" in str(getattr(config.option, "benchmark_timer", "")):
        config.option.benchmark_timer = DEFAULT_TIMER


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = _session(config)
    return session.header() if session is not None else []


def pytest_sessionstart(session: pytest.Session) -> None:
    run = _session(session.config)
    if run is not None:
        run.begin(session)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = [name for name in CASE_FIXTURES if name in metafunc.fixturenames]
    if not wanted:
        return
    run = _session(metafunc.config)
    if run is None:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid} uses dllm-bench cases but the suite is off: pass --config PATH, "
            f"or set {CASES_MARK} = True in the conftest.py of its folder"
        )
    cases = run.cases_for(wanted[0])
    metafunc.parametrize(wanted[0], cases, ids=[c.case_id for c in cases])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    run = _session(config)
    if run is None:
        return
    try:
        run.select(items)
    except ValueError as exc:  # UsageProblem: a results file that cannot be read
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, object, object]:
    result = yield
    run = _session(item.config)
    if run is not None:
        run.after_case(item.session)
    return result


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Generator[None, object, object]:
    """The results are saved before any other plugin's end of session (xdist's worker
    teardown takes seconds); from here on signals cannot interrupt the save."""
    run = _session(session.config)
    if run is not None:
        run.finish(session, exitstatus)
    return (yield)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = _session(config)
    if run is None:
        return
    for line, bad in run.summary():
        terminalreporter.write_line(line, red=bad)


@pytest.hookimpl(wrapper=True)
def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Generator[None, object, object]:
    """With progress bars, pytest's per-test letters would land on the bars: keep the
    outcome category (for the summary counts), drop the letter and the word."""
    result = yield
    run = _session(config)
    if run is None or run.progress_mode != "bar" or not run.is_case(report.nodeid):
        return result
    if isinstance(result, tuple) and len(result) == 3:
        return (result[0], "", "")
    return result


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    run = _session(config)
    if run is not None:
        machine_info["dllm_bench"] = run.machine_info()


@pytest.hookimpl(wrapper=True)
def pytest_benchmark_compare_machine_info(
    config: pytest.Config, benchmarksession: Any, machine_info: Any, compared_benchmark: Any
) -> Generator[None, object, object]:
    """pytest-benchmark 5.x's warning that the compared run's machine_info differs raises
    ValueError (an INTERNALERROR) when the storage is outside the current directory, as the
    CI history is: give the warning instead."""
    try:
        return (yield)
    except ValueError:
        if _session(config) is None:
            raise
        LOG.warning(
            "the compared benchmark in %s has another machine_info (another machine or library versions)",
            getattr(getattr(benchmarksession, "storage", None), "path", "the storage"),
        )
        return None


@pytest.hookimpl(tryfirst=True, specname="pytest_unconfigure")
def pytest_unconfigure_log_files(config: pytest.Config) -> None:
    """Before pytest's logging plugin closes the log file: a failed last write is one line."""
    run = _session(config)
    if run is None:
        return
    reporter = config.pluginmanager.getplugin("terminalreporter")
    for line in run.close_log_files():
        if reporter is not None:
            reporter.write_line(line, yellow=True)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    run = _session(config)
    if run is None:
        return
    line = run.closing_line()
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if line is not None and reporter is not None:
        reporter.write_line(line, red=True, bold=True)
    run.close()
