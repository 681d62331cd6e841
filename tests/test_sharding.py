"""Shards: a deterministic, cost-balanced split of the grid; merging shard outputs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dllm_bench.cases import expand_cases
from dllm_bench.config import parse_config
from dllm_bench.resume import resume_command
from dllm_bench.sharding import assign_shards, case_cost, parse_shard
from dllm_bench.sinks.csvfiles import read_results
from dllm_bench.sinks.merge import main as merge_main
from tests.helpers import tiny_config, write_config

GRID = tiny_config(
    grid={"prompt_length": [8, 16], "gen_length": [8, 16], "batch_size": [1, 2, 4]},
    llada={"steps": [8, 16], "block_length": [8]},
)


def _cases() -> list:  # type: ignore[type-arg]
    return expand_cases(parse_config(GRID, Path("grid.yaml")))


@pytest.mark.parametrize(("spec", "expected"), [("0/3", (0, 3)), ("2/3", (2, 3)), (" 0/1 ", (0, 1))])
def test_parse_shard(spec: str, expected: tuple[int, int]) -> None:
    assert parse_shard(spec) == expected


@pytest.mark.parametrize("spec", ["3/3", "1/0", "-1/3", "a/b", "1", "1/2/3", "0/1000000000", "0/100001"])
def test_parse_shard_refuses(spec: str) -> None:
    with pytest.raises(ValueError, match="expected I/K with 0 <= I < K"):
        parse_shard(spec)


def test_every_case_in_exactly_one_shard_and_balanced() -> None:
    cases = _cases()
    assignment = assign_shards(cases, 3)
    assert sorted(assignment) == sorted(c.case_id for c in cases)
    loads = Counter[int]()
    for case in cases:
        loads[assignment[case.case_id]] += int(case_cost(case))
    assert set(loads) == {0, 1, 2}
    biggest = max(case_cost(c) for c in cases)
    assert max(loads.values()) - min(loads.values()) <= biggest


def test_split_is_deterministic_and_order_independent() -> None:
    cases = _cases()
    assert assign_shards(cases, 4) == assign_shards(list(reversed(cases)), 4)


def test_cost_follows_forward_passes_batch_and_length() -> None:
    cases = {c.case_id: c for c in _cases()}
    base = case_cost(cases["tiny-llada-p8-g16-b1-s8-k8"])
    assert case_cost(cases["tiny-llada-p8-g16-b1-s16-k8"]) == 2 * base
    assert case_cost(cases["tiny-llada-p8-g16-b2-s8-k8"]) == 2 * base
    assert case_cost(cases["tiny-llada-p16-g16-b1-s8-k8"]) == pytest.approx(base * 32 / 24)
    # 16 steps on an 8-position block: the sampler skips the steps with nothing to commit.
    assert case_cost(cases["tiny-llada-p8-g8-b1-s16-k8"]) == case_cost(cases["tiny-llada-p8-g8-b1-s8-k8"])


def test_shards_partition_the_collected_cases(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, GRID)
    everything = bench_project.runpytest("--config", str(path), "--collect-only", "-q")
    all_ids = [line for line in everything.stdout.lines if line.startswith("test_bench.py::")]
    seen: list[str] = []
    for index in range(3):
        shard = bench_project.runpytest("--config", str(path), "--collect-only", "-q", "--shard", f"{index}/3")
        seen += [line for line in shard.stdout.lines if line.startswith("test_bench.py::")]
    assert sorted(seen) == sorted(all_ids)
    assert len(seen) == len(set(seen)) == len(_cases())


def test_bad_shard_is_a_usage_error(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, GRID)
    for spec in ("3/3", "0/1000000000"):
        result = bench_project.runpytest("--config", str(path), "--shard", spec, "--collect-only")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert f"--shard '{spec}'" in result.stderr.str()
        assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


@pytest.mark.slow
def test_merge_shards_and_refuse_mixed_configs(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    for index in range(2):
        run = bench_project.runpytest_inprocess(
            "--config", str(path), "--shard", f"{index}/2", "--output-dir", f"shard-{index}"
        )
        assert run.ret == pytest.ExitCode.OK
    shards = [bench_project.path / f"shard-{index}" for index in range(2)]
    merged = bench_project.path / "merged"
    assert merge_main([str(merged), *map(str, shards)]) == 0
    rows = read_results(merged / "raw_metrics.csv")
    assert sorted(r.case_id for r in rows) == [
        "tiny-llada-p8-g8-b2-s4-k8",
        "tiny-llada-p8-g8-b2-s8-k8",
        "tiny-llama-p8-g8-b2",
    ]
    manifest = json.loads((merged / "run_manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert [s["status"] for s in manifest["shards"]] == ["complete", "complete"]

    other = shards[1] / "run_manifest.json"
    data = json.loads(other.read_text())
    data["config"]["seed"] = 99
    other.write_text(json.dumps(data))
    assert merge_main([str(bench_project.path / "refused"), *map(str, shards)]) == 2
    assert not (bench_project.path / "refused").exists()
    assert merge_main([str(bench_project.path / "forced"), *map(str, shards), "--force"]) == 0


def test_resume_command_replaces_output_dir_and_resume() -> None:
    args = ["benchmarks", "--output-dir", "a", "-n", "2", "--resume", "--output-dir=b", "-k", "llada"]
    assert resume_command(args, Path("/r/out")) == [
        "pytest",
        "benchmarks",
        "-n",
        "2",
        "-k",
        "llada",
        "--resume",
        "--output-dir",
        "/r/out",
    ]
