"""Accelerated LLaDA decoding: KV cache (prefix, dual) and confidence rules (threshold, factor).

``generate`` is checked token for token, and forward for forward, against
``literal_generate`` below: a plain, literal implementation of each mode written
from the rules (row by row, Python lists and sorts), calling the model the same
way. The model is the suite's own ``LLaDAModelLM`` (random init) with a fixed
per-position logit bias (``PositionBias``), so that confidences are peaked to
different degrees and the threshold rule commits several tokens per forward (a
random-init model's near-uniform softmax never does); the tests assert that this
happens, so they can fail.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from dllm_bench.models.llada_hf.configuration_llada import LLaDAConfig
from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM
from dllm_bench.sampling.llada import _first_argmax, generate
from dllm_bench.sampling.reference import generate_reference
from dllm_bench.sampling.schedule import (
    CACHE_MODES,
    LLADA_DEFAULTS,
    DecodingError,
    forward_pass_bounds,
    num_forward_passes,
    validate_decoding,
)

VOCAB = 96
MASK_ID = VOCAB - 1
PAD_ID = 0
GEN, BLOCK = 16, 8
MAX_LEN = 64
HEAD_SCALE = 60.0
BIAS_SIGMA = 6.0


def random_llada(seed: int = 0, head_scale: float = HEAD_SCALE) -> LLaDAModelLM:
    """The suite's own model, random init (GQA: 2 key/value heads), LM head scaled by ``head_scale``."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    config = LLaDAConfig(
        d_model=64,
        n_heads=4,
        n_kv_heads=2,
        n_layers=2,
        mlp_hidden_size=128,
        vocab_size=VOCAB,
        embedding_size=VOCAB,
        mask_token_id=MASK_ID,
        eos_token_id=VOCAB - 2,
        pad_token_id=PAD_ID,
        bos_token_id=VOCAB - 3,
        rope_theta=10000.0,
    )
    model = LLaDAModelLM(config).eval()
    with torch.no_grad():
        model.model.transformer["ff_out"].weight.mul_(head_scale)
    torch.random.set_rng_state(state)
    return model


class PositionBias(nn.Module):
    """A LLaDAModelLM whose logits get a fixed random bias per absolute position and token.

    Like a model that has learnt which tokens go where, it is confident to a
    degree that differs between positions, so that threshold 0.9 commits 0 to
    6 tokens per row and forward (a random-init model's near-uniform softmax commits
    one, and a scaled-up LM head alone makes all positions alike). The LLaDA
    part keeps the predictions dependent on the context, and so on the cache.
    Takes every argument of ``LLaDAModelLM.forward``.
    """

    def __init__(self, inner: LLaDAModelLM, sigma: float = BIAS_SIGMA, seed: int = 0) -> None:
        super().__init__()
        self.inner = inner
        self.bias = torch.randn(MAX_LEN, VOCAB, generator=torch.Generator().manual_seed(seed)) * sigma
        self.bias[:, MASK_ID] = 0.0

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        out = self.inner(input_ids, **kwargs)
        positions = torch.arange(input_ids.shape[1])
        kept = kwargs.get("logits_to_keep")
        if isinstance(kept, torch.Tensor | slice):
            positions = positions[kept]
        out.logits += self.bias[(kwargs.get("replace_position") or 0) + positions]
        return out


