"""The DiffusionGemma kind: transformers' `DiffusionGemmaForBlockDiffusion`, decoded by its own `generate`.

Nothing of the model or its sampler is re-implemented: a case calls the library's
`generate` with the case's settings under the library's names. The model has no greedy
mode (every step samples), so every call starts from `torch.manual_seed(case.seed)`: the
same case gives the same tokens in every round, run and process on one machine. A canvas
length is a model setting (`config.canvas_length`): a case that sets `block_length` sets
it for its own calls and puts the checkpoint's value back after each.
"""

from __future__ import annotations

import itertools
import json
import logging
import statistics
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers
from transformers import PretrainedConfig

from dllm_bench.backends.base import Backend, check_arch_types, check_positive, check_section_keys, optional_axis
from dllm_bench.kinds import Settings
from dllm_bench.kinds.diffusion_gemma import CACHE_IMPLEMENTATIONS, SPEC, DiffusionGemmaSettings
from dllm_bench.models.random_init import write_model_folder
from dllm_bench.spec import Checker, ModelSpec
from dllm_bench.timing import time_rounds

try:
    from transformers.models.diffusion_gemma import (
        DiffusionGemmaConfig,
        DiffusionGemmaForBlockDiffusion,
        EntropyBoundSamplerConfig,
    )

    MISSING_LIBRARY: str | None = None
except ImportError:  # a transformers from before DiffusionGemma (added on 2026-06-10)
    MISSING_LIBRARY = (
        f"transformers {transformers.__version__} has no DiffusionGemma (transformers.models.diffusion_gemma); "
        "upgrade it: pip install -U 'transformers>=5.25'"
    )

if TYPE_CHECKING:
    from dllm_bench.cases import Case
    from dllm_bench.feed import PromptFeed
    from dllm_bench.models.loader import LoadedModel
    from dllm_bench.runner import CallRecorder
    from dllm_bench.timing import LatencyStats

LOG = logging.getLogger("dllm_bench.backends.diffusion_gemma")

MODEL_TYPE = "diffusion_gemma"
#: DiffusionGemmaConfig keys of a random-init entry; every other arch key goes to its text config.
TOP_KEYS = ("canvas_length", "boi_token_id", "eoi_token_id", "image_token_id")
#: Text-config keys and their types (DiffusionGemmaTextConfig's scalar fields, and the two
#: keys its constructor takes for the full-attention layers).
TEXT_TYPES: dict[str, tuple[type, ...]] = {
    "vocab_size": (int,),
    "hidden_size": (int,),
    "intermediate_size": (int,),
    "num_hidden_layers": (int,),
    "num_attention_heads": (int,),
    "num_key_value_heads": (int,),
    "head_dim": (int,),
    "global_head_dim": (int,),
    "num_global_key_value_heads": (int, type(None)),
    "hidden_activation": (str,),
    "max_position_embeddings": (int,),
    "initializer_range": (float,),
    "rms_norm_eps": (float,),
    "pad_token_id": (int, type(None)),
    "eos_token_id": (int, type(None)),
    "bos_token_id": (int, type(None)),
    "tie_word_embeddings": (bool,),
    "attention_bias": (bool,),
    "attention_dropout": (float,),
    "sliding_window": (int,),
    "use_bidirectional_attention": (str, type(None)),
    "num_experts": (int,),
    "top_k_experts": (int,),
    "moe_intermediate_size": (int,),
}
ARCH_TYPES: dict[str, tuple[type, ...]] = {**TEXT_TYPES, **{key: (int,) for key in TOP_KEYS}}
SIZE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "global_head_dim",
    "max_position_embeddings",
    "sliding_window",
    "num_experts",
    "top_k_experts",
    "moe_intermediate_size",
    "canvas_length",
)
#: Keys the library's config has no usable default for (its model cannot be built without them).
REQUIRED_KEYS = ("num_experts", "top_k_experts", "moe_intermediate_size")
TOKEN_KEYS = ("pad_token_id", "eos_token_id", "bos_token_id")
LIBRARY_MAX_POSITIONS = 131_072
#: A random-init model's vision tower: never run by a text benchmark, so as small as the library
#: allows (left out, the library would build the full Gemma 4 one).
TINY_VISION: dict[str, Any] = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "global_head_dim": 16,
}


