"""The LLaDA kind: masked-diffusion decoding with the suite's own model and sampler."""

from __future__ import annotations

import itertools
import logging
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedModel
from transformers.dynamic_module_utils import get_class_from_dynamic_module

from dllm_bench.backends import llada_moe
from dllm_bench.backends.base import Backend, check_arch_types, check_positive
from dllm_bench.kinds import Settings
from dllm_bench.kinds.llada import SPEC
from dllm_bench.models.llada_checkpoint import load_llada_checkpoint, register_llada_auto_classes
from dllm_bench.models.llada_hf import modeling_llada
from dllm_bench.models.llada_hf.configuration_llada import LLADA_CONFIG_KEYS, LLaDAConfig
from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM, _check_supported
from dllm_bench.models.lladamoe.configuration import is_lladamoe_config
from dllm_bench.models.random_init import write_model_folder
from dllm_bench.sampling.llada import generate
from dllm_bench.sampling.rules import CONFIDENCE_RULES, RULE_KEYS
from dllm_bench.sampling.schedule import (
    CACHE_MODES,
    LLADA_DEFAULTS,
    REMASKING_STRATEGIES,
    DecodingError,
    LladaSettings,
)
from dllm_bench.spec import Checker, ModelSpec

if TYPE_CHECKING:
    from dllm_bench.cases import Case
    from dllm_bench.feed import PromptFeed
    from dllm_bench.models.loader import LoadedModel
    from dllm_bench.runner import CallRecorder

LOG = logging.getLogger("dllm_bench.backends.llada")

SECTION_KEYS = SPEC.section_keys
SIZE_KEYS = ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "vocab_size", "embedding_size")
TOKEN_KEYS = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")
#: The remote-code files copied into every LLaDA folder.
LLADA_REMOTE_CODE_FILES: tuple[str, ...] = ("configuration_llada.py", "modeling_llada.py")
# The config key a problem the sampler's validation names is reported under: gen_length is
# a grid key shared by all kinds, so "gen_length must be a multiple of block_length" is
# reported as the LLaDA axis block_length.
PROBLEM_KEYS = {"gen_length": "llada.block_length"}


def llada_source_dir() -> Path:
    """The package folder holding the LLaDA remote-code files."""
    return Path(modeling_llada.__file__).resolve().parent


