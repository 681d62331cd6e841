"""The suite measures what it claims: tiny models on the CPU, checked against the
physics of the algorithms through what load cannot change: forward passes, the tokens
each forward pass processes, and output lengths. (How time follows that work is measured
in benchmarks/perf/, not asserted here.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from dllm_bench.backends import backend
from dllm_bench.cases import Case, expand_cases
from dllm_bench.config import parse_config
from dllm_bench.models.loader import ModelCache
from dllm_bench.runner import CallRecorder, case_feed, case_task, run_case, tokens_until_eos
from tests.helpers import TINY_LLADA_ARCH, tiny_config

ARCH = {**TINY_LLADA_ARCH, "d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128}


@pytest.fixture(scope="module")
def cases_and_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Case], ModelCache]:
    raw = tiny_config(
        grid={"prompt_length": [16], "gen_length": [32], "batch_size": [2]},
        llada={"steps": [8, 32], "block_length": [8, 32]},
        warmup_rounds=1,
        measured_rounds=2,
    )
    raw["models"][0]["arch"] = ARCH
    cases = expand_cases(parse_config(raw, Path("physics.yaml")))
    return cases, ModelCache(tmp_path_factory.mktemp("models"))


def _case(cases: list[Case], kind: str, **settings: object) -> Case:
    for case in cases:
        columns = case.settings.columns()
        if case.kind == kind and all(columns.get(k) == v for k, v in settings.items()):
            return case
    raise LookupError(settings)


def _forward_inputs(models: ModelCache, case: Case) -> list[tuple[int, ...]]:
    """The input_ids shape of every forward pass of one generate call."""
    loaded = models.get(case.model)
    shapes: list[tuple[int, ...]] = []
    hook = loaded.model.register_forward_pre_hook(
        lambda _module, args, kwargs: shapes.append(tuple((args[0] if args else kwargs["input_ids"]).shape)),
        with_kwargs=True,
    )
    try:
        backend(case.kind).build_call(case, loaded, case_feed(case, loaded, case_task(case, loaded)), CallRecorder())()
    finally:
        hook.remove()
    return shapes


def test_llada_nfe_equals_steps(cases_and_models: tuple[list[Case], ModelCache]) -> None:
    cases, models = cases_and_models
    for case in cases:
        if case.kind == "llada":
            row = run_case(case, models.get(case.model))
            steps = case.settings.columns()["steps"]
            assert row.nfe == steps
            assert row.tokens_per_forward == pytest.approx(case.gen_length / steps)


def test_cfg_is_one_forward_pass_per_step_with_a_doubled_batch(
    cases_and_models: tuple[list[Case], ModelCache],
) -> None:
    cases, models = cases_and_models
    plain = _case(cases, "llada", steps=8, block_length=8)
    case = dataclasses.replace(plain, settings=dataclasses.replace(plain.settings, cfg_scale=1.0))
    row = run_case(case, models.get(case.model))
    assert row.nfe == 8
    assert row.cfg_batch_factor == 2
    assert set(_forward_inputs(models, case)) == {(2 * case.batch_size, case.prompt_length + case.gen_length)}


def test_work_grows_with_steps(cases_and_models: tuple[list[Case], ModelCache]) -> None:
    cases, models = cases_and_models
    few = _forward_inputs(models, _case(cases, "llada", steps=8, block_length=32))
    many = _forward_inputs(models, _case(cases, "llada", steps=32, block_length=32))
    # Every step is one forward pass over the whole (batch, prompt + gen) canvas.
    assert len(few) == 8 and len(many) == 32
    assert set(few) == set(many) == {(2, 16 + 32)}


def test_work_does_not_depend_on_block_length(cases_and_models: tuple[list[Case], ModelCache]) -> None:
    cases, models = cases_and_models
    short = _forward_inputs(models, _case(cases, "llada", steps=32, block_length=8))
    long = _forward_inputs(models, _case(cases, "llada", steps=32, block_length=32))
    assert short == long


def test_baseline_generates_exactly_gen_length_even_past_eos(
    cases_and_models: tuple[list[Case], ModelCache],
) -> None:
    cases, models = cases_and_models
    case = _case(cases, "baseline")
    loaded = models.get(case.model)
    feed = case_feed(case, loaded, case_task(case, loaded))
    kind = backend("baseline")
    output = kind.build_call(case, loaded, feed, CallRecorder())()
    assert output.shape == (case.batch_size, case.prompt_length + case.gen_length)
    # Make the first greedy token of each row an end-of-sequence token: the timed call
    # must still produce gen_length tokens, and the EOS count (from a call that may stop)
    # must stop at the first token of each row.
    first_tokens = sorted({int(t) for t in output[:, case.prompt_length]})
    eos_loaded = dataclasses.replace(loaded, eos_ids=tuple(first_tokens))
    original = loaded.model.generation_config.eos_token_id
    loaded.model.generation_config.eos_token_id = first_tokens
    try:
        fixed = kind.build_call(case, eos_loaded, feed, CallRecorder())()
        natural = kind.eos_output(case, eos_loaded, feed, fixed)
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


def _forwards_of_run_case(models: ModelCache, case: Case) -> tuple[int, float | None]:
    """Every forward pass `run_case` makes (timed or not), and the row's agreement_exact;
    with no exact decode remembered from earlier cases."""
    loaded = models.get(case.model)
    loaded.memo.clear()
    count = [0]
    hook = loaded.model.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    try:
        row = run_case(case, loaded)
    finally:
        hook.remove()
    return count[0], row.agreement_exact


def test_a_greedy_exact_case_is_its_own_reference_and_is_not_decoded_again(
    cases_and_models: tuple[list[Case], ModelCache],
) -> None:
    cases, models = cases_and_models
    exact = _case(cases, "llada", steps=32, block_length=8)
    rounds = exact.warmup_rounds + exact.measured_rounds
    forwards, agreement = _forwards_of_run_case(models, exact)
    assert (forwards, agreement) == (rounds * 32, 1.0)
    # A faster setting decodes the exact reference once per measured round, untimed.
    fast = _case(cases, "llada", steps=8, block_length=8)
    forwards, agreement = _forwards_of_run_case(models, fast)
    assert forwards == rounds * 8 + fast.measured_rounds * 32
    assert agreement is not None and 0 <= agreement <= 1
