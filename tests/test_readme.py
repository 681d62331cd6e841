"""The README is the user's manual: every CSV column, config key and option is in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dllm_bench.config import GRID_KEYS, LLADA_KEYS, MODEL_KEYS, TOP_LEVEL_KEYS
from dllm_bench.manifest import Counts, Manifest
from dllm_bench.results import COLUMNS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(("name", "meaning"), COLUMNS, ids=[name for name, _ in COLUMNS])
def test_every_column_is_documented_with_its_meaning(name: str, meaning: str) -> None:
    assert f"| `{name}` | {meaning} |" in README


@pytest.mark.parametrize(
    "key",
    [*[f"grid.{k}" for k in GRID_KEYS], *[f"llada.{k}" for k in LLADA_KEYS]]
    + [k for k in TOP_LEVEL_KEYS if k not in ("grid", "llada")]
    + list(MODEL_KEYS),
)
def test_every_config_key_is_documented(key: str) -> None:
    assert f"| `{key}` |" in README


@pytest.mark.parametrize(
    "option",
    [
        "--config",
        "--output-dir",
        "--resume",
        "--allow-oom",
        "--gate",
        "--gate-baseline",
        "--shard",
        "--progress",
        "--model-cache-dir",
    ],
)
def test_every_option_is_documented(option: str) -> None:
    assert f"| `{option}" in README


@pytest.mark.parametrize(
    "field", [*Manifest.__dataclass_fields__, *Counts.__dataclass_fields__], ids=lambda name: str(name)
)
def test_every_manifest_field_is_documented(field: str) -> None:
    assert f"`{field}`" in README


def test_the_two_setup_commands_are_there() -> None:
    assert "pip install torch==2.13.0 -e . && pytest benchmarks" in README
    assert "pip install torch==2.13.0 -e '.[dev]' && pytest tests" in README
