"""The registry of model kinds: one torch-free spec per kind (`dllm_bench.kinds.base.KindSpec`).

Every list of kinds is derived from `KIND_SPECS`: the kinds a config accepts
(`MODEL_KINDS`), the case fixtures the plugin parametrizes (`CASE_FIXTURES`), the setting
columns that are part of a case's identity (`dllm_bench.rows.IDENTITY_COLUMNS`) and the
README's kind table. A new kind adds its spec module here and its backend in
`dllm_bench.backends` (see the README's "Adding a model family").
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from dllm_bench.kinds import baseline, diffusion_gemma, dream, llada, llada2
from dllm_bench.kinds.base import AUTOREGRESSIVE, DIFFUSION, FAMILIES, Family, KindSpec, KindSpecError, Settings

KIND_SPECS: tuple[KindSpec, ...] = (llada.SPEC, diffusion_gemma.SPEC, dream.SPEC, llada2.SPEC, baseline.SPEC)
SPECS: Mapping[str, KindSpec] = MappingProxyType({spec.kind: spec for spec in KIND_SPECS})
MODEL_KINDS: tuple[str, ...] = tuple(SPECS)
CASE_FIXTURES: tuple[str, ...] = tuple(spec.case_fixture for spec in KIND_SPECS)


def spec_of(kind: str | None) -> KindSpec | None:
    """The spec of a kind; None for a kind this version does not know (a row of another version)."""
    return SPECS.get(kind or "")


def family_of(kind: str | None) -> Family | None:
    spec = spec_of(kind)
    return None if spec is None else spec.family


def is_diffusion(kind: str | None) -> bool:
    return family_of(kind) == DIFFUSION


def is_autoregressive(kind: str | None) -> bool:
    return family_of(kind) == AUTOREGRESSIVE


__all__ = [
    "AUTOREGRESSIVE",
    "CASE_FIXTURES",
    "DIFFUSION",
    "FAMILIES",
    "KIND_SPECS",
    "MODEL_KINDS",
    "SPECS",
    "Family",
    "KindSpec",
    "KindSpecError",
    "Settings",
    "family_of",
    "is_autoregressive",
    "is_diffusion",
    "spec_of",
]
