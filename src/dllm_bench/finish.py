"""The outputs of a run at its end, each behind one small interface: a `Sink` writes its
output from what the run knows (`Finish`) and may add to it (the final rows, a storage
error, the summary lines).

The session calls `FINISH_SINKS` in order: the final CSV, the gate, the report, the
manifest, the terminal summary. The report comes before the manifest so that a report
the disk cannot take is the manifest's reason, and the manifest is written last into the
space its reserve held (see the README's "A full disk and the manifest").
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from dllm_bench.logs import LOG_NAME
from dllm_bench.resume import resume_command
from dllm_bench.rows import CaseKey, Row
from dllm_bench.rundir import write_final_csv
from dllm_bench.sinks.atomic import StorageError
from dllm_bench.sinks.csvfiles import FINAL_CSV, PARTIAL_CSV
from dllm_bench.sinks.gate import Gate
from dllm_bench.sinks.manifest import MANIFEST, Counts, Manifest, final_status, release_space, utc_now, write_manifest
from dllm_bench.sinks.summary import aup_lines, relative_speed_lines, summary_lines

LOG = logging.getLogger("dllm_bench")

XDIST_NOTE = (
    "dllm-bench: pytest-benchmark is off under xdist (no --benchmark-json, autosave or compare); "
    "every case is still fully measured in raw_metrics.csv"
)


@dataclass
class Finish:
    """What the outputs read at the end of a run, and what they add to it."""

    output_dir: Path
    grid_keys: list[CaseKey]
    manifest: Manifest
    counts: Counts
    exitstatus: int
    interrupted_by: str | None
    storage_error: str
    rows_written: int
    gate: Gate | None
    report: bool
    xdist: bool
    invocation_args: Sequence[str]
    final_rows: list[Row] = field(default_factory=list)
    final_written: bool = False
    summary: list[tuple[str, bool]] = field(default_factory=list)


class Sink(Protocol):
    """One output of a finished run."""

    def write(self, finish: Finish) -> None: ...


class FinalCsvSink:
    """raw_metrics.csv (see `rundir.write_final_csv`)."""

    def write(self, finish: Finish) -> None:
        result = write_final_csv(finish.output_dir, finish.grid_keys, finish.rows_written)
        finish.final_rows = result.grid_rows
        finish.final_written = result.written
        finish.storage_error = finish.storage_error or result.error


class GateSink:
    """The gate, applied to this grid's final rows (not when results could not be written)."""

    def write(self, finish: Finish) -> None:
        if finish.gate is not None and not finish.storage_error:
            finish.gate.apply(finish.final_rows)
            for line in finish.gate.lines():
                (LOG.error if "FAILED" in line else LOG.info)(line)


class ReportSink:
    """report.html and its figures (unless --no-report). Bad data never fails the run; a
    report that cannot be written is a storage error: the run fails."""

    def write(self, finish: Finish) -> None:
        if not finish.report or finish.storage_error:
            return
        settle_manifest(finish)  # the page shows the run's final status
        # Imported here, not at the top: the report draws with matplotlib (about half a second
        # to import), which a run with --no-report should not pay.
        report = importlib.import_module("dllm_bench.sinks.report")
        gate = finish.gate
        try:
            page = report.write_report(
                finish.output_dir,
                finish.final_rows,
                dataclasses.asdict(finish.manifest),
                reference_rows=gate.reference_rows if gate is not None else None,
                reference_name=str(gate.reference_path) if gate is not None else None,
                gate_rules=gate.rules if gate is not None else None,
                gate_allow_missing=gate.allow_missing if gate is not None else False,
                partial=finish.manifest.status == "interrupted" or finish.counts.not_run > 0,
            )
        except StorageError as exc:
            finish.storage_error = str(exc)
            LOG.error("%s; the report was not written", exc)
            return
        LOG.info("report: %s", page)


class ManifestSink:
    """The final manifest, into the space the reserve held until now (nothing is logged
    between the release and the write: the log is on the same disk)."""

    def write(self, finish: Finish) -> None:
        settle_manifest(finish)
        release_space(finish.output_dir)
        try:
            write_manifest(finish.output_dir, finish.manifest)
        except StorageError as exc:
            finish.storage_error = finish.storage_error or str(exc)
            left = "the manifest still says 'running'" if (finish.output_dir / MANIFEST).exists() else "no manifest"
            LOG.error("%s; %s", exc, left)


class SummarySink:
    """The terminal summary's lines, each with whether it is bad news (red)."""

    def write(self, finish: Finish) -> None:
        finish.summary = summary(finish)


FINISH_SINKS: tuple[Sink, ...] = (FinalCsvSink(), GateSink(), ReportSink(), ManifestSink(), SummarySink())


def settle_manifest(finish: Finish) -> None:
    """The manifest's final fields, in memory."""
    manifest = finish.manifest
    finish.counts.settle()
    interrupted = finish.interrupted_by is not None or finish.exitstatus == pytest.ExitCode.INTERRUPTED
    reason = finish.storage_error or (finish.gate.reason() if finish.gate is not None else "")
    manifest.status = final_status(
        interrupted=interrupted,
        counts=finish.counts,
        internal_error=finish.exitstatus == pytest.ExitCode.INTERNAL_ERROR,
        reason=reason,
    )
    manifest.reason = reason
    manifest.signal = finish.interrupted_by
    manifest.ended_at = utc_now()
    if finish.gate is not None and finish.gate.result is not None:
        manifest.gate = finish.gate.record()


def summary(finish: Finish) -> list[tuple[str, bool]]:
    """The result tables, the gate's lines, the counts, and what stopped the run."""
    lines: list[tuple[str, bool]] = []
    rows = finish.final_rows
    if rows:
        tables = [*summary_lines(rows), "", *relative_speed_lines(rows)]
        aup = aup_lines(rows)
        lines += [(line, False) for line in [*tables, *(["", *aup] if aup else [])]]
    gate_lines = finish.gate.lines() if finish.gate is not None else []
    lines += [(line, "FAILED" in line) for line in gate_lines]
    if finish.xdist:
        lines.append((XDIST_NOTE, False))
    out = finish.output_dir
    counts = finish.counts
    lines.append(
        (
            f"dllm-bench: {counts.ok} ok, {counts.failed} failed, {counts.skipped} skipped, "
            f"{counts.not_run} not run, {counts.already_done} already done; "
            f"results in {out / (FINAL_CSV if finish.final_written else PARTIAL_CSV)}, log {out / LOG_NAME}",
            False,
        )
    )
    if finish.storage_error:
        lines.append((f"dllm-bench: stopped because results could not be written: {finish.storage_error}", True))
    if finish.manifest.status in ("interrupted", "failed") and (finish.interrupted_by or finish.storage_error):
        why = f"interrupted by {finish.interrupted_by}" if finish.interrupted_by else "stopped"
        resume = shlex.join(resume_command(finish.invocation_args, out))
        lines.append((f"dllm-bench: {why}; resume with: {resume}", False))
    return lines