MODEL = PositionBias(random_llada())


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_prompt(batch: int, padded: bool, seed: int = 1, length: int = 6) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random prompt without mask/pad ids; if padded, left padding of 1, 3, 0, ... positions."""
    prompt = torch.randint(1, VOCAB - 3, (batch, length), generator=torch.Generator().manual_seed(seed))
    if not padded:
        return prompt, None
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(batch):
        pad = (2 * row + 1) % (length - 1)
        prompt[row, :pad] = PAD_ID
        attention_mask[row, :pad] = 0
    return prompt, attention_mask


# --------------------------------------------------------------------------- the literal implementation


def _literal_forward(
    model: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, cache: str, kv: Any, start: int, end: int, cfg: bool,
    prompt_len: int,
) -> tuple[dict[int, torch.Tensor], Any]:
    """The logits (B', V) of each block position that is masked in some row, and the cache after the call.

    With a cache the LM head is asked for exactly those positions.
    """
    def doubled(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t], dim=0) if cfg else t

    needed = [w for w in range(end - start) if bool((x[:, start + w] == MASK_ID).any())]
    model_mask = None if mask is None else doubled(mask)
    if cache == "none" or kv is None:
        canvas = x
        if cfg:
            unconditional = x.clone()
            unconditional[:, :prompt_len] = MASK_ID
            canvas = torch.cat([x, unconditional], dim=0)
        if cache == "none":
            logits = model(canvas, attention_mask=model_mask).logits
            return {w: logits[:, start + w] for w in needed}, None
        out = model(canvas, attention_mask=model_mask, use_cache=True,
                    logits_to_keep=torch.tensor([start + w for w in needed]))
        kv = out.past_key_values
    elif cache == "prefix":
        out = model(doubled(x[:, start:]), attention_mask=model_mask, past_key_values=kv, replace_position=start,
                    logits_to_keep=torch.tensor(needed))
    else:
        out = model(doubled(x[:, start:end]), attention_mask=model_mask, past_key_values=kv, replace_position=start,
                    logits_to_keep=torch.tensor(needed))
    return {w: out.logits[:, i] for i, w in enumerate(needed)}, kv


def _choose(ranked: list[int], confidence: dict[int, float], count: int | None, threshold: float | None,
            factor: float | None) -> list[int]:
    """The positions a row commits, from its masked positions ranked by confidence."""
    if not ranked:
        return []
    if threshold is not None:
        return [ranked[0]] + [w for w in ranked[1:] if confidence[w] >= threshold]
    if factor is not None:
        chosen = [ranked[0]]
        for n in range(2, len(ranked) + 1):
            if (n + 1) * (1 - confidence[ranked[n - 1]]) >= factor:
                break
            chosen.append(ranked[n - 1])
        return chosen
    assert count is not None
    return ranked[:count]


@torch.no_grad()
def literal_generate(
    model: nn.Module,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    steps: int | None,
    gen_length: int,
    block_length: int,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    cache: str = "none",
    threshold: float | None = None,
    factor: float | None = None,
) -> tuple[torch.Tensor, list[list[int]]]:
    """The canvas, and per forward the number of tokens each row committed."""
    batch, prompt_len = prompt.shape
    x = torch.full((batch, prompt_len + gen_length), MASK_ID, dtype=torch.long)
    x[:, :prompt_len] = prompt
    mask = None
    if attention_mask is not None:
        mask = torch.cat([attention_mask, torch.ones(batch, gen_length, dtype=attention_mask.dtype)], dim=1)
    num_blocks = gen_length // block_length
    fixed = threshold is None and factor is None
    trace: list[list[int]] = []
    for block in range(num_blocks):
        start = prompt_len + block * block_length
        end = start + block_length
        counts: list[int] = []
        if fixed:
            assert steps is not None
            per_block = steps // num_blocks
            counts = [block_length // per_block + (1 if i < block_length % per_block else 0) for i in range(per_block)]
            counts = [c for c in counts if c > 0]
        kv = None
        step = 0
        while (step < len(counts)) if fixed else bool((x[:, start:end] == MASK_ID).any()):
            logits, kv = _literal_forward(model, x, mask, cache, kv, start, end, cfg_scale > 0, prompt_len)
            if cfg_scale > 0:
                logits = {w: two[batch:] + (cfg_scale + 1) * (two[:batch] - two[batch:]) for w, two in logits.items()}
            vocab = next(iter(logits.values())).shape[-1]
            noise = torch.rand((batch, block_length, vocab), dtype=torch.float64) if temperature > 0 else None
            random_confidence = torch.rand((batch, block_length)) if remasking == "random" else None
            new_x = x.clone()
            commits = []
            for b in range(batch):
                candidates = [w for w in range(block_length) if int(x[b, start + w]) == MASK_ID]
                prediction: dict[int, int] = {}
                confidence: dict[int, float] = {}
                for w in candidates:
                    row = logits[w][b]
                    exps = torch.exp(row.float() - row.float().max())
                    probabilities = exps / exps.sum()
                    if noise is None:
                        scores = row.clone()
                    else:
                        scores = row.to(torch.float64).exp() / (-torch.log(noise[b, w])) ** temperature
                    scores[MASK_ID] = float("-inf")
                    token = int(torch.argmax(scores))
                    prediction[w] = token
                    if random_confidence is None:
                        confidence[w] = float(probabilities[token])
                    else:
                        confidence[w] = float(random_confidence[b, w])
                ranked = sorted(candidates, key=lambda w: -confidence[w])  # stable: lower position first on ties
                chosen = _choose(ranked, confidence, counts[step] if fixed else None, threshold, factor)
                for w in chosen:
                    new_x[b, start + w] = prediction[w]
                commits.append(len(chosen))
            x = new_x
            trace.append(commits)
            step += 1
    return x, trace


class ForwardCounter:
    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.handle = model.register_forward_hook(self._count)

    def _count(self, *_: object) -> None:
        self.calls += 1

    def __enter__(self) -> ForwardCounter:
        return self

    def __exit__(self, *_: object) -> None:
        self.handle.remove()


def run_both(
    prompt: torch.Tensor, attention_mask: torch.Tensor | None, seed: int = 1234, model: nn.Module = MODEL,
    **kwargs: Any,
) -> tuple[torch.Tensor, int, torch.Tensor, list[list[int]]]:
    """(fast canvas, fast forwards, literal canvas, literal trace) from the same random stream."""
    with ForwardCounter(model) as counter:
        torch.manual_seed(seed)
        fast = generate(model, prompt, attention_mask, mask_id=MASK_ID, **kwargs)
    torch.manual_seed(seed)
    literal, trace = literal_generate(model, prompt, attention_mask, **kwargs)
    return fast, counter.calls, literal, trace


RULES: dict[str, dict[str, Any]] = {
    "fixed2": {"steps": 8},  # 2 tokens per step
    "fixed1": {"steps": GEN},  # 1 token per step
    "th0.9": {"steps": None, "threshold": 0.9},
    "f1": {"steps": None, "factor": 1.0},
}


def accelerated(caches: tuple[str, ...], rules: list[str]) -> list[tuple[str, str]]:
    """(cache, rule) pairs without cache none with a fixed schedule: that is the exact mode,
    checked against the reference instead."""
    return [(c, r) for c, r in itertools.product(caches, rules) if c != "none" or not r.startswith("fixed")]


@pytest.mark.parametrize(
    ("cache", "rule", "batch", "temperature", "remasking"),
    [
        (c, r, *rest)
        for (c, r), *rest in itertools.product(accelerated(CACHE_MODES, list(RULES)), [1, 3], [0.0, 0.7],
                                               ["low_confidence", "random"])
    ],
)
def test_matches_literal_implementation(cache: str, rule: str, batch: int, temperature: float, remasking: str) -> None:
    prompt, attention_mask = make_prompt(batch, padded=batch > 1)
    kwargs = dict(RULES[rule], gen_length=GEN, block_length=BLOCK, temperature=temperature, remasking=remasking,
                  cache=cache)
    fast, forwards, literal, trace = run_both(prompt, attention_mask, **kwargs)
    assert torch.equal(fast, literal)
    assert forwards == len(trace)
    assert not (fast[:, prompt.shape[1]:] == MASK_ID).any()
    assert torch.equal(fast[:, : prompt.shape[1]], prompt)
    # No forward that cannot commit anything.
    assert all(sum(commits) > 0 for commits in trace)
    if rule.startswith("fixed"):
        per_step = GEN // RULES[rule]["steps"]
        assert all(commits == [per_step] * batch for commits in trace)


@pytest.mark.parametrize("cache", CACHE_MODES)
@pytest.mark.parametrize("rule", ["th0.9", "f1"])
def test_confidence_rules_commit_several_tokens_per_forward(cache: str, rule: str) -> None:
    # Four prompts, batch 1, greedy: the rule must commit more than one token per forward on average,
    # and several at once at least once, or the identity tests above prove little.
    committed = forwards = 0
    most = 0
    for seed in range(4):
        prompt, _ = make_prompt(1, padded=False, seed=seed)
        fast, calls, literal, trace = run_both(prompt, None, gen_length=GEN, block_length=BLOCK, cache=cache,
                                              **RULES[rule])
        assert torch.equal(fast, literal)
        committed += sum(sum(c) for c in trace)
        forwards += calls
        most = max(most, *(c[0] for c in trace))
    assert committed == 4 * GEN
    assert forwards <= 0.8 * committed
    assert most >= 3


@pytest.mark.parametrize("cache", CACHE_MODES)
def test_rows_finish_blocks_at_different_steps(cache: str) -> None:
    prompt, attention_mask = make_prompt(4, padded=True, seed=3)
    fast, forwards, literal, trace = run_both(prompt, attention_mask, steps=None, gen_length=GEN,
                                              block_length=BLOCK, cache=cache, threshold=0.9)
    assert torch.equal(fast, literal)
    # Some forward had a finished row (0 commits) beside a row that still committed.
    assert any(0 in commits and max(commits) > 0 for commits in trace)
    # NFE = per block, the steps of the slowest row.
    assert forwards == len(trace)
    assert forwards < GEN


@pytest.mark.parametrize(("cache", "rule"), accelerated(CACHE_MODES, ["fixed2", "th0.9", "f1"]))
@pytest.mark.parametrize("padded", [False, True])
def test_cfg_with_every_cache_mode(cache: str, rule: str, padded: bool) -> None:
    prompt, attention_mask = make_prompt(2, padded=padded, seed=4)
    kwargs = dict(RULES[rule], gen_length=GEN, block_length=BLOCK, cfg_scale=1.5, cache=cache)
    batches: list[int] = []
    handle = MODEL.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    try:
        fast, forwards, literal, trace = run_both(prompt, attention_mask, **kwargs)
    finally:
        handle.remove()
    assert torch.equal(fast, literal)
    assert forwards == len(trace)
    assert set(batches) == {4}  # one doubled batch per forward: one cache per branch


def test_modes_agree_on_a_fresh_block() -> None:
    # With one step per block every mode makes only the full forward of each block: same tokens, NFE = blocks.
    prompt, attention_mask = make_prompt(3, padded=True, seed=5)
    outputs = {}
    for cache in CACHE_MODES:
        with ForwardCounter(MODEL) as counter:
            outputs[cache] = generate(MODEL, prompt, attention_mask, steps=2, gen_length=GEN, block_length=BLOCK,
                                      mask_id=MASK_ID, cache=cache)
        assert counter.calls == GEN // BLOCK
    assert torch.equal(outputs["prefix"], outputs["none"])
    assert torch.equal(outputs["dual"], outputs["none"])


def test_cache_changes_the_computation() -> None:
    # The cached keys/values are stale after the first step of a block, so the cache modes are
    # approximations: on this model they differ from the exact decode somewhere.
    prompt, _ = make_prompt(3, padded=False, seed=6)
    outputs = {
        cache: generate(MODEL, prompt, steps=GEN, gen_length=GEN, block_length=BLOCK, mask_id=MASK_ID, cache=cache)
        for cache in CACHE_MODES
    }
    assert not torch.equal(outputs["dual"], outputs["none"])


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("steps", [4, 8, 16, 32])
def test_cache_none_fixed_steps_is_unchanged(padded: bool, temperature: float, remasking: str, steps: int) -> None:
    # The exact mode stays token-identical to the plain reference algorithm, on the suite's own model too.
    prompt, attention_mask = make_prompt(3, padded=padded, seed=7)
    kwargs = dict(steps=steps, gen_length=GEN, block_length=BLOCK, temperature=temperature, remasking=remasking)
    torch.manual_seed(99)
    with ForwardCounter(MODEL) as counter:
        fast = generate(MODEL, prompt, attention_mask, mask_id=MASK_ID, cache="none", **kwargs)
    torch.manual_seed(99)
    slow = generate_reference(MODEL, prompt, attention_mask, mask_id=MASK_ID, **kwargs)
    assert torch.equal(fast, slow)
    # One forward per step that commits something (steps beyond the block length commit nothing).
    assert counter.calls == num_forward_passes(steps=steps, gen_length=GEN, block_length=BLOCK)
    assert counter.calls == min(steps, GEN)


class PrefersMask(nn.Module):
    """Wraps a model and makes the mask id the most likely token at every other logits row."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        out = self.inner(input_ids, **kwargs)
        out.logits[:, ::2, MASK_ID] += 1000.0
        return out


@pytest.mark.parametrize("cache", CACHE_MODES)
@pytest.mark.parametrize("rule", ["fixed2", "th0.9", "f1"])
def test_the_mask_id_is_never_committed(cache: str, rule: str) -> None:
    model = PrefersMask(MODEL)
    prompt, attention_mask = make_prompt(2, padded=True, seed=8)
    kwargs = dict(RULES[rule], gen_length=GEN, block_length=BLOCK, cache=cache)
    with ForwardCounter(model) as counter:
        out = generate(model, prompt, attention_mask, mask_id=MASK_ID, **kwargs)
    assert not (out[:, prompt.shape[1]:] == MASK_ID).any()
    low, high = forward_pass_bounds(gen_length=GEN, block_length=BLOCK, **RULES[rule])
    assert low <= counter.calls <= high
    if cache == "none" and rule == "fixed2":
        reference = generate_reference(model, prompt, attention_mask, mask_id=MASK_ID, **RULES[rule], gen_length=GEN,
                                       block_length=BLOCK)
        assert torch.equal(out, reference)
    else:
        literal, _ = literal_generate(model, prompt, attention_mask, **kwargs)
        assert torch.equal(out, literal)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_step_per_block_with_a_cache(cache: str) -> None:
    # Fast-dLLM's cache loops crash here; we make one full forward per block.
    prompt, _ = make_prompt(1, padded=False)
    with ForwardCounter(MODEL) as counter:
        out = generate(MODEL, prompt, steps=GEN // BLOCK, gen_length=GEN, block_length=BLOCK, mask_id=MASK_ID,
                       cache=cache)
    assert counter.calls == GEN // BLOCK
    assert not (out == MASK_ID).any()


def test_on_forward_counts_every_forward() -> None:
    prompt, attention_mask = make_prompt(2, padded=True)
    calls: list[int] = []
    with ForwardCounter(MODEL) as counter:
        generate(MODEL, prompt, attention_mask, steps=None, gen_length=GEN, block_length=BLOCK, mask_id=MASK_ID,
                 cache="dual", threshold=0.9, on_forward=lambda: calls.append(1))
    assert len(calls) == counter.calls > 0


def test_seeded_sampling_differs_between_seeds() -> None:
    prompt, _ = make_prompt(2, padded=False)
    kwargs = dict(steps=None, gen_length=GEN, block_length=BLOCK, mask_id=MASK_ID, cache="dual", threshold=0.9,
                  temperature=1.0)
    torch.manual_seed(0)
    a = generate(MODEL, prompt, **kwargs)
    torch.manual_seed(1)
    b = generate(MODEL, prompt, **kwargs)
    assert not torch.equal(a, b)


# --------------------------------------------------------------------------- refusals


def test_prompt_with_the_mask_id_is_refused_by_the_accelerated_modes() -> None:
    prompt, _ = make_prompt(1, padded=False)
    prompt[0, 2] = MASK_ID
    with pytest.raises(ValueError, match="prompt contains the mask id"):
        generate(MODEL, prompt, steps=GEN, gen_length=GEN, block_length=BLOCK, mask_id=MASK_ID, cache="prefix")
    with pytest.raises(ValueError, match="prompt contains the mask id"):
        generate(MODEL, prompt, steps=None, gen_length=GEN, block_length=BLOCK, mask_id=MASK_ID, threshold=0.5)


VALID = {"steps": 16, "gen_length": 16, "block_length": 8}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"threshold": 0.9, "factor": 1.0}, "threshold and factor exclude each other"),
        ({"threshold": 0.0}, "threshold must be null or a number in (0, 1], got 0.0"),
        ({"threshold": 1.5}, "threshold must be null or a number in (0, 1], got 1.5"),
        ({"threshold": -0.1}, "threshold must be null or a number in (0, 1], got -0.1"),
        ({"threshold": float("nan")}, "threshold must be null or a number in (0, 1], got nan"),
        ({"threshold": True}, "threshold must be null or a number in (0, 1], got True"),
        ({"threshold": "0.9"}, "threshold must be null or a number in (0, 1], got '0.9'"),
        ({"factor": 0.0}, "factor must be null or a finite number > 0, got 0.0"),
        ({"factor": -1}, "factor must be null or a finite number > 0, got -1"),
        ({"factor": float("inf")}, "factor must be null or a finite number > 0, got inf"),
        ({"cache": "full"}, "cache must be one of 'none', 'prefix', 'dual', got 'full'"),
        ({"steps": None}, "steps must be a positive integer, got None"),
        ({"steps": 3}, "steps (3) must be a multiple of the number of blocks"),
        ({"block_length": 5}, "gen_length (16) must be a multiple of block_length (5)"),
        ({"remasking": "top_k"}, "unknown remasking 'top_k'"),
        ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
        ({"cfg_scale": float("nan")}, "cfg_scale must be a finite number >= 0"),
    ],
)
def test_invalid_decoding_options_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(DecodingError) as excinfo:
        validate_decoding(**{**VALID, **overrides})
    assert message in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError)
    calls: list[int] = []
    prompt, _ = make_prompt(1, padded=False)
    with pytest.raises(ValueError, match=r"must|exclude|unknown"):
        generate(MODEL, prompt, mask_id=MASK_ID, on_forward=lambda: calls.append(1), **{**VALID, **overrides})
    assert calls == []


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(DecodingError) as excinfo:
        validate_decoding(steps=0, gen_length=16, block_length=8, cache="x", threshold=2.0, factor=-1.0)
    problems = excinfo.value.problems
    assert len(problems) == 5
    assert [p.split()[0] for p in problems] == ["steps", "threshold", "threshold", "factor", "cache"]
    assert excinfo.value.parameters == ("steps", "threshold", "threshold", "factor", "cache")


