"""The LLaDA kind: masked-diffusion decoding with the suite's own model and sampler."""

from __future__ import annotations

import itertools
import logging
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import AutoModel

from dllm_bench.backends.base import Backend, Settings, check_arch_types, check_positive
from dllm_bench.models.llada_hf.configuration_llada import LLADA_CONFIG_KEYS, LLaDAConfig
from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM, _check_supported
from dllm_bench.models.random_init import LLADA_REMOTE_CODE_FILES, llada_source_dir, write_llada_folder
from dllm_bench.sampling.llada import REMASKING_STRATEGIES, generate, validate_schedule
from dllm_bench.spec import Checker, ModelSpec

if TYPE_CHECKING:
    from dllm_bench.cases import Case
    from dllm_bench.feed import PromptFeed
    from dllm_bench.models.loader import LoadedModel
    from dllm_bench.runner import CallRecorder

LOG = logging.getLogger("dllm_bench.backends.llada")

SECTION_KEYS = ("steps", "block_length", "remasking", "temperature", "cfg_scale")
SIZE_KEYS = ("d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "vocab_size", "embedding_size")
TOKEN_KEYS = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")


def _number(value: float) -> str:
    """`0.5` -> `0.5`, `2.0` -> `2`: short and stable."""
    return f"{value:g}"


@dataclass(frozen=True)
class LladaSettings:
    """How a LLaDA case decodes; the defaults are the ones the README documents."""

    steps: int
    block_length: int
    remasking: str = "low_confidence"
    temperature: float = 0.0
    cfg_scale: float = 0.0

    def columns(self) -> dict[str, object]:
        return {
            "steps": self.steps,
            "block_length": self.block_length,
            "remasking": self.remasking,
            "temperature": self.temperature,
            "cfg_scale": self.cfg_scale,
        }

    def id_parts(self) -> list[str]:
        """`s<steps>-k<block_length>`, then only what differs from the defaults:
        `random`, `t<temperature>`, `cfg<cfg_scale>`."""
        parts = [f"s{self.steps}", f"k{self.block_length}"]
        if self.remasking == "random":
            parts.append("random")
        if self.temperature:
            parts.append(f"t{_number(self.temperature)}")
        if self.cfg_scale:
            parts.append(f"cfg{_number(self.cfg_scale)}")
        return parts

    def expected_nfe(self, gen_length: int) -> int:
        return self.steps

    def batch_factor(self) -> int:
        return 2 if self.cfg_scale else 1

    def work_per_call(self, prompt_length: int, gen_length: int, batch_size: int) -> float:
        """Every step runs the whole (batch, prompt + gen) canvas, doubled with cfg."""
        return float(self.steps * batch_size * (prompt_length + gen_length) * self.batch_factor())


DEFAULTS = LladaSettings(steps=1, block_length=1)


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
    kind = "llada"
    case_fixture = "llada_case"
    section = "llada"
    section_keys = SECTION_KEYS
    loader_name = "dllm_bench's own LLaDAModelLM"
    arch_class = "LLaDAConfig"

    def parse_section(self, check: Checker, raw: Mapping[str, Any] | None, *, used: bool) -> tuple[Settings, ...]:
        if raw is None:
            if used:
                check.fail(
                    "llada", "the LLaDA axes (steps, block_length, ...) since a model has kind llada", show_got=False
                )
            return ()
        check.known_keys(raw, "llada", SECTION_KEYS)
        for key in ("steps", "block_length"):
            if key not in raw:
                check.fail(f"llada.{key}", "a positive integer or a list of them (missing)", show_got=False)
        steps = check.int_axis(raw.get("steps", 1), "llada.steps")
        blocks = check.int_axis(raw.get("block_length", 1), "llada.block_length")
        remasking = check.choice_axis(raw.get("remasking", DEFAULTS.remasking), "llada.remasking", REMASKING_STRATEGIES)
        temperature = check.float_axis(raw.get("temperature", DEFAULTS.temperature), "llada.temperature")
        cfg = check.float_axis(raw.get("cfg_scale", DEFAULTS.cfg_scale), "llada.cfg_scale")
        return tuple(
            LladaSettings(steps=s, block_length=k, remasking=r, temperature=t, cfg_scale=c)
            for s, k, r, t, c in itertools.product(steps, blocks, remasking, temperature, cfg)
        )

    def check_grid(self, check: Checker, gen_lengths: tuple[int, ...], settings: tuple[Settings, ...]) -> None:
        seen: set[str] = set()
        for gen_length in gen_lengths:
            for item in settings:
                assert isinstance(item, LladaSettings)
                try:
                    validate_schedule(steps=item.steps, gen_length=gen_length, block_length=item.block_length)
                except ValueError as exc:
                    key = "llada.steps" if str(exc).startswith("steps") else "llada.block_length"
                    message = f"a valid schedule for grid.gen_length={gen_length}: {exc}"
                    if message not in seen:
                        seen.add(message)
                        check.fail(key, message, show_got=False)

    def arch_keys(self) -> frozenset[str]:
        return frozenset(LLADA_CONFIG_KEYS)

    def check_arch(self, arch: Mapping[str, Any]) -> list[str]:
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
        return int(arch.get("max_sequence_length", LLaDAConfig().max_sequence_length))

    def write_random_init(self, folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> None:
        write_llada_folder(folder, arch, seed=seed, dtype=dtype)

    def code_files(self) -> tuple[Path, ...]:
        return tuple(llada_source_dir() / name for name in LLADA_REMOTE_CODE_FILES)

    def load(self, spec: ModelSpec, location: str, dtype: torch.dtype) -> torch.nn.Module:
        if spec.trust_remote_code:
            model: torch.nn.Module = AutoModel.from_pretrained(
                location, trust_remote_code=True, dtype=dtype, revision=spec.revision
            )
            return model
        loaded: torch.nn.Module = LLaDAModelLM.from_pretrained(location, dtype=dtype, revision=spec.revision or "main")
        return loaded

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
                feed.attention_mask,
                steps=settings.steps,
                gen_length=gen_length,
                block_length=settings.block_length,
                temperature=settings.temperature,
                cfg_scale=settings.cfg_scale,
                remasking=settings.remasking,
                mask_id=mask_id,
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
            exact = self._exact_decode(case, loaded, feed, round_index)
            generated, reference = output[:, case.prompt_length :], exact[:, case.prompt_length :]
            equal += int(torch.eq(generated, reference).sum().item())
            total += reference.numel()
        return equal / total if total else None

    def _exact_decode(self, case: Case, loaded: LoadedModel, feed: PromptFeed, round_index: int) -> torch.Tensor:
        settings = case.settings
        assert isinstance(settings, LladaSettings) and loaded.mask_id is not None
        key = (
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
        if key not in loaded.memo:
            feed.select(round_index)
            loaded.memo[key] = generate(
                loaded.model,
                feed.input_ids,
                feed.attention_mask,
                steps=case.gen_length,
                gen_length=case.gen_length,
                block_length=settings.block_length,
                temperature=settings.temperature,
                cfg_scale=settings.cfg_scale,
                remasking=settings.remasking,
                mask_id=loaded.mask_id,
            )
        return loaded.memo[key]

    def check_output(self, case: Case, loaded: LoadedModel, output: torch.Tensor) -> None:
        """A canvas with mask tokens left is logged: the model itself predicted the mask id,
        which the reference algorithm allows (a trained model does not)."""
        if loaded.mask_id is None:
            return
        left = int(torch.eq(output[:, case.prompt_length :], loaded.mask_id).sum().item())
        if left:
            LOG.warning("case %s: %d mask tokens remain: the model predicted the mask id", case.case_id, left)
