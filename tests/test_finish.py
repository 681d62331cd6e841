"""The outputs at the end of a run (`dllm_bench.finish`), called in-process on a real
directory: what each sink writes and what it adds for the next one."""

from __future__ import annotations

import json
from pathlib import Path

from dllm_bench.finish import FINISH_SINKS, Finish, ManifestSink
from dllm_bench.sinks.csvfiles import FINAL_CSV, PARTIAL_CSV, append_row, read_results
from dllm_bench.sinks.gate import Gate, GateRule
from dllm_bench.sinks.manifest import MANIFEST, RESERVE, Counts, Manifest, reserve_space, write_manifest
from tests.test_gate import make_row


def _finish(out: Path, *, gate: Gate | None = None, ok: int = 2) -> Finish:
    counts = Counts(planned=2, ok=ok)
    manifest = Manifest("running", "grid.yaml", {}, ["pytest"], str(out), "2026-01-01T00:00:00+00:00", counts=counts)
    write_manifest(out, manifest)
    reserve_space(out, 8192)
    rows = [make_row(4, 100.0), make_row(8, 50.0)]
    for row in rows:
        append_row(out / PARTIAL_CSV, row)
    return Finish(
        output_dir=out,
        grid_keys=[row.key() for row in rows],
        manifest=manifest,
        counts=counts,
        exitstatus=0,
        interrupted_by=None,
        storage_error="",
        rows_written=2,
        gate=gate,
        report=False,
        xdist=False,
        invocation_args=["--config", "grid.yaml"],
    )


def _run_sinks(finish: Finish) -> dict[str, object]:
    for sink in FINISH_SINKS:
        sink.write(finish)
    data: dict[str, object] = json.loads((finish.output_dir / MANIFEST).read_text())
    return data


def test_the_sinks_write_the_final_csv_then_the_final_manifest_and_release_the_reserve(tmp_path: Path) -> None:
    finish = _finish(tmp_path)
    manifest = _run_sinks(finish)
    assert [row.case_id for row in read_results(tmp_path / FINAL_CSV)] == [row.case_id for row in finish.final_rows]
    assert len(finish.final_rows) == 2 and finish.final_written
    assert manifest["status"] == "complete" and manifest["ended_at"]
    assert not (tmp_path / RESERVE).exists()
    assert finish.summary[-1][0].startswith("dllm-bench: 2 ok, 0 failed")


def test_a_failed_gate_is_the_manifests_reason_and_the_closing_line(tmp_path: Path) -> None:
    reference = [make_row(4, 200.0), make_row(8, 50.0)]  # the s4 case fell by half
    gate = Gate([GateRule("tokens_per_s", -10.0)], tmp_path / "ref.csv", reference, allow_missing=False)
    (tmp_path / "out").mkdir()
    manifest = _run_sinks(_finish(tmp_path / "out", gate=gate))
    assert not gate.passed
    assert manifest["status"] == "failed"
    assert manifest["reason"] == "gate failed: 1 case/metric pairs regressed (tokens_per_s)"
    assert gate.closing_line() == (
        f"dllm-bench: GATE FAILED against {tmp_path / 'ref.csv'}: 1 case/metric pairs regressed (tokens_per_s); "
        "exit code 1"
    )


def test_a_manifest_the_disk_cannot_take_is_the_runs_storage_error(tmp_path: Path) -> None:
    finish = _finish(tmp_path)
    finish.output_dir = tmp_path / "gone"  # the directory vanished: the write fails
    ManifestSink().write(finish)
    assert finish.storage_error.startswith(f"cannot write {tmp_path / 'gone' / MANIFEST}")
