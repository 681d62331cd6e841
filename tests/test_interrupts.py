"""Nothing finished is lost: real pytest processes receive real signals.

Each test starts `python -m pytest` on a small grid whose cases take long enough to be
interrupted, in its own process group with the default SIGINT handler, waits until some
rows are on disk, sends the signal, and then checks the files and a `--resume` run.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from dllm_bench.models.random_init import write_llada_folder
from dllm_bench.results import COLUMN_NAMES, read_rows
from tests.helpers import BENCH_TEST_FILE, TINY_LLADA_ARCH, tiny_config, write_config

pytestmark = pytest.mark.slow
LOG = logging.getLogger(__name__)

SLOW_ARCH = {**TINY_LLADA_ARCH, "d_model": 128, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 256}
STEPS = (32, 64)


def _case_ids(steps: tuple[int, ...] = STEPS) -> list[str]:
    return sorted(
        [f"tiny-llada-p16-g64-b{b}-s{s}-k64" for b in (1, 2, 4) for s in steps]
        + [f"tiny-llama-p16-g64-b{b}" for b in (1, 2, 4)]
    )


CASE_IDS = _case_ids()


def _slow_grid(tmp: Path, steps: tuple[int, ...] = STEPS, measured_rounds: int = 3) -> Path:
    config = tiny_config(
        grid={"prompt_length": [16], "gen_length": [64], "batch_size": [1, 2, 4]},
        llada={"steps": list(steps), "block_length": [64]},
        warmup_rounds=1,
        measured_rounds=measured_rounds,
    )
    config["models"][0]["arch"] = SLOW_ARCH  # type: ignore[index]
    return write_config(tmp, config)


@pytest.fixture
def project(tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DLLM_BENCH_CACHE", str(model_cache_dir))
    (tmp_path / "test_bench.py").write_text(BENCH_TEST_FILE, encoding="utf-8")
    return tmp_path


def _start(project: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log = (project / "pytest-output.txt").open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--config",
            "grid.yaml",
            "--output-dir",
            "out",
            *args,
        ],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_rows(path: Path, count: int, proc: subprocess.Popen[bytes], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(read_rows(path)) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"pytest ended (exit {proc.returncode}) before {count} rows were written")
        time.sleep(0.05)
    raise AssertionError(f"no {count} rows in {path} after {timeout} s")


def _finish(proc: subprocess.Popen[bytes], timeout: float = 600.0) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def _manifest(out: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((out / "run_manifest.json").read_text())
    return data


def _resume_to_completion(project: Path, case_ids: list[str] = CASE_IDS) -> None:
    proc = _start(project, "--resume")
    assert _finish(proc) == 0, (project / "pytest-output.txt").read_text()[-3000:]
    out = project / "out"
    partial = read_rows(out / "raw_metrics_partial.csv")
    final = read_rows(out / "raw_metrics.csv")
    ok_ids = [row["case_id"] for row in partial if row["status"] == "ok"]
    assert sorted(ok_ids) == case_ids, "each case exactly once, none missing"
    assert sorted(row["case_id"] for row in final) == case_ids
    assert _manifest(out)["status"] == "complete"


def _run_until_rows(project: Path, rows: int) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the slow grid and return once `rows` cases have their row on disk."""
    _slow_grid(project)
    out = project / "out"
    proc = _start(project)
    _wait_rows(out / "raw_metrics_partial.csv", rows, proc)
    return proc, out


def _assert_saved(out: Path, signal_name: str) -> list[dict[str, str]]:
    partial = read_rows(out / "raw_metrics_partial.csv")
    final = read_rows(out / "raw_metrics.csv")
    assert final == partial, "raw_metrics.csv holds every finished case"
    assert 1 <= len(final) < len(CASE_IDS)
    manifest = _manifest(out)
    assert manifest["status"] == "interrupted"
    assert manifest["signal"] == signal_name
    counts = manifest["counts"]
    assert isinstance(counts, dict)
    assert counts["done"] == len(final)
    assert counts["planned"] == len(CASE_IDS)
    return final


def test_sigterm_stops_after_the_running_case_and_resume_completes(project: Path) -> None:
    proc, out = _run_until_rows(project, 1)
    os.killpg(proc.pid, signal.SIGTERM)
    assert _finish(proc) == pytest.ExitCode.INTERRUPTED
    rows = _assert_saved(out, "SIGTERM")
    output = (project / "pytest-output.txt").read_text()
    # A clean stop: the case that was running finished and has its row, nothing failed.
    assert all(row["status"] == "ok" for row in rows)
    assert _manifest(out)["counts"]["failed"] == 0  # type: ignore[index]
    assert "resume with: pytest" in output
    log = (out / "benchmark.log").read_text()
    assert "received SIGTERM" in log
    assert f"saved {len(rows)} rows" in log
    _resume_to_completion(project)


