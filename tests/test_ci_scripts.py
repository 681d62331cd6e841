"""The CI scripts and workflows: gpu_benchmark.sh end to end on CPU, its summary, the workflow files.

The end-to-end test injects a real slowdown into the model's forward pass with a pytest plugin
(`-p`, passed through DLLM_PYTEST_ARGS); nothing in a results file is edited by hand.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.helpers import TINY_LLADA_ARCH, sleep_plugin, tiny_config, write_config
from tests.prestarted import PrestartedInterpreter, launcher_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ci" / "gpu_benchmark.sh"
WORKFLOWS = REPO / ".github" / "workflows"

# Every run sleeps FLOOR_S per top-level forward pass (tests.helpers.sleep_plugin): at least
# 0.4 s per generate call (1 forward), against the tiny model's few milliseconds of real work, which load
# would have to slow 250x to move a run past the limits. The injected slowdown adds
# SLOWDOWN_S on top, in the slowed runs only.
FLOOR_S = 0.4
SLOWDOWN_S = 2.0
# A run fails if tokens/s fell by more than half, or pytest-benchmark's mean doubled: the
# slowdown makes each call about (FLOOR_S + SLOWDOWN_S) / FLOOR_S = 6x slower.
GATE = "tokens_per_s:-50%"
COMPARE_FAIL = "mean:100%"


def load_summary_module() -> ModuleType:
    path = REPO / "scripts" / "ci" / "ci_summary.py"
    spec = importlib.util.spec_from_file_location("ci_summary", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_case_config() -> dict[str, object]:
    """One LLaDA case of 1 forward pass per call (1 token in 1 step: the exact decode, so no
    second decode for agreement_exact): 1 warm-up call (profiled: forward_mean_s) and 1
    measured call, so each run sleeps as few times as the checks need."""
    return tiny_config(
        models=[
            {"name": "tiny-llada", "kind": "llada", "source": "random-init", "device": "cpu", "arch": TINY_LLADA_ARCH}
        ],
        grid={"prompt_length": [8], "gen_length": [1], "batch_size": [1]},
        llada={"steps": [1], "block_length": [1]},
        warmup_rounds=1,
        measured_rounds=1,
    )


def script_env(
    tmp_path: Path,
    model_cache_dir: Path,
    *,
    branch: str,
    plugins: list[str],
    run: str,
    store: str = "auto",
    python: str,
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("GITHUB_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "plugins"), env.get("PYTHONPATH", "")])),
            "DLLM_PYTEST_ARGS": " ".join(f"-p {name}" for name in plugins),
            "DLLM_PYTHON": python,
            "DLLM_CI_HISTORY": str(tmp_path / "history"),
            "DLLM_CI_MACHINE": "test-cpu",
            "DLLM_CI_BRANCH": branch,
            "DLLM_CI_STORE": store,
            "DLLM_CI_RUN_DIR": str(tmp_path / "runs" / run),
            "DLLM_CI_SUMMARY_FILE": str(tmp_path / f"summary-{run}.md"),
            "DLLM_CI_GATE": GATE,
            "DLLM_CI_COMPARE_FAIL": COMPARE_FAIL,
            "DLLM_BENCH_CACHE": str(model_cache_dir),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    return env


def run_script(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), str(config)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def reference_of(history: Path) -> dict[str, str]:
    text = (history / "test-cpu" / "grid" / "reference").read_text(encoding="utf-8")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.mark.slow
def test_gpu_benchmark_fails_on_an_injected_slowdown_and_passes_without_it(
    tmp_path: Path, model_cache_dir: Path, prestarted_interpreter: PrestartedInterpreter
) -> None:
    """The script's Python is a stand-in whose `-m pytest` runs are forked from the prestarted
    interpreter (`tests.prestarted.launcher_script`): the script and its pytest runs as they are,
    without their imports each time."""
    python = str(launcher_script(tmp_path / "python", prestarted_interpreter.socket_path))
    env_for = functools.partial(script_env, tmp_path, model_cache_dir, python=python)
    summary = load_summary_module()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "latency_floor.py").write_text(sleep_plugin(FLOOR_S), encoding="utf-8")
    (plugins / "injected_slowdown.py").write_text(sleep_plugin(SLOWDOWN_S), encoding="utf-8")
    config = write_config(tmp_path, one_case_config())
    history = tmp_path / "history"

    # 1. main, no reference yet: passes and becomes the reference.
    first = run_script(config, env_for(branch="main", plugins=["latency_floor"], run="1"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "no reference" in first.stderr
    reference = reference_of(history)
    stored = history / "test-cpu" / "grid" / "runs" / reference["run"]
    rows = summary.read_csv_rows(stored / "raw_metrics.csv")
    assert [row["status"] for row in rows] == ["ok"]
    case_id = rows[0]["case_id"]
    assert (history / "test-cpu" / "grid" / "benchmarks" / reference["benchmark_json"]).is_file()
    assert "passed" in (tmp_path / "summary-1.md").read_text(encoding="utf-8")

    # 2. a branch with the slowdown injected: the gate and pytest-benchmark's comparison fail.
    slow_env = env_for(branch="feature", plugins=["latency_floor", "injected_slowdown"], run="2")
    second = run_script(config, slow_env)
    output = second.stdout + second.stderr
    assert second.returncode == 1, output
    assert f"gate FAILED: {case_id}: tokens_per_s" in output
    assert "Performance has regressed" in output
    slow_rows = summary.read_csv_rows(tmp_path / "runs" / "2" / "raw_metrics.csv")
    # The injected sleep really ran inside each forward pass (a lower bound load cannot lower).
    assert float(slow_rows[0]["forward_mean_s"]) >= FLOOR_S + SLOWDOWN_S
    second_summary = (tmp_path / "summary-2.md").read_text(encoding="utf-8")
    assert "FAILED" in second_summary
    assert f"gate FAILED: {case_id}: tokens_per_s" in second_summary
    assert "pytest-benchmark regressions" in second_summary
    assert reference_of(history) == reference  # a branch never replaces main's reference

    # 3. the same branch without the slowdown passes against the same reference.
    third_env = env_for(branch="feature", plugins=["latency_floor"], run="3")
    third = run_script(config, third_env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert f"gating against main's run {reference['run']}" in third.stderr
    assert "passed" in (tmp_path / "summary-3.md").read_text(encoding="utf-8")
    assert reference_of(history) == reference

    # 4. accepting a deliberate slowdown on main: it still fails, but becomes the reference.
    forced_env = env_for(branch="main", plugins=["latency_floor", "injected_slowdown"], run="4", store="force")
    fourth = run_script(config, forced_env)
    assert fourth.returncode == 1, fourth.stdout + fourth.stderr
    assert "accepted as the reference" in fourth.stderr
    forced = reference_of(history)
    assert forced["run"] != reference["run"]
    forced_rows = summary.read_csv_rows(history / "test-cpu" / "grid" / "runs" / forced["run"] / "raw_metrics.csv")
    assert float(forced_rows[0]["forward_mean_s"]) >= FLOOR_S + SLOWDOWN_S


def test_summary_table_shows_the_change_against_the_reference() -> None:
    summary = load_summary_module()
    rows = [{"case_id": "a", "status": "ok", "tokens_per_s": "90", "cache": "", "error": ""}]
    reference = [{"case_id": "a", "status": "ok", "tokens_per_s": "120"}]
    table = summary.results_table(rows, reference)
    assert table[0] == "| case | status | tokens/s | vs reference |"
    assert table[2] == "| a | ok | 90 | -25.0% |"


def test_summary_table_shows_new_columns_once_filled_in() -> None:
    summary = load_summary_module()
    rows = [
        {"case_id": "a", "status": "ok", "cache": "dual", "threshold": "0.9", "accuracy": "0.75", "tokens_per_s": "10"},
        {"case_id": "b", "status": "oom", "cache": "none", "threshold": "", "accuracy": "", "tokens_per_s": ""},
    ]
    titles = [title for _, title in summary.visible_columns(rows)]
    assert titles == ["case", "status", "cache", "threshold", "tokens/s", "accuracy"]


def test_summary_reads_regressions_and_usage_errors_from_the_console() -> None:
    summary = load_summary_module()
    console = (
        "x\nPerformance has regressed:\n\ttest_llada[a] (0001) - Field 'mean' has failed\nTraceback\nERROR: bad key\n"
    )
    assert summary.regression_lines(console) == ["test_llada[a] (0001) - Field 'mean' has failed"]
    assert summary.usage_errors(console) == ["bad key"]


def workflow(name: str) -> dict[object, object]:
    data = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def run_lines(data: dict[object, object]) -> list[str]:
    jobs = data["jobs"]
    assert isinstance(jobs, dict)
    return [step["run"] for job in jobs.values() for step in job["steps"] if "run" in step]


def test_cpu_workflow_runs_ci_run_on_ubuntu() -> None:
    data = workflow("ci.yml")
    assert data["jobs"]["ci"]["runs-on"] == "ubuntu-latest"  # type: ignore[index]
    assert run_lines(data) == ["bash .ci/run"]


def test_gpu_workflow_triggers_labels_and_scripts() -> None:
    data = workflow("gpu-benchmark.yml")
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads the key `on` as true
    assert isinstance(triggers, dict)
    assert triggers["push"] == {"branches": ["main"]}
    assert "pull_request" in triggers
    assert triggers["workflow_dispatch"]["inputs"]["config"]["default"] == "config/ci-gpu.yaml"
    assert data["jobs"]["benchmark"]["runs-on"] == ["self-hosted", "gpu"]  # type: ignore[index]
    lines = run_lines(data)
    benchmark = "bash scripts/ci/gpu_benchmark.sh"
    assert lines == ["bash scripts/ci/install_gpu.sh", "bash scripts/gpu_check.sh", benchmark, benchmark]
    for line in lines:
        assert (REPO / line.split()[1]).is_file(), line
    quality = data["jobs"]["benchmark"]["steps"][-3]  # type: ignore[index]
    assert quality["env"]["DLLM_CI_CONFIG"] == "config/default.yaml"
    assert "accuracy:-2pp" in quality["env"]["DLLM_CI_GATE"]


def test_ci_gpu_config_has_the_table_1_axes() -> None:
    config = yaml.safe_load((REPO / "config" / "ci-gpu.yaml").read_text(encoding="utf-8"))
    assert config["grid"] == {"prompt_length": [768], "gen_length": [256], "batch_size": [1]}
    assert config["llada"]["block_length"] == [32]
    assert config["llada"]["cache"] == ["none", "dual"]
    assert config["llada"]["threshold"] == [None, 0.9]
    assert all(model["source"] == "random-init" for model in config["models"])


def test_ci_gpu_config_is_accepted_by_the_suite(bench_project: pytest.Pytester) -> None:
    """Collected in-process: the suite reads the config and expands its cases."""
    result = bench_project.runpytest("--config", str(REPO / "config" / "ci-gpu.yaml"), "--collect-only", "-q")
    output = result.stdout.str()
    assert result.ret == 0, output + result.stderr.str()
    assert "-cdual" in output
    assert "-th0.9" in output
