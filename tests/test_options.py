"""Every suite option has an ini twin and (some) an environment variable; the command line
wins over the environment, which wins over the ini file. Old spellings still work, with a
deprecation warning."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from dllm_bench import options
from dllm_bench.environment import threads_warning, usable_cores
from dllm_bench.rows import Row
from dllm_bench.runner import HostLoad, noise_warning
from dllm_bench.sinks.csvfiles import append_row
from tests.helpers import tiny_config, write_config


def _read(pytester: pytest.Pytester, *args: str, env: dict[str, str] | None = None) -> options.Options:
    config = pytester.parseconfig(*args)
    return options.read(config, env or {})


def test_defaults_without_anything(pytester: pytest.Pytester) -> None:
    read = _read(pytester)
    assert read.config is None and read.output_dir is None and not read.resume
    assert read.progress == "auto"
    assert read.model_cache_dir == Path("~/.cache/dllm-bench/models").expanduser()
    assert read.threads is None
    assert not read.asked


def test_precedence_command_line_then_environment_then_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\ndllm_threads = 3\ndllm_progress = off\ndllm_gate =\n    nfe:+0%\n    tokens_per_s:-5%\n"
    )
    assert _read(pytester).threads == 3
    assert _read(pytester).gates == ("nfe:+0%", "tokens_per_s:-5%")
    assert not _read(pytester).asked, "ini values alone do not turn the suite on"
    assert _read(pytester, env={"DLLM_BENCH_THREADS": "2"}).threads == 2
    assert _read(pytester, "--threads", "4", env={"DLLM_BENCH_THREADS": "2"}).threads == 4
    assert _read(pytester, env={"DLLM_BENCH_PROGRESS": "log"}).progress == "log"
    assert _read(pytester, "--threads", "4").asked


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_threads_are_refused(pytester: pytest.Pytester, value: str) -> None:
    with pytest.raises(options.OptionError, match="--threads"):
        _read(pytester, env={"DLLM_BENCH_THREADS": value})


def test_the_deprecated_gate_baseline_still_works_and_warns(pytester: pytest.Pytester) -> None:
    assert _read(pytester, "--gate-baseline", "ref").gate_reference == Path("ref")
    result = pytester.runpytest("--gate-baseline", "ref", "--collect-only", "-p", "no:dllm_bench")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, "without the plugin the flag does not exist"
    config = write_config(pytester.path, tiny_config())
    reference = pytester.path / "ref.csv"
    append_row(reference, Row(case_id="x", status="ok"))
    with_plugin = pytester.runpytest(
        "--config", str(config), "--gate", "nfe:+0%", "--gate-baseline", str(reference), "--collect-only"
    )
    assert with_plugin.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert "--gate-baseline is deprecated: write --gate-reference" in with_plugin.stdout.str()


@pytest.mark.slow
def test_an_ini_config_is_used_when_the_suite_is_on(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    bench_project.makeini(f"[pytest]\ndllm_config = {path}\n")
    result = bench_project.runpytest_inprocess("--collect-only", "-q", "--progress", "off")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["test_bench.py::test_llada[[]tiny-llada-p8-g8-b2-s4-k8[]]"])


# --- threads beyond the usable cores ------------------------------------------------------------


def test_threads_beyond_the_usable_cores_are_named() -> None:
    warning = threads_warning(10000, 2)
    assert warning is not None and "10000 torch threads" in warning and "only 2 CPU core(s)" in warning
    assert threads_warning(2, 2) is None
    assert threads_warning(1, 2) is None


def test_usable_cores_are_the_affinity_mask() -> None:
    assert usable_cores() == len(os.sched_getaffinity(0))


def test_the_row_noise_warning_names_threads_beyond_the_cores() -> None:
    assert noise_warning(HostLoad(load_avg_1m=0.1, cpu_count=2, threads=10000), latency_cv=None) == "threads"
    assert noise_warning(HostLoad(load_avg_1m=9.0, cpu_count=2, threads=3), latency_cv=0.5) == "load,threads,cv"
    assert noise_warning(HostLoad(load_avg_1m=0.1, cpu_count=2, threads=2), latency_cv=None) == ""


def test_the_run_logs_a_warning_for_threads_beyond_the_cores(
    bench_project: pytest.Pytester, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(bench_project.path, tiny_config())
    threads = usable_cores() + 1
    before = torch.get_num_threads()
    try:
        result = bench_project.runpytest_inprocess(
            "--config", str(path), "--collect-only", "-q", "--progress", "off", "--threads", str(threads)
        )
    finally:
        torch.set_num_threads(before)
    assert result.ret == pytest.ExitCode.OK
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"{threads} torch threads but this process may use only {usable_cores()}" in w for w in warnings)