def test_each_problem_names_its_parameter() -> None:
    """The config check files a problem under the parameter the error names, not under the
    message's first word ("unknown remasking ..." is about remasking)."""
    with pytest.raises(DecodingError) as excinfo:
        validate_decoding(steps=3, gen_length=16, block_length=5, remasking="top_k", temperature=-1.0, cfg_scale=-1.0)
    assert excinfo.value.parameters == ("gen_length", "remasking", "temperature", "cfg_scale")
    with pytest.raises(DecodingError) as excinfo:
        validate_decoding(steps=3, gen_length=16, block_length=8)
    assert excinfo.value.parameters == ("steps",)


@pytest.mark.parametrize("rule", [{"threshold": 1.0}, {"threshold": 1e-9}, {"factor": 1e-9}, {"factor": 100.0}])
def test_steps_do_not_matter_with_a_confidence_rule(rule: dict[str, float]) -> None:
    validate_decoding(steps=None, gen_length=16, block_length=8, **rule)
    validate_decoding(steps=7, gen_length=16, block_length=8, **rule)  # not a multiple of the blocks: not used
    prompt, _ = make_prompt(1, padded=False)
    a = generate(MODEL, prompt, steps=None, gen_length=GEN, block_length=BLOCK, mask_id=MASK_ID, **rule)
    b = generate(MODEL, prompt, steps=7, gen_length=GEN, block_length=BLOCK, mask_id=MASK_ID, **rule)
    assert torch.equal(a, b)


