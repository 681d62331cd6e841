"""The autoregressive baseline kind: a transformers causal LM, greedy, KV cache on.

A random-init entry names its architecture with ``arch.model_type`` (``llama`` when left
out); ``ARCHITECTURES`` lists the ones the suite can build, each with its config and model
class and the checks of its keys.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma4ForCausalLM,
    Gemma4TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from dllm_bench.backends.base import Backend, check_arch_types, check_positive
from dllm_bench.kinds import Settings
from dllm_bench.kinds.baseline import SPEC, BaselineSettings
from dllm_bench.models.random_init import write_model_folder
from dllm_bench.spec import Checker, ModelSpec, one_line
from dllm_bench.timing import time_rounds

if TYPE_CHECKING:
    from dllm_bench.cases import Case
    from dllm_bench.feed import PromptFeed
    from dllm_bench.models.loader import LoadedModel
    from dllm_bench.runner import CallRecorder
    from dllm_bench.timing import LatencyStats

#: The arch key that picks the architecture of a random-init entry, and its default.
MODEL_TYPE_KEY = "model_type"
DEFAULT_MODEL_TYPE = "llama"
SIZE_KEYS = (
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_hidden_layers",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "head_dim",
)
GEMMA4_SIZE_KEYS = (
    *SIZE_KEYS,
    "global_head_dim",
    "num_global_key_value_heads",
    "sliding_window",
    "vocab_size_per_layer_input",
    "num_experts",
    "top_k_experts",
    "moe_intermediate_size",
)
# Gemma 4 sizes where 0 turns a part off (per-layer input embeddings, KV sharing).
GEMMA4_COUNT_KEYS = ("hidden_size_per_layer_input", "num_kv_shared_layers")
GEMMA4_MOE_KEYS = ("num_experts", "top_k_experts", "moe_intermediate_size")
TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
# Keys that set the weights' precision: the entry's `dtype` decides it, once.
DTYPE_KEYS = ("dtype", "torch_dtype")
_LIBRARY_FIELD = re.compile(r"field '(\w+)'")


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A causal LM a random-init baseline entry can be: its other arch keys are arguments of
    ``config_class`` (its dataclass fields and the ``extra_types`` it reads besides)."""

    name: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    extra_types: Mapping[str, tuple[type, ...]]
    size_keys: tuple[str, ...]
    shape_checks: Callable[[Mapping[str, Any]], list[str]]

    def keys(self) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(self.config_class)) | frozenset(self.extra_types)

    def types(self) -> dict[str, tuple[type, ...]]:
        """The scalar types of the keys whose type hint is a plain scalar (or a union of them)."""
        expected: dict[str, tuple[type, ...]] = {}
        for item in dataclasses.fields(self.config_class):
            hint = item.type
            args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
            simple = tuple(a for a in args if a in (int, float, bool, str, type(None)))
            if simple and len(simple) == len(args):
                expected[item.name] = simple
        expected.update((key, kinds) for key, kinds in self.extra_types.items() if kinds)
        return expected

    def defaults(self) -> PretrainedConfig:
        return self.config_class()

    def write(self, folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> Path:
        """Write a random-init folder of ``model_class`` (``arch`` without ``model_type``)."""

        def build() -> PreTrainedModel:
            return self.model_class(self.config_class(**dict(arch)))

        return write_model_folder(
            folder, build, name=self.name, arch=arch, known_keys=self.keys(), seed=seed, dtype=dtype
        )


def _divides(arch: Mapping[str, Any], small: str, big: str) -> list[str]:
    a, b = arch.get(small), arch.get(big)
    if isinstance(a, int) and isinstance(b, int) and a > 0 and b % a:
        return [f"arch.{big}: expected a multiple of {small} ({a}), got {b}"]
    return []


def _llama_shapes(arch: Mapping[str, Any]) -> list[str]:
    """Heads divide the width (LlamaConfig derives head_dim from it), KV heads divide the heads."""
    defaults = LlamaConfig()
    full = {"hidden_size": defaults.hidden_size, "num_attention_heads": defaults.num_attention_heads, **arch}
    full.setdefault("num_key_value_heads", full["num_attention_heads"])
    return _divides(full, "num_attention_heads", "hidden_size") + _divides(
        full, "num_key_value_heads", "num_attention_heads"
    )


def _gemma4_shapes(arch: Mapping[str, Any]) -> list[str]:
    """KV heads (local and global) divide the heads; the per-layer input embeddings cover the
    vocabulary when they are on; a mixture-of-experts block has its three sizes."""
    defaults = Gemma4TextConfig()
    full = {key: getattr(defaults, key) for key in ("num_attention_heads", "num_key_value_heads")} | dict(arch)
    problems = _divides(full, "num_key_value_heads", "num_attention_heads")
    problems += _divides(full, "num_global_key_value_heads", "num_attention_heads")
    problems += [
        f"arch.{key}: expected an integer >= 0, got {value!r}"
        for key in GEMMA4_COUNT_KEYS
        if isinstance(value := arch.get(key), int) and not isinstance(value, bool) and value < 0
    ]
    vocab = arch.get("vocab_size", defaults.vocab_size)
    per_layer_vocab = arch.get("vocab_size_per_layer_input", defaults.vocab_size_per_layer_input)
    if arch.get("hidden_size_per_layer_input", defaults.hidden_size_per_layer_input) and per_layer_vocab < vocab:
        problems.append(
            f"arch.vocab_size_per_layer_input: expected at least vocab_size ({vocab}) while "
            f"hidden_size_per_layer_input is not 0, got {per_layer_vocab}"
        )
    if arch.get("enable_moe_block"):
        problems += [
            f"arch.{key}: expected a positive integer with enable_moe_block: true, got None"
            for key in GEMMA4_MOE_KEYS
            if arch.get(key) is None
        ]
    experts, top_k = arch.get("num_experts"), arch.get("top_k_experts")
    if isinstance(experts, int) and isinstance(top_k, int) and top_k > experts:
        problems.append(f"arch.top_k_experts: expected at most num_experts ({experts}), got {top_k}")
    return problems


#: The architectures of a random-init baseline entry, by ``arch.model_type``.
ARCHITECTURES: Mapping[str, Architecture] = types.MappingProxyType(
    {
        "llama": Architecture(
            name="Llama",
            config_class=LlamaConfig,
            model_class=LlamaForCausalLM,
            # Read by LlamaConfig besides its fields (transformers 5 converts them to rope_parameters).
            extra_types={"rope_theta": (float,), "rope_scaling": ()},
            size_keys=SIZE_KEYS,
            shape_checks=_llama_shapes,
        ),
        "gemma4_text": Architecture(
            name="Gemma 4",
            config_class=Gemma4TextConfig,
            model_class=Gemma4ForCausalLM,
            # Read by Gemma4TextConfig besides its fields: the head size and KV heads of the full-attention layers.
            extra_types={"global_head_dim": (int,), "num_global_key_value_heads": (int, type(None))},
            size_keys=GEMMA4_SIZE_KEYS,
            shape_checks=_gemma4_shapes,
        ),
        "qwen2": Architecture(
            name="Qwen2",
            config_class=Qwen2Config,
            model_class=Qwen2ForCausalLM,
            # Dream's AR twin (Dream-v0 was initialised from Qwen2.5); read besides its fields as for Llama.
            extra_types={"rope_theta": (float,), "rope_scaling": ()},
            size_keys=SIZE_KEYS,
            shape_checks=_llama_shapes,
        ),
    }
)


def architecture_of(arch: Mapping[str, Any]) -> Architecture | None:
    """The architecture ``arch.model_type`` names (Llama when it is left out); None if unknown."""
    model_type = arch.get(MODEL_TYPE_KEY, DEFAULT_MODEL_TYPE)
    return ARCHITECTURES.get(model_type) if isinstance(model_type, str) else None


def config_arguments(arch: Mapping[str, Any]) -> dict[str, Any]:
    """The arch keys the config class gets: all but ``model_type``."""
    return {key: value for key, value in arch.items() if key != MODEL_TYPE_KEY}


def llama_arch_keys() -> frozenset[str]:
    """The architecture keys a random-init Llama accepts: LlamaConfig's fields and legacy keys."""
    return ARCHITECTURES["llama"].keys()


def write_llama_folder(folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> Path:
    """Write a random-init ``LlamaForCausalLM`` folder loadable with
    ``AutoModelForCausalLM.from_pretrained(folder)``. ``arch`` holds
    :class:`transformers.LlamaConfig` arguments; an unknown key raises ``ValueError``. An
    existing folder is returned without rewriting."""
    return ARCHITECTURES["llama"].write(folder, arch, seed=seed, dtype=dtype)


def write_causal_lm_folder(folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> Path:
    """Write the random-init folder of the architecture ``arch.model_type`` names (see
    ``ARCHITECTURES``), loadable with ``AutoModelForCausalLM.from_pretrained(folder)``; an
    unknown model_type or key raises ``ValueError``."""
    architecture = architecture_of(arch)
    if architecture is None:
        raise ValueError(_model_type_problem(arch))
    return architecture.write(folder, config_arguments(arch), seed=seed, dtype=dtype)


def _model_type_problem(arch: Mapping[str, Any]) -> str:
    got = arch.get(MODEL_TYPE_KEY)
    return f"arch.{MODEL_TYPE_KEY}: expected one of {', '.join(ARCHITECTURES)}, got {got!r}"


def _library_problems(architecture: Architecture, arch: Mapping[str, Any]) -> list[str]:
    """The config class's own refusal of ``arch``, under the key it names (else under ``arch``)."""
    try:
        architecture.config_class(**dict(arch))
    except Exception as exc:  # any refusal of the library is reported, with its text
        named = _LIBRARY_FIELD.search(str(exc))
        where = f"arch.{named.group(1)}" if named and named.group(1) in arch else "arch"
        return [f"{where}: {architecture.config_class.__name__} refuses it: {one_line(str(exc))}"]
    return []


class BaselineBackend(Backend):
    spec = SPEC
    loader_name = "transformers AutoModelForCausalLM"

    def parse_section(self, check: Checker, raw: Mapping[str, Any] | None, *, used: bool) -> tuple[Settings, ...]:
        return (BaselineSettings(),) if used else ()

    def arch_keys(self, arch: Mapping[str, Any]) -> frozenset[str]:
        architecture = architecture_of(arch)
        known = [architecture] if architecture else ARCHITECTURES.values()
        return frozenset({MODEL_TYPE_KEY}).union(*(a.keys() for a in known))

    def arch_class(self, arch: Mapping[str, Any]) -> str:
        architecture = architecture_of(arch)
        known = [architecture] if architecture else ARCHITECTURES.values()
        return " or ".join(a.config_class.__name__ for a in known)

    def folder_arch(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """``model_type: llama`` names the same folder as no model_type (the folders written
        before there was a choice)."""
        if arch.get(MODEL_TYPE_KEY) == DEFAULT_MODEL_TYPE:
            return config_arguments(arch)
        return dict(arch)

    def check_arch(self, arch: Mapping[str, Any]) -> list[str]:
        problems = [
            f"arch.{key}: the weights' precision is the entry's dtype key (models[].dtype), not arch.{key}"
            for key in DTYPE_KEYS
            if key in arch
        ]
        architecture = architecture_of(arch)
        if architecture is None:
            return [*problems, _model_type_problem(arch)]
        keys = config_arguments(arch)
        problems += check_arch_types(keys, architecture.types()) + check_positive(keys, architecture.size_keys)
        if problems:
            return problems
        problems += architecture.shape_checks(keys)
        vocab = keys.get("vocab_size", architecture.defaults().vocab_size)
        problems += [
            f"arch.{key}: expected a token id below vocab_size {vocab}, got {value}"
            for key in TOKEN_KEYS
            if isinstance(value := keys.get(key), int) and not 0 <= value < vocab
        ]
        return problems or _library_problems(architecture, keys)

    def max_length(self, arch: Mapping[str, Any]) -> int:
        architecture = architecture_of(arch) or ARCHITECTURES[DEFAULT_MODEL_TYPE]
        return int(arch.get("max_position_embeddings", architecture.defaults().max_position_embeddings))

    def write_random_init(self, folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> None:
        write_causal_lm_folder(folder, arch, seed=seed, dtype=dtype)

    def load(self, spec: ModelSpec, location: str, dtype: torch.dtype) -> torch.nn.Module:
        model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
        return model

    def build_call(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, recorder: CallRecorder
    ) -> Callable[[], torch.Tensor]:
        return greedy_call(loaded, feed, recorder, new_tokens=case.gen_length)

    def eos_output(self, case: Case, loaded: LoadedModel, feed: PromptFeed, last: torch.Tensor) -> torch.Tensor:
        """Where the model would stop: an untimed extra call that may stop at EOS (the timed
        calls suppress EOS to fix the length)."""
        return greedy_call(loaded, feed, None, new_tokens=case.gen_length, fixed_length=False)()

    def extra_fields(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, stats: LatencyStats
    ) -> dict[str, object]:
        """Time to first token: a prefill-only call (one new token), timed the same way;
        time per output token: the rest of the latency spread over the other tokens."""
        prefill = greedy_call(loaded, feed, None, new_tokens=1)
        ttft = statistics.fmean(time_rounds(prefill, warmup_rounds=1, measured_rounds=case.measured_rounds))
        fields: dict[str, object] = {"ttft_s": ttft}
        if case.gen_length > 1:
            fields["tpot_s"] = max(0.0, stats.mean - ttft) / (case.gen_length - 1)
        return fields


def greedy_call(
    loaded: LoadedModel,
    feed: PromptFeed,
    recorder: CallRecorder | None,
    *,
    new_tokens: int,
    fixed_length: bool = True,
) -> Callable[[], torch.Tensor]:
    """Greedy transformers generate with the KV cache over the feed's selected batch (left
    padding masked): exactly `new_tokens` new tokens (EOS suppressed until then), or with
    `fixed_length=False` stopping at EOS. EOS is every id of `loaded.eos_ids` (the config's
    and the generation config's, e.g. Gemma's end-of-sequence and end-of-turn ids), the ids
    the suite counts and cuts answers at."""
    pad_id = loaded.pad_id if loaded.pad_id is not None else (loaded.eos_ids[0] if loaded.eos_ids else 0)
    eos_ids = list(loaded.eos_ids) or None
    generate_fn: Callable[..., torch.Tensor] = loaded.model.generate  # type: ignore[assignment]

    def call() -> torch.Tensor:
        with torch.inference_mode():
            output = generate_fn(
                input_ids=feed.input_ids,
                attention_mask=feed.full_mask(),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens if fixed_length else 0,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
            )
        return output if recorder is None else recorder.record(output)

    return call
