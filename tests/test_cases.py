"""Grid points become cases with stable, readable ids that `-k` selects as expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from dllm_bench.cases import expand_cases
from dllm_bench.config import parse_config
from tests.helpers import tiny_config, write_config


def _ids(raw: dict[str, object]) -> list[str]:
    return [c.case_id for c in expand_cases(parse_config(raw, Path("grid.yaml")))]


def test_ids_multiply_out_in_config_order() -> None:
    raw = tiny_config(grid={"prompt_length": [8], "gen_length": [8], "batch_size": [1, 2]})
    assert _ids(raw) == [
        "tiny-llada-p8-g8-b1-s4-k8",
        "tiny-llada-p8-g8-b1-s8-k8",
        "tiny-llada-p8-g8-b2-s4-k8",
        "tiny-llada-p8-g8-b2-s8-k8",
        "tiny-llama-p8-g8-b1",
        "tiny-llama-p8-g8-b2",
    ]


def test_non_default_llada_settings_appear_in_the_id() -> None:
    raw = tiny_config(
        llada={"steps": [8], "block_length": [8], "remasking": ["random"], "temperature": [0.5], "cfg_scale": [2.0]}
    )
    assert _ids(raw)[0] == "tiny-llada-p8-g8-b2-s8-k8-random-t0.5-cfg2"


def test_every_id_is_unique_over_a_full_grid() -> None:
    raw = tiny_config(
        grid={"prompt_length": [8, 16], "gen_length": [8, 16], "batch_size": [1, 2]},
        llada={
            "steps": [8, 16],
            "block_length": [4, 8],
            "remasking": ["low_confidence", "random"],
            "temperature": [0.0, 1.0],
            "cfg_scale": [0.0, 1.5],
        },
    )
    ids = _ids(raw)
    assert len(ids) == len(set(ids)) == 8 * 32 + 8


def test_same_config_same_ids() -> None:
    assert _ids(tiny_config()) == _ids(tiny_config())


def test_collect_only_shows_ids_and_writes_nothing(bench_project: pytest.Pytester) -> None:
    path = write_config(bench_project.path, tiny_config())
    result = bench_project.runpytest("--config", str(path), "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "test_bench.py::test_llada[[]tiny-llada-p8-g8-b2-s4-k8[]]",
            "test_bench.py::test_llada[[]tiny-llada-p8-g8-b2-s8-k8[]]",
            "test_bench.py::test_baseline[[]tiny-llama-p8-g8-b2[]]",
        ]
    )
    assert not (bench_project.path / "results").exists()


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (
            "llada",
            [
                "test_llada[tiny-llada-p8-g8-b1-s4-k8]",
                "test_llada[tiny-llada-p8-g8-b1-s8-k8]",
                "test_llada[tiny-llada-p8-g8-b2-s4-k8]",
                "test_llada[tiny-llada-p8-g8-b2-s8-k8]",
            ],
        ),
        ("b2 and s8", ["test_llada[tiny-llada-p8-g8-b2-s8-k8]"]),
        ("baseline", ["test_baseline[tiny-llama-p8-g8-b1]", "test_baseline[tiny-llama-p8-g8-b2]"]),
    ],
)
def test_keyword_selection(bench_project: pytest.Pytester, expression: str, expected: list[str]) -> None:
    raw = tiny_config(grid={"prompt_length": [8], "gen_length": [8], "batch_size": [1, 2]})
    path = write_config(bench_project.path, raw)
    result = bench_project.runpytest("--config", str(path), "--collect-only", "-q", "-k", expression)
    selected = [line.split("::", 1)[1] for line in result.stdout.lines if line.startswith("test_bench.py::")]
    assert selected == expected


def test_accelerated_decoding_axes_in_ids_and_steps_collapse_under_a_commit_rule() -> None:
    raw = tiny_config(
        llada={"steps": [4, 8], "block_length": [8], "cache": ["none", "dual"], "threshold": [None, 0.9]},
    )
    ids = _ids(raw)
    assert ids[:6] == [
        "tiny-llada-p8-g8-b2-s4-k8",
        "tiny-llada-p8-g8-b2-s4-k8-cdual",
        "tiny-llada-p8-g8-b2-s8-k8",
        "tiny-llada-p8-g8-b2-s8-k8-cdual",
        "tiny-llada-p8-g8-b2-k8-th0.9",
        "tiny-llada-p8-g8-b2-k8-cdual-th0.9",
    ]
    assert len(ids) == len(set(ids)) == 7, "the threshold cases do not repeat per steps value"
    factor = _ids(tiny_config(llada={"block_length": [8], "factor": 1.0, "cache": "prefix"}))
    assert factor[0] == "tiny-llada-p8-g8-b2-k8-cprefix-f1"


def test_task_in_ids_only_when_not_random() -> None:
    raw = tiny_config(grid={"prompt_length": [11], "gen_length": [8], "batch_size": [1], "task": ["random", "copy"]})
    ids = _ids(raw)
    assert "tiny-llada-p11-g8-b1-s4-k8" in ids
    assert "tiny-llada-copy-p11-g8-b1-s4-k8" in ids
    assert "tiny-llama-copy-p11-g8-b1" in ids
