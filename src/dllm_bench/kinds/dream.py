"""The `dream` kind: Dream-v0 masked diffusion (a Qwen2.5-initialised decoder) with the suite's own
model and sampler: the published sampler's remasking algorithms and Fast-dLLM's Dream caches.

Torch-free: the settings, their defaults, their validation (one problem per key) and how
they read as columns and case-id parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dllm_bench.kinds.base import DIFFUSION, KindSpec

#: The published sampler's remasking algorithms (`alg`).
ALGORITHMS: tuple[str, ...] = ("origin", "maskgit_plus", "topk_margin", "entropy")
CACHE_MODES: tuple[str, ...] = ("none", "prefix", "dual")
#: Fast-dLLM's block sampler ranks a step's candidates by entropy whatever `alg` says, and by the
#: token's probability (maskgit_plus's confidence) with a threshold: the algorithms a cache takes.
CACHE_ALG = "entropy"
THRESHOLD_ALG = "maskgit_plus"


class DreamSettingsError(ValueError):
    """Settings the Dream sampler cannot run; `problems` maps each config key to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        super().__init__("; ".join(f"dream.{key}: {text}" for key, text in problems.items()))
        self.problems = problems


@dataclass(frozen=True)
class DreamSettings:
    """One point of the Dream axes (the published generation config's names)."""

    steps: int | None = 16
    alg: str = "entropy"
    alg_temp: float = 0.0
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    eps: float = 1e-3
    cache: str = "none"
    block_length: int | None = None
    threshold: float | None = None

    def problems(self, gen_length: int | None = None) -> dict[str, str]:
        """What is wrong with these settings (for `gen_length` when given), by config key."""
        found: dict[str, str] = {}
        if self.alg not in ALGORITHMS:
            found["alg"] = f"one of {', '.join(ALGORITHMS)}, got {self.alg!r}"
        if self.cache not in CACHE_MODES:
            found["cache"] = f"one of {', '.join(CACHE_MODES)}, got {self.cache!r}"
        if self.top_p is not None and not 0 < self.top_p <= 1:
            found["top_p"] = f"a number in (0, 1] or null, got {self.top_p}"
        if self.top_k is not None and self.top_k < 1:
            found["top_k"] = f"a positive integer or null, got {self.top_k}"
        if not 0 < self.eps < 1:
            found["eps"] = f"a number in (0, 1) (the last timestep of the schedule), got {self.eps}"
        if self.threshold is not None and not 0 < self.threshold <= 1:
            found["threshold"] = f"a number in (0, 1] or null, got {self.threshold}"
        if self.steps is None and self.threshold is None:
            found["steps"] = "a positive integer (missing)"
        found.update(self._cache_problems(gen_length))
        return found

    def _cache_problems(self, gen_length: int | None) -> dict[str, str]:
        found: dict[str, str] = {}
        if self.cache == "none":
            if self.threshold is not None:
                found["threshold"] = "null with cache none (the threshold rule is Fast-dLLM's block sampler's; "
                found["threshold"] += "set cache: prefix or dual)"
            if self.block_length is not None:
                found["block_length"] = "null with cache none (the published sampler decodes the whole canvas)"
            return found
        if self.block_length is None:
            found["block_length"] = f"a positive integer with cache {self.cache} (the block of the block sampler)"
        wanted = THRESHOLD_ALG if self.threshold is not None else CACHE_ALG
        if self.alg != wanted:
            why = "with a threshold it ranks by the token's probability" if self.threshold is not None else (
                "without a threshold it ranks by entropy"
            )
            found["alg"] = f"{wanted} with cache {self.cache} (Fast-dLLM's block sampler {why}), got {self.alg}"
        if self.threshold is not None and self.alg_temp:
            found["alg_temp"] = "0 with a threshold (the threshold rule does not sample positions)"
        if gen_length is not None and self.block_length:
            if gen_length % self.block_length:
                found["block_length"] = f"a divisor of grid.gen_length {gen_length}, got {self.block_length}"
            elif self.threshold is None and self.steps is not None:
                blocks = gen_length // self.block_length
                per_block = self.steps // blocks
                if self.steps % blocks or per_block < min(2, self.block_length):
                    found["steps"] = (
                        f"a multiple of the {blocks} blocks of gen_length {gen_length}, at least "
                        f"{min(2, self.block_length)} per block (the refresh forward commits one token), "
                        f"got {self.steps}"
                    )
        return found

    def validate(self, gen_length: int) -> None:
        found = self.problems(gen_length)
        if found:
            raise DreamSettingsError(found)

    def blocks(self, gen_length: int) -> int:
        return gen_length // self.block_length if self.cache != "none" and self.block_length else 1

    def columns(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in COLUMN_NAMES}

    def id_parts(self) -> list[str]:
        parts = [] if self.threshold is not None else [f"s{self.steps}"]
        parts.append(self.alg)
        default = DreamSettings()
        for name, prefix in ID_PREFIXES:
            value = getattr(self, name)
            if value != getattr(default, name):
                parts.append(f"{prefix}{value:g}" if isinstance(value, float) else f"{prefix}{value}")
        return parts

    def expected_nfe(self, gen_length: int) -> int:
        """Forwards of one call at most: the steps, or with a threshold one per block position."""
        if self.threshold is not None and self.block_length:
            return gen_length
        return int(self.steps or 1)

    def batch_factor(self) -> int:
        return 1

    def work_per_call(self, prompt_length: int, gen_length: int, batch_size: int) -> float:
        length = prompt_length + gen_length
        if self.cache == "none" or not self.block_length:
            return float(batch_size * length * self.expected_nfe(gen_length))
        fed = self.block_length if self.cache == "dual" else (gen_length + self.block_length) / 2
        blocks = self.blocks(gen_length)
        per_block = max(self.expected_nfe(gen_length) // blocks - 1, 0)
        return float(batch_size * blocks * (length + per_block * fed))

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> DreamSettings:
        values: dict[str, Any] = {f.name: columns[f.name] for f in fields(cls) if columns.get(f.name) is not None}
        values["steps"] = columns.get("steps")  # empty with a threshold
        return cls(**values)


COLUMNS: tuple[tuple[str, str], ...] = (
    ("steps", "Dream: denoising steps of a call (dream.steps); empty with a threshold; empty for other kinds"),
    ("alg", "Dream: remasking algorithm, origin, maskgit_plus, topk_margin or entropy (dream.alg); empty for "
     "other kinds"),
    ("alg_temp", "Dream: temperature of the position sampling, 0 ranks (dream.alg_temp); empty for other kinds"),
    ("temperature", "Dream: token sampling temperature, 0 is greedy (dream.temperature); empty for other kinds"),
    ("top_p", "Dream: nucleus filter of the token sampling (dream.top_p); empty: off; empty for other kinds"),
    ("top_k", "Dream: top-k filter of the token sampling (dream.top_k); empty: off; empty for other kinds"),
    ("eps", "Dream: last timestep of the schedule (dream.eps); empty for other kinds"),
    ("cache", "Dream: Fast-dLLM KV cache, none, prefix or dual (dream.cache); empty for other kinds"),
    ("block_length", "Dream: block length of the cached block sampler (dream.block_length); empty without a "
     "cache; empty for other kinds"),
    ("threshold", "Dream: confidence threshold of the cached block sampler (dream.threshold); empty for other "
     "kinds"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
#: The case-id part of each setting written when it differs from the default, in id order.
ID_PREFIXES: tuple[tuple[str, str], ...] = (
    ("alg_temp", "at"),
    ("temperature", "t"),
    ("top_p", "tp"),
    ("top_k", "tk"),
    ("eps", "eps"),
    ("block_length", "k"),
    ("cache", "c"),
    ("threshold", "th"),
)

SPEC = KindSpec(
    kind="dream",
    label="Dream",
    family=DIFFUSION,
    settings_type=DreamSettings,
    description="Dream masked diffusion (the suite's own model and sampler: the published remasking algorithms, "
    "Fast-dLLM's Dream caches)",
    columns=COLUMNS,
    section="dream",
    section_keys=COLUMN_NAMES,
    id_parts="`s<steps>` (not with a threshold), `<alg>`, then what differs from the defaults: `at<alg_temp>`, "
    "`t<temperature>`, `tp<top_p>`, `tk<top_k>`, `eps<eps>`, `k<block_length>`, `c<cache>`, `th<threshold>`",
)
