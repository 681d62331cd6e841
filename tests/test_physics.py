"""The suite measures what it claims: tiny models on the CPU, checked against the
physics of the algorithms. Timing checks compare ratios measured in one process,
interleaved, with wide tolerances for a noisy shared 2-core machine."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pytest
import torch

from dllm_bench.cases import Case, expand_cases
from dllm_bench.config import parse_config
from dllm_bench.models.loader import LoadedModel, ModelCache
from dllm_bench.runner import CallRecorder, case_prompt, make_call, natural_length_output, run_case, tokens_until_eos
from dllm_bench.timing import time_rounds
from tests.helpers import TINY_LLADA_ARCH, tiny_config

ARCH = {**TINY_LLADA_ARCH, "d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128}


@pytest.fixture(scope="module")
def cases_and_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Case], ModelCache]:
    raw = tiny_config(
        grid={"prompt_length": [16], "gen_length": [32], "batch_size": [2]},
        llada={"steps": [8, 32], "block_length": [8, 32]},
        warmup_rounds=1,
        measured_rounds=3,
    )
    raw["models"][0]["arch"] = ARCH  # type: ignore[index]
    cases = expand_cases(parse_config(raw, Path("physics.yaml")))
    return cases, ModelCache(tmp_path_factory.mktemp("models"))


def _case(cases: list[Case], kind: str, **params: object) -> Case:
    for case in cases:
        if case.kind == kind and all(getattr(case, k) == v for k, v in params.items()):
            return case
    raise LookupError(params)


def test_llada_nfe_equals_steps(cases_and_models: tuple[list[Case], ModelCache]) -> None:
    cases, models = cases_and_models
    for case in cases:
        if case.kind == "llada":
            row = run_case(case, models.get(case.model))
            assert row["nfe"] == case.steps
            assert float(str(row["tokens_per_forward"])) == pytest.approx(case.gen_length / (case.steps or 1))


def test_cfg_is_one_forward_pass_per_step_with_a_doubled_batch(
    cases_and_models: tuple[list[Case], ModelCache],
) -> None:
    cases, models = cases_and_models
    case = dataclasses.replace(_case(cases, "llada", steps=8, block_length=8), cfg_scale=1.0)
    row = run_case(case, models.get(case.model))
    assert row["nfe"] == 8
    assert row["cfg_batch_factor"] == 2


def _median_latency(loaded: LoadedModel, case: Case, rounds: int = 5) -> float:
    call = make_call(case, loaded, case_prompt(case, loaded), CallRecorder())
    return statistics.median(time_rounds(call, warmup_rounds=1, measured_rounds=rounds))


def _interleaved_medians(models: ModelCache, first: Case, second: Case, repeats: int = 3) -> tuple[float, float]:
    a, b = [], []
    for _ in range(repeats):
        a.append(_median_latency(models.get(first.model), first))
        b.append(_median_latency(models.get(second.model), second))
    return statistics.median(a), statistics.median(b)


def test_latency_grows_with_steps(cases_and_models: tuple[list[Case], ModelCache]) -> None:
    cases, models = cases_and_models
    few, many = _interleaved_medians(
        models, _case(cases, "llada", steps=8, block_length=32), _case(cases, "llada", steps=32, block_length=32)
    )
    # 4x the forward passes: expect about 4x the time; demand at least 1.8x.
    assert many / few > 1.8, (few, many)


def test_latency_does_not_depend_on_block_length(cases_and_models: tuple[list[Case], ModelCache]) -> None:
    cases, models = cases_and_models
    short, long = _interleaved_medians(
        models, _case(cases, "llada", steps=32, block_length=8), _case(cases, "llada", steps=32, block_length=32)
    )
    assert 0.5 < short / long < 2.0, (short, long)


def test_baseline_generates_exactly_gen_length_even_past_eos(
    cases_and_models: tuple[list[Case], ModelCache],
) -> None:
    cases, models = cases_and_models
    case = _case(cases, "baseline")
    loaded = models.get(case.model)
    prompt = case_prompt(case, loaded)
    output = make_call(case, loaded, prompt, CallRecorder())()
    assert output.shape == (case.batch_size, case.prompt_length + case.gen_length)
    # Make the first greedy token of each row an end-of-sequence token: the timed call
    # must still produce gen_length tokens, and the EOS count (from a call that may stop)
    # must stop at the first token of each row.
    first_tokens = sorted({int(t) for t in output[:, case.prompt_length]})
    eos_loaded = dataclasses.replace(loaded, eos_ids=tuple(first_tokens))
    original = loaded.model.generation_config.eos_token_id
    loaded.model.generation_config.eos_token_id = first_tokens
    try:
        fixed = make_call(case, eos_loaded, prompt, CallRecorder())()
        natural = natural_length_output(case, eos_loaded, prompt)
    finally:
        loaded.model.generation_config.eos_token_id = original
    assert fixed.shape == output.shape
    assert torch.equal(natural[:, case.prompt_length], output[:, case.prompt_length])
    generated = natural[:, case.prompt_length :]
    assert tokens_until_eos(generated, first_tokens, length=case.gen_length) == case.batch_size


def test_tokens_until_eos_counts_up_to_and_including_the_first_eos() -> None:
    generated = torch.tensor([[5, 9, 7, 9], [1, 2, 3, 4], [9, 9, 9, 9]])
    assert tokens_until_eos(generated, [9]) == 2 + 4 + 1
    assert tokens_until_eos(generated, []) == 12
    # A generation that stopped early is counted against the configured length.
    assert tokens_until_eos(torch.tensor([[1, 2]]), [7], length=4) == 4
