"""One spec per model kind: the registries derive from the specs, a spec the registries cannot
take is refused at registration, and the sinks ask a row's family, never its kind's name
(a second diffusion kind, registered here, is drawn and paired as a diffusion model)."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from dllm_bench import kinds, plugin, spec
from dllm_bench.backends import BACKENDS
from dllm_bench.cases import expand_cases
from dllm_bench.config import parse_config
from dllm_bench.kinds import CASE_FIXTURES, DIFFUSION, KIND_SPECS, MODEL_KINDS, KindSpec, KindSpecError
from dllm_bench.rows import CASE_COLUMNS, IDENTITY_COLUMNS, Row, identity_columns
from dllm_bench.sampling.schedule import LladaSettings
from dllm_bench.sinks import quality, summary
from dllm_bench.sinks.report import data
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parent.parent
OTHER = "other_dllm"


@dataclass(frozen=True)
class ExtraSettings(LladaSettings):
    """LLaDA settings with one more axis, as a new decoding knob would add."""

    alpha: float = 0.0

    def columns(self) -> dict[str, object]:
        return {**super().columns(), "alpha": self.alpha}


def _spec(**changes: Any) -> KindSpec:
    base = KindSpec(
        kind=OTHER,
        label="Other",
        family=DIFFUSION,
        settings_type=LladaSettings,
        description="a second diffusion family",
        columns=(("steps", "its steps"), ("block_length", "its block length")),
        section=OTHER,
        section_keys=("steps", "block_length"),
    )
    return dataclasses.replace(base, **changes)


# --- registration ----------------------------------------------------------------------------


def test_the_registries_are_derived_from_the_specs() -> None:
    assert MODEL_KINDS == tuple(s.kind for s in KIND_SPECS) == spec.MODEL_KINDS == tuple(BACKENDS)
    assert CASE_FIXTURES == plugin.CASE_FIXTURES == tuple(f"{s.kind}_case" for s in KIND_SPECS)
    for item in KIND_SPECS:
        assert BACKENDS[item.kind].spec is item
        assert set(item.column_names) <= set(IDENTITY_COLUMNS)
    assert set(IDENTITY_COLUMNS) == {*CASE_COLUMNS, *(c for s in KIND_SPECS for c in s.column_names)}


def test_a_kind_whose_columns_are_not_result_columns_is_refused() -> None:
    """A setting column without a Row field would not be part of the case identity: refused."""
    bad = _spec(columns=(("steps", "its steps"), ("alpha", "a new knob")))
    with pytest.raises(KindSpecError, match=r"kind 'other_dllm': setting columns alpha are not result columns"):
        identity_columns((*KIND_SPECS, bad))
    assert "steps" in identity_columns((*KIND_SPECS, _spec()))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "llada", "section": "x"}, "kind 'llada' is registered twice"),
        ({"section": "llada"}, "config section 'llada' is registered twice"),
        ({"kind": "other-dllm"}, "not a Python name"),
        ({"family": "masked"}, "family 'masked' is not one of diffusion, autoregressive"),
    ],
)
def test_specs_the_registries_cannot_take_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(KindSpecError, match=message):
        identity_columns((*KIND_SPECS, _spec(**changes)))


def test_settings_with_an_undeclared_column_are_refused_not_dropped() -> None:
    """Two settings that differ only in a column the identity does not hold would share one
    resume and gate key: the case refuses them instead of dropping the column."""
    case = expand_cases(parse_config(tiny_config(), Path("grid.yaml")))[0]
    assert isinstance(case.settings, LladaSettings)
    fields = {f.name: getattr(case.settings, f.name) for f in dataclasses.fields(LladaSettings)}
    one = dataclasses.replace(case, settings=ExtraSettings(**fields, alpha=0.5))
    two = dataclasses.replace(case, settings=ExtraSettings(**fields, alpha=0.7))
    for item in (one, two):
        with pytest.raises(ValueError, match="its settings set alpha, which its spec's columns do not list"):
            item.key()


def test_each_kind_has_its_benchmark_test() -> None:
    """benchmarks/test_generation.py has `test_<kind>(<kind>_case, bench)` for every spec
    (the tests' copy of the file is read from it)."""
    tree = ast.parse((ROOT / "benchmarks" / "test_generation.py").read_text(encoding="utf-8"))
    tests = {node.name: [a.arg for a in node.args.args] for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert tests == {s.test_name: [s.case_fixture, "bench"] for s in KIND_SPECS}


def test_the_readme_kind_table_lists_every_spec() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for item in KIND_SPECS:
        section = f"`{item.section}`" if item.section else "none"
        cells = [f"`{item.kind}`", item.family, item.label, section, f"`{item.test_name}`", item.id_parts or "none"]
        row = f"| {' | '.join(cells)} | {item.description} |"
        assert row in readme


# --- the sinks ask the family ------------------------------------------------------------------


@pytest.fixture
def other_kind(monkeypatch: pytest.MonkeyPatch) -> KindSpec:
    """A second diffusion kind, registered for the test."""
    other = _spec()
    registry: Mapping[str, KindSpec] = MappingProxyType({**kinds.SPECS, OTHER: other})
    monkeypatch.setattr(kinds, "SPECS", registry)
    return other


def _row(kind: str, model: str, tokens_per_s: float, **values: Any) -> Row:
    settings = {"steps": 8, "block_length": 32} if kind != "baseline" else {}
    row = Row(case_id="").with_values(
        {
            "model": model,
            "kind": kind,
            "model_id": model[:12],
            "prompt_length": 32,
            "gen_length": 32,
            "batch_size": 1,
            "task": "copy",
            "status": "ok",
            "tokens_per_s": tokens_per_s,
            "latency_mean_s": 32 / tokens_per_s,
            "nfe": 8.0,
            "tokens_per_forward": 4.0,
            "accuracy": 0.5,
            **settings,
            **values,
        }
    )
    parts = "-s8-k32" if settings else ""
    return dataclasses.replace(row, case_id=f"{model}-copy-p32-g32-b1{parts}")


def test_a_second_diffusion_kind_is_not_drawn_as_ar(other_kind: KindSpec) -> None:
    rows = [_row(OTHER, "tiny-other", 200.0), _row("baseline", "tiny-llama", 100.0)]
    assert data.strategy_label(rows[0]) == "s8-k32"
    (panel,) = data.trade_offs(rows)
    assert [p.case_id for p in panel.diffusion] == [rows[0].case_id]
    assert [(p.case_id, p.label) for p in panel.references] == [(rows[1].case_id, "AR")]
    (pair,) = data.speedups(rows)
    assert (pair.diffusion_case, pair.reference_case, pair.ratio) == (rows[0].case_id, rows[1].case_id, 2.0)
    spreads = data.tokens_per_forward_by_strategy(rows)
    assert [s.label for s in spreads] == ["s8-k32", "AR"]


def test_two_diffusion_kinds_are_labelled_by_model(other_kind: KindSpec) -> None:
    rows = [
        _row(OTHER, "tiny-other", 200.0),
        _row("llada", "tiny-llada", 150.0),
        _row("baseline", "tiny-llama", 100.0),
    ]
    (panel,) = data.trade_offs(rows)
    assert sorted(p.label for p in panel.diffusion) == ["tiny-llada s8-k32", "tiny-other s8-k32"]
    assert [p.label for p in panel.references] == ["AR"]


def test_summary_and_aup_take_every_diffusion_kind(other_kind: KindSpec) -> None:
    rows = [_row(OTHER, "tiny-other", 200.0), _row("baseline", "tiny-llama", 100.0)]
    lines = summary.relative_speed_lines(rows)
    assert lines[1:] == [f"  {rows[0].case_id} vs {rows[1].case_id}: 2.00x, accuracy +0.0 pp"]
    assert "tokens_per_forward" in summary.summary_lines(rows)[0]
    scored = quality.with_aup(rows)
    assert scored[0].aup is not None and scored[1].aup is None
