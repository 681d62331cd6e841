"""What a model kind declares about itself, without torch: the spec the registries derive from.

A `KindSpec` says what a kind is to everything outside its backend: its family (a
`diffusion` model or an `autoregressive` reference), its label on the report, the config
section it reads and that section's keys, the row columns its settings fill (each with its
meaning: the README's column text), how its case-id parts read, and the settings type
that turns a row's columns back into settings. The case fixture and the benchmark test
are named after the kind (`<kind>_case`, `test_<kind>`). The sinks (summary, AUP, report)
ask the family and the label, never the kind's name.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self

Family = Literal["diffusion", "autoregressive"]
DIFFUSION: Family = "diffusion"
AUTOREGRESSIVE: Family = "autoregressive"
FAMILIES: tuple[Family, ...] = ("diffusion", "autoregressive")


class Settings(Protocol):
    """The decoding settings of one case (one point of a kind's axes)."""

    def columns(self) -> dict[str, object]:
        """The row columns these settings set (the kind's spec lists them)."""

    def id_parts(self) -> list[str]:
        """The case-id parts after `<model>-p<P>-g<G>-b<B>`."""

    def expected_nfe(self, gen_length: int) -> int:
        """Forward passes one generate call is expected to make (progress, sharding)."""

    def batch_factor(self) -> int:
        """How many times the batch each forward pass runs (2 with classifier-free guidance)."""

    def work_per_call(self, prompt_length: int, gen_length: int, batch_size: int) -> float:
        """An estimate of one call's work in token-forwards (for cost-balanced shards)."""

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> Self:
        """The settings a row was measured with, from its columns (defaults where empty)."""


class KindSpecError(TypeError):
    """A kind spec the registries cannot take; raised when the specs are registered (at import)."""


@dataclass(frozen=True)
class KindSpec:
    """One model kind as the rest of the suite sees it."""

    kind: str
    label: str
    family: Family
    settings_type: type[Settings]
    description: str
    columns: tuple[tuple[str, str], ...] = ()
    section: str | None = None
    section_keys: tuple[str, ...] = ()
    id_parts: str = ""

    @property
    def column_names(self) -> tuple[str, ...]:
        """The row columns the kind's settings fill (`columns` holds each with its meaning)."""
        return tuple(name for name, _ in self.columns)

    @property
    def case_fixture(self) -> str:
        """The fixture the plugin parametrizes with the kind's cases."""
        return f"{self.kind}_case"

    @property
    def test_name(self) -> str:
        """The benchmark test of `benchmarks/test_generation.py` that takes the case fixture."""
        return f"test_{self.kind}"

    @property
    def is_diffusion(self) -> bool:
        return self.family == DIFFUSION

    def strategy(self, columns: Mapping[str, Any]) -> str:
        """A row's decoding settings as its case id writes them (`s64-k32-cdual`); `default`
        when the kind's settings write no id part."""
        return "-".join(self.settings_type.from_columns(columns).id_parts()) or "default"


def check_specs(specs: Sequence[KindSpec], columns: Collection[str]) -> None:
    """Refuse specs the registries cannot derive from: a kind or section named twice, a kind
    that is not a Python name (it names the case fixture and test), an unknown family, or a
    setting column that is not one of `columns` (the row's columns): such a column would not
    be part of a case's identity, and two settings would share one resume and gate key."""
    problems: list[str] = []
    kinds = [spec.kind for spec in specs]
    sections = [spec.section for spec in specs if spec.section]
    for what, names in (("kind", kinds), ("config section", sections)):
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"{what} {name!r} is registered twice")
    for spec in specs:
        if not spec.kind.isidentifier():
            named = f"{spec.case_fixture} and {spec.test_name}"
            problems.append(f"kind {spec.kind!r}: not a Python name (it names {named})")
        if spec.family not in FAMILIES:
            problems.append(f"kind {spec.kind!r}: family {spec.family!r} is not one of {', '.join(FAMILIES)}")
        unknown = [name for name in spec.column_names if name not in columns]
        if unknown:
            problems.append(
                f"kind {spec.kind!r}: setting columns {', '.join(unknown)} are not result columns; add a field "
                "for each to dllm_bench.rows.Row (with its meaning), so that it is part of the case's identity"
            )
    if problems:
        raise KindSpecError("; ".join(problems))
