"""The grid file: valid files parse, every kind of bad file is refused before any model
loads, with the file, the key and what was expected, all problems at once, and nothing
is written."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dllm_bench.config import ConfigError, check_runnable, load_config, parse_config
from dllm_bench.sampling.schedule import LladaSettings
from tests.helpers import tiny_config, write_config


def test_valid_config_parses_with_defaults(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, tiny_config()))
    assert [m.name for m in config.models] == ["tiny-llada", "tiny-llama"]
    llada = config.settings["llada"]
    assert [s.steps for s in llada if isinstance(s, LladaSettings)] == [4, 8]
    assert {s.remasking for s in llada if isinstance(s, LladaSettings)} == {"low_confidence"}
    assert {s.temperature for s in llada if isinstance(s, LladaSettings)} == {0.0}
    assert config.models[0].dtype == "auto"
    assert config.measured_rounds == 2
    assert config.threads is None


def test_scalars_are_one_value_axes(tmp_path: Path) -> None:
    raw = tiny_config(grid={"prompt_length": 16, "gen_length": 8, "batch_size": 1})
    config = parse_config(raw, tmp_path / "x.yaml")
    assert config.prompt_length == (16,)
    assert config.batch_size == (1,)


def _broken(mutate: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    raw = copy.deepcopy(tiny_config())
    mutate(raw)
    return raw


def _arch(index: int, **values: object) -> Callable[[dict[str, Any]], object]:
    return lambda c: c["models"][index]["arch"].update(values)


# (description, how to break the config, the key the message must name, words it must say)
BAD_CONFIGS: list[tuple[str, Callable[[dict[str, Any]], object], str, str]] = [
    ("unknown top-level key", lambda c: c.update(grids={}), "grids", "unknown key"),
    ("unknown grid key", lambda c: c["grid"].update(prompt_len=[8]), "grid.prompt_len", "unknown key"),
    ("unknown model key", lambda c: c["models"][0].update(path="x"), "models[0].path", "unknown key"),
    ("unknown arch key", _arch(0, hidden=3), "models[0].arch.hidden", "unknown key"),
    ("wrong type", lambda c: c["grid"].update(batch_size=["two"]), "grid.batch_size", "expected an integer"),
    ("float for an integer", lambda c: c["grid"].update(batch_size=[2.0]), "grid.batch_size", "write 2, not 2.0"),
    ("wrong type of float", lambda c: c["llada"].update(temperature="hot"), "llada.temperature", "expected a number"),
    (
        "bad kind",
        lambda c: c["models"][0].update(kind="diffuse"),
        "models[0].kind",
        "llada, diffusion_gemma, dream, llada2, baseline",
    ),
    ("non-positive size", lambda c: c["grid"].update(gen_length=[0]), "grid.gen_length", "positive integer"),
    ("negative batch", lambda c: c["grid"].update(batch_size=[-2]), "grid.batch_size", "positive integer"),
    ("huge batch", lambda c: c["grid"].update(batch_size=[10**9]), "grid.batch_size", "<= 1048576"),
    ("huge gen length", lambda c: c["grid"].update(gen_length=[10**7]), "grid.gen_length", "<= 1048576"),
    ("huge prompt", lambda c: c["grid"].update(prompt_length=[10**11]), "grid.prompt_length", "<= 1048576"),
    ("huge steps", lambda c: c["llada"].update(steps=[10**12]), "llada.steps", "<= 1048576"),
    ("huge rounds", lambda c: c.update(measured_rounds=10**9), "measured_rounds", "<= 10000"),
    ("nan temperature", lambda c: c["llada"].update(temperature=float("nan")), "llada.temperature", "finite"),
    ("inf cfg", lambda c: c["llada"].update(cfg_scale=float("inf")), "llada.cfg_scale", "finite"),
    ("seed beyond torch", lambda c: c.update(seed=2**64), "seed", "<= 9223372036854775807"),
    ("model seed negative", lambda c: c["models"][0].update(seed=-1), "models[0].seed", ">= 0"),
    ("block does not divide gen", lambda c: c["llada"].update(block_length=[3]), "llada.block_length", "multiple of"),
    (
        "steps not a multiple of blocks",
        lambda c: c["llada"].update(steps=[3], block_length=[4]),
        "llada.steps",
        "number of blocks",
    ),
    ("missing models", lambda c: c.pop("models"), "models", "missing"),
    ("missing arch for random-init", lambda c: c["models"][1].pop("arch"), "models[1].arch", "required"),
    ("bad remasking", lambda c: c["llada"].update(remasking=["lowest"]), "llada.remasking", "low_confidence, random"),
    ("bad device", lambda c: c["models"][0].update(device="gpu"), "models[0].device", "cuda:N"),
    ("duplicate model names", lambda c: c["models"][1].update(name="tiny-llada"), "models.name", "unique"),
    ("zero measured rounds", lambda c: c.update(measured_rounds=0), "measured_rounds", "positive integer"),
    ("arch value of the wrong type", _arch(0, d_model="abc"), "models[0].arch.d_model", "expected int"),
    ("heads do not divide d_model", _arch(0, n_heads=3), "models[0].arch", "multiple of n_heads"),
    ("kv heads do not divide heads", _arch(0, n_kv_heads=3, n_heads=4), "models[0].arch", "n_kv_heads"),
    ("token id beyond the vocabulary", _arch(0, mask_token_id=999), "models[0].arch.mask_token_id", "below"),
    ("llama heads do not divide", _arch(1, num_attention_heads=3), "models[1].arch.hidden_size", "multiple"),
    ("llama dtype inside arch", _arch(1, dtype="int8"), "models[1].arch.dtype", "models[].dtype"),
    ("negative layer count", _arch(1, num_hidden_layers=-1), "models[1].arch.num_hidden_layers", "positive"),
    (
        "longer than the model",
        lambda c: c["grid"].update(prompt_length=[200], gen_length=[64]),
        "grid",
        "maximum sequence length",
    ),
    ("not a hub id or a path", lambda c: c["models"][0].update(source="gpt"), "models[0].source", "hub id"),
    ("revision for a local path", lambda c: c["models"][0].update(revision="v1"), "models[0].revision", "no revision"),
    ("threads zero", lambda c: c.update(threads=0), "threads", "positive integer"),
    ("threshold and factor", lambda c: c["llada"].update(threshold=0.9, factor=1.0), "llada.threshold", "exclude"),
    ("threshold above 1", lambda c: c["llada"].update(threshold=1.5), "llada.threshold", "(0, 1]"),
    ("threshold zero", lambda c: c["llada"].update(threshold=0), "llada.threshold", "(0, 1]"),
    ("factor zero", lambda c: c["llada"].update(factor=0), "llada.factor", "> 0"),
    ("unknown cache", lambda c: c["llada"].update(cache="full"), "llada.cache", "none, prefix, dual"),
    (
        "remote code with a cache",
        lambda c: (c["llada"].update(cache="dual"), c["models"][0].update(trust_remote_code=True)),
        "models[0].trust_remote_code",
        "has no KV cache",
    ),
    ("unknown task", lambda c: c["grid"].update(task="sort"), "grid.task", "random, copy, permute, jsonl"),
    ("task option unknown", lambda c: c.update(tasks={"copy": {"length": 3}}), "tasks.copy.length", "unknown key"),
    (
        "task prompt too short",
        lambda c: c["grid"].update(task="copy", prompt_length=[8]),
        "grid.prompt_length",
        "at least 11 for task copy",
    ),
    ("jsonl without a path", lambda c: c["grid"].update(task="jsonl"), "tasks.jsonl.path", "a JSONL file"),
    (
        "jsonl regex that does not compile",
        lambda c: (
            c["grid"].update(task="jsonl"),
            c.update(tasks={"jsonl": {"path": "x.jsonl", "extractor": "regex:("}}),
        ),
        "tasks.jsonl.extractor",
        "the pattern does not compile",
    ),
    (
        "jsonl unknown extractor",
        lambda c: (
            c["grid"].update(task="jsonl"),
            c.update(tasks={"jsonl": {"path": "x.jsonl", "extractor": "first"}}),
        ),
        "tasks.jsonl.extractor",
        "last_number, exact or regex:PATTERN",
    ),
    ("unknown shipped model", lambda c: c["models"][0].update(source="trained:gpt5"), "models[0].source", "trained:"),
]


@pytest.mark.parametrize(("what", "mutate", "key", "words"), BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_names_the_key(
    tmp_path: Path, what: str, mutate: Callable[[dict[str, Any]], object], key: str, words: str
) -> None:
    path = tmp_path / "grid.yaml"
    with pytest.raises(ConfigError) as info:
        parse_config(_broken(mutate), path)
    message = str(info.value)
    assert str(path) in message, what
    assert f"key '{key}'" in message, message
    assert words in message, message


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    raw = tiny_config(measured_rounds=0, seed=-3, grids={})
    raw["grid"]["batch_size"] = [0]
    raw["models"][0]["device"] = "gpu"
    with pytest.raises(ConfigError) as info:
        parse_config(raw, tmp_path / "grid.yaml")
    message = str(info.value)
    assert "5 problems" in message
    for key in ("grids", "grid.batch_size", "models[0].device", "measured_rounds", "seed"):
        assert f"key '{key}'" in message


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 4, 9])
def test_bad_config_is_a_usage_error_that_writes_nothing(bench_project: pytest.Pytester, index: int) -> None:
    what, mutate, key, words = BAD_CONFIGS[index]
    path = write_config(bench_project.path, _broken(mutate))
    result = bench_project.runpytest_inprocess("--config", str(path))
    assert result.ret == pytest.ExitCode.USAGE_ERROR, what
    err = result.stderr.str()
    assert f"{path}: key '{key}'" in err
    assert words in err
    assert "Traceback" not in err + result.stdout.str()
    assert not (bench_project.path / "results").exists()


@pytest.mark.slow
def test_missing_config_file(bench_project: pytest.Pytester) -> None:
    result = bench_project.runpytest_inprocess("--config", "nope.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "nope.yaml: config file not found" in result.stderr.str()
    assert not (bench_project.path / "results").exists()


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("models: [\n  - name: x\n grid: {", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_duplicate_keys_are_refused_not_last_wins(tmp_path: Path) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(write_config(tmp_path, tiny_config()).read_text() + "measured_rounds: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="found the key 'measured_rounds' twice"):
        load_config(path)


def test_a_config_that_is_not_utf8_is_refused_with_the_file_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("# r\xe9sum\xe9\n".encode("latin-1") + write_config(tmp_path, tiny_config()).read_bytes())
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text"):
        load_config(path)


def test_unit_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"grid.yaml: key 'grid.batch_size': expected a positive integer, got 0"):
        parse_config(tiny_config(grid={"prompt_length": 8, "gen_length": 8, "batch_size": 0}), tmp_path / "grid.yaml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_before_anything_runs(tmp_path: Path) -> None:
    raw = tiny_config()
    raw["models"][0]["device"] = "cuda"
    config = parse_config(raw, tmp_path / "grid.yaml")
    with pytest.raises(ConfigError, match=r"models\[0\].device': expected a device this machine has"):
        check_runnable(config)


def test_a_missing_local_model_folder_says_so(tmp_path: Path) -> None:
    raw = tiny_config()
    raw["models"][1] = {"name": "local", "kind": "baseline", "source": "./no-such-folder"}
    config = parse_config(raw, tmp_path / "grid.yaml")
    with pytest.raises(ConfigError, match=r"an existing model folder \(.*no-such-folder does not exist\)"):
        check_runnable(config)


def test_relative_sources_are_relative_to_the_config_file(tmp_path: Path) -> None:
    raw = tiny_config()
    raw["models"][1] = {"name": "local", "kind": "baseline", "source": "../models/llama"}
    config = parse_config(raw, tmp_path / "configs" / "grid.yaml")
    assert config.models[1].location() == str((tmp_path / "models" / "llama").resolve())


def test_model_identity_changes_with_every_key_of_the_entry(tmp_path: Path) -> None:
    base = parse_config(tiny_config(), tmp_path / "grid.yaml").models[0]
    changes: list[Callable[[dict[str, Any]], object]] = [
        lambda m: m.update(seed=1),
        lambda m: m.update(dtype="bfloat16"),
        lambda m: m.update(device="auto"),
        lambda m: m["arch"].update(n_layers=2),
        lambda m: m.update(trust_remote_code=True),
    ]
    ids = {base.model_id}
    for change in changes:
        raw = tiny_config()
        raw["models"][0] = copy.deepcopy(raw["models"][0])
        change(raw["models"][0])
        ids.add(parse_config(raw, tmp_path / "grid.yaml").models[0].model_id)
    assert len(ids) == len(changes) + 1


SHIPPED_CONFIGS = sorted((Path(__file__).resolve().parent.parent / "config").glob("*.yaml"))


@pytest.mark.parametrize("shipped", SHIPPED_CONFIGS, ids=[p.name for p in SHIPPED_CONFIGS])
def test_every_shipped_config_is_valid_and_a_gpu_grid_is_refused_without_a_gpu(shipped: Path, tmp_path: Path) -> None:
    """Every grid in config/ parses (a jsonl file it names is written beside its copy); one
    that asks for CUDA is refused on a machine without it, naming the device key."""
    text = shipped.read_text(encoding="utf-8")
    jsonl = (yaml.safe_load(text).get("tasks") or {}).get("jsonl")
    if jsonl:
        (tmp_path / jsonl["path"]).write_text('{"prompt": "1 + 1 =", "answer": "2"}\n', encoding="utf-8")
    (tmp_path / shipped.name).write_text(text, encoding="utf-8")
    config = load_config(tmp_path / shipped.name)
    if any(m.device.startswith("cuda") for m in config.models) and not torch.cuda.is_available():
        with pytest.raises(ConfigError) as error:
            check_runnable(config)
        assert "models[0].device" in str(error.value) and "jsonl" not in str(error.value)
    else:
        check_runnable(config)


def test_a_section_as_a_list_of_sub_grids_runs_their_union_each_point_once(tmp_path: Path) -> None:
    """Each item multiplies out on its own: [steps 4, 8] x [threshold null] and [steps 8] x
    [threshold 0.9] are three points, not the four of one cross product; a point given twice
    runs once."""
    raw = tiny_config(
        llada=[
            {"steps": [4, 8], "block_length": [8]},
            {"steps": [8], "block_length": [8], "threshold": [0.9]},
            {"steps": [8], "block_length": [8]},
        ]
    )
    llada = [s for s in parse_config(raw, tmp_path / "x.yaml").settings["llada"] if isinstance(s, LladaSettings)]
    assert [s.threshold for s in llada] == [None, None, 0.9]  # the threshold rule has no step count
    assert [s.steps for s in llada[:2]] == [4, 8]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ([{"steps": [4], "block_length": [8]}, {"steps": ["four"]}], "llada[1].steps"),
        ([{"steps": [4], "block_length": [8]}, {"stepz": [4]}], "llada[1].stepz"),
        ([{"steps": [4], "block_length": [8]}, "steps: 4"], "llada[1]"),
        ([], "llada"),
    ],
    ids=["bad value", "unknown key", "not a mapping", "empty"],
)
def test_a_bad_sub_grid_is_named_by_its_index(tmp_path: Path, section: list[object], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(tiny_config(llada=section), tmp_path / "x.yaml")
    assert f"key '{key}'" in str(error.value)
