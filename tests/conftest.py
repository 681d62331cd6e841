"""Shared fixtures for the suite's own tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Imported here, in the outer process, on purpose: pytester's in-process runs restore
# sys.modules after each run, and torch (which the suite's fixtures import) cannot be
# imported a second time into one process.
import dllm_bench.fixture  # noqa: F401
from tests.helpers import BENCH_TEST_FILE


@pytest.fixture(scope="session", autouse=True)
def _started_pytest_runs_are_not_xdist_workers() -> Iterator[None]:
    """Under `pytest tests -n 2` each worker has PYTEST_XDIST_WORKER and its siblings in its
    environment. The pytest runs the tests start are independent sessions and must not
    inherit them: pytest-benchmark turns itself off in what it takes for an xdist worker,
    and the suite pins a worker to a GPU. Session-scoped and autouse, so it comes first."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("PYTEST_XDIST_")]:
            patch.delenv(name)
        yield


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-init model folders shared by every test of the session (written once)."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def bench_project(pytester: pytest.Pytester, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester project with the benchmark test file, offline, using the shared model cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DLLM_BENCH_CACHE", str(model_cache_dir))
    pytester.makepyfile(test_bench=BENCH_TEST_FILE)
    return pytester


@pytest.fixture
def project(tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the benchmark test file, for tests that start `python -m pytest`
    themselves (real signals, real processes); see `tests.helpers.start_pytest`."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DLLM_BENCH_CACHE", str(model_cache_dir))
    (tmp_path / "test_bench.py").write_text(BENCH_TEST_FILE, encoding="utf-8")
    return tmp_path