def library_config(arch: Mapping[str, Any]) -> DiffusionGemmaConfig:
    """The DiffusionGemmaConfig of a random-init arch mapping (raises what the library raises)."""
    text = {key: value for key, value in arch.items() if key not in TOP_KEYS}
    top = {key: arch[key] for key in TOP_KEYS if key in arch}
    return DiffusionGemmaConfig(text_config=text, vision_config=dict(TINY_VISION), **top)


def write_diffusion_gemma_folder(folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> Path:
    """Write a random-init DiffusionGemma folder that `DiffusionGemmaForBlockDiffusion.from_pretrained`
    loads as it loads the hub checkpoint."""

    def build() -> DiffusionGemmaForBlockDiffusion:
        return DiffusionGemmaForBlockDiffusion(library_config(arch))

    return write_model_folder(
        folder, build, name="DiffusionGemma", arch=arch, known_keys=frozenset(ARCH_TYPES), seed=seed, dtype=dtype
    )


class DiffusionGemmaBackend(Backend):
    spec = SPEC
    loader_name = "transformers DiffusionGemmaForBlockDiffusion"

    def parse_section(self, check: Checker, raw: Mapping[str, Any] | None, *, used: bool) -> tuple[Settings, ...]:
        section = SPEC.section or ""
        if used and MISSING_LIBRARY is not None:
            check.fail(section, f"a transformers with DiffusionGemma: {MISSING_LIBRARY}", show_got=False)
            return ()
        if raw is None and not used:
            return ()
        raw = raw or {}  # a section without a model of the kind is still checked
        check_section_keys(check, raw, SPEC)
        axes: list[tuple[Any, ...]] = [
            optional_axis(check, raw, f"{section}.block_length", "block_length", lambda v, k: check.integer(v, k)),
            optional_axis(
                check, raw, f"{section}.max_denoising_steps", "max_denoising_steps", lambda v, k: check.integer(v, k)
            ),
            optional_axis(check, raw, f"{section}.entropy_bound", "entropy_bound", lambda v, k: _positive(check, v, k)),
            optional_axis(check, raw, f"{section}.t_min", "t_min", lambda v, k: check.real(v, k)),
            optional_axis(check, raw, f"{section}.t_max", "t_max", lambda v, k: check.real(v, k)),
            optional_axis(
                check,
                raw,
                f"{section}.stability_threshold",
                "stability_threshold",
                lambda v, k: check.integer(v, k, minimum=0),
            ),
            optional_axis(
                check,
                raw,
                f"{section}.confidence_threshold",
                "confidence_threshold",
                lambda v, k: _positive(check, v, k),
            ),
            optional_axis(
                check,
                raw,
                f"{section}.cache_implementation",
                "cache_implementation",
                lambda v, k: check.choice(v, k, CACHE_IMPLEMENTATIONS),
            ),
        ]
        settings: dict[DiffusionGemmaSettings, None] = {}
        refused: set[tuple[float, float]] = set()
        for point in itertools.product(*axes):
            item = DiffusionGemmaSettings(*point)
            if item.t_min is not None and item.t_max is not None and item.t_max <= item.t_min:
                if (item.t_min, item.t_max) not in refused:  # once per pair, not per grid point
                    refused.add((item.t_min, item.t_max))
                    check.fail(f"{section}.t_max", f"a value above t_min {item.t_min:g}", item.t_max)
                continue
            settings.setdefault(item, None)
        return tuple(settings)

    def check_grid(self, check: Checker, gen_lengths: tuple[int, ...], settings: tuple[Settings, ...]) -> None:
        """Output comes in whole canvases: every gen_length must be a multiple of every block_length."""
        blocks = sorted({s.block_length for s in settings if isinstance(s, DiffusionGemmaSettings) and s.block_length})
        for block in blocks:
            bad = [g for g in gen_lengths if g % block]
            if bad:
                check.fail(
                    f"{SPEC.section}.block_length",
                    f"a divisor of every grid.gen_length (output comes in whole canvases): {block} does not divide "
                    f"{', '.join(map(str, bad))}",
                    show_got=False,
                )

    def check_model(self, check: Checker, key: str, spec: ModelSpec, settings: tuple[Settings, ...]) -> None:
        if spec.trust_remote_code:
            check.fail(
                f"{key}.trust_remote_code",
                "false: DiffusionGemma is native in transformers, no remote code is run",
                show_got=False,
            )

    def arch_keys(self, arch: Mapping[str, Any]) -> frozenset[str]:
        return frozenset(ARCH_TYPES)

    def arch_class(self, arch: Mapping[str, Any]) -> str:
        return "DiffusionGemmaConfig (its text_config keys, and canvas_length, boi/eoi/image_token_id)"

    def check_arch(self, arch: Mapping[str, Any]) -> list[str]:
        if MISSING_LIBRARY is not None:
            return [f"arch: {MISSING_LIBRARY}"]
        problems = check_arch_types(arch, ARCH_TYPES) + check_positive(arch, SIZE_KEYS)
        problems += [
            f"arch.{key}: required (the library has no default for it; e.g. {key}: 2)"
            for key in REQUIRED_KEYS
            if key not in arch
        ]
        vocab = arch.get("vocab_size")
        if isinstance(vocab, int):
            problems += [
                f"arch.{key}: expected a token id below vocab_size {vocab}, got {value}"
                for key in TOKEN_KEYS
                if isinstance(value := arch.get(key), int) and not 0 <= value < vocab
            ]
        if problems:
            return problems
        try:
            with torch.device("meta"):
                DiffusionGemmaForBlockDiffusion(library_config(arch))
        except Exception as exc:  # what the library's config or model refuses, in its words
            return [f"arch: the library refuses it: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"]
        return []

    def max_length(self, arch: Mapping[str, Any]) -> int:
        return int(arch.get("max_position_embeddings", LIBRARY_MAX_POSITIONS))

    def write_random_init(self, folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> None:
        write_diffusion_gemma_folder(folder, arch, seed=seed, dtype=dtype)

    def check_folder(self, folder: Path) -> str | None:
        """A local folder whose config.json names another model type is refused at config load."""
        try:
            model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            return None  # no readable config.json: the loader says what is missing
        return None if model_type == MODEL_TYPE else _wrong_model_type(model_type)

    def load(self, spec: ModelSpec, location: str, dtype: torch.dtype) -> torch.nn.Module:
        if MISSING_LIBRARY is not None:
            raise RuntimeError(MISSING_LIBRARY)
        config, _ = PretrainedConfig.get_config_dict(location, revision=spec.revision)
        model_type = config.get("model_type")
        if model_type != MODEL_TYPE:
            raise ValueError(_wrong_model_type(model_type))
        model: torch.nn.Module = DiffusionGemmaForBlockDiffusion.from_pretrained(
            location, dtype=dtype, revision=spec.revision or "main"
        )
        return model

    def counted_module(self, loaded: LoadedModel) -> torch.nn.Module:
        """A forward is a decoder (denoising) pass, as the library's tokens_per_forward counts
        it; the encoder's passes are counted apart (`encoder_nfe`)."""
        decoder: torch.nn.Module = _inner(loaded).decoder
        return decoder

    def build_call(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, recorder: CallRecorder
    ) -> Callable[[], torch.Tensor]:
        return seeded_call(case, loaded, feed, recorder, new_tokens=case.gen_length)

    def extra_fields(self, case: Case, loaded: LoadedModel, feed: PromptFeed, stats: LatencyStats) -> dict[str, object]:
        """Time to first token: output comes in whole canvases, so the first tokens are out when
        the first canvas is; timed as calls that stop after it, the same way as the case."""
        canvas = canvas_length(case, loaded)
        if case.gen_length <= canvas:
            return {"ttft_s": stats.mean}
        first = seeded_call(case, loaded, feed, None, new_tokens=canvas)
        return {"ttft_s": statistics.fmean(time_rounds(first, warmup_rounds=1, measured_rounds=case.measured_rounds))}


def _wrong_model_type(model_type: object) -> str:
    return (
        f"a DiffusionGemma checkpoint (model_type {MODEL_TYPE}); it is a {model_type or 'unknown'} checkpoint: "
        "give a DiffusionGemma checkpoint or change the entry's kind"
    )


def _positive(check: Checker, value: object, key: str) -> float | None:
    """A number above 0 (the library refuses 0 for the entropy bound and the confidence threshold)."""
    number = check.real(value, key)
    if number is not None and number <= 0:
        check.fail(key, "a number above 0", value)
        return None
    return number


def _inner(loaded: LoadedModel) -> Any:
    """The encoder-decoder inside DiffusionGemmaForBlockDiffusion (`model.model`)."""
    inner = getattr(loaded.model, "model", None)
    if inner is None or not hasattr(inner, "decoder") or not hasattr(inner, "encoder"):
        raise TypeError(f"model '{loaded.spec.name}' has no encoder and decoder; is it a DiffusionGemma checkpoint?")
    return inner


def canvas_length(case: Case, loaded: LoadedModel) -> int:
    """The case's canvas: its block_length, else the checkpoint's canvas_length."""
    settings = case.settings
    assert isinstance(settings, DiffusionGemmaSettings)
    own = int(getattr(loaded.model.config, "canvas_length", 0) or 0)
    canvas = settings.block_length or own
    if canvas < 1:
        raise ValueError(
            f"model '{case.model.name}': its config has no canvas_length; set diffusion_gemma.block_length"
        )
    if case.gen_length % canvas:
        raise ValueError(
            f"grid.gen_length {case.gen_length} is not a multiple of the canvas length {canvas} of model "
            f"'{case.model.name}' (output comes in whole canvases); set diffusion_gemma.block_length or gen_length"
        )
    return canvas


def generate_kwargs(case: Case, loaded: LoadedModel, new_tokens: int) -> dict[str, Any]:
    """The library generate's keyword arguments for one call of the case (the prompts aside)."""
    settings = case.settings
    assert isinstance(settings, DiffusionGemmaSettings)
    kwargs = settings.generate_kwargs()
    if settings.entropy_bound is not None:
        kwargs["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=settings.entropy_bound)
    kwargs["max_new_tokens"] = new_tokens
    kwargs["return_dict_in_generate"] = True
    if loaded.eos_ids:
        kwargs["eos_token_id"] = list(loaded.eos_ids)
    if loaded.pad_id is not None:
        kwargs["pad_token_id"] = loaded.pad_id
    if loaded.device.type == "cpu":
        kwargs["disable_compile"] = True  # a static cache would compile the decoder; not on a CPU
    return kwargs


@contextmanager
def canvas_set(model: torch.nn.Module, canvas: int) -> Iterator[None]:
    """The model's canvas_length is `canvas` inside the block, the checkpoint's again after."""
    config: Any = model.config
    own = config.canvas_length
    config.canvas_length = canvas
    try:
        yield
    finally:
        config.canvas_length = own


class EncoderCount:
    """Counts the encoder's forward passes of one call."""

    def __init__(self) -> None:
        self.passes = 0

    def __call__(self, *_: object) -> None:
        self.passes += 1


def seeded_call(
    case: Case, loaded: LoadedModel, feed: PromptFeed, recorder: CallRecorder | None, *, new_tokens: int
) -> Callable[[], torch.Tensor]:
    """One library generate over the feed's selected batch, from `torch.manual_seed(case.seed)`.
    The output is the prompt and `new_tokens` positions (the library's padding after EOS, and
    pad ids where every row stopped early); the recorder gets the library's tokens_per_forward
    (mean over the batch) and the encoder passes."""
    canvas = canvas_length(case, loaded)
    kwargs = generate_kwargs(case, loaded, new_tokens)
    pad = loaded.pad_id if loaded.pad_id is not None else 0
    encoder = _inner(loaded).encoder
    generate_fn: Callable[..., Any] = loaded.model.generate  # type: ignore[assignment]
    length = case.prompt_length + new_tokens

    def call() -> torch.Tensor:
        count = EncoderCount()
        hook = encoder.register_forward_hook(count)
        try:
            with torch.inference_mode(), canvas_set(loaded.model, canvas):
                torch.manual_seed(case.seed)
                result = generate_fn(input_ids=feed.input_ids, attention_mask=feed.full_mask(), **kwargs)
        finally:
            hook.remove()
        output = _pad_to(result.sequences, length, pad)
        if recorder is None:
            return output
        per_row = result.tokens_per_forward
        return recorder.record(
            output, tokens_per_forward=float(per_row.float().mean().item()), encoder_nfe=float(count.passes)
        )

    return call


def _pad_to(sequences: torch.Tensor, length: int, pad: int) -> torch.Tensor:
    """Sequences padded to `length` (the library stops early once every row met EOS); a longer
    output is left as it is, for the runner's shape check to refuse."""
    missing = length - sequences.shape[1]
    return torch.nn.functional.pad(sequences, (0, missing), value=pad) if missing > 0 else sequences
