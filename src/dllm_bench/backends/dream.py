"""The Dream kind: the suite's own Dream model and sampler (`dllm_bench.sampling.dream`).

A hub id or local folder loads by weight name into `DreamLM` (`models.dream.checkpoint`);
with `trust_remote_code: true` it loads with the checkpoint's own code and decodes with its
own `diffusion_generate` (cache none only). A random-init entry is written from its `arch`
(`DreamConfig` keys, Qwen2-style). Every call that draws random numbers (`origin`,
`temperature > 0`, `alg_temp > 0`) starts from `torch.manual_seed(case.seed)`, so a case
gives the same tokens in every round.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModel

from dllm_bench.backends.base import (
    Backend,
    check_arch_types,
    check_positive,
    check_section_keys,
    check_settings_per_length,
    optional_axis,
)
from dllm_bench.kinds import Settings
from dllm_bench.kinds.dream import ALGORITHMS, CACHE_ALG, CACHE_MODES, SPEC, THRESHOLD_ALG, DreamSettings
from dllm_bench.models.dream.checkpoint import load_dream_checkpoint
from dllm_bench.models.dream.configuration import DREAM_CONFIG_KEYS, DREAM_DEFAULTS, DreamConfig
from dllm_bench.models.dream.modeling import DreamLM
from dllm_bench.models.random_init import write_model_folder
from dllm_bench.sampling.dream import generate
from dllm_bench.spec import Checker, ModelSpec, one_line

if TYPE_CHECKING:
    from dllm_bench.cases import Case
    from dllm_bench.feed import PromptFeed
    from dllm_bench.models.loader import LoadedModel
    from dllm_bench.runner import CallRecorder

LOG = logging.getLogger("dllm_bench.backends.dream")

SECTION = "dream"
ARCH_TYPES: dict[str, tuple[type, ...]] = {
    key: (type(value),) if value is not None else (int, type(None)) for key, value in DREAM_DEFAULTS.items()
}
ARCH_TYPES.update({"rope_scaling": (dict, type(None)), "sliding_window": (int, type(None))})
SIZE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
)
TOKEN_KEYS = ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")
DEFAULTS = DreamSettings()


def write_dream_folder(folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> Path:
    """A random-init Dream folder in the layout of the hub checkpoints (config.json, safetensors)."""

    def build() -> DreamLM:
        return DreamLM(DreamConfig(**dict(arch)))

    return write_model_folder(
        folder, build, name="Dream", arch=arch, known_keys=frozenset(DREAM_CONFIG_KEYS), seed=seed, dtype=dtype
    )


class DreamBackend(Backend):
    spec = SPEC
    loader_name = "dllm_bench's own DreamLM"

    def parse_section(self, check: Checker, raw: Mapping[str, Any] | None, *, used: bool) -> tuple[Settings, ...]:
        if raw is None:
            if used:
                check.fail(SECTION, "the Dream axes (steps, alg, ...) since a model has kind dream", show_got=False)
            return ()
        check_section_keys(check, raw, SPEC)
        thresholds = optional_axis(
            check, raw, f"{SECTION}.threshold", "threshold", lambda v, k: check.real(v, k, maximum=1.0)
        )
        if "steps" not in raw and None in thresholds:
            check.fail(f"{SECTION}.steps", "a positive integer or a list of them (missing)", show_got=False)
        steps = check.int_axis(raw["steps"], f"{SECTION}.steps") if "steps" in raw else ()
        algs = check.choice_axis(raw.get("alg", DEFAULTS.alg), f"{SECTION}.alg", ALGORITHMS)
        alg_temps = check.float_axis(raw.get("alg_temp", DEFAULTS.alg_temp), f"{SECTION}.alg_temp")
        temperatures = check.float_axis(raw.get("temperature", DEFAULTS.temperature), f"{SECTION}.temperature")
        top_ps = optional_axis(check, raw, f"{SECTION}.top_p", "top_p", lambda v, k: check.real(v, k, maximum=1.0))
        top_ks = optional_axis(check, raw, f"{SECTION}.top_k", "top_k", lambda v, k: check.integer(v, k))
        epss = check.float_axis(raw.get("eps", DEFAULTS.eps), f"{SECTION}.eps")
        caches = check.choice_axis(raw.get("cache", DEFAULTS.cache), f"{SECTION}.cache", CACHE_MODES)
        blocks = optional_axis(check, raw, f"{SECTION}.block_length", "block_length", lambda v, k: check.integer(v, k))
        settings: dict[DreamSettings, None] = {}
        reported: set[str] = set()

        def refuse(key: str, text: str) -> None:
            if key + text not in reported:
                reported.add(key + text)
                check.fail(f"{SECTION}.{key}", text, show_got=False)

        for cache, block, threshold in itertools.product(caches, blocks, thresholds):
            if cache == "none":  # the block sampler's axes do not multiply the published sampler's cases
                block = threshold = None
            point_algs = _algorithms(algs, cache, threshold, refuse)
            point_steps: tuple[int | None, ...] = (None,) if threshold is not None else steps
            for s, alg, at, t, tp, tk, eps in itertools.product(
                point_steps, point_algs, alg_temps, temperatures, top_ps, top_ks, epss
            ):
                item = DreamSettings(s, alg, at, t, tp, tk, eps, cache, block, threshold)
                problems = item.problems()
                for key, text in problems.items():
                    refuse(key, text)
                if not problems:
                    settings.setdefault(item, None)
        return tuple(settings)

    def check_grid(self, check: Checker, gen_lengths: tuple[int, ...], settings: tuple[Settings, ...]) -> None:
        """Blocks must divide every gen_length and the steps split over the blocks; each problem once."""
        check_settings_per_length(check, SECTION, gen_lengths, [s for s in settings if isinstance(s, DreamSettings)])

    def check_model(self, check: Checker, key: str, spec: ModelSpec, settings: tuple[Settings, ...]) -> None:
        if not spec.trust_remote_code:
            return
        if spec.is_random_init:
            check.fail(
                f"{key}.trust_remote_code",
                "false with source random-init (a random-init folder has no remote code; the suite's model runs)",
                show_got=False,
            )
        cached = sorted({s.cache for s in settings if isinstance(s, DreamSettings) and s.cache != "none"})
        if cached:
            check.fail(
                f"{key}.trust_remote_code",
                f"false with dream.cache {', '.join(cached)}: the checkpoint's own diffusion_generate has no "
                "cache (leave trust_remote_code out to run the suite's implementation, or use cache: none)",
                show_got=False,
            )

    def arch_keys(self, arch: Mapping[str, Any]) -> frozenset[str]:
        return frozenset(DREAM_CONFIG_KEYS)

    def arch_class(self, arch: Mapping[str, Any]) -> str:
        return "DreamConfig (Qwen2-style keys and mask_token_id)"

    def check_arch(self, arch: Mapping[str, Any]) -> list[str]:
        problems = check_arch_types(arch, ARCH_TYPES) + check_positive(arch, SIZE_KEYS)
        if problems:
            return problems
        vocab = int(arch.get("vocab_size", DREAM_DEFAULTS["vocab_size"]))
        problems = [
            f"arch.{key}: expected a token id below vocab_size {vocab}, got {value}"
            for key in TOKEN_KEYS
            if isinstance(value := arch.get(key, DREAM_DEFAULTS[key]), int) and not 0 <= value < vocab
        ]
        if problems:
            return problems
        try:
            with torch.device("meta"):
                DreamLM(DreamConfig(**dict(arch)))
        except (ValueError, TypeError) as exc:
            return [f"arch: {one_line(str(exc))[:300]}"]
        return []

    def max_length(self, arch: Mapping[str, Any]) -> int:
        return int(arch.get("max_position_embeddings", DREAM_DEFAULTS["max_position_embeddings"]))

    def write_random_init(self, folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> None:
        write_dream_folder(folder, arch, seed=seed, dtype=dtype)

    def load(self, spec: ModelSpec, location: str, dtype: torch.dtype) -> torch.nn.Module:
        if spec.trust_remote_code:
            model: torch.nn.Module = AutoModel.from_pretrained(
                location, trust_remote_code=True, dtype=dtype, revision=spec.revision
            )
            _reset_rotary(model)
            return model
        return load_dream_checkpoint(location, dtype=dtype, revision=spec.revision)

    def build_call(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, recorder: CallRecorder
    ) -> Callable[[], torch.Tensor]:
        settings = case.settings
        assert isinstance(settings, DreamSettings)
        if loaded.mask_id is None:
            raise ValueError(f"model '{case.model.name}': its config has no mask_token_id; is it a Dream checkpoint?")
        decode = _remote_decode if case.model.trust_remote_code else _own_decode
        mask_id, seed, gen_length = int(loaded.mask_id), case.seed, case.gen_length

        def call() -> torch.Tensor:
            torch.manual_seed(seed)  # origin and sampling draw from torch's generator
            output = decode(loaded.model, feed.input_ids, feed.attention_mask, settings, gen_length, mask_id)
            return recorder.record(output)

        return call

    def agreement(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, outputs: Sequence[torch.Tensor]
    ) -> float | None:
        """Share of generated positions equal to the exact decode (one token per step, no cache,
        the case's algorithm); only for deterministic settings, computed once per prompts."""
        settings = case.settings
        assert isinstance(settings, DreamSettings)
        exact = DreamSettings(
            steps=case.gen_length, alg=settings.alg, top_p=settings.top_p, top_k=settings.top_k, eps=settings.eps
        )
        random = settings.alg == "origin" or settings.temperature > 0 or settings.alg_temp > 0
        if random or loaded.mask_id is None or case.model.trust_remote_code:
            return None
        equal = total = 0
        for index, output in enumerate(outputs):
            key = ("dream-exact", case.task, case.task_options, case.seed, case.prompt_length, case.gen_length,
                   case.batch_size, index, exact)
            if settings == exact:
                loaded.memo.setdefault(key, output)
            if key not in loaded.memo:
                feed.select(index)
                loaded.memo[key] = generate(
                    loaded.model,
                    feed.input_ids,
                    exact,
                    gen_length=case.gen_length,
                    mask_id=int(loaded.mask_id),
                    attention_mask=feed.attention_mask,
                )
            reference = loaded.memo[key][:, case.prompt_length :]
            equal += int(torch.eq(output[:, case.prompt_length :], reference).sum().item())
            total += reference.numel()
        return equal / total if total else None


def _reset_rotary(model: torch.nn.Module) -> None:
    """The published code keeps its rotary frequencies in non-persistent buffers, which
    transformers 5's from_pretrained leaves uninitialised (they are not in the weights); its
    own `reset_rope_parameters` computes them again."""
    reset: Any = getattr(model, "reset_rope_parameters", None)
    if callable(reset):
        reset()
        LOG.info("recomputed the rotary buffers of the checkpoint's own code (reset_rope_parameters)")
    else:
        LOG.warning("the checkpoint's own code has no reset_rope_parameters; its rotary buffers are as loaded")


def _own_decode(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    mask: torch.Tensor | None,
    settings: DreamSettings,
    gen_length: int,
    mask_id: int,
) -> torch.Tensor:
    return generate(model, prompt, settings, gen_length=gen_length, mask_id=mask_id, attention_mask=mask)


def _remote_decode(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    mask: torch.Tensor | None,
    settings: DreamSettings,
    gen_length: int,
    mask_id: int,
) -> torch.Tensor:
    """The checkpoint's own `diffusion_generate` with the case's settings."""
    generate_fn: Any = getattr(model, "diffusion_generate", None)
    if generate_fn is None:
        raise TypeError("the checkpoint's own code has no diffusion_generate; is it a Dream checkpoint?")
    output = generate_fn(
        prompt,
        # The checkpoint's own generation config: without one the published code builds it from the
        # model config, which transformers 5 refuses (eps).
        generation_config=getattr(model, "generation_config", None),
        attention_mask=mask,
        max_new_tokens=gen_length,
        steps=settings.steps,
        alg=settings.alg,
        alg_temp=settings.alg_temp or None,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        eps=settings.eps,
        mask_token_id=mask_id,
        return_dict_in_generate=False,
    )
    sequences: torch.Tensor = getattr(output, "sequences", output)
    return sequences


def _algorithms(
    algs: tuple[str, ...], cache: str, threshold: float | None, refuse: Callable[[str, str], None]
) -> tuple[str, ...]:
    """The algorithms of the axis a cache point runs: Fast-dLLM's block sampler ranks by entropy,
    or by probability (maskgit_plus) with a threshold; the other points of the axis are not
    multiplied with it. A cache point the axis has no algorithm for is refused."""
    if cache == "none":
        return algs
    wanted = THRESHOLD_ALG if threshold is not None else CACHE_ALG
    if wanted in algs or not algs:
        return (wanted,) if algs else ()
    rule = f"threshold {threshold:g}" if threshold is not None else "no threshold"
    refuse("alg", f"{wanted} among the algorithms with cache {cache} and {rule} (Fast-dLLM's block sampler "
           f"ranks by {'probability' if threshold is not None else 'entropy'}), got {', '.join(algs)}")
    return ()
