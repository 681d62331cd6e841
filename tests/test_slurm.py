"""The grid as a SLURM job array, on a real cluster: real sbatch, real jobs, real signals.

`scripts/slurm/submit.sh` submits one array task per shard (`scripts/slurm/bench_array.sbatch`)
and a merge job that waits for them. The tests check the merged grid against a serial
`--collect-only` of the same config, and that an interrupted task (scancel, or the
time-limit warning) loses no finished case and resumes its shard when run again.

They need a reachable cluster with a free CPU: `scripts/ci/start_slurm.sh` (as root) starts
a one-node cluster on loopback. Without `sbatch`, or when `sinfo` cannot reach a
controller, they are skipped. Each test logs a timeline of its jobs (submit, every task's
start and end from its log, merge); run with `-o log_cli=true` or `-rA` to see it.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dllm_bench.cases import expand_cases
from dllm_bench.config import load_config
from dllm_bench.rows import COLUMN_NAMES
from dllm_bench.sharding import assign_shards
from tests.helpers import LLADA_MODEL_CLASS, sleep_plugin, tiny_config, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

LOG = logging.getLogger("tests.slurm")

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "scripts" / "slurm" / "submit.sh"
SHARDS = 3
JOB_TIMEOUT_S = 600.0
TASK_LINE = re.compile(r"^dllm-bench-task: (\S+) (.*)$")
MERGE_LINE = re.compile(r"^dllm-bench-merge: (start|end) (\S+)(.*)$")
# The slow grid's LLaDA model sleeps this long after each forward pass (a plugin the jobs load
# through PYTEST_PLUGINS): about a second per case, with the CPU free for the other tests.
JOB_FORWARD_SLEEP_S = 0.004


# --- the cluster -------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    kill_wait_s: int


def _slurm_unavailable() -> str | None:
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (start a one-node cluster with: sudo bash scripts/ci/start_slurm.sh)"
    try:
        probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "sinfo cannot reach a SLURM controller (timed out); start one with scripts/ci/start_slurm.sh"
    if probe.returncode != 0:
        return f"sinfo cannot reach a SLURM controller: {probe.stderr.strip() or probe.returncode}"
    states = {s.strip().rstrip("*~#$@^-") for s in probe.stdout.split()}
    if not states & {"idle", "mixed", "allocated", "completing"}:
        return f"no SLURM node is up (sinfo: {', '.join(sorted(states)) or 'no nodes'})"
    return None


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    reason = _slurm_unavailable()
    if reason is not None:
        pytest.skip(reason)
    shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20, check=True)
    match = re.search(r"^KillWait\s*=\s*(\d+)", shown.stdout, re.MULTILINE)
    return Cluster(kill_wait_s=int(match.group(1)) if match else 30)


@pytest.fixture
def job_env(model_cache_dir: Path) -> dict[str, str]:
    """The environment sbatch hands to the jobs: this one, without pytest's and an
    enclosing job's variables, offline, with the session's model cache and this Python."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTEST_") and not (k.startswith("SLURM_") and k != "SLURM_CONF")
    }
    env.update(
        HF_HUB_OFFLINE="1",
        DLLM_BENCH_CACHE=str(model_cache_dir),
        DLLM_PYTHON=sys.executable,
        DLLM_REPO=str(REPO),
    )
    return env


