"""Every suite option has an ini twin and (some) an environment variable; the command line
wins over the environment, which wins over the ini file. Old spellings still work, with a
deprecation warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from dllm_bench import options
from dllm_bench.rows import Row
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
