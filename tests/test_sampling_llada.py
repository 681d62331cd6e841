"""Tests for the LLaDA sampler: token identity with the plain oracle, plus contracts.

The oracle is ``dllm_bench.sampling.reference.generate_reference``: the plain,
literal algorithm (full logits, full float64 Gumbel noise, per-row counts and a
per-row top-k over full rows), written independently of ``llada.generate``.
"""

from __future__ import annotations

import copy
import itertools
import types

import pytest
import torch
from torch import nn

from dllm_bench.sampling.llada import _select_transfer
from dllm_bench.sampling.llada import generate_keywords as generate
from dllm_bench.sampling.reference import generate_reference
from dllm_bench.sampling.schedule import num_forward_passes, transfer_schedule, validate_schedule

VOCAB = 96
MASK_ID = VOCAB - 1
PAD_ID = 0
MAX_LEN = 64


class ToyModel(nn.Module):
    """Tiny bidirectional LM: token + position embedding, one encoder layer, LM head."""

    def __init__(self, vocab: int = VOCAB, d_model: int = 32, seed: int = 0) -> None:
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(MAX_LEN, d_model)
        self.layer = nn.TransformerEncoderLayer(
            d_model, nhead=2, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d_model, vocab)
        with torch.no_grad():
            self.head.weight.mul_(4.0)  # spread the logits so confidences differ
            self.head.bias[MASK_ID] = -1e4  # like a real model, never predict the mask
        torch.random.set_rng_state(generator_state)
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> types.SimpleNamespace:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.embed(input_ids) + self.pos(positions)
        padding = None if attention_mask is None else attention_mask == 0
        h = self.layer(h, src_key_padding_mask=padding)
        return types.SimpleNamespace(logits=self.head(h))


class PairedLogits(nn.Module):
    """Wraps a model and gives positions 2i and 2i+1 the logits of position 2i.

    Both positions of a pair then have exactly the same confidence, so the k-th
    and (k+1)-th largest confidences are often tied.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> types.SimpleNamespace:
        logits = self.inner(input_ids, attention_mask=attention_mask).logits
        pair_start = torch.arange(logits.shape[1], device=logits.device) // 2 * 2
        return types.SimpleNamespace(logits=logits[:, pair_start])


class CountingModel(nn.Module):
    """Hand-checkable model.

    At every position it predicts the token ``number of unmasked tokens in the
    row``, with a margin that shrinks along the sequence, so low-confidence
    remasking commits the leftmost masked positions first.
    """

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> types.SimpleNamespace:
        batch, length = input_ids.shape
        count = (input_ids != MASK_ID).sum(dim=1)  # (B,)
        margin = 20.0 - 0.5 * torch.arange(length, dtype=torch.float32)  # (L,)
        logits = torch.zeros(batch, length, VOCAB)
        index = count.view(batch, 1, 1).expand(batch, length, 1)
        logits.scatter_(2, index, margin.view(1, length, 1).expand(batch, length, 1))
        return types.SimpleNamespace(logits=logits)


_MODEL = ToyModel()
# The identity tests also run on CUDA where available (the tie-breaking and
# reduction kernels differ from the CPU ones).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # The models here are tiny: intra-op threads only add spin-wait overhead.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _prompt(batch: int, prompt_len: int = 6, padded: bool = False, seed: int = 1):
    """Random prompt (no mask/pad ids) and, if padded, left padding of different lengths."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(1, MASK_ID, (batch, prompt_len), generator=g)
    if not padded:
        return prompt, None
    attention_mask = torch.ones(batch, prompt_len, dtype=torch.long)
    for row in range(batch):
        pad = (2 * row + 1) % (prompt_len - 1)  # 1, 3, 0, ... leading pads
        prompt[row, :pad] = PAD_ID
        attention_mask[row, :pad] = 0
    return prompt, attention_mask


_MODELS_BY_DEVICE: dict[str, nn.Module] = {"cpu": _MODEL}


def _model_on(device: str) -> nn.Module:
    """The shared toy model on ``device`` (a copy, so the CPU one stays put)."""
    if device not in _MODELS_BY_DEVICE:
        _MODELS_BY_DEVICE[device] = copy.deepcopy(_MODEL).to(device)
    return _MODELS_BY_DEVICE[device]


def _to(device: str, prompt: torch.Tensor, attention_mask: torch.Tensor | None):
    return prompt.to(device), None if attention_mask is None else attention_mask.to(device)


def _both(model: nn.Module, prompt, attention_mask, seed: int = 1234, **kwargs):
    torch.manual_seed(seed)
    fast = generate(model, prompt, attention_mask, mask_id=MASK_ID, **kwargs)
    torch.manual_seed(seed)
    slow = generate_reference(model, prompt, attention_mask, mask_id=MASK_ID, **kwargs)
    return fast, slow