def test_extreme_rules() -> None:
    prompt, _ = make_prompt(1, padded=False)
    # threshold 1: only the most confident one per forward (no probability reaches 1 in float32 here).
    with ForwardCounter(MODEL) as counter:
        generate(MODEL, prompt, steps=None, gen_length=GEN, block_length=BLOCK, mask_id=MASK_ID, threshold=1.0,
                 cache="dual")
    assert counter.calls == GEN
    # A huge factor commits every masked position of a block at its first forward.
    with ForwardCounter(MODEL) as counter:
        generate(MODEL, prompt, steps=None, gen_length=GEN, block_length=BLOCK, mask_id=MASK_ID, factor=100.0,
                 cache="prefix")
    assert counter.calls == GEN // BLOCK


def test_forward_pass_bounds() -> None:
    assert forward_pass_bounds(steps=16, gen_length=16, block_length=8) == (16, 16)
    assert forward_pass_bounds(steps=32, gen_length=16, block_length=8) == (16, 16)
    assert forward_pass_bounds(steps=4, gen_length=16, block_length=8) == (4, 4)
    assert forward_pass_bounds(steps=None, gen_length=16, block_length=8, threshold=0.9) == (2, 16)
    assert forward_pass_bounds(steps=None, gen_length=16, block_length=4, factor=1.0) == (4, 16)


def test_defaults_are_the_signature_defaults() -> None:
    assert LLADA_DEFAULTS.cache == "none"
    assert LLADA_DEFAULTS.threshold is None and LLADA_DEFAULTS.factor is None
    assert (LLADA_DEFAULTS.remasking, LLADA_DEFAULTS.temperature, LLADA_DEFAULTS.cfg_scale) == (
        "low_confidence", 0.0, 0.0)
    with pytest.raises(AttributeError):
        LLADA_DEFAULTS.cache = "dual"  # type: ignore[misc]


@pytest.mark.parametrize("vocab", [1, 96, 97, 2048, 32000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_first_argmax_is_argmax(vocab: int, dtype: torch.dtype) -> None:
    # Values from {0..4}: many ties, so "the first maximum" is exercised; NaN and all -inf rows too.
    scores = torch.randint(0, 5, (40, vocab), generator=torch.Generator().manual_seed(vocab)).to(dtype)
    scores[1, vocab // 2] = float("nan")
    scores[2, :] = float("-inf")
    scores[3, 0] = scores[3, -1] = float("nan")
    assert torch.equal(_first_argmax(scores), torch.argmax(scores, dim=-1))
