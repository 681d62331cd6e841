"""pytest-benchmark storage and comparison on the suite's cases, the --gate regression
check, the end-of-run summary, and the xdist fallback (the suite's own rows).

Decisions are tested with differences machine load cannot produce or reverse: a run gated
against its own rows (0% change), and a real slowdown injected into the models' forward
passes. Every compared run sleeps FLOOR_S per forward (a latency floor far above the tiny
models' milliseconds of work, so load cannot move a case by 2x); the slowed run sleeps
SLOWDOWN_S more in each LLaDA forward (6x slower), with the forward-pass count checked to
be unchanged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.helpers import FINAL, LLADA_MODEL_CLASS, manifest, rows, sleep_plugin, tiny_config, write_config

pytestmark = pytest.mark.slow

FLOOR_S = 0.2
SLOWDOWN_S = 1.0
FLOOR = ["-p", "latency_floor"]
SLOWED = ["-p", "latency_floor", "-p", "slowdown"]


def _sleep_plugins(project: pytest.Pytester) -> None:
    """latency_floor (every model, every run) and slowdown (the LLaDA model only, on top of
    the floor, in the slowed run); importable by `-p` in an in-process run."""
    project.syspathinsert()
    project.makepyfile(latency_floor=sleep_plugin(FLOOR_S), slowdown=sleep_plugin(SLOWDOWN_S, LLADA_MODEL_CLASS))


def _only_run_dir(project: pytest.Pytester) -> Path:
    (run_dir,) = [p for p in (project.path / "results").iterdir() if p.is_dir()]
    return run_dir


def _one_case_config(project: pytest.Pytester) -> Path:
    return write_config(project.path, tiny_config(llada={"steps": [4], "block_length": [8]}, measured_rounds=1))


def _few_forwards_config(project: pytest.Pytester) -> Path:
    """One LLaDA and one AR case of 2 forward passes per call (2 tokens; LLaDA's is the exact
    decode, so no second decode for agreement_exact): the runs that sleep in every forward
    sleep as few times as the checks need."""
    config = tiny_config(
        grid={"prompt_length": [8], "gen_length": [2], "batch_size": [2]},
        llada={"steps": [2], "block_length": [2]},
        measured_rounds=1,
    )
    return write_config(project.path, config)


def test_autosave_and_compare_work_on_the_suite_cases(bench_project: pytest.Pytester) -> None:
    path = _few_forwards_config(bench_project)
    _sleep_plugins(bench_project)
    storage = bench_project.path / "storage"
    first = bench_project.runpytest_inprocess(
        "--config", str(path), "--benchmark-autosave", f"--benchmark-storage={storage}", "-k", "llada", *FLOOR
    )
    assert first.ret == pytest.ExitCode.OK
    (saved,) = storage.rglob("*.json")
    data = json.loads(saved.read_text())
    assert {b["group"] for b in data["benchmarks"]} == {"p8-g2-b2"}
    assert all("nfe" in b["extra_info"] and "tokens_per_s" in b["extra_info"] for b in data["benchmarks"])
    assert data["machine_info"]["dllm_bench"]["torch_version"]
    assert all(b["options"]["timer"] == "synchronized_timer" for b in data["benchmarks"])

    compare = ["--config", str(path), f"--benchmark-storage={storage}", "--benchmark-compare", "-k", "llada"]
    same = bench_project.runpytest_inprocess(*compare, "--benchmark-compare-fail=mean:100000%", *FLOOR)
    assert same.ret == pytest.ExitCode.OK
    assert "Comparing against benchmarks from" in same.stdout.str() + same.stderr.str()
    assert "(NOW)" in same.stdout.str()
    assert "(0001_unversi" in same.stdout.str()

    # A real slowdown (6x, above the floor load cannot shorten) fails a limit of 2x.
    slow = bench_project.runpytest_inprocess(*compare, "--benchmark-compare-fail=mean:100%", *SLOWED)
    assert slow.ret != pytest.ExitCode.OK
    assert "Performance has regressed" in slow.stdout.str() + slow.stderr.str()


def test_gate_passes_on_the_same_rows_and_fails_on_an_injected_slowdown(bench_project: pytest.Pytester) -> None:
    path = _few_forwards_config(bench_project)
    _sleep_plugins(bench_project)
    first = bench_project.runpytest_inprocess("--config", str(path), "--output-dir", "base", *FLOOR)
    assert first.ret == pytest.ExitCode.OK
    base = bench_project.path / "base"
    gate = ["--gate", "tokens_per_s:-50%", "--gate-reference", str(base)]

    # The run compared with its own rows: 0% change on every case, the gate passes.
    same = bench_project.runpytest_inprocess(
        "--config", str(path), "--output-dir", str(base), "--resume", *gate, *FLOOR
    )
    assert same.ret == pytest.ExitCode.OK, same.stdout.str()
    same.stdout.fnmatch_lines(["*gate: compared 2 case/metric pairs against the reference run*"])
    assert manifest(base)["gate"]["passed"] is True

    slow = bench_project.runpytest_inprocess("--config", str(path), "--output-dir", "slow", *SLOWED, *gate)
    assert slow.ret == pytest.ExitCode.TESTS_FAILED
    failed = [line for line in slow.stdout.lines if line.startswith("gate FAILED")]
    assert len(failed) == 1, slow.stdout.str()
    assert "tiny-llada-p8-g2-b2-s2-k2: tokens_per_s" in failed[0]
    assert "limit -50%" in failed[0]
    # The last line says the gate failed, after pytest's green "passed" line.
    last = [line for line in slow.stdout.lines if line.strip()][-1]
    assert last.startswith("dllm-bench: GATE FAILED"), last
    slow_manifest = manifest(bench_project.path / "slow")
    assert slow_manifest["status"] == "failed"
    assert slow_manifest["reason"] == "gate failed: 1 case/metric pairs regressed (tokens_per_s)"
    record = slow_manifest["gate"]
    assert record["passed"] is False
    assert [f["case_id"] for f in record["failures"]] == ["tiny-llada-p8-g2-b2-s2-k2"]
    assert record["failures"][0]["metric"] == "tokens_per_s"
    # Same work, more time: the number of forward passes did not change.
    before = {r.case_id: r.nfe for r in rows(base / FINAL)}
    after = {r.case_id: r.nfe for r in rows(bench_project.path / "slow" / FINAL)}
    assert before == after == {"tiny-llada-p8-g2-b2-s2-k2": 2, "tiny-llama-p8-g2-b2": 2}


def test_a_gate_that_compares_nothing_fails_unless_allowed(bench_project: pytest.Pytester) -> None:
    path = _one_case_config(bench_project)
    assert bench_project.runpytest_inprocess("--config", str(path), "--output-dir", "base").ret == 0
    write_config(bench_project.path, tiny_config(llada={"steps": [4], "block_length": [8]}, measured_rounds=2))
    gate = ["--gate", "tokens_per_s:-10%", "--gate-reference", str(bench_project.path / "base")]
    strict = bench_project.runpytest_inprocess("--config", str(path), "--output-dir", "strict", *gate)
    assert strict.ret == pytest.ExitCode.TESTS_FAILED
    strict.stdout.fnmatch_lines(["*gate: compared 0 case/metric pairs*", "*gate FAILED: compared 0*"])
    allowed = bench_project.runpytest_inprocess(
        "--config", str(path), "--output-dir", "allowed", *gate, "--gate-allow-missing"
    )
    assert allowed.ret == pytest.ExitCode.OK
    allowed.stdout.fnmatch_lines(["*gate: compared 0 case/metric pairs*"])


def test_gate_needs_a_reference_and_a_valid_rule(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    no_base = bench_project.runpytest("--config", str(path), "--gate", "tokens_per_s:-10%")
    assert no_base.ret == pytest.ExitCode.USAGE_ERROR
    assert "--gate-reference" in no_base.stderr.str()
    reference = bench_project.path / "b.csv"
    reference.write_text("case_id,status\nx,ok\n")
    bad_rule = bench_project.runpytest(
        "--config", str(path), "--gate", "tokens_per_s-10", "--gate-reference", str(reference)
    )
    assert bad_rule.ret == pytest.ExitCode.USAGE_ERROR
    assert "bad gate 'tokens_per_s-10'" in bad_rule.stderr.str()


def test_summary_table_and_relative_speed(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    result = bench_project.runpytest_inprocess("--config", str(path), "--benchmark-disable")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "case_id*status*latency_mean_s*tokens_per_s*nfe*peak_rss_increase_mb*",
            "tiny-llada-p8-g8-b2-s4-k8*ok*4*",
            "LLaDA speed relative to the AR model*",
            "  tiny-llada-p8-g8-b2-s4-k8 vs tiny-llama-p8-g8-b2: *x",
            "dllm-bench: 3 ok, 0 failed, 0 skipped, 0 not run, 0 already done*",
        ]
    )
    final = rows(_only_run_dir(bench_project) / FINAL)
    assert len(final) == 3
    assert all(row.latency_mean_s is not None and row.latency_mean_s > 0 for row in final)


def test_compare_with_a_run_saved_on_another_machine_outside_the_project_warns(
    bench_project: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The CI history lives outside the checkout; a saved run from another machine (here:
    another CPU model in its machine_info) is compared with a warning, not an INTERNALERROR.
    The git commit is not part of machine_info, so another commit is not another machine."""
    path = _one_case_config(bench_project)
    storage = tmp_path_factory.mktemp("history")  # not under the project's directory
    args = ["--config", str(path), f"--benchmark-storage={storage}", "-k", "llada"]
    assert bench_project.runpytest_inprocess(*args, "--benchmark-autosave").ret == pytest.ExitCode.OK
    (saved,) = storage.rglob("*.json")
    data = json.loads(saved.read_text())
    assert "git_commit" not in data["machine_info"]["dllm_bench"]
    data["machine_info"]["dllm_bench"]["cpu_model"] = "another CPU"
    saved.write_text(json.dumps(data))
    result = bench_project.runpytest_inprocess(*args, "--benchmark-compare")
    text = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.OK, text[-3000:]
    assert "INTERNALERROR" not in text
    # The suite's logger says it (this in-process run's records reach this test's caplog).
    warned = [r for r in caplog.records if r.name == "dllm_bench" and r.levelno == logging.WARNING]
    assert any("has another machine_info" in r.getMessage() for r in warned), caplog.text[-3000:]
