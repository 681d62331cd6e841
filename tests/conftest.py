"""Shared fixtures for the suite's own tests."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

# Imported here, in the outer process, on purpose: pytester's in-process runs restore
# sys.modules after each run, and torch (which the suite's fixtures import) cannot be
# imported a second time into one process. The report writer (matplotlib, seconds to
# import) is imported here too, so that each in-process run that writes a report does not
# import it again.
import dllm_bench.fixture
import dllm_bench.sinks.report.writer  # noqa: F401
from tests.helpers import BENCH_TEST_FILE
from tests.prestarted import PRESTARTED_ENV, PrestartedInterpreter

# The suite turns tqdm's monitor thread off in its process (dllm_bench.progress); so do the
# tests' own model writes here, which would otherwise start it before the first in-process
# run and look like a thread that run left behind (see `process_state`).
tqdm.monitor_interval = 0

# The test files that take longest (tens of seconds each: they start processes, submit SLURM
# jobs, train, or sleep on purpose), longest first, as measured with `--durations=0` on the
# 2-core CI machine. `pytest tests -n 3 --dist loadfile --no-loadscope-reorder` hands whole
# files to the workers in collection order, so these are handed out first and the hundreds of
# short tests fill the gaps at the end instead of a long file starting last. Only the order
# changes: a file missing here runs after them, as before.
LONG_FILES = (
    "test_xdist.py",
    "test_slurm.py",
    "test_interrupts.py",
    "test_trained_models.py",
    "test_gpu_check.py",
    "test_faults.py",
    "test_ci_scripts.py",
    "test_measurement.py",
    "test_progress.py",
    "test_report_browser.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long files first (in LONG_FILES order), each file's tests kept in their order."""
    rank = {name: index for index, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FILES)))


@pytest.fixture(scope="session", autouse=True)
def _started_pytest_runs_are_not_xdist_workers() -> Iterator[None]:
    """Under `pytest tests -n 3` each worker has PYTEST_XDIST_WORKER and its siblings in its
    environment. The pytest runs the tests start are independent sessions and must not
    inherit them: pytest-benchmark turns itself off in what it takes for an xdist worker,
    and the suite pins a worker to a GPU. Session-scoped and autouse, so it comes first."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("PYTEST_XDIST_")]:
            patch.delenv(name)
        yield


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_per_test_process() -> Iterator[None]:
    """One torch CPU thread in each test process and in the processes the tests start (as
    the suite's own runs use by default). `pytest tests -n 3` runs three workers on the two
    cores of the CI machine: with torch's default of a thread per core each, six threads
    share two cores, and torch's waiting threads take the time the tests need."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init model folders shared by every test of the session (written once)."""
    return tmp_path_factory.mktemp("model-cache")


def _open_descriptors() -> list[str]:
    """This process's open descriptors and their targets, without files of the installed
    libraries (matplotlib keeps its font files open in its own cache)."""
    if not os.path.isdir("/proc/self/fd"):
        return []
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used, closed since
            continue
        if not target.startswith(sys.prefix):
            found.append(f"{fd} -> {target}")
    return sorted(found)


def process_state() -> dict[str, object]:
    """What a run of the suite changes in its process and must give back when pytest ends
    (an in-process run shares this process): signal handlers, log handlers outside pytest's
    own, the logging error switch, Python threads and open file descriptors."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
    return {
        "signal handlers": {sig.name: signal.getsignal(sig) for sig in signals},
        "log handlers": {
            name or "root": [h for h in logging.getLogger(name).handlers if type(h).__module__ != "_pytest.logging"]
            for name in ("", "dllm_bench")
        },
        "logging.raiseExceptions": logging.raiseExceptions,
        "threads": sorted(thread.name for thread in threading.enumerate()),
        "open descriptors": _open_descriptors(),
    }


@pytest.fixture
def bench_project(
    pytester: pytest.Pytester, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pytest.Pytester]:
    """A pytester project with the benchmark test file, offline, using the shared model cache.

    Its runs are in-process (`runpytest`, `runpytest_inprocess`) unless a test needs a
    process of its own. After the test, the process must be as before: the suite's signal
    handlers, log handlers and descriptors given back. torch's CPU thread count, which the
    suite sets for its process on purpose, is put back here."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DLLM_BENCH_CACHE", str(model_cache_dir))
    pytester.makepyfile(test_bench=BENCH_TEST_FILE)
    threads = torch.get_num_threads()
    before = process_state()
    yield pytester
    torch.set_num_threads(threads)
    after = process_state()
    changed = {key: (before[key], after[key]) for key in before if before[key] != after[key]}
    assert not changed, f"an in-process run left state behind in this process: {changed}"


@pytest.fixture(scope="session")
def prestarted_interpreter(_one_torch_thread_per_test_process: None) -> Iterator[PrestartedInterpreter]:
    """This test process's prestarted interpreter (`tests.prestarted`): started when a test
    first needs it, ended with the session."""
    server = PrestartedInterpreter({**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.close()


@pytest.fixture
def project(
    tmp_path: Path,
    model_cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    prestarted_interpreter: PrestartedInterpreter,
) -> Path:
    """A folder with the benchmark test file, for tests that start `python -m pytest`
    themselves (real signals, real processes); see `tests.helpers.start_pytest`, which forks
    them from the prestarted interpreter."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DLLM_BENCH_CACHE", str(model_cache_dir))
    monkeypatch.setenv(PRESTARTED_ENV, str(prestarted_interpreter.socket_path))
    (tmp_path / "test_bench.py").write_text(BENCH_TEST_FILE, encoding="utf-8")
    return tmp_path
