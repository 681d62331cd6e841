"""The GPU self-check (scripts/gpu_check.sh, the dllm_bench.gpu_check package) on a CPU-only machine.

Without a GPU the script must skip every item with the reason and exit 0. The checks
themselves are exercised here on what a CPU can give them: the sampler comparison on a bf16
LLaDA on the CPU, the row checks on rows of real CPU runs (where the CUDA columns are
empty, so they must fail) and on rows with known defects.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dllm_bench.cases import expand_cases
from dllm_bench.config import parse_config
from dllm_bench.gpu_check import grids, row_checks, run_items, sampler, timer
from dllm_bench.gpu_check.outcome import FAIL, ITEM_NAMES, PASS, SKIP, CheckResult, failed, passed, verdict_line
from dllm_bench.gpu_check.sampler import SamplerShape
from dllm_bench.gpu_check.suite_run import Budget, run_suite
from dllm_bench.models.loader import ModelCache
from dllm_bench.rows import Row
from dllm_bench.runner import run_case
from tests.helpers import TINY_DGEMMA_ARCH, TINY_LLADA_ARCH

REPO = Path(__file__).resolve().parents[1]

TINY_SHAPE = SamplerShape(batch=2, prompt_length=16, gen_length=32, block_length=16, steps=16, pad=4)
TINY_SPECIAL = {"mask_id": 255, "pad_id": 254, "vocab_limit": 250}


def gpu_row(case_id: str = "llada-p8-g8-b1", **overrides: str) -> Row:
    """A row as the suite reads it from the CSV cells a CUDA run writes (only the columns the checks read)."""
    cells = {
        "case_id": case_id,
        "kind": "llada",
        "status": "ok",
        "device": "cuda:0",
        "prompt_length": "256",
        "gen_length": "128",
        "batch_size": "1",
        "measured_rounds": "2",
        "latency_mean_s": "1.0",
        "tokens_per_s": "128",
        "peak_memory_allocated_mb": "3000",
        "peak_memory_reserved_mb": "3200",
        "energy_j": "300",
        "energy_per_token_j": "2.3",
        "gpu_name": "NVIDIA H200",
        "driver_version": "570.1",
        "cuda_version": "12.8",
        "xdist_worker": "gw0",
        "cuda_visible_devices": "0",
        "cache": "none",
    }
    cells.update(overrides)
    return Row.from_cells(cells)


@pytest.mark.slow
def test_without_a_gpu_every_item_is_skipped_with_the_reason(tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DLLM_PYTHON": sys.executable, "DLLM_GPU_CHECK_DIR": str(work_dir)}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [f"SKIP {name}" for name in ITEM_NAMES]
    assert all("no GPU" in line and "CUDA_VISIBLE_DEVICES ''" in line for line in lines[:-1])
    assert lines[-1].startswith("VERDICT: SKIP: no GPU")
    assert not work_dir.exists()  # nothing ran


@pytest.mark.slow
def test_sampler_check_passes_on_a_bf16_llada_with_ties() -> None:
    model = sampler.build_llada(TINY_LLADA_ARCH, torch.device("cpu"), torch.bfloat16)
    outcome = sampler.compare_samplers(model, device=torch.device("cpu"), shape=TINY_SHAPE, **TINY_SPECIAL)
    result = sampler.sampler_result(outcome, "cpu")
    assert result.outcome == PASS, result.line()
    assert outcome.identical == [setting.name for setting in sampler.SAMPLER_SETTINGS]
    assert outcome.ties.ties > 0


@pytest.mark.slow
def test_sampler_check_fails_when_no_tie_occurred() -> None:
    model = sampler.build_llada(TINY_LLADA_ARCH, torch.device("cpu"), torch.float32)
    outcome = sampler.compare_samplers(model, device=torch.device("cpu"), shape=TINY_SHAPE, **TINY_SPECIAL)
    result = sampler.sampler_result(outcome, "cpu")
    assert outcome.ties.ties == 0 and outcome.ties.calls > 0
    assert result.outcome == FAIL
    assert "tie handling was not exercised" in result.detail


class DriftingModel(torch.nn.Module):
    """A model whose logits change from call to call, so the two samplers cannot agree."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> object:
        self.calls += 1
        output = self.inner(input_ids, attention_mask=attention_mask)
        generator = torch.Generator().manual_seed(self.calls)
        output.logits = output.logits + torch.randn(output.logits.shape, generator=generator)
        return output


@pytest.mark.slow
def test_sampler_check_fails_when_tokens_differ() -> None:
    model = DriftingModel(sampler.build_llada(TINY_LLADA_ARCH, torch.device("cpu"), torch.float32))
    outcome = sampler.compare_samplers(model, device=torch.device("cpu"), shape=TINY_SHAPE, **TINY_SPECIAL)
    result = sampler.sampler_result(outcome, "cpu")
    assert result.outcome == FAIL
    assert "tokens differ" in result.detail


