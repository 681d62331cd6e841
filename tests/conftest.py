"""Shared fixtures for the suite's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import BENCH_TEST_FILE


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
