"""dllm-bench-merge on shard directories written by the suite's own writers: the latest row
by timestamp wins, every overlap is named, `complete` means every case of the config has an
ok row, and damaged inputs give one clear error line, never a traceback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dllm_bench.cases import expand_cases
from dllm_bench.config import parse_config
from dllm_bench.rows import Row
from dllm_bench.sinks.csvfiles import append_row
from dllm_bench.sinks.manifest import Manifest, write_manifest
from dllm_bench.sinks.merge import main as merge_main
from tests.helpers import FINAL, PARTIAL, manifest, rows, tiny_config

CONFIG = tiny_config()


def _rows_of_config(timestamp: str) -> list[Row]:
    cases = expand_cases(parse_config(CONFIG, Path("grid.yaml")))
    return [
        Row(case_id=c.case_id).with_values({**c.params(), "status": "ok", "timestamp": timestamp, "tokens_per_s": 1.0})
        for c in cases
    ]


def _shard(directory: Path, shard_rows: list[Row], status: str = "complete") -> Path:
    directory.mkdir(parents=True)
    for row in shard_rows:
        append_row(directory / PARTIAL, row)
    write_manifest(
        directory,
        Manifest(
            status=status,
            config_path="grid.yaml",
            config=CONFIG,
            command_line=["pytest"],
            output_dir=str(directory),
            started_at="2026-11-29T00:00:00+00:00",
            environment={"git_commit": "abc"},
        ),
    )
    return directory


def test_merge_of_all_cases_is_complete(tmp_path: Path) -> None:
    every = _rows_of_config("2026-11-29T10:00:00+00:00")
    shards = [_shard(tmp_path / "s0", every[:2]), _shard(tmp_path / "s1", every[2:])]
    assert merge_main([str(tmp_path / "merged"), *map(str, shards)]) == 0
    record = manifest(tmp_path / "merged")
    assert record["status"] == "complete"
    assert record["counts"]["planned"] == record["counts"]["ok"] == 3
    assert len(rows(tmp_path / "merged" / FINAL)) == 3


@pytest.mark.parametrize("given", [1, 2], ids=["one of two shards", "a truncated shard"])
def test_merge_with_cases_missing_is_incomplete(tmp_path: Path, given: int) -> None:
    every = _rows_of_config("2026-11-29T10:00:00+00:00")
    shards = [_shard(tmp_path / "s0", every[:2])]
    if given == 2:
        shards.append(_shard(tmp_path / "s1", []))
    assert merge_main([str(tmp_path / "merged"), *map(str, shards)]) == 0
    record = manifest(tmp_path / "merged")
    assert record["status"] == "incomplete"
    assert record["counts"]["not_run"] == 1
    assert record["counts"]["planned"] == 3


def test_overlapping_shards_keep_the_latest_row_and_say_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = _rows_of_config("2026-11-29T10:00:00+00:00")
    new = [row.with_values({"tokens_per_s": 2.0}) for row in _rows_of_config("2026-11-29T11:00:00+00:00")]
    # The newer rows are in the shard named first: the order on the command line must not matter.
    shards = [_shard(tmp_path / "s-new", new), _shard(tmp_path / "s-old", old)]
    with caplog.at_level(logging.WARNING, logger="dllm_bench.merge"):
        assert merge_main([str(tmp_path / "merged"), *map(str, shards)]) == 0
    assert {row.tokens_per_s for row in rows(tmp_path / "merged" / FINAL)} == {2.0}
    overlaps = [r.getMessage() for r in caplog.records if "is in 2 shards" in r.getMessage()]
    assert len(overlaps) == 3
    assert "2026-11-29T11:00:00+00:00" in overlaps[0]


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda d: (d / "run_manifest.json").write_text("{not json"), "is not a readable JSON manifest"),
        (lambda d: (d / "run_manifest.json").write_text("[1, 2]"), "is not a JSON object"),
        (lambda d: (d / PARTIAL).write_bytes(b"name,value\nx,1\n"), "is not a dllm-bench results file"),
    ],
    ids=["malformed JSON", "a list", "not a results file"],
)
def test_damaged_shards_give_one_clear_error(
    tmp_path: Path, damage: object, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    shard = _shard(tmp_path / "s0", _rows_of_config("2026-11-29T10:00:00+00:00"))
    assert callable(damage)
    damage(shard)
    with caplog.at_level(logging.ERROR, logger="dllm_bench.merge"):
        assert merge_main([str(tmp_path / "merged"), str(shard)]) == 2
    assert any(words in r.getMessage() for r in caplog.records)


def test_environment_null_and_non_utf8_rows_are_handled(tmp_path: Path) -> None:
    shard = _shard(tmp_path / "s0", _rows_of_config("2026-11-29T10:00:00+00:00"))
    data = json.loads((shard / "run_manifest.json").read_text())
    data["environment"] = None
    (shard / "run_manifest.json").write_text(json.dumps(data))
    with (shard / PARTIAL).open("ab") as handle:
        handle.write(b"broken,\xff\xfe\n")
    assert merge_main([str(tmp_path / "merged"), str(shard)]) == 0
    assert len(rows(tmp_path / "merged" / FINAL)) == 3


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_that_cannot_be_a_directory_is_refused(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    shard = _shard(tmp_path / "s0", _rows_of_config("2026-11-29T10:00:00+00:00"))
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    out = blocker if where == "a file" else blocker / "merged"
    with caplog.at_level(logging.ERROR, logger="dllm_bench.merge"):
        assert merge_main([str(out), str(shard)]) == 2
    assert caplog.records


def test_merging_into_a_directory_that_holds_rows_keeps_them(tmp_path: Path) -> None:
    every = _rows_of_config("2026-11-29T10:00:00+00:00")
    merged = tmp_path / "merged"
    assert merge_main([str(merged), str(_shard(tmp_path / "s0", every))]) == 0
    assert merge_main([str(merged), str(_shard(tmp_path / "s1", every[:1]))]) == 0
    assert len(rows(merged / FINAL)) == 3