def test_tie_counter_sees_a_tie_at_the_kth_value() -> None:
    counter = sampler.TieCounter()
    with sampler.counting_topk_ties(counter):
        torch.topk(torch.tensor([0.5, 0.25, 0.25, 0.1]), k=2)  # 2nd and 3rd largest are equal
        torch.topk(torch.tensor([0.5, 0.25, 0.2, 0.1]), 2)
        torch.topk(torch.tensor([0.5, float("-inf"), float("-inf")]), 2)  # -inf ties are not candidates
    assert (counter.calls, counter.ties) == (3, 1)


def test_timers_within_two_percent_pass_and_beyond_fail() -> None:
    events = [0.020] * 10
    assert timer.compare_timers([0.0201] * 10, events).outcome == PASS
    assert timer.compare_timers([0.021] * 10, events).outcome == FAIL  # 5% apart
    assert timer.compare_timers([], []).outcome == FAIL


def test_memory_check() -> None:
    assert row_checks.check_memory([gpu_row()]).outcome == PASS
    over = gpu_row(peak_memory_allocated_mb="4000", peak_memory_reserved_mb="3000")
    assert row_checks.check_memory([gpu_row(), over]).outcome == FAIL
    assert row_checks.check_memory([gpu_row(peak_memory_allocated_mb="0")]).outcome == FAIL
    assert row_checks.check_memory([gpu_row(status="oom")]).outcome == FAIL  # nothing to check


def test_energy_check() -> None:
    assert row_checks.check_energy([gpu_row()]).outcome == PASS  # 300 J over 1 s: 300 W
    assert row_checks.check_energy([gpu_row(energy_j="3")]).outcome == FAIL  # 3 W
    assert row_checks.check_energy([gpu_row(energy_j="")]).outcome == FAIL
    short = gpu_row("short", energy_j="", energy_per_token_j="", latency_mean_s="0.01")
    assert row_checks.check_energy([gpu_row(), short]).outcome == PASS  # 20 ms regions may lack energy
    long = gpu_row("long", energy_j="", energy_per_token_j="", latency_mean_s="2")
    assert row_checks.check_energy([gpu_row(), long]).outcome == FAIL


def test_environment_check() -> None:
    assert row_checks.check_environment([gpu_row()], "NVIDIA H200", "12.8").outcome == PASS
    assert row_checks.check_environment([gpu_row()], "NVIDIA A100", "12.8").outcome == FAIL
    assert row_checks.check_environment([gpu_row(driver_version="")], "NVIDIA H200", "12.8").outcome == FAIL


def test_pinning_check() -> None:
    rows = [gpu_row("a"), gpu_row("b", xdist_worker="gw1", cuda_visible_devices="1")]
    assert row_checks.check_pinning(rows, ["0", "1"]).outcome == PASS
    shared = [gpu_row("a"), gpu_row("b", xdist_worker="gw1")]
    assert row_checks.check_pinning(shared, ["0", "1"]).outcome == FAIL
    assert row_checks.check_pinning(rows, ["0"]).outcome == FAIL  # GPU 1 is not visible
    assert row_checks.check_pinning([gpu_row(xdist_worker="")], ["0"]).outcome == FAIL


def test_cache_check() -> None:
    def point(batch: str, none: str, dual: str) -> list[Row]:
        return [
            gpu_row(f"b{batch}", batch_size=batch, tokens_per_s=none),
            gpu_row(f"b{batch}-cdual", batch_size=batch, tokens_per_s=dual, cache="dual"),
        ]

    assert row_checks.check_cache_speed(point("1", "100", "400") + point("4", "300", "900")).outcome == PASS
    assert row_checks.check_cache_speed(point("1", "100", "400") + point("4", "300", "290")).outcome == FAIL
    assert row_checks.check_cache_speed(point("1", "100", "400")).outcome == FAIL  # one grid point
    assert row_checks.check_cache_speed(point("1", "100", "") + point("4", "300", "900")).outcome == FAIL


def test_oom_check() -> None:
    oom = gpu_row("big", status="oom", error="CUDA out of memory")
    assert row_checks.check_oom([oom, gpu_row()], 0).outcome == PASS
    assert row_checks.check_oom([gpu_row(), oom], 0).outcome == FAIL  # nothing ran after it
    assert row_checks.check_oom([gpu_row()], 0).outcome == FAIL
    assert row_checks.check_oom([oom, gpu_row()], 1).outcome == FAIL


def test_verdict_line() -> None:
    results = [passed("timer", ""), failed("oom", ""), CheckResult("cache", SKIP, "")]
    assert verdict_line(results) == "VERDICT: FAIL: 1 failed (oom), 1 passed, 1 skipped"
    assert verdict_line(results[:1]) == "VERDICT: PASS: 1 passed"


def cpu_config(**overrides: object) -> dict[str, object]:
    config: dict[str, object] = {
        "models": [{"name": "tiny-llada", "kind": "llada", "source": "random-init", "arch": TINY_LLADA_ARCH}],
        "grid": {"prompt_length": [8], "gen_length": [8], "batch_size": [1, 2]},
        "llada": {"steps": [4], "block_length": [8]},
        "warmup_rounds": 0,
        "measured_rounds": 1,
    }
    config.update(overrides)
    return config


