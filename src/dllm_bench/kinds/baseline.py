"""The `baseline` kind: an autoregressive transformers causal LM, greedy, KV cache on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dllm_bench.kinds.base import AUTOREGRESSIVE, KindSpec


@dataclass(frozen=True)
class BaselineSettings:
    """The AR kind has no decoding axes: greedy, exactly gen_length new tokens."""

    def columns(self) -> dict[str, object]:
        return {}

    def id_parts(self) -> list[str]:
        return []

    def expected_nfe(self, gen_length: int) -> int:
        return gen_length

    def batch_factor(self) -> int:
        return 1

    def work_per_call(self, prompt_length: int, gen_length: int, batch_size: int) -> float:
        """A prefill of the prompt, then one token per row and step (KV cache)."""
        return float(batch_size * (prompt_length + gen_length))

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> BaselineSettings:
        return cls()


SPEC = KindSpec(
    kind="baseline",
    label="AR",
    family=AUTOREGRESSIVE,
    settings_type=BaselineSettings,
    description="an autoregressive transformers causal LM (greedy, KV cache), the reference of the speed-ups",
)
