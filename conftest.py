"""Root conftest. The suite's plugin comes from the installed package's `pytest11` entry
point (`dllm_bench.plugin`); this file only says what to do when it is missing."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("dllm_bench"):
        raise pytest.UsageError("the dllm-bench plugin is not installed: run `pip install -e .` in this folder first")