@pytest.mark.slow
def test_row_checks_fail_on_rows_of_a_real_cpu_run(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DLLM_BENCH_CACHE", str(model_cache_dir))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    run = run_suite(REPO, tmp_path, "pinning", cpu_config(), ["-n", "2"], Budget(600))
    assert run.problem() is None, run.output
    rows = run.rows()
    assert len(rows) == 2 and all(row.xdist_worker for row in rows)
    assert run_items.pinning_item(run, ["0"]).outcome == FAIL  # CPU workers are pinned to no GPU
    assert row_checks.check_memory(rows).outcome == FAIL  # no CUDA memory columns on a CPU
    assert row_checks.check_environment(rows, "NVIDIA H200", "12.8").outcome == FAIL
    assert row_checks.check_oom(run.partial_rows(), run.exit_code).outcome == FAIL


@pytest.mark.slow
def test_a_refused_config_fails_its_items_with_the_reason(
    tmp_path: Path, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DLLM_BENCH_CACHE", str(model_cache_dir))
    run = run_suite(REPO, tmp_path, "bad", cpu_config(warmup_rounds=-1), [], Budget(600))
    assert run.exit_code == 4
    result = run_items.cache_item(run)
    assert result.outcome == FAIL
    assert "refused" in result.detail and "warmup_rounds" in result.detail


def test_the_oom_grid_is_a_valid_config_with_the_oversized_batch_first(
    tmp_path: Path, bench_project: pytest.Pytester
) -> None:
    """Collected in-process: the suite reads the config and orders its cases."""
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grids.grid_config(), sort_keys=False), encoding="utf-8")
    result = bench_project.runpytest(f"--config={path}", "--collect-only", "-q")
    output = result.stdout.str()
    assert result.ret == 0, output + result.stderr.str()
    ids = [line for line in output.splitlines() if "::test_" in line]
    assert len(ids) == 4
    assert f"-b{grids.OOM_BATCH}-" in ids[0] and "-b1-" in ids[1]


def commands_containing(text: str) -> list[str]:
    """The command lines of this machine's live processes (Linux /proc) that contain `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if text in command:
            found.append(command)
    return found


@pytest.mark.slow
def test_a_suite_run_past_the_budget_is_killed_and_fails_its_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    hanging, woke = tmp_path / "hanging", tmp_path / "woke"
    (plugins / "hang_at_start.py").write_text(
        f"import pathlib\nimport time\n\npathlib.Path({str(hanging)!r}).touch()\ntime.sleep(120)\n"
        f"pathlib.Path({str(woke)!r}).touch()\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("PYTHONPATH", str(plugins))
    with caplog.at_level(logging.ERROR):
        run = run_suite(REPO, tmp_path, "hung", cpu_config(), ["-p", "hang_at_start"], Budget(0))
    assert run.exit_code is None  # stopped at the limit (1 s): a run that ends by itself has an exit code
    # Killed at the limit while the plugin slept: the sleep never ended, and nothing is left running.
    assert any("ran past 1 s: killing its process group" in r.getMessage() for r in caplog.records), caplog.text
    assert hanging.exists() and not woke.exists()
    assert commands_containing(str(tmp_path / "hung.yaml")) == []
    assert run_items.cache_item(run).outcome == FAIL
    assert "time limit" in run_items.cache_item(run).detail


def test_the_dgemma_item_passes_on_rows_of_a_real_run_and_names_a_wrong_count(tmp_path: Path) -> None:
    """The dgemma grid at a CPU scale, measured in-process (a static cache runs uncompiled on a
    CPU): its rows pass the item; a row whose nfe or encoder passes differ fails it by name."""
    config = grids.dgemma_config()
    model = {**config["models"][0], "device": "cpu", "dtype": "float32"}
    model["arch"] = {**TINY_DGEMMA_ARCH, "canvas_length": grids.DGEMMA_CANVAS}
    config.update(models=[model], warmup_rounds=0, measured_rounds=1)
    config["grid"].update(prompt_length=[8], batch_size=[1, 2])
    models = ModelCache(tmp_path / "models")
    rows = [run_case(case, models.get(case.model)) for case in expand_cases(parse_config(config, Path("dg.yaml")))]
    shape = {
        "canvases": grids.DGEMMA_GEN // grids.DGEMMA_CANVAS,
        "steps": grids.DGEMMA_STEPS,
        "canvas": grids.DGEMMA_CANVAS,
    }
    result = row_checks.check_dgemma(rows, **shape)
    assert result.outcome == PASS, result.detail
    wrong = [dataclasses.replace(rows[0], nfe=3.0), dataclasses.replace(rows[1], encoder_nfe=1.0), *rows[2:]]
    result = row_checks.check_dgemma(wrong, **shape)
    assert result.outcome == FAIL
    assert (
        f"{rows[0].case_id}: nfe 3.0, expected 16" in result.detail and "encoder_nfe 1.0, expected 2" in result.detail
    )
    only_dynamic = [row for row in rows if row.cache_implementation == "dynamic"]
    assert "expected dynamic and static" in row_checks.check_dgemma(only_dynamic, **shape).detail