# (gen_length, block_length, steps): one block; several blocks with 1, 2 and 4
# commits per step; more steps than masked tokens per block (steps commit 0);
# uneven split (5 tokens over 3 steps per block).
SCHEDULES = [(16, 16, 8), (16, 4, 8), (16, 4, 16), (16, 4, 4), (8, 4, 16), (10, 5, 6)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("remasking", "temperature", "cfg_scale", "padded", "schedule", "batch"),
    list(itertools.product(["low_confidence", "random"], [0.0, 0.7], [0.0, 1.5], [False, True], SCHEDULES, [1, 3])),
)
def test_matches_plain_algorithm(remasking, temperature, cfg_scale, padded, schedule, batch, device):
    gen_length, block_length, steps = schedule
    prompt, attention_mask = _to(device, *_prompt(batch, padded=padded))
    kwargs = dict(
        steps=steps,
        gen_length=gen_length,
        block_length=block_length,
        temperature=temperature,
        cfg_scale=cfg_scale,
        remasking=remasking,
    )
    fast, slow = _both(_model_on(device), prompt, attention_mask, **kwargs)

    assert fast.shape == (batch, prompt.shape[1] + gen_length)
    assert fast.dtype == torch.long
    assert torch.equal(fast, slow)
    assert not (fast == MASK_ID).any()
    assert torch.equal(fast[:, : prompt.shape[1]], prompt)


@pytest.mark.parametrize("steps", [9, 12, 24])  # 3/3/2, 2 and 1 commits per step
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
@pytest.mark.parametrize("tie_source", ["paired_logits", "bfloat16"])
@pytest.mark.parametrize("device", DEVICES)
def test_matches_plain_algorithm_with_tied_confidences(device, tie_source, cfg_scale, temperature, steps):
    # Ties between the k-th and (k+1)-th confidence make the top-k set depend on
    # how it is computed; the sampler must still pick what the plain per-row
    # top-k picks.
    if tie_source == "paired_logits":
        model: nn.Module = PairedLogits(_model_on(device))
    else:
        model = ToyModel(seed=3).to(device=device, dtype=torch.bfloat16)
    prompt, attention_mask = _to(device, *_prompt(3, padded=True, seed=5))
    kwargs = dict(steps=steps, gen_length=24, block_length=8, temperature=temperature)
    fast, slow = _both(model, prompt, attention_mask, cfg_scale=cfg_scale, **kwargs)
    assert torch.equal(fast, slow)
    assert not (fast == MASK_ID).any()


def test_select_transfer_resolves_ties_like_per_row_topk():
    # Confidences drawn from 3 values: ties at the k-th position are everywhere.
    g = torch.Generator().manual_seed(0)
    seq_len, lo, hi = 40, 10, 26
    batched_topk_disagreed = 0
    for _ in range(200):
        confidence = torch.randint(0, 3, (4, hi - lo), generator=g).float() / 4
        k = int(torch.randint(1, hi - lo, (1,), generator=g))
        expected = torch.zeros(4, seq_len, dtype=torch.bool)
        for j in range(4):
            row = torch.full((seq_len,), float("-inf"))
            row[lo:hi] = confidence[j]
            expected[j, torch.topk(row, k).indices] = True
        got = _select_transfer(confidence, k, lo, hi, seq_len)
        assert torch.equal(got, expected[:, lo:hi])
        naive = torch.zeros_like(got).scatter_(1, torch.topk(confidence, k).indices, True)
        batched_topk_disagreed += int(not torch.equal(naive, got))
    # The inputs really exercise ties: a plain batched top-k is not enough.
    assert batched_topk_disagreed > 0


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_prompt_containing_mask_tokens_matches_plain_algorithm(remasking):
    # Masked prompt positions remain candidates in every block.
    prompt, attention_mask = _prompt(3, padded=True, seed=7)
    prompt[0, 3] = MASK_ID
    prompt[2, 5] = MASK_ID
    kwargs = dict(steps=8, gen_length=16, block_length=4, remasking=remasking)
    fast, slow = _both(_MODEL, prompt, attention_mask, **kwargs)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("padded", [False, True])
def test_empty_prompt_matches_plain_algorithm(padded):
    prompt = torch.zeros(2, 0, dtype=torch.long)
    attention_mask = torch.zeros(2, 0, dtype=torch.long) if padded else None
    kwargs = dict(steps=4, gen_length=8, block_length=4, cfg_scale=1.0)
    fast, slow = _both(_MODEL, prompt, attention_mask, **kwargs)
    assert fast.shape == (2, 8)
    assert torch.equal(fast, slow)
    assert not (fast == MASK_ID).any()