@pytest.fixture
def slow_job_env(job_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """`job_env`, with a plugin that makes every LLaDA forward pass of the jobs sleep
    JOB_FORWARD_SLEEP_S (for `_slow_grid`)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "slow_forward.py").write_text(sleep_plugin(JOB_FORWARD_SLEEP_S, LLADA_MODEL_CLASS), encoding="utf-8")
    path = os.pathsep.join(filter(None, [str(plugins), job_env.get("PYTHONPATH", "")]))
    return {**job_env, "PYTHONPATH": path, "PYTEST_PLUGINS": "slow_forward"}


# --- jobs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    array_id: str
    merge_id: str
    at: dt.datetime


def _run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _submit(config: Path, run_dir: Path, env: dict[str, str], tasks: str | None = None) -> Submission:
    if tasks is not None:
        env = {**env, "DLLM_TASKS": tasks}
    at = dt.datetime.now(dt.UTC)
    out = _run(["bash", str(SUBMIT), str(config), str(run_dir), str(SHARDS)], env=env)
    ids = dict(re.findall(r"^(array_job_id|merge_job_id)=(\S+)$", out, re.MULTILINE))
    assert set(ids) == {"array_job_id", "merge_job_id"}, out
    LOG.info("%s", out.strip().replace("\n", "; "))
    return Submission(ids["array_job_id"], ids["merge_job_id"], at)


def _jobs(job_id: str) -> list[dict[str, str]]:
    """Slurm's record of a job (an array job: one per task), as key=value fields."""
    done = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        return []
    return [dict(field.partition("=")[::2] for field in line.split()) for line in done.stdout.splitlines() if line]


def _task(array_id: str, task: int) -> dict[str, str]:
    records = [r for r in _jobs(array_id) if r.get("ArrayTaskId") == str(task)]
    assert len(records) == 1, f"array task {array_id}_{task}: {records}"
    return records[0]


def _active(job_ids: list[str]) -> list[str]:
    done = subprocess.run(
        ["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0 and "Invalid job id" in done.stderr:
        return []
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")[:-1]


def _wait_until(check: Callable[[], bool], what: str, timeout: float = JOB_TIMEOUT_S, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _wait_gone(job_ids: list[str], run_dir: Path, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while active := _active(job_ids):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *job_ids], timeout=30, check=False)
            logs = "\n".join(f"== {p}\n{p.read_text()[-2000:]}" for p in sorted((run_dir / "logs").glob("*.out")))
            pytest.fail(f"jobs still queued or running after {timeout:.0f} s: {active}\n{logs}")
        time.sleep(0.5)


def _assert_finished_ok(sub: Submission) -> None:
    for record in [*_jobs(sub.array_id), *_jobs(sub.merge_id)]:
        assert (record.get("JobState"), record.get("ExitCode")) == ("COMPLETED", "0:0"), record


# --- results -----------------------------------------------------------------------------


def _collected_ids(config: Path, bench_project: pytest.Pytester) -> list[str]:
    """The grid's case ids, from a serial `--collect-only -q` of the same config (in-process)."""
    result = bench_project.runpytest("--config", str(config), "--collect-only", "-q", "-p", "no:cacheprovider")
    out = result.stdout.str()
    ids = [m.group(1) for m in re.finditer(r"^\S*test_bench\.py::test_\w+\[(.+)\]$", out, re.MULTILINE)]
    assert ids, out
    return ids


def _strict_rows(path: Path) -> list[dict[str, str]]:
    """Every line of a results CSV, each required to be complete (no torn last write)."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path}: the last line is incomplete"
    lines = text.splitlines()
    assert next(csv.reader([lines[0]])) == list(COLUMN_NAMES), f"{path}: unexpected header"
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        values = next(csv.reader([line]))
        assert len(values) == len(COLUMN_NAMES), f"{path}:{number}: {len(values)} fields, expected {len(COLUMN_NAMES)}"
        rows.append(dict(zip(COLUMN_NAMES, values, strict=True)))
    return rows


def _assert_complete_grid(run_dir: Path, expected_ids: list[str]) -> None:
    merged = run_dir / "merged"
    rows = _strict_rows(merged / "raw_metrics.csv")
    counts = Counter(row["case_id"] for row in rows)
    assert sorted(counts) == sorted(expected_ids), (
        f"missing: {sorted(set(expected_ids) - set(counts))}, unexpected: {sorted(set(counts) - set(expected_ids))}"
    )
    assert [c for c, n in counts.items() if n > 1] == []
    assert {row["case_id"]: row["status"] for row in rows} == dict.fromkeys(expected_ids, "ok")
    manifest = json.loads((merged / "run_manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "complete", manifest
    assert len(manifest["shards"]) == SHARDS


def _shard_plan(config: Path) -> dict[int, list[str]]:
    assignment = assign_shards(expand_cases(load_config(config)), SHARDS)
    return {i: sorted(c for c, shard in assignment.items() if shard == i) for i in range(SHARDS)}


def _partial_ids(run_dir: Path, shard: int) -> list[str]:
    path = run_dir / f"shard-{shard}" / "raw_metrics_partial.csv"
    return [row["case_id"] for row in _strict_rows(path)] if path.exists() else []


def _task_log(run_dir: Path, shard: int) -> str:
    path = run_dir / "logs" / f"shard-{shard}.out"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def _log_timeline(run_dir: Path, submissions: list[Submission], extra: list[tuple[dt.datetime, str]]) -> None:
    """Log what happened when, relative to the first submission, from the jobs' own logs."""
    events = [(s.at, f"submit: array {s.array_id}, merge {s.merge_id}") for s in submissions] + extra
    for path in sorted((run_dir / "logs").glob("*.out")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if match := TASK_LINE.match(line):
                stamp, text = match.groups()
                if not text.startswith("command:"):
                    events.append((dt.datetime.fromisoformat(stamp), f"{path.stem}: {text}"))
            elif match := MERGE_LINE.match(line):
                kind, stamp, rest = match.groups()
                events.append((dt.datetime.fromisoformat(stamp), f"{path.stem}: {kind}{rest}"))
    start = min(at for at, _ in events)
    lines = [f"{(at - start).total_seconds():7.1f} s  {text}" for at, text in sorted(events, key=lambda e: e[0])]
    LOG.info("timeline of %s:\n%s", run_dir.name, "\n".join(lines))


# --- configs -----------------------------------------------------------------------------


def _tiny_grid(directory: Path) -> Path:
    """4 LLaDA + 2 baseline cases of the tiny models."""
    config = tiny_config(
        grid={"prompt_length": [8], "gen_length": [8], "batch_size": [1, 2]},
        llada={"steps": [4, 8], "block_length": [8]},
    )
    return write_config(directory, config)


def _slow_grid(directory: Path) -> Path:
    """10 LLaDA cases of equal cost (about a second each, most of it asleep: run the jobs with
    `slow_job_env`) and one baseline case, so that every shard has several cases and a signal
    lands between two of them."""
    config = tiny_config(
        grid={"prompt_length": [16], "gen_length": [32], "batch_size": [2]},
        llada={
            "steps": [32],
            "block_length": [32],
            "remasking": ["low_confidence", "random"],
            "temperature": [0.0, 0.25, 0.5, 0.75, 1.0],
        },
        warmup_rounds=1,
        measured_rounds=5,
    )
    return write_config(directory, config, "slow-grid.yaml")


def _first_row_then(run_dir: Path, plan: dict[int, list[str]], action: Callable[[int], None]) -> int:
    """Wait until a shard of at least 3 cases has its first row, then act on it at once."""
    candidates = [i for i, ids in plan.items() if len(ids) >= 3]
    assert candidates, plan
    chosen: list[int] = []

    def started() -> bool:
        for shard in candidates:
            if _partial_ids(run_dir, shard):
                chosen.append(shard)
                return True
        return False

    _wait_until(started, "a shard's first row", every=0.05)
    action(chosen[0])
    return chosen[0]


# --- tests -------------------------------------------------------------------------------


def test_array_runs_every_case_once_and_merges(
    cluster: Cluster, tmp_path: Path, job_env: dict[str, str], bench_project: pytest.Pytester
) -> None:
    config = _tiny_grid(tmp_path)
    run_dir = tmp_path / "run"
    expected = _collected_ids(config, bench_project)
    assert len(expected) == 6

    sub = _submit(config, run_dir, job_env)
    _wait_gone([sub.array_id, sub.merge_id], run_dir)
    _log_timeline(run_dir, [sub], [])

    _assert_finished_ok(sub)
    _assert_complete_grid(run_dir, expected)
    plan = _shard_plan(config)
    for shard in range(SHARDS):
        assert sorted(_partial_ids(run_dir, shard)) == plan[shard], f"shard {shard} ran other cases than planned"
        assert "exit 0 (shard complete)" in _task_log(run_dir, shard)


def test_cancelled_task_keeps_its_rows_and_resubmitting_it_completes_the_grid(
    cluster: Cluster, tmp_path: Path, slow_job_env: dict[str, str], bench_project: pytest.Pytester
) -> None:
    config = _slow_grid(tmp_path)
    run_dir = tmp_path / "run"
    expected = _collected_ids(config, bench_project)
    plan = _shard_plan(config)

    first = _submit(config, run_dir, slow_job_env)
    cancelled_at: list[tuple[dt.datetime, str]] = []

    def cancel(shard: int) -> None:
        _run(["scancel", f"{first.array_id}_{shard}"])  # SIGCONT + SIGTERM to every process of the task
        cancelled_at.append((dt.datetime.now(dt.UTC), f"scancel {first.array_id}_{shard}"))

    shard = _first_row_then(run_dir, plan, cancel)
    _wait_gone([first.array_id, first.merge_id], run_dir)

    # The cancelled task: its finished cases are on disk, complete and ok, and it did not
    # get to finish its shard.
    kept = _partial_ids(run_dir, shard)
    assert 1 <= len(kept) < len(plan[shard]), f"shard {shard} was not cancelled mid-run: {kept}"
    assert sorted(set(kept)) == sorted(kept) and set(kept) <= set(plan[shard])
    rows = _strict_rows(run_dir / f"shard-{shard}" / "raw_metrics_partial.csv")
    assert {row["status"] for row in rows} == {"ok"}
    assert _task(first.array_id, shard)["JobState"] == "CANCELLED"
    if cluster.kill_wait_s >= 10:  # the running case (about a second) ends well within KillWait
        manifest = json.loads((run_dir / f"shard-{shard}" / "run_manifest.json").read_text(encoding="utf-8"))
        assert (manifest["status"], manifest["signal"]) == ("interrupted", "SIGTERM"), manifest
        assert "exit 2 (interrupted" in _task_log(run_dir, shard)
    # The merge job never ran on the partial grid: Slurm cancelled it.
    assert _jobs(first.merge_id)[0]["JobState"] == "CANCELLED"
    assert not (run_dir / "merged").exists()

    second = _submit(config, run_dir, slow_job_env, tasks=str(shard))
    _wait_gone([second.array_id, second.merge_id], run_dir)
    _log_timeline(run_dir, [first, second], cancelled_at)

    _assert_finished_ok(second)
    _assert_complete_grid(run_dir, expected)
    redone = _partial_ids(run_dir, shard)
    assert sorted(redone) == plan[shard], f"the resumed shard ran a case twice or missed one: {redone}"
    assert redone[: len(kept)] == kept
    log = _task_log(run_dir, shard)
    assert f"resume: {len(kept)} cases already done" in log
    assert log.count(f"start task {shard}/{SHARDS}") == 2


def test_time_limit_warning_stops_the_task_cleanly_and_it_requeues_itself(
    cluster: Cluster, tmp_path: Path, slow_job_env: dict[str, str], bench_project: pytest.Pytester
) -> None:
    """`--signal=B:USR2@300` sends SIGUSR2 to the batch shell only; here `scancel --batch
    --signal=USR2` sends it the same way, without waiting for a time limit."""
    config = _slow_grid(tmp_path)
    run_dir = tmp_path / "run"
    expected = _collected_ids(config, bench_project)
    plan = _shard_plan(config)

    sub = _submit(config, run_dir, slow_job_env)
    events: list[tuple[dt.datetime, str]] = []

    def warn(shard: int) -> None:
        _run(["scancel", "--batch", "--signal=USR2", f"{sub.array_id}_{shard}"])
        events.append((dt.datetime.now(dt.UTC), f"SIGUSR2 to the batch shell of {sub.array_id}_{shard}"))

    shard = _first_row_then(run_dir, plan, warn)

    def requeued() -> bool:
        task = _task(sub.array_id, shard)
        return task["JobState"] == "PENDING" and int(task["Restarts"]) >= 1

    _wait_until(requeued, f"task {shard} to requeue itself", timeout=120)
    kept = _partial_ids(run_dir, shard)
    assert 1 <= len(kept) < len(plan[shard]), f"shard {shard} was not stopped mid-run: {kept}"
    manifest = json.loads((run_dir / f"shard-{shard}" / "run_manifest.json").read_text(encoding="utf-8"))
    assert (manifest["status"], manifest["signal"]) == ("interrupted", "SIGUSR2"), manifest
    # Slurm holds a requeued job for about two minutes; start it now.
    _run(["scontrol", "update", f"JobId={sub.array_id}_{shard}", "StartTime=now"])
    events.append((dt.datetime.now(dt.UTC), f"release {sub.array_id}_{shard} (StartTime=now)"))

    _wait_gone([sub.array_id, sub.merge_id], run_dir)
    _log_timeline(run_dir, [sub], events)

    _assert_finished_ok(sub)  # the same merge job ran: the requeue kept its dependency alive
    _assert_complete_grid(run_dir, expected)
    assert sorted(_partial_ids(run_dir, shard)) == plan[shard]
    log = _task_log(run_dir, shard)
    for text in ("received SIGUSR2", "exit 2 (interrupted", "requeueing job", "restart 1 ", "exit 0 (shard complete)"):
        assert text in log, f"{text!r} not in the task's log:\n{log}"
