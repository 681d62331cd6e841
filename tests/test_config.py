"""The grid file: valid files parse, every kind of bad file is refused before any model
loads, with the file, the key and what was expected, and nothing is written."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from dllm_bench.config import ConfigError, load_config, parse_config
from tests.helpers import tiny_config, write_config


def test_valid_config_parses_with_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, tiny_config()))
    assert [m.name for m in config.models] == ["tiny-llada", "tiny-llama"]
    assert config.llada is not None
    assert config.llada.steps == (4, 8)
    assert config.llada.remasking == ("low_confidence",)
    assert config.llada.temperature == (0.0,)
    assert config.models[0].dtype == "auto"
    assert config.measured_rounds == 2


def test_scalars_are_one_value_axes(tmp_path: Path) -> None:
    raw = tiny_config(grid={"prompt_length": 16, "gen_length": 8, "batch_size": 1})
    config = parse_config(raw, tmp_path / "x.yaml")
    assert config.prompt_length == (16,)
    assert config.batch_size == (1,)


def _broken(mutate: object) -> dict[str, object]:
    raw = copy.deepcopy(tiny_config())
    assert callable(mutate)
    mutate(raw)
    return raw


# (description, how to break the config, the key the message must name, words it must say)
BAD_CONFIGS = [
    ("unknown top-level key", lambda c: c.update(grids={}), "grids", "unknown key"),
    ("unknown grid key", lambda c: c["grid"].update(prompt_len=[8]), "grid.prompt_len", "unknown key"),
    ("unknown model key", lambda c: c["models"][0].update(path="x"), "models[0].path", "unknown key"),
    ("unknown arch key", lambda c: c["models"][0]["arch"].update(hidden=3), "models[0].arch.hidden", "unknown key"),
    ("wrong type", lambda c: c["grid"].update(batch_size=["two"]), "grid.batch_size", "expected an integer"),
    ("wrong type of float", lambda c: c["llada"].update(temperature="hot"), "llada.temperature", "expected a number"),
    ("bad kind", lambda c: c["models"][0].update(kind="diffusion"), "models[0].kind", "llada, baseline"),
    ("non-positive size", lambda c: c["grid"].update(gen_length=[0]), "grid.gen_length", "positive integer"),
    ("negative batch", lambda c: c["grid"].update(batch_size=[-2]), "grid.batch_size", "positive integer"),
    (
        "block does not divide gen",
        lambda c: c["llada"].update(block_length=[3]),
        "llada.block_length",
        "gen_length % block_length != 0",
    ),
    (
        "steps not a multiple of blocks",
        lambda c: c["llada"].update(steps=[3], block_length=[4]),
        "llada.steps",
        "steps % (gen_length / block_length) != 0",
    ),
    ("missing models", lambda c: c.pop("models"), "models", "missing"),
    ("missing arch for random-init", lambda c: c["models"][1].pop("arch"), "models[1].arch", "required"),
    ("bad remasking", lambda c: c["llada"].update(remasking=["lowest"]), "llada.remasking", "low_confidence, random"),
    ("bad device", lambda c: c["models"][0].update(device="gpu"), "models[0].device", "cuda:N"),
    ("duplicate model names", lambda c: c["models"][1].update(name="tiny-llada"), "models.name", "unique"),
    ("zero measured rounds", lambda c: c.update(measured_rounds=0), "measured_rounds", "positive integer"),
]


@pytest.mark.parametrize(("what", "mutate", "key", "words"), BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_is_a_usage_error_that_writes_nothing(
    bench_project: pytest.Pytester, what: str, mutate: object, key: str, words: str
) -> None:
    path = write_config(bench_project.path, _broken(mutate))
    result = bench_project.runpytest("--config", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR, what
    err = result.stderr.str()
    assert f"{path}: key '{key}'" in err
    assert words in err
    assert "Traceback" not in err + result.stdout.str()
    assert not (bench_project.path / "results").exists()


def test_missing_config_file(bench_project: pytest.Pytester) -> None:
    result = bench_project.runpytest("--config", "nope.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "nope.yaml: config file not found" in result.stderr.str()
    assert not (bench_project.path / "results").exists()


def test_invalid_yaml(bench_project: pytest.Pytester) -> None:
    path = bench_project.path / "broken.yaml"
    path.write_text("models: [\n  - name: x\n grid: {", encoding="utf-8")
    result = bench_project.runpytest("--config", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"{path}: invalid YAML" in result.stderr.str()
    assert "Traceback" not in result.stderr.str()
    assert not (bench_project.path / "results").exists()


def test_unit_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"grid.yaml: key 'grid.batch_size': expected a positive integer, got 0"):
        parse_config(tiny_config(grid={"prompt_length": 8, "gen_length": 8, "batch_size": 0}), tmp_path / "grid.yaml")