def write_llada_folder(folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> Path:
    """Write a random-init LLaDA folder (``config.json`` with ``auto_map``, the weights and the
    remote-code files ``configuration_llada.py`` and ``modeling_llada.py``) that
    ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` loads as it would load
    ``GSAI-ML/LLaDA-8B-Instruct``; the suite's own loader reads it too.

    ``arch`` holds :class:`LLaDAConfig` arguments (missing keys take the 8B defaults); an
    unknown key raises ``ValueError``. An existing folder is returned as it is, with its
    remote-code files refreshed if they differ from the package's.
    """

    def build() -> LLaDAModelLM:
        return LLaDAModelLM(LLaDAConfig(**dict(arch)))

    return write_model_folder(
        folder,
        build,
        name="LLaDA",
        arch=arch,
        known_keys=frozenset(LLADA_CONFIG_KEYS),
        seed=seed,
        dtype=dtype,
        code_files=[llada_source_dir() / name for name in LLADA_REMOTE_CODE_FILES],
    )


def load_own_code(
    location: str, config: Mapping[str, Any], dtype: torch.dtype, revision: str | None
) -> torch.nn.Module:
    """A LLaDA checkpoint with the model class of its own code (``config``, its config.json:
    ``auto_map.AutoModel``), resolved directly. ``AutoModel.from_pretrained(...,
    trust_remote_code=True)`` would not do: once the suite has loaded a LLaDA model without
    remote code in this process (:func:`register_llada_auto_classes`), transformers prefers the
    registered class for ``model_type: llada`` and silently loads the suite's model instead."""
    reference = config.get("auto_map", {}).get("AutoModel")
    if not isinstance(reference, str):
        problem = "has no auto_map.AutoModel" if config else "could not be read"
        raise ValueError(
            f"{location}: trust_remote_code needs the checkpoint's own code, but its config.json {problem}; "
            "leave trust_remote_code out to run the suite's LLaDA model"
        )
    model_class: type[PreTrainedModel] = get_class_from_dynamic_module(reference, location, revision=revision)
    model: torch.nn.Module = model_class.from_pretrained(location, dtype=dtype, revision=revision or "main")
    return model


def _llada_types() -> dict[str, tuple[type, ...]]:
    """Expected types of the architecture keys, from LLaDAConfig's signature."""
    hints = typing.get_type_hints(LLaDAConfig.__init__)
    expected: dict[str, tuple[type, ...]] = {}
    for key in LLADA_CONFIG_KEYS:
        hint = hints.get(key)
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        expected[key] = tuple(a for a in args if isinstance(a, type))
    return expected


class LladaBackend(Backend):
    spec = SPEC
    loader_name = "dllm_bench's own LLaDAModelLM (LLaDAMoEModelLM for LLaDA-MoE)"

    def parse_section(self, check: Checker, raw: Mapping[str, Any] | None, *, used: bool) -> tuple[Settings, ...]:
        if raw is None:
            if used:
                check.fail(
                    "llada", "the LLaDA axes (steps, block_length, ...) since a model has kind llada", show_got=False
                )
            return ()
        check.known_keys(raw, "llada", SECTION_KEYS)
        if "block_length" not in raw:
            check.fail("llada.block_length", "a positive integer or a list of them (missing)", show_got=False)
        # One axis per confidence rule (null: the rule is off); their product, each point
        # with at most one rule set (the sampler's validation refuses more).
        rule_axes = [self._optional_axis(check, raw.get(rule.key), f"llada.{rule.key}") for rule in CONFIDENCE_RULES]
        if "steps" not in raw and all(None in axis for axis in rule_axes):
            check.fail("llada.steps", "a positive integer or a list of them (missing)", show_got=False)
        steps = check.int_axis(raw.get("steps", 1), "llada.steps") if "steps" in raw else ()
        blocks = check.int_axis(raw.get("block_length", 1), "llada.block_length")
        remasking = check.choice_axis(
            raw.get("remasking", LLADA_DEFAULTS.remasking), "llada.remasking", REMASKING_STRATEGIES
        )
        temperature = check.float_axis(raw.get("temperature", LLADA_DEFAULTS.temperature), "llada.temperature")
        cfg = check.float_axis(raw.get("cfg_scale", LLADA_DEFAULTS.cfg_scale), "llada.cfg_scale")
        caches = check.choice_axis(raw.get("cache", LLADA_DEFAULTS.cache), "llada.cache", CACHE_MODES)
        settings: dict[LladaSettings, None] = {}
        for point in itertools.product(*rule_axes):
            rules = dict(zip(RULE_KEYS, point, strict=True))
            # With a commit rule the steps axis does not change the result: one case, no steps.
            rule_steps: tuple[int | None, ...] = (None,) if any(v is not None for v in point) else steps
            for s, k, r, t, c, cache in itertools.product(rule_steps, blocks, remasking, temperature, cfg, caches):
                item = LladaSettings(s, k, r, t, c, cache, **rules)
                settings.setdefault(item, None)
        return tuple(settings)

    @staticmethod
    def _optional_axis(check: Checker, value: object, key: str) -> tuple[float | None, ...]:
        """An axis of numbers where null is a value (`threshold: [null, 0.9]`); null alone by default."""
        items = check.axis(value, key) if value is not None else [None]
        result: list[float | None] = []
        for item in items:
            if item is None:
                result.append(None)
            elif (number := check.real(item, key, maximum=1e6)) is not None:
                result.append(number)
        return tuple(result)

    def check_grid(self, check: Checker, gen_lengths: tuple[int, ...], settings: tuple[Settings, ...]) -> None:
        """The sampler's own validation (the one copy of the schedule and commit rules), for
        every setting at every generation length; each problem once, under its key."""
        seen: set[str] = set()
        for gen_length in gen_lengths:
            for item in settings:
                assert isinstance(item, LladaSettings)
                try:
                    item.validate(gen_length)
                except DecodingError as exc:
                    for name, problem in zip(exc.parameters, exc.problems, strict=True):
                        key = PROBLEM_KEYS.get(name, f"llada.{name}" if name in SECTION_KEYS else "llada")
                        message = f"a valid setting for grid.gen_length={gen_length}: {problem}"
                        if key + message not in seen:
                            seen.add(key + message)
                            check.fail(key, message, show_got=False)

    def check_model(self, check: Checker, key: str, spec: ModelSpec, settings: tuple[Settings, ...]) -> None:
        """A checkpoint run with its own code (trust_remote_code) has no KV cache; a random-init
        LLaDA-MoE folder has no code of its own."""
        if spec.trust_remote_code and spec.is_random_init and llada_moe.is_moe_arch(spec.arch_dict()):
            check.fail(
                f"{key}.trust_remote_code",
                "false with a random-init LLaDA-MoE (its folder holds no remote code; the suite's model runs it)",
                show_got=False,
            )
        cached = sorted({s.cache for s in settings if isinstance(s, LladaSettings) and s.cache != "none"})
        if spec.trust_remote_code and cached:
            check.fail(
                f"{key}.trust_remote_code",
                f"false with llada.cache {', '.join(cached)}: the checkpoint's own code has no KV cache "
                "(leave trust_remote_code out to run the suite's implementation, or use cache: none)",
                show_got=False,
            )

    def arch_keys(self, arch: Mapping[str, Any]) -> frozenset[str]:
        """The keys of the architecture ``arch.model_type`` names (of both when it names neither)."""
        dense = frozenset({llada_moe.MODEL_TYPE_KEY, *LLADA_CONFIG_KEYS})
        model_type = arch.get(llada_moe.MODEL_TYPE_KEY, llada_moe.DENSE_MODEL_TYPE)
        if model_type == llada_moe.DENSE_MODEL_TYPE:
            return dense
        return llada_moe.arch_keys() if llada_moe.is_moe_arch(arch) else dense | llada_moe.arch_keys()

    def arch_class(self, arch: Mapping[str, Any]) -> str:
        model_type = arch.get(llada_moe.MODEL_TYPE_KEY, llada_moe.DENSE_MODEL_TYPE)
        if model_type == llada_moe.DENSE_MODEL_TYPE:
            return "LLaDAConfig"
        return "LLaDAMoEConfig" if llada_moe.is_moe_arch(arch) else "LLaDAConfig or LLaDAMoEConfig"

    def folder_arch(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """``model_type: llada`` names the same folder as no model_type (the folders written
        before LLaDA-MoE)."""
        if arch.get(llada_moe.MODEL_TYPE_KEY) == llada_moe.DENSE_MODEL_TYPE:
            return llada_moe.config_arguments(arch)
        return dict(arch)

    def check_arch(self, arch: Mapping[str, Any]) -> list[str]:
        model_type = arch.get(llada_moe.MODEL_TYPE_KEY, llada_moe.DENSE_MODEL_TYPE)
        if model_type not in llada_moe.ARCH_MODEL_TYPES:
            return [f"arch.model_type: expected one of {', '.join(llada_moe.ARCH_MODEL_TYPES)}, got {model_type!r}"]
        if llada_moe.is_moe_arch(arch):
            return llada_moe.check_arch(arch)
        arch = llada_moe.config_arguments(arch)
        problems = check_arch_types(arch, _llada_types()) + check_positive(arch, SIZE_KEYS)
        if problems:
            return problems
        try:
            config = LLaDAConfig(**dict(arch))
            _check_supported(config)
        except (ValueError, NotImplementedError, TypeError) as exc:
            return [f"arch: {exc}"]
        return [
            f"arch.{key}: expected a token id below embedding_size {config.embedding_size}, got {value}"
            for key in TOKEN_KEYS
            if isinstance(value := getattr(config, key, None), int) and not 0 <= value < config.embedding_size
        ]

    def max_length(self, arch: Mapping[str, Any]) -> int:
        if llada_moe.is_moe_arch(arch):
            return llada_moe.max_length(arch)
        return int(arch.get("max_sequence_length", LLaDAConfig().max_sequence_length))

    def write_random_init(self, folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> None:
        if llada_moe.is_moe_arch(arch):
            llada_moe.write_lladamoe_folder(folder, arch, seed=seed, dtype=dtype)
        else:
            write_llada_folder(folder, llada_moe.config_arguments(arch), seed=seed, dtype=dtype)

    def code_files(self, arch: Mapping[str, Any]) -> tuple[Path, ...]:
        if llada_moe.is_moe_arch(arch):
            return ()
        return tuple(llada_source_dir() / name for name in LLADA_REMOTE_CODE_FILES)

    def check_folder(self, folder: Path) -> str | None:
        return llada_moe.folder_problem(folder)

    def load(self, spec: ModelSpec, location: str, dtype: torch.dtype) -> torch.nn.Module:
        """A LLaDA-MoE checkpoint (told by its config.json) loads into the suite's LLaDA-MoE
        model, any other into the suite's LLaDA model; with trust_remote_code, with its own code."""
        config = llada_moe.read_config(location, spec.revision)
        if is_lladamoe_config(config):
            return llada_moe.load_checkpoint(location, dtype, spec.revision, spec.trust_remote_code)
        if spec.trust_remote_code:
            return load_own_code(location, config, dtype, spec.revision)
        register_llada_auto_classes()
        return load_llada_checkpoint(location, dtype=dtype, revision=spec.revision)

    def build_call(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, recorder: CallRecorder
    ) -> Callable[[], torch.Tensor]:
        settings = case.settings
        assert isinstance(settings, LladaSettings)
        if loaded.mask_id is None:
            raise ValueError(f"model '{case.model.name}': its config has no mask_token_id; is it a LLaDA checkpoint?")
        mask_id, gen_length = loaded.mask_id, case.gen_length

        def call() -> torch.Tensor:
            output = generate(
                loaded.model,
                feed.input_ids,
                settings,
                gen_length=gen_length,
                mask_id=mask_id,
                attention_mask=feed.attention_mask,
            )
            return recorder.record(output)

        return call

    def agreement(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, outputs: Sequence[torch.Tensor]
    ) -> float | None:
        """Share of generated positions equal to the exact decode of the same prompts: the
        same model, block length, temperature, remasking and cfg, one token per step, no
        cache. Each exact decode is computed once per process (untimed) and reused by every
        case of the same prompts and block length."""
        settings = case.settings
        assert isinstance(settings, LladaSettings) and loaded.mask_id is not None
        equal = total = 0
        for round_index, output in enumerate(outputs):
            if settings.is_deterministic_exact(case.gen_length):
                # The case is the exact decode, without randomness: its own output is the
                # reference (and serves the other cases of these prompts); no decode again.
                loaded.memo.setdefault(self._exact_key(case, round_index), output)
            exact = self._exact_decode(case, loaded, feed, round_index)
            generated, reference = output[:, case.prompt_length :], exact[:, case.prompt_length :]
            equal += int(torch.eq(generated, reference).sum().item())
            total += reference.numel()
        return equal / total if total else None

    def _exact_key(self, case: Case, round_index: int) -> tuple[object, ...]:
        """What an exact decode depends on: the prompts of the round and the settings that
        the exact decode keeps from the case."""
        settings = case.settings
        assert isinstance(settings, LladaSettings)
        return (
            "exact",
            case.task,
            case.task_options,
            case.seed,
            case.prompt_length,
            case.gen_length,
            case.batch_size,
            round_index,
            settings.block_length,
            settings.temperature,
            settings.remasking,
            settings.cfg_scale,
        )

    def _exact_decode(self, case: Case, loaded: LoadedModel, feed: PromptFeed, round_index: int) -> torch.Tensor:
        settings = case.settings
        assert isinstance(settings, LladaSettings) and loaded.mask_id is not None
        key = self._exact_key(case, round_index)
        if key not in loaded.memo:
            feed.select(round_index)
            exact = LladaSettings(
                steps=case.gen_length,
                block_length=settings.block_length,
                remasking=settings.remasking,
                temperature=settings.temperature,
                cfg_scale=settings.cfg_scale,
            )
            loaded.memo[key] = generate(
                loaded.model,
                feed.input_ids,
                exact,
                gen_length=case.gen_length,
                mask_id=loaded.mask_id,
                attention_mask=feed.attention_mask,
            )
        return loaded.memo[key]

    def check_output(self, case: Case, loaded: LoadedModel, output: torch.Tensor) -> None:
        """The sampler never commits the mask id: a mask token left in the generated part is a
        bug, and the case fails rather than counting an unfinished canvas."""
        if loaded.mask_id is None:
            return
        left = int(torch.eq(output[:, case.prompt_length :], loaded.mask_id).sum().item())
        if left:
            raise RuntimeError(f"{case.case_id}: {left} mask tokens remain in the generated canvas")
