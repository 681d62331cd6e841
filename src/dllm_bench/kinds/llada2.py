"""The `llada2` kind: inclusionAI's LLaDA2.0 and LLaDA2.1 MoE block-diffusion models with the
suite's own model and sampler.

One kind, two versions: they share the architecture and the block sampler (block-causal
attention, `steps` per block, a confidence `threshold`); LLaDA2.1 (`model_type:
llada21_moe`) adds the editing phase (`editing_threshold`, `max_post_steps`), which a
LLaDA2.0 model refuses. Torch-free: the settings, their defaults, their validation (one
problem per key) and how they read as columns and case-id parts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dllm_bench.kinds.base import DIFFUSION, KindSpec

CACHE_MODES: tuple[str, ...] = ("none", "prefix")
#: The published sampler's number of extra passes over a finished block (LLaDA2.1).
PUBLISHED_MAX_POST_STEPS = 16


class Llada2SettingsError(ValueError):
    """Settings the LLaDA2 sampler cannot run; `problems` maps each config key to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"llada2.{key}: {text}" for key, text in problems.items()))
        self.problems = problems


@dataclass(frozen=True)
class Llada2Settings:
    """One point of the LLaDA2 axes (the published `generate`'s names)."""

    steps: int = 32
    block_length: int = 32
    threshold: float | None = 0.95
    minimal_topk: int = 1
    cache: str = "none"
    eos_early_stop: bool = False
    editing_threshold: float | None = None
    max_post_steps: int | None = None

    @property
    def editing(self) -> bool:
        return self.editing_threshold is not None

    def post_steps(self) -> int:
        """Extra passes over a finished block (LLaDA2.1's editing phase); 0 without editing."""
        if not self.editing:
            return 0
        return PUBLISHED_MAX_POST_STEPS if self.max_post_steps is None else self.max_post_steps

    def block_steps(self, gen_length: int) -> int:
        """The steps of a block: `steps`, at most gen_length // minimal_topk (the published rule)."""
        return max(min(self.steps, gen_length // self.minimal_topk), 1)

    def problems(self, gen_length: int | None = None) -> dict[str, str]:
        """What is wrong with these settings (for `gen_length` when given), by config key."""
        found: dict[str, str] = {}
        if self.block_length < 1:
            found["block_length"] = f"a positive integer, got {self.block_length}"
        if not 1 <= self.steps <= max(self.block_length, 1):
            found["steps"] = (
                f"an integer in 1..block_length {self.block_length} (a step past the block commits nothing), "
                f"got {self.steps}"
            )
        if self.minimal_topk < 1:
            found["minimal_topk"] = f"a positive integer, got {self.minimal_topk}"
        elif gen_length is not None and gen_length // self.minimal_topk < 1:
            found["minimal_topk"] = f"at most grid.gen_length {gen_length}, got {self.minimal_topk}"
        for key in ("threshold", "editing_threshold"):
            value = getattr(self, key)
            if value is not None and not 0 <= value <= 1:
                found[key] = f"a number in [0, 1] or null, got {value}"
        if self.cache not in CACHE_MODES:
            found["cache"] = f"one of {', '.join(CACHE_MODES)}, got {self.cache!r}"
        if self.max_post_steps is not None:
            if not self.editing:
                found["max_post_steps"] = "null without an editing_threshold (the passes of the editing phase)"
            elif self.max_post_steps < 0:
                found["max_post_steps"] = f"a non-negative integer, got {self.max_post_steps}"
        return found

    def validate(self, gen_length: int) -> None:
        found = self.problems(gen_length)
        if found:
            raise Llada2SettingsError(found)

    def exact(self) -> Llada2Settings:
        """The kind's exact setting for these: one token per step, no threshold, no editing, no cache."""
        return Llada2Settings(
            steps=self.block_length, block_length=self.block_length, threshold=None,
            eos_early_stop=self.eos_early_stop,
        )

    def columns(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in COLUMN_NAMES}

    def id_parts(self) -> list[str]:
        parts = [f"s{self.steps}", f"k{self.block_length}"]
        default = Llada2Settings()
        for name, prefix in ID_PREFIXES:
            value = getattr(self, name)
            if value != getattr(default, name):
                parts.append(_id_part(prefix, value))
        return parts

    def expected_nfe(self, gen_length: int) -> int:
        """Forwards of one call at most: every block its steps, plus the editing phase's passes."""
        blocks = math.ceil(gen_length / self.block_length) + 1
        return blocks * (self.block_steps(gen_length) + self.post_steps() + (1 if self.editing else 0))

    def batch_factor(self) -> int:
        return 1

    def work_per_call(self, prompt_length: int, gen_length: int, batch_size: int) -> float:
        fed = self.block_length if self.cache == "prefix" else prompt_length + (gen_length + self.block_length) / 2
        return float(batch_size * self.expected_nfe(gen_length) * fed)

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> Llada2Settings:
        values: dict[str, Any] = {f.name: columns[f.name] for f in fields(cls) if columns.get(f.name) is not None}
        for name in ("threshold", "editing_threshold", "max_post_steps"):
            values[name] = columns.get(name)  # empty: off
        return cls(**values)


def _id_part(prefix: str, value: object) -> str:
    if value is None:
        return f"{prefix}off"
    if isinstance(value, bool):
        return prefix if value else f"no{prefix}"
    return f"{prefix}{value:g}" if isinstance(value, float) else f"{prefix}{value}"


COLUMNS: tuple[tuple[str, str], ...] = (
    ("steps", "LLaDA2: steps per block, at most gen_length // minimal_topk are run (llada2.steps); empty for "
     "other kinds"),
    ("block_length", "LLaDA2: block length of the block-causal sampler (llada2.block_length); empty for other kinds"),
    ("threshold", "LLaDA2: confidence threshold, every masked position above it is committed (llada2.threshold); "
     "empty: off; empty for other kinds"),
    ("minimal_topk", "LLaDA2: the steps per block are at most gen_length // minimal_topk (llada2.minimal_topk); "
     "empty for other kinds"),
    ("cache", "LLaDA2: none recomputes the prefix every step, prefix keeps the finished blocks' keys and values "
     "(llada2.cache); empty for other kinds"),
    ("eos_early_stop", "LLaDA2: stop a sequence inside a block once its EOS is placed and nothing before it is "
     "masked (llada2.eos_early_stop); empty for other kinds"),
    ("editing_threshold", "LLaDA2.1: a placed token is replaced when the model is more confident than this in "
     "another one (llada2.editing_threshold); empty: no editing; empty for other kinds"),
    ("max_post_steps", "LLaDA2.1: most editing passes over a finished block (llada2.max_post_steps); empty: 16 "
     "with editing; empty for other kinds"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
#: The case-id part of each setting written when it differs from the default, in id order.
ID_PREFIXES: tuple[tuple[str, str], ...] = (
    ("threshold", "th"),
    ("minimal_topk", "mt"),
    ("cache", "c"),
    ("eos_early_stop", "eos"),
    ("editing_threshold", "et"),
    ("max_post_steps", "mp"),
)

SPEC = KindSpec(
    kind="llada2",
    label="LLaDA2",
    family=DIFFUSION,
    settings_type=Llada2Settings,
    description="inclusionAI's LLaDA2.0 and LLaDA2.1 MoE block diffusion (the suite's own model and sampler; "
    "LLaDA2.1's editing phase)",
    columns=COLUMNS,
    section="llada2",
    section_keys=COLUMN_NAMES,
    id_parts="`s<steps>-k<block_length>`, then what differs from the defaults: `th<threshold>` (`thoff`), "
    "`mt<minimal_topk>`, `c<cache>`, `eos`, `et<editing_threshold>`, `mp<max_post_steps>`",
)
