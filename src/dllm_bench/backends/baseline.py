"""The autoregressive baseline kind: a transformers causal LM, greedy, KV cache on."""

from __future__ import annotations

import dataclasses
import statistics
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from dllm_bench.backends.base import Backend, check_arch_types, check_positive
from dllm_bench.kinds import Settings
from dllm_bench.kinds.baseline import SPEC, BaselineSettings
from dllm_bench.models.random_init import write_model_folder
from dllm_bench.spec import Checker, ModelSpec
from dllm_bench.timing import time_rounds

if TYPE_CHECKING:
    from dllm_bench.cases import Case
    from dllm_bench.feed import PromptFeed
    from dllm_bench.models.loader import LoadedModel
    from dllm_bench.runner import CallRecorder
    from dllm_bench.timing import LatencyStats

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
TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
# Keys that set the weights' precision: the entry's `dtype` decides it, once.
DTYPE_KEYS = ("dtype", "torch_dtype")
# Keys LlamaConfig reads besides its dataclass fields (transformers 5 converts them to ``rope_parameters``).
_LLAMA_LEGACY_KEYS = frozenset({"rope_theta", "rope_scaling"})


def llama_arch_keys() -> frozenset[str]:
    """The architecture keys a random-init Llama accepts: LlamaConfig's fields and legacy keys."""
    return frozenset(f.name for f in dataclasses.fields(LlamaConfig)) | _LLAMA_LEGACY_KEYS


def write_llama_folder(folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> Path:
    """Write a random-init ``LlamaForCausalLM`` folder loadable with
    ``AutoModelForCausalLM.from_pretrained(folder)``. ``arch`` holds
    :class:`transformers.LlamaConfig` arguments; an unknown key raises ``ValueError``. An
    existing folder is returned without rewriting."""

    def build() -> LlamaForCausalLM:
        return LlamaForCausalLM(LlamaConfig(**dict(arch)))

    return write_model_folder(
        folder, build, name="Llama", arch=arch, known_keys=llama_arch_keys(), seed=seed, dtype=dtype
    )


def _llama_types() -> dict[str, tuple[type, ...]]:
    expected: dict[str, tuple[type, ...]] = {}
    for item in dataclasses.fields(LlamaConfig):
        hint = item.type
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        simple = tuple(a for a in args if a in (int, float, bool, str, type(None)))
        if simple and len(simple) == len(args):
            expected[item.name] = simple
    expected["rope_theta"] = (float,)
    return expected


def _divides(arch: Mapping[str, Any], small: str, big: str) -> list[str]:
    a, b = arch.get(small), arch.get(big)
    if isinstance(a, int) and isinstance(b, int) and a > 0 and b % a:
        return [f"arch.{big}: expected a multiple of {small} ({a}), got {b}"]
    return []


class BaselineBackend(Backend):
    spec = SPEC
    loader_name = "transformers AutoModelForCausalLM"
    arch_class = "LlamaConfig"

    def parse_section(self, check: Checker, raw: Mapping[str, Any] | None, *, used: bool) -> tuple[Settings, ...]:
        return (BaselineSettings(),) if used else ()

    def arch_keys(self) -> frozenset[str]:
        return llama_arch_keys()

    def check_arch(self, arch: Mapping[str, Any]) -> list[str]:
        problems = [
            f"arch.{key}: the weights' precision is the entry's dtype key (models[].dtype), not arch.{key}"
            for key in DTYPE_KEYS
            if key in arch
        ]
        problems += check_arch_types(arch, _llama_types()) + check_positive(arch, SIZE_KEYS)
        if problems:
            return problems
        defaults = LlamaConfig()
        full = {"hidden_size": defaults.hidden_size, "num_attention_heads": defaults.num_attention_heads, **arch}
        full.setdefault("num_key_value_heads", full["num_attention_heads"])
        problems += _divides(full, "num_attention_heads", "hidden_size")
        problems += _divides(full, "num_key_value_heads", "num_attention_heads")
        vocab = arch.get("vocab_size", defaults.vocab_size)
        problems += [
            f"arch.{key}: expected a token id below vocab_size {vocab}, got {value}"
            for key in TOKEN_KEYS
            if isinstance(value := arch.get(key), int) and not 0 <= value < vocab
        ]
        return problems

    def max_length(self, arch: Mapping[str, Any]) -> int:
        return int(arch.get("max_position_embeddings", LlamaConfig().max_position_embeddings))

    def write_random_init(self, folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> None:
        write_llama_folder(folder, arch, seed=seed, dtype=dtype)

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
    `fixed_length=False` stopping at EOS."""
    pad_id = loaded.pad_id if loaded.pad_id is not None else (loaded.eos_ids[0] if loaded.eos_ids else 0)
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
            )
        return output if recorder is None else recorder.record(output)

    return call
