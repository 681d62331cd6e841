"""The LLaDA2 kind: the suite's own LLaDA2.0 / LLaDA2.1 model and block sampler (`dllm_bench.sampling.llada2`).

A hub id or local folder loads by weight name into `LLaDA2MoeLM` (`models.llada2.checkpoint`);
its `config.json`'s `model_type` says the version (`llada2_moe`: 2.0, `llada21_moe`: 2.1).
With `trust_remote_code: true` it loads with the checkpoint's own code and decodes with its
own `generate` (batch 1, cache none: the published code commits for the first sequence only
and recomputes the prefix). A random-init entry is written from its `arch` (`LLaDA2Config`
keys; `arch.model_type` picks the version, 2.0 by default). The editing axes are LLaDA2.1's:
a LLaDA2.0 entry with an `editing_threshold` is refused at config load where its version is
known there (random-init, a local folder, a hub id in the local cache), else when it loads.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import try_to_load_from_cache
from transformers import AutoModelForCausalLM

from dllm_bench.backends.base import (
    Backend,
    check_arch_types,
    check_positive,
    check_section_keys,
    check_settings_per_length,
    optional_axis,
)
from dllm_bench.kinds import Settings
from dllm_bench.kinds.llada2 import CACHE_MODES, SPEC, Llada2Settings
from dllm_bench.models.checkpoint import CheckpointError
from dllm_bench.models.llada2.checkpoint import load_llada2_checkpoint, load_llada2_config
from dllm_bench.models.llada2.configuration import (
    CONFIG_CLASSES,
    LLADA2_CONFIG_KEYS,
    LLADA2_DEFAULTS,
    MODEL_TYPE_20,
    MODEL_TYPE_21,
    MODEL_TYPES,
    PUBLISHED_EOS_ID,
    PUBLISHED_MASK_ID,
)
from dllm_bench.models.llada2.modeling import LLaDA2MoeLM, LLaDA21MoeLM
from dllm_bench.models.random_init import write_model_folder
from dllm_bench.sampling.llada2 import generate
from dllm_bench.spec import Checker, ModelSpec, one_line

if TYPE_CHECKING:
    from dllm_bench.cases import Case
    from dllm_bench.feed import PromptFeed
    from dllm_bench.models.loader import LoadedModel
    from dllm_bench.runner import CallRecorder

LOG = logging.getLogger("dllm_bench.backends.llada2")

SECTION = "llada2"
VERSIONS = {MODEL_TYPE_20: "2.0", MODEL_TYPE_21: "2.1"}
MODEL_CLASSES: dict[str, type[LLaDA2MoeLM]] = {MODEL_TYPE_20: LLaDA2MoeLM, MODEL_TYPE_21: LLaDA21MoeLM}
_OPTIONAL_INT = (int, type(None))
ARCH_TYPES: dict[str, tuple[type, ...]] = {
    key: (type(value),) if value is not None else _OPTIONAL_INT for key, value in LLADA2_DEFAULTS.items()
}
ARCH_TYPES.update({"rope_scaling": (dict, type(None)), "model_type": (str,), "num_shared_experts": _OPTIONAL_INT,
                   "num_experts": _OPTIONAL_INT})
SIZE_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_experts", "num_experts_per_tok", "n_group", "topk_group", "max_position_embeddings",
)
TOKEN_KEYS = ("mask_token_id", "pad_token_id", "eos_token_id")
DEFAULTS = Llada2Settings()


def model_type_of(arch: Mapping[str, Any]) -> str:
    return str(arch.get("model_type", MODEL_TYPE_20))


def write_llada2_folder(folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> Path:
    """A random-init LLaDA2 folder in the layout of the hub checkpoints (config.json, safetensors)."""
    model_type = model_type_of(arch)

    def build() -> LLaDA2MoeLM:
        return MODEL_CLASSES[model_type](CONFIG_CLASSES[model_type](**dict(arch)))

    return write_model_folder(
        folder, build, name="LLaDA2", arch=arch, known_keys=frozenset(LLADA2_CONFIG_KEYS), seed=seed, dtype=dtype
    )


def _folder_model_type(folder: Path) -> str | None:
    try:
        value = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None
    return str(value) if value is not None else None


def known_model_type(spec: ModelSpec) -> str | None:
    """The version's model type of an entry where it is known without loading: random-init, a local
    folder, a hub id in the local cache; None elsewhere."""
    if spec.is_random_init:
        return model_type_of(spec.arch_dict())
    if spec.is_local:
        return _folder_model_type(Path(spec.location()))
    cached = try_to_load_from_cache(spec.source, "config.json", revision=spec.revision)
    return _folder_model_type(Path(cached).parent) if isinstance(cached, str) else None


def version_of(model: torch.nn.Module) -> str:
    return VERSIONS.get(str(getattr(getattr(model, "config", None), "model_type", "")), "2.0")


class Llada2Backend(Backend):
    spec = SPEC
    loader_name = "dllm_bench's own LLaDA2MoeLM"

    def parse_section(self, check: Checker, raw: Mapping[str, Any] | None, *, used: bool) -> tuple[Settings, ...]:
        if raw is None:
            return (DEFAULTS,) if used else ()
        check_section_keys(check, raw, SPEC)
        at = f"{SECTION}.{{}}".format
        steps = check.int_axis(raw.get("steps", DEFAULTS.steps), at("steps"))
        blocks = check.int_axis(raw.get("block_length", DEFAULTS.block_length), at("block_length"))
        thresholds = optional_axis(check, raw, at("threshold"), "threshold", _unit(check)) if "threshold" in raw else (
            DEFAULTS.threshold,
        )
        topks = check.int_axis(raw.get("minimal_topk", DEFAULTS.minimal_topk), at("minimal_topk"))
        caches = check.choice_axis(raw.get("cache", DEFAULTS.cache), at("cache"), CACHE_MODES)
        stops = tuple(
            b for v in check.axis(raw.get("eos_early_stop", DEFAULTS.eos_early_stop), at("eos_early_stop"))
            if (b := check.boolean(v, at("eos_early_stop"))) is not None
        )
        editing = optional_axis(check, raw, at("editing_threshold"), "editing_threshold", _unit(check))
        posts = optional_axis(
            check, raw, at("max_post_steps"), "max_post_steps", lambda v, k: check.integer(v, k, minimum=0)
        )
        settings: dict[Llada2Settings, None] = {}
        reported: set[str] = set()
        for point in itertools.product(steps, blocks, thresholds, topks, caches, stops, editing, posts):
            edit = point[6]
            post = point[7] if edit is not None else None  # the editing passes do not multiply the others
            item = Llada2Settings(*point[:6], editing_threshold=edit, max_post_steps=post)
            problems = item.problems()
            for name, text in problems.items():
                if name + text not in reported:
                    reported.add(name + text)
                    check.fail(at(name), text, show_got=False)
            if not problems:
                settings.setdefault(item, None)
        return tuple(settings)

    def check_grid(self, check: Checker, gen_lengths: tuple[int, ...], settings: tuple[Settings, ...]) -> None:
        check_settings_per_length(check, SECTION, gen_lengths, [s for s in settings if isinstance(s, Llada2Settings)])

    def check_model(self, check: Checker, key: str, spec: ModelSpec, settings: tuple[Settings, ...]) -> None:
        editing = sorted(
            {s.editing_threshold for s in settings if isinstance(s, Llada2Settings) and s.editing_threshold is not None}
        )
        if editing and known_model_type(spec) == MODEL_TYPE_20:
            check.fail(
                f"{SECTION}.editing_threshold",
                f"null for model '{spec.name}' ({key}): it is a LLaDA2.0 model (model_type {MODEL_TYPE_20}) and "
                f"editing is LLaDA2.1's; got {', '.join(f'{e:g}' for e in editing)} (give the "
                "editing axes to a config of LLaDA2.1 models only)",
                show_got=False,
            )
        if not spec.trust_remote_code:
            _check_local_config(check, key, spec)
            return
        if spec.is_random_init:
            check.fail(f"{key}.trust_remote_code", "false with source random-init (a random-init folder has no "
                       "remote code; the suite's model runs)", show_got=False)
        if any(isinstance(s, Llada2Settings) and s.cache != "none" for s in settings):
            check.fail(f"{key}.trust_remote_code", "false with llada2.cache prefix: the checkpoint's own generate "
                       "recomputes the prefix (leave trust_remote_code out, or use cache: none)", show_got=False)

    def arch_keys(self, arch: Mapping[str, Any]) -> frozenset[str]:
        return frozenset(LLADA2_CONFIG_KEYS)

    def arch_class(self, arch: Mapping[str, Any]) -> str:
        return f"LLaDA2Config (model_type {MODEL_TYPE_20} or {MODEL_TYPE_21})"

    def check_arch(self, arch: Mapping[str, Any]) -> list[str]:
        problems = check_arch_types(arch, ARCH_TYPES) + check_positive(arch, SIZE_KEYS)
        if problems:
            return problems
        if model_type_of(arch) not in MODEL_TYPES:
            return [f"arch.model_type: expected {MODEL_TYPE_20} or {MODEL_TYPE_21}, got {arch['model_type']!r}"]
        vocab = int(arch.get("vocab_size", LLADA2_DEFAULTS["vocab_size"]))
        problems = [
            f"arch.{key}: expected a token id below vocab_size {vocab}, got {value}"
            for key in TOKEN_KEYS
            if isinstance(value := arch.get(key, LLADA2_DEFAULTS[key]), int) and not 0 <= value < vocab
        ]
        if problems:
            return problems
        try:
            with torch.device("meta"):
                model_type = model_type_of(arch)
                MODEL_CLASSES[model_type](CONFIG_CLASSES[model_type](**dict(arch)))
        except (ValueError, TypeError) as exc:
            return [f"arch: {one_line(str(exc))[:300]}"]
        return []

    def max_length(self, arch: Mapping[str, Any]) -> int:
        return int(arch.get("max_position_embeddings", LLADA2_DEFAULTS["max_position_embeddings"]))

    def write_random_init(self, folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> None:
        write_llada2_folder(folder, arch, seed=seed, dtype=dtype)

    def check_folder(self, folder: Path) -> str | None:
        """Another architecture, before anything runs."""
        model_type = _folder_model_type(folder)
        if model_type is None:
            return None
        if model_type not in MODEL_TYPES:
            return (f"a LLaDA2 checkpoint (model_type {MODEL_TYPE_20} or {MODEL_TYPE_21}); it is a {model_type} "
                    "checkpoint: change the entry's kind")
        return None

    def load(self, spec: ModelSpec, location: str, dtype: torch.dtype) -> torch.nn.Module:
        if spec.trust_remote_code:
            model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
                location, trust_remote_code=True, dtype=dtype, revision=spec.revision
            )
            _reset_rotary(model)
            return model
        return load_llada2_checkpoint(location, dtype=dtype, revision=spec.revision)

    def build_call(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, recorder: CallRecorder
    ) -> Callable[[], torch.Tensor]:
        settings = case.settings
        assert isinstance(settings, Llada2Settings)
        version = version_of(loaded.model)
        if settings.editing and version != "2.1":
            raise ValueError(
                f"model '{case.model.name}': llada2.editing_threshold must be null for a LLaDA{version} model "
                "(editing is LLaDA2.1's)"
            )
        mask_id, eos_id = _token_ids(loaded)
        gen_length = case.gen_length
        if case.model.trust_remote_code:
            return _remote_call(case, loaded, feed, recorder, mask_id, eos_id)

        def call() -> torch.Tensor:
            result = generate(loaded.model, feed.input_ids, settings, gen_length=gen_length, mask_id=mask_id,
                              eos_id=eos_id, version=version, attention_mask=feed.attention_mask)
            figures = {"edits": float(result.edits)} if settings.editing else {}
            return recorder.record(result.tokens, **figures)

        return call

    def counted_module(self, loaded: LoadedModel) -> torch.nn.Module:
        """The whole model; with the checkpoint's own code its backbone (its generate calls `self.forward`
        directly, which forward hooks do not see, and the backbone once per forward)."""
        backbone = getattr(loaded.model, "model", None)
        if loaded.spec.trust_remote_code and isinstance(backbone, torch.nn.Module):
            return backbone
        return loaded.model

    def agreement(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, outputs: Sequence[torch.Tensor]
    ) -> float | None:
        """Share of generated positions equal to the exact decode (one token per step, no threshold, no
        editing, no cache; the case's block length), computed once per prompts."""
        settings = case.settings
        assert isinstance(settings, Llada2Settings)
        if case.model.trust_remote_code:
            return None
        exact = settings.exact()
        mask_id, eos_id = _token_ids(loaded)
        equal = total = 0
        for index, output in enumerate(outputs):
            key = ("llada2-exact", case.task, case.task_options, case.seed, case.prompt_length, case.gen_length,
                   case.batch_size, index, exact)
            if settings == exact:
                loaded.memo.setdefault(key, output)
            if key not in loaded.memo:
                feed.select(index)
                loaded.memo[key] = generate(
                    loaded.model, feed.input_ids, exact, gen_length=case.gen_length, mask_id=mask_id, eos_id=eos_id,
                    version=version_of(loaded.model), attention_mask=feed.attention_mask,
                ).tokens
            reference = loaded.memo[key][:, case.prompt_length :]
            equal += int(torch.eq(output[:, case.prompt_length :], reference).sum().item())
            total += reference.numel()
        return equal / total if total else None


def _reset_rotary(model: torch.nn.Module) -> None:
    """The published code keeps its rotary frequencies in a non-persistent buffer (`inv_freq`), which
    transformers 5's from_pretrained leaves uninitialised (it is not in the weights): computed again
    with the module's own `rope_init_fn`."""
    for module in model.modules():
        init: Any = getattr(module, "rope_init_fn", None)
        buffer = getattr(module, "inv_freq", None)
        if callable(init) and isinstance(buffer, torch.Tensor):
            inv_freq, _ = init(getattr(module, "config", None), buffer.device)
            buffer.copy_(inv_freq.to(buffer.dtype))
            LOG.info("recomputed the rotary frequencies of the checkpoint's own code (%s)", type(module).__name__)


def _check_local_config(check: Checker, key: str, spec: ModelSpec) -> None:
    """A local LLaDA2 folder whose config.json holds a value the suite's model does not implement."""
    folder = Path(spec.location())
    if not spec.is_local or _folder_model_type(folder) not in MODEL_TYPES:
        return  # no folder (refused elsewhere), or another architecture (check_folder's)
    try:
        load_llada2_config(folder)
    except CheckpointError as exc:
        check.fail(f"{key}.source", f"a checkpoint the suite's LLaDA2 model implements (model '{spec.name}'): {exc}",
                   show_got=False)


def _unit(check: Checker) -> Callable[[object, str], float | None]:
    return lambda v, k: check.real(v, k, maximum=1.0)


def _token_ids(loaded: LoadedModel) -> tuple[int, int]:
    """The mask and EOS ids: the config's, else the published generate's defaults."""
    mask_id = PUBLISHED_MASK_ID if loaded.mask_id is None else int(loaded.mask_id)
    eos_id = loaded.eos_ids[0] if loaded.eos_ids else PUBLISHED_EOS_ID
    return mask_id, eos_id


def _remote_call(
    case: Case, loaded: LoadedModel, feed: PromptFeed, recorder: CallRecorder, mask_id: int, eos_id: int
) -> Callable[[], torch.Tensor]:
    """The checkpoint's own `generate` (batch 1): its generated part, cut at the first EOS, padded with EOS."""
    settings = case.settings
    assert isinstance(settings, Llada2Settings)
    if case.batch_size != 1:
        raise ValueError(
            f"model '{case.model.name}': trust_remote_code runs the checkpoint's own generate, which decodes the "
            f"first sequence only; use grid.batch_size 1 (got {case.batch_size}) or the suite's model"
        )
    extra: dict[str, Any] = {}
    if settings.editing:
        extra = {"editing_threshold": settings.editing_threshold, "max_post_steps": settings.post_steps()}
    generate_fn: Any = getattr(loaded.model, "generate")  # noqa: B009 (the checkpoint's own method)

    def call() -> torch.Tensor:
        prompt = feed.input_ids
        generated = generate_fn(
            prompt, block_length=settings.block_length, steps=settings.steps, gen_length=case.gen_length,
            threshold=2.0 if settings.threshold is None else settings.threshold, minimal_topk=settings.minimal_topk,
            eos_early_stop=settings.eos_early_stop, eos_id=eos_id, mask_id=mask_id, **extra,
        )
        out = torch.full((1, prompt.shape[1] + case.gen_length), eos_id, dtype=torch.long, device=prompt.device)
        out[:, : prompt.shape[1]] = prompt
        out[:, prompt.shape[1] : prompt.shape[1] + generated.shape[1]] = generated
        return recorder.record(out)

    return call
