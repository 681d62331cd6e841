"""The `sampler` item: the fast LLaDA sampler against the plain reference, with tied confidences.

Both samplers run on the same prompts and seeds, setting by setting; the tokens must be
identical, and the reference's per-row top-k must have met tied confidences, else the tie
handling was not exercised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch

from dllm_bench.gpu_check.outcome import CheckResult, failed, passed
from dllm_bench.models.llada_hf.configuration_llada import LLaDAConfig
from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM
from dllm_bench.runner import release_memory
from dllm_bench.sampling.llada import generate_keywords
from dllm_bench.sampling.reference import generate_reference


@dataclass
class TieCounter:
    """Counts per-row top-k selections whose k-th and (k+1)-th finite values are equal."""

    calls: int = 0
    ties: int = 0

    def observe(self, values: torch.Tensor, k: int, original: Callable[..., Any]) -> None:
        self.calls += 1
        if values.dim() != 1 or k >= values.numel() or k <= 0:
            return
        top = original(values, k + 1).values
        if bool(torch.isfinite(top[k])) and bool(top[k - 1] == top[k]):
            self.ties += 1


@contextmanager
def counting_topk_ties(counter: TieCounter) -> Iterator[None]:
    """Wrap `torch.topk` so that the reference's per-row selections are inspected for ties."""
    original = torch.topk

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        values = args[0] if args else kwargs["input"]
        k = args[1] if len(args) > 1 else kwargs["k"]
        counter.observe(values, int(k), original)
        return result

    with mock.patch.object(torch, "topk", wrapper):
        yield


@dataclass(frozen=True)
class SamplerSetting:
    name: str
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    padded: bool = False


SAMPLER_SETTINGS: tuple[SamplerSetting, ...] = (
    SamplerSetting("greedy"),
    SamplerSetting("temperature 0.7", temperature=0.7),
    SamplerSetting("random remasking", remasking="random"),
    SamplerSetting("cfg 1.0, left padding", cfg_scale=1.0, padded=True),
)


@dataclass(frozen=True)
class SamplerShape:
    batch: int = 4
    prompt_length: int = 64
    gen_length: int = 64
    block_length: int = 16
    steps: int = 32  # 2 tokens per step: top-k with k = 2, where ties decide
    pad: int = 8


def sampler_prompt(
    shape: SamplerShape, vocab_limit: int, padded: bool, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(1234)
    prompt = torch.randint(0, vocab_limit, (shape.batch, shape.prompt_length), generator=generator)
    if not padded:
        return prompt.to(device), None
    mask = torch.ones_like(prompt)
    prompt[0, : shape.pad] = pad_id
    mask[0, : shape.pad] = 0
    return prompt.to(device), mask.to(device)


@dataclass
class SamplerOutcome:
    identical: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    ties: TieCounter = field(default_factory=TieCounter)


def compare_samplers(
    model: torch.nn.Module,
    *,
    mask_id: int,
    pad_id: int,
    vocab_limit: int,
    device: torch.device,
    shape: SamplerShape,
    settings: Sequence[SamplerSetting] = SAMPLER_SETTINGS,
) -> SamplerOutcome:
    """Run the fast sampler and the reference on the same prompts and seeds, setting by setting."""
    outcome = SamplerOutcome()
    for index, setting in enumerate(settings):
        prompt, mask = sampler_prompt(shape, vocab_limit, setting.padded, pad_id, device)
        kwargs: dict[str, Any] = {
            "steps": shape.steps,
            "gen_length": shape.gen_length,
            "block_length": shape.block_length,
            "temperature": setting.temperature,
            "cfg_scale": setting.cfg_scale,
            "remasking": setting.remasking,
            "mask_id": mask_id,
        }
        torch.manual_seed(100 + index)
        fast = generate_keywords(model, prompt, mask, **kwargs)
        torch.manual_seed(100 + index)
        with counting_topk_ties(outcome.ties):
            reference = generate_reference(model, prompt, mask, **kwargs)
        (outcome.identical if torch.equal(fast, reference) else outcome.different).append(setting.name)
    return outcome


def sampler_result(outcome: SamplerOutcome, what: str) -> CheckResult:
    if outcome.different:
        return failed("sampler", f"{what}: tokens differ from the reference for {', '.join(outcome.different)}")
    if outcome.ties.ties == 0:
        return failed(
            "sampler",
            f"{what}: identical, but no tied confidences occurred in {outcome.ties.calls} selections, "
            "so tie handling was not exercised",
        )
    return passed(
        "sampler",
        f"{what}: identical in {len(outcome.identical)} settings ({', '.join(outcome.identical)}); "
        f"{outcome.ties.ties} of {outcome.ties.calls} per-row selections had tied confidences",
    )


def build_llada(arch: Mapping[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """A random-init model of the suite's LLaDA architecture (the class a random-init folder holds)."""
    torch.manual_seed(seed)
    model: torch.nn.Module = LLaDAModelLM(LLaDAConfig(**arch))
    model.to(device=device, dtype=dtype)
    return model.eval()


SAMPLER_ARCH: Mapping[str, Any] = {
    "d_model": 1024,
    "n_heads": 8,
    "n_kv_heads": 8,
    "n_layers": 2,
    "mlp_hidden_size": 2816,
}  # the LLaDA-8B vocabulary (126464) and special ids are the config defaults


def check_sampler() -> CheckResult:
    device = torch.device("cuda")
    model = build_llada(SAMPLER_ARCH, device, torch.bfloat16)
    config: Any = getattr(model, "config")  # noqa: B009 (a transformers config, untyped)
    outcome = compare_samplers(
        model,
        mask_id=int(config.mask_token_id),
        pad_id=int(config.pad_token_id),
        vocab_limit=126000,  # below the special ids (BOS 126080, EOS/pad 126081, mask 126336)
        device=device,
        shape=SamplerShape(),
    )
    del model
    release_memory()
    return sampler_result(outcome, "bf16, d1024, 2 layers, vocabulary 126464, B4 P64 G64 block 16, 32 steps")
