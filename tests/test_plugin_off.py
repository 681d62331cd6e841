"""Installed in an environment, the plugin changes nothing for sessions that did not ask for
it: a project unrelated to the suite runs exactly as with `-p no:dllm_bench`."""

from __future__ import annotations

import json
import re
import signal
import sys
import time

import pytest

pytestmark = pytest.mark.slow

UNRELATED_TESTS = """
import logging
import os
import signal
import time

LOG = logging.getLogger("unrelated")


def test_logs_something():
    LOG.info("an info record")
    LOG.warning("a warning record")


def test_benchmark(benchmark):
    benchmark(sum, range(100))


def test_signal_handlers_are_python_defaults():
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL


def test_waits_for_sigterm():
    if os.environ.get("WAIT_FOR_SIGTERM"):
        open("waiting", "w").close()
        time.sleep(60)
"""


def _normalized(text: str) -> list[str]:
    """Output lines without what differs between any two runs (times, the plugin list)."""
    lines = []
    for line in text.splitlines():
        if line.startswith(("plugins:", "rootdir:", "platform ", "benchmark:")):
            continue
        line = re.sub(r"\d+\.\d+s", "T", line)
        line = re.sub(r"\(\d+:\d\d:\d\d\)", "", line)
        if "Name (time in" in line or line.startswith(("test_benchmark", "---", "Legend", "  Outliers", "  OPS")):
            continue
        lines.append(line)
    return lines


def _run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, object]]:
    json_path = pytester.path / "bench.json"
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-v", "-rA", f"--benchmark-json={json_path}", "-k", "not waits", *args
    )
    return result, json.loads(json_path.read_text())


def test_unrelated_project_runs_as_without_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_unrelated=UNRELATED_TESTS)
    with_plugin, report_with = _run(pytester)
    without, report_without = _run(pytester, "-p", "no:dllm_bench")
    assert with_plugin.ret == without.ret == pytest.ExitCode.OK
    assert _normalized(with_plugin.stdout.str()) == _normalized(without.stdout.str())
    assert with_plugin.stderr.str() == without.stderr.str()
    # pytest-benchmark keeps its own timer and machine info.
    assert [b["options"]["timer"] for b in report_with["benchmarks"]] == ["perf_counter"]
    assert report_with["machine_info"].keys() == report_without["machine_info"].keys()  # type: ignore[attr-defined]
    assert not any("dllm-bench" in line for line in _normalized(with_plugin.stdout.str()))
    assert not (pytester.path / "results").exists()


def test_sigterm_keeps_its_default_meaning_in_an_unrelated_project(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_unrelated=UNRELATED_TESTS)
    monkeypatch.setenv("WAIT_FOR_SIGTERM", "1")
    proc = pytester.popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-k", "waits"])
    waiting = pytester.path / "waiting"
    for _ in range(600):
        if waiting.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert waiting.exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