@pytest.mark.parametrize("impl", ["generate", "reference"])
@pytest.mark.parametrize(("steps", "block_length"), [(12, 12), (6, 12), (6, 4)])
def test_hand_computed_commit_order(impl, steps, block_length):
    # With CountingModel, low-confidence remasking fills left to right, and all
    # tokens committed at one step see the same count of unmasked tokens.
    prompt_len, gen_length = 4, 12
    prompt = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    fn = generate if impl == "generate" else generate_reference
    out = fn(
        CountingModel(),
        prompt,
        steps=steps,
        gen_length=gen_length,
        block_length=block_length,
        mask_id=MASK_ID,
    )
    per_step = gen_length // steps
    expected = [prompt_len + (i // per_step) * per_step for i in range(gen_length)]
    assert out[:, prompt_len:].tolist() == [expected, expected]
    assert torch.equal(out[:, :prompt_len], prompt)


@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
@pytest.mark.parametrize("padded", [False, True])
def test_on_forward_called_once_per_step(cfg_scale, padded):
    prompt, attention_mask = _prompt(2, padded=padded)
    calls: list[int] = []
    batch_sizes: list[int] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: object) -> None:
        batch_sizes.append(args[0].shape[0])

    handle = _MODEL.register_forward_hook(hook)
    try:
        generate(
            _MODEL,
            prompt,
            attention_mask,
            steps=8,
            gen_length=16,
            block_length=4,
            cfg_scale=cfg_scale,
            mask_id=MASK_ID,
            on_forward=lambda: calls.append(1),
        )
    finally:
        handle.remove()
    expected = num_forward_passes(steps=8, gen_length=16, block_length=4)
    assert expected == 8
    assert len(calls) == expected
    assert len(batch_sizes) == expected
    assert set(batch_sizes) == {4 if cfg_scale > 0 else 2}


def test_inputs_are_not_modified():
    prompt, attention_mask = _prompt(3, padded=True)
    prompt_copy, mask_copy = prompt.clone(), attention_mask.clone()
    generate(_MODEL, prompt, attention_mask, steps=4, gen_length=8, block_length=4, mask_id=MASK_ID)
    assert torch.equal(prompt, prompt_copy)
    assert torch.equal(attention_mask, mask_copy)


def test_sampling_uses_the_seed():
    prompt, _ = _prompt(3)
    kwargs = dict(steps=8, gen_length=16, block_length=4, temperature=1.0, mask_id=MASK_ID)
    torch.manual_seed(0)
    a = generate(_MODEL, prompt, **kwargs)
    torch.manual_seed(1)
    b = generate(_MODEL, prompt, **kwargs)
    torch.manual_seed(0)
    c = generate(_MODEL, prompt, **kwargs)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


def test_transfer_schedule():
    assert transfer_schedule(10, 4) == [3, 3, 2, 2]
    assert transfer_schedule(4, 6) == [1, 1, 1, 1, 0, 0]
    assert transfer_schedule(8, 4) == [2, 2, 2, 2]
    assert sum(transfer_schedule(37, 5)) == 37


@pytest.mark.parametrize(
    ("steps", "gen_length", "block_length", "message"),
    [
        (8, 64, 24, "gen_length (64) must be a multiple of block_length (24)"),
        (
            30,
            64,
            16,
            "steps (30) must be a multiple of the number of blocks gen_length/block_length = 4",
        ),
        (8, 16, 32, "gen_length (16) must be a multiple of block_length (32)"),
        (0, 16, 4, "steps must be a positive integer, got 0"),
        (8, -16, 4, "gen_length must be a positive integer, got -16"),
        (8, 16, 0, "block_length must be a positive integer, got 0"),
        (8.0, 16, 4, "steps must be a positive integer, got 8.0"),
    ],
)
def test_validate_schedule_errors(steps, gen_length, block_length, message):
    with pytest.raises(ValueError) as excinfo:
        validate_schedule(steps=steps, gen_length=gen_length, block_length=block_length)
    assert str(excinfo.value) == message
    with pytest.raises(ValueError, match="must be"):
        num_forward_passes(steps=steps, gen_length=gen_length, block_length=block_length)
    prompt, _ = _prompt(1)
    with pytest.raises(ValueError) as excinfo:
        generate(
            _MODEL,
            prompt,
            steps=steps,
            gen_length=gen_length,
            block_length=block_length,
            mask_id=MASK_ID,
        )
    assert str(excinfo.value) == message


def test_validate_schedule_accepts_valid():
    validate_schedule(steps=32, gen_length=64, block_length=32)
    assert num_forward_passes(steps=32, gen_length=64, block_length=32) == 32


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"remasking": "top_k_margin"}, "unknown remasking 'top_k_margin'"),
        ({"temperature": -0.5}, "temperature"),
        ({"cfg_scale": -1.0}, "cfg_scale"),
    ],
)
def test_invalid_options_raise(kwargs, match):
    prompt, _ = _prompt(1)
    calls: list[int] = []
    with pytest.raises(ValueError, match=match):
        generate(
            _MODEL,
            prompt,
            steps=4,
            gen_length=8,
            block_length=4,
            mask_id=MASK_ID,
            on_forward=lambda: calls.append(1),
            **kwargs,
        )
    assert calls == []  # rejected before any forward pass


def test_attention_mask_shape_mismatch_raises():
    prompt, attention_mask = _prompt(2, padded=True)
    with pytest.raises(ValueError, match="attention_mask shape"):
        generate(
            _MODEL,
            prompt,
            attention_mask[:, 1:],
            steps=4,
            gen_length=8,
            block_length=4,
            mask_id=MASK_ID,
        )
