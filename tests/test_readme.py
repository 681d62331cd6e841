"""The README is the user's manual: every CSV column, config key, option, manifest field and
module is in it. The lists come from the code (the parser, the row type), so something new
without README text fails here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dllm_bench.config import GRID_KEYS, MODEL_KEYS, TOP_LEVEL_KEYS
from dllm_bench.kinds import KIND_SPECS
from dllm_bench.rows import COLUMN_DOCS
from dllm_bench.sinks.manifest import Counts, GateRecord, Manifest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _suite_flags(pytester: pytest.Pytester) -> list[str]:
    """The flags of the dllm-bench option group, as pytest's parser has them."""
    config = pytester.parseconfig()
    group = next(g for g in config._parser._groups if g.name == "dllm-bench")
    return [option.names()[0] for option in group.options]


@pytest.mark.parametrize(("name", "meaning"), COLUMN_DOCS, ids=[name for name, _ in COLUMN_DOCS])
def test_every_column_is_documented_with_its_meaning(name: str, meaning: str) -> None:
    assert f"| `{name}` | {meaning} |" in README


def _config_keys() -> list[str]:
    sections = [f"{spec.section}.{key}" for spec in KIND_SPECS if spec.section for key in spec.section_keys]
    plain = [k for k in TOP_LEVEL_KEYS if k not in ("grid", *(s.section for s in KIND_SPECS if s.section))]
    return [*(f"grid.{k}" for k in GRID_KEYS), *sections, *plain, *MODEL_KEYS]


@pytest.mark.parametrize("key", _config_keys())
def test_every_config_key_is_documented(key: str) -> None:
    assert f"| `{key}` |" in README


def test_every_option_of_the_parser_is_documented(pytester: pytest.Pytester) -> None:
    flags = _suite_flags(pytester)
    assert "--config" in flags and "--threads" in flags
    missing = [flag for flag in flags if f"| `{flag}" not in README]
    assert missing == []
    for flag in flags:
        ini = "dllm_" + flag.removeprefix("--").replace("-", "_")
        assert f"`{ini}`" in README, f"the ini twin of {flag}"


@pytest.mark.parametrize(
    "field",
    [f.name for cls in (Manifest, Counts, GateRecord) for f in dataclasses.fields(cls)],
)
def test_every_manifest_field_is_documented(field: str) -> None:
    assert f"`{field}`" in README


def test_every_module_is_in_the_code_map() -> None:
    modules = sorted(p.relative_to(ROOT / "src" / "dllm_bench") for p in (ROOT / "src" / "dllm_bench").rglob("*.py"))
    code = [m for m in modules if m.name != "__init__.py" and "llada_hf" not in str(m)]
    undocumented = [str(m) for m in code if f"`{m.as_posix()}`" not in README]
    assert undocumented == []


def test_the_two_setup_commands_are_there() -> None:
    assert "pip install torch==2.13.0 -e . && pytest benchmarks" in README
    command = "pytest tests -n 3 --dist loadfile --no-loadscope-reorder"
    assert f"pip install torch==2.13.0 -e '.[dev]' && {command}\n" in README
    assert f"\n{command} --durations=25\n" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