def test_sigusr2_stops_cleanly_like_sigterm(project: Path) -> None:
    proc, out = _run_until_rows(project, 1)
    os.killpg(proc.pid, signal.SIGUSR2)
    assert _finish(proc) == pytest.ExitCode.INTERRUPTED
    _assert_saved(out, "SIGUSR2")
    _resume_to_completion(project)


def test_second_sigterm_interrupts_at_once_and_still_saves(project: Path) -> None:
    proc, out = _run_until_rows(project, 1)
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    assert _finish(proc) == pytest.ExitCode.INTERRUPTED
    _assert_saved(out, "SIGTERM")
    assert "received SIGTERM again" in (out / "benchmark.log").read_text()
    _resume_to_completion(project)


def test_sigint_mid_case_saves_finished_cases(project: Path) -> None:
    proc, out = _run_until_rows(project, 2)
    time.sleep(0.2)  # inside the next case
    os.killpg(proc.pid, signal.SIGINT)
    assert _finish(proc) == pytest.ExitCode.INTERRUPTED
    _assert_saved(out, "SIGINT")
    assert "interrupted by SIGINT" in (out / "benchmark.log").read_text()
    _resume_to_completion(project)


def test_sigkill_at_random_moments_loses_no_finished_row(project: Path) -> None:
    steps = (64, 128)
    _slow_grid(project, steps=steps, measured_rounds=5)
    out = project / "out"
    rng = random.Random(1234)
    kills = 0
    for attempt in range(12):
        args = ("--resume",) if attempt else ()
        proc = _start(project, *args)
        if attempt == 0:
            _wait_rows(out / "raw_metrics_partial.csv", 1, proc)
            time.sleep(rng.uniform(0.0, 1.5))
        else:
            # Anywhere from start-up (imports, collection) to the middle of a case or a row write.
            time.sleep(rng.uniform(2.0, 8.0))
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        text = (out / "raw_metrics_partial.csv").read_text()
        lines = text.splitlines(keepends=True)
        assert lines[0] == ",".join(COLUMN_NAMES) + "\n", "header written once, first"
        complete = [line for line in lines[1:] if line.endswith("\n")]
        assert len(read_rows(out / "raw_metrics_partial.csv")) == len(complete), "every complete line parses"
        ids = Counter(row["case_id"] for row in read_rows(out / "raw_metrics_partial.csv"))
        assert max(ids.values()) == 1, "no case recorded twice"
    assert kills >= 3
    LOG.info(
        "SIGKILL: %d kills, %d rows on disk before the final resume",
        kills,
        len(read_rows(out / "raw_metrics_partial.csv")),
    )
    _resume_to_completion(project, _case_ids(steps))


def test_oom_case_is_recorded_and_the_next_case_runs(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path_factory.mktemp("oom") / "oom-llada"
    write_llada_folder(folder, TINY_LLADA_ARCH, seed=0, dtype=torch.float32)
    modeling = folder / "modeling_llada.py"
    # A model that runs out of memory for batches of 2 or more, loaded the real way.
    modeling.write_text(
        modeling.read_text() + "\n\n_original_forward = LLaDAModelLM.forward\n\n\n"
        "def _oom_forward(self, input_ids, *args, **kwargs):\n"
        "    if input_ids.shape[0] >= 2:\n"
        "        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')\n"
        "    return _original_forward(self, input_ids, *args, **kwargs)\n\n\n"
        "LLaDAModelLM.forward = _oom_forward\n"
    )
    config = tiny_config(grid={"prompt_length": [8], "gen_length": [8], "batch_size": [2, 1]})
    config["models"][0] = {"name": "oom-llada", "kind": "llada", "source": str(folder), "device": "cpu"}  # type: ignore[index]
    write_config(project, config)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path_factory.mktemp("modules")))
    proc = _start(project)
    assert _finish(proc) == pytest.ExitCode.TESTS_FAILED
    rows = {row["case_id"]: row for row in read_rows(project / "out" / "raw_metrics.csv")}
    assert rows["oom-llada-p8-g8-b2-s4-k8"]["status"] == "oom"
    assert rows["oom-llada-p8-g8-b2-s4-k8"]["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert rows["oom-llada-p8-g8-b1-s4-k8"]["status"] == "ok"
    assert rows["tiny-llama-p8-g8-b2"]["status"] == "ok"
    assert len(rows) == 6
    assert _manifest(project / "out")["status"] == "failed"

    second = project / "allow"
    second.mkdir()
    (second / "test_bench.py").write_text(BENCH_TEST_FILE)
    write_config(second, config)
    proc = _start(second, "--allow-oom")
    assert _finish(proc) == pytest.ExitCode.OK
    output = (second / "pytest-output.txt").read_text()
    assert "4 passed, 2 skipped" in output
    statuses = Counter(row["status"] for row in read_rows(second / "out" / "raw_metrics.csv"))
    assert statuses == {"ok": 4, "oom": 2}
