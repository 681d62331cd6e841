"""The `diffusion_gemma` kind: Google's DiffusionGemma, decoded by the library's own `generate`.

DiffusionGemma is a block-diffusion model (an encoder fills a KV cache with the prompt and
each finished canvas; a bidirectional decoder denoises the next canvas of uniform random
tokens with an entropy-bounded sampler). Every setting left out (None) takes the
checkpoint's own generation config, then the library's defaults; the case id names only
the settings that were set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dllm_bench.kinds.base import DIFFUSION, KindSpec

#: The library's defaults where neither the config nor the checkpoint sets a value (transformers'
#: DiffusionGemmaGenerationConfig and DiffusionGemmaConfig); used only for progress and shard
#: estimates, never passed to the model.
LIBRARY_MAX_DENOISING_STEPS = 48
LIBRARY_CANVAS_LENGTH = 256
#: The cache implementations a case may ask for (the library's names; quantized needs an
#: extra package and is not offered).
CACHE_IMPLEMENTATIONS: tuple[str, ...] = ("dynamic", "static", "offloaded", "offloaded_static")


@dataclass(frozen=True)
class DiffusionGemmaSettings:
    """One point of the DiffusionGemma axes; None: the checkpoint's own value."""

    block_length: int | None = None
    max_denoising_steps: int | None = None
    entropy_bound: float | None = None
    t_min: float | None = None
    t_max: float | None = None
    stability_threshold: int | None = None
    confidence_threshold: float | None = None
    cache_implementation: str | None = None

    def columns(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in COLUMN_NAMES}

    def id_parts(self) -> list[str]:
        values = [(prefix, getattr(self, name)) for name, prefix in ID_PREFIXES]
        return [f"{prefix}{_id_value(value)}" for prefix, value in values if value is not None]

    def generate_kwargs(self) -> dict[str, Any]:
        """The settings that were set, under the library's generate keyword names (the sampler's
        entropy bound is wrapped by the backend, which owns the library's types)."""
        names = ("max_denoising_steps", "t_min", "t_max", "stability_threshold", "confidence_threshold")
        kwargs: dict[str, Any] = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.cache_implementation is not None:
            kwargs["cache_implementation"] = self.cache_implementation
        return kwargs

    def canvases(self, gen_length: int) -> int:
        return math.ceil(gen_length / (self.block_length or LIBRARY_CANVAS_LENGTH))

    def expected_nfe(self, gen_length: int) -> int:
        """Decoder passes at most: every canvas runs its maximum denoising steps (adaptive
        stopping can only make it fewer)."""
        return self.canvases(gen_length) * (self.max_denoising_steps or LIBRARY_MAX_DENOISING_STEPS)

    def batch_factor(self) -> int:
        return 1

    def work_per_call(self, prompt_length: int, gen_length: int, batch_size: int) -> float:
        """The encoder's pass over the prompt and each canvas, then every decoder pass over one canvas."""
        canvas = self.block_length or LIBRARY_CANVAS_LENGTH
        return float(batch_size * (prompt_length + gen_length + self.expected_nfe(gen_length) * canvas))

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> DiffusionGemmaSettings:
        return cls(**{name: columns.get(name) for name in COLUMN_NAMES})


def _id_value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


COLUMNS: tuple[tuple[str, str], ...] = (
    (
        "max_denoising_steps",
        "DiffusionGemma: most denoising steps per canvas (diffusion_gemma.max_denoising_steps); empty: the "
        "checkpoint's value; empty for other kinds",
    ),
    (
        "entropy_bound",
        "DiffusionGemma: the sampler's entropy bound, EntropyBoundSamplerConfig.entropy_bound "
        "(diffusion_gemma.entropy_bound); empty: the checkpoint's value; empty for other kinds",
    ),
    (
        "t_min",
        "DiffusionGemma: temperature at the last denoising step (diffusion_gemma.t_min); empty: the checkpoint's "
        "value; empty for other kinds",
    ),
    (
        "t_max",
        "DiffusionGemma: temperature at the first denoising step (diffusion_gemma.t_max); empty: the checkpoint's "
        "value; empty for other kinds",
    ),
    (
        "stability_threshold",
        "DiffusionGemma: adaptive stopping, steps the canvas must stay the same (diffusion_gemma.stability_threshold); "
        "empty: the checkpoint's value; empty for other kinds",
    ),
    (
        "confidence_threshold",
        "DiffusionGemma: adaptive stopping, mean entropy below which a canvas is confident "
        "(diffusion_gemma.confidence_threshold); empty: the checkpoint's value; empty for other kinds",
    ),
    (
        "cache_implementation",
        "DiffusionGemma: the KV cache class (diffusion_gemma.cache_implementation); empty: the library's default "
        "(dynamic); empty for other kinds",
    ),
)
BLOCK_LENGTH_DOC = (
    "DiffusionGemma: canvas length, the model config's canvas_length (diffusion_gemma.block_length); empty: the "
    "checkpoint's value"
)
COLUMN_NAMES: tuple[str, ...] = ("block_length", *(name for name, _ in COLUMNS))
# The case-id part of each setting, in id order.
ID_PREFIXES: tuple[tuple[str, str], ...] = (
    ("block_length", "k"),
    ("max_denoising_steps", "d"),
    ("entropy_bound", "eb"),
    ("t_min", "tmin"),
    ("t_max", "tmax"),
    ("stability_threshold", "st"),
    ("confidence_threshold", "ct"),
    ("cache_implementation", "c"),
)

SPEC = KindSpec(
    kind="diffusion_gemma",
    label="DiffusionGemma",
    family=DIFFUSION,
    settings_type=DiffusionGemmaSettings,
    description="Google's DiffusionGemma block diffusion (transformers' DiffusionGemmaForBlockDiffusion and its "
    "own generate)",
    columns=(("block_length", BLOCK_LENGTH_DOC), *COLUMNS),
    section="diffusion_gemma",
    section_keys=COLUMN_NAMES,
    id_parts="what is set, in this order: `k<block_length>`, `d<max_denoising_steps>`, `eb<entropy_bound>`, "
    "`tmin<t_min>`, `tmax<t_max>`, `st<stability_threshold>`, `ct<confidence_threshold>`, "
    "`c<cache_implementation>`; `default` when nothing is",
)
