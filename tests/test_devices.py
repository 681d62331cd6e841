"""One GPU per xdist worker, from the GPUs the user made visible."""

from __future__ import annotations

from pathlib import Path

import pytest

from dllm_bench.cases import case_id_of, expand_cases
from dllm_bench.config import parse_config
from dllm_bench.devices import PINNED_MARK, pin_worker_gpu, visible_gpus, worker_index
from dllm_bench.xdist import case_groups
from tests.helpers import tiny_config


def test_visible_gpus_respects_cuda_visible_devices() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5, 7"}) == ["3", "5", "7"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-1234,GPU-5678"}) == ["GPU-1234", "GPU-5678"]


def test_workers_round_robin_over_the_visible_gpus() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "3,5"}
    assert [pin_worker_gpu(f"gw{i}", env) for i in range(5)] == ["3", "5", "3", "5", "3"]


def test_no_gpu_no_pinning_and_no_double_pinning() -> None:
    assert pin_worker_gpu("gw0", {"CUDA_VISIBLE_DEVICES": ""}) is None
    assert pin_worker_gpu("gw1", {"CUDA_VISIBLE_DEVICES": "4", PINNED_MARK: "4"}) is None


def test_worker_index() -> None:
    assert worker_index("gw12") == 12
    with pytest.raises(ValueError, match="not an xdist worker id"):
        worker_index("master")


def test_cases_are_grouped_by_model_and_spread_over_idle_workers() -> None:
    cases = expand_cases(parse_config(tiny_config(llada={"steps": [2, 4, 8, 16], "block_length": [8]}), Path("g.yaml")))
    two = case_groups(cases, workers=2)
    assert {two[c.case_id] for c in cases if c.kind == "llada"} == {"tiny-llada#0"}
    assert {two[c.case_id] for c in cases if c.kind == "baseline"} == {"tiny-llama#0"}
    four = case_groups(cases, workers=4)
    assert {four[c.case_id] for c in cases if c.kind == "llada"} == {"tiny-llada#0", "tiny-llada#1"}
    assert case_id_of("b/test_x.py::test_llada[tiny-llada-p8-g8-b2-s4-k8]@grp") == "tiny-llada-p8-g8-b2-s4-k8"
