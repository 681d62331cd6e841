"""The recorder of a run: each test report becomes a row on disk, the case is counted once
by its outcome, and the counts are the manifest's.

It runs in the process that writes rows (serial pytest or the xdist controller). A row is
appended durably before its case is counted, so the manifest's counts always match the
rows on disk; a row that cannot be written (a full disk) is not counted, stops the run
after the running case, and is the run's storage error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dllm_bench.progress import Progress
from dllm_bench.rows import Row
from dllm_bench.sinks.atomic import StorageError
from dllm_bench.sinks.csvfiles import PARTIAL_CSV, append_row
from dllm_bench.sinks.manifest import Counts, Manifest, release_space, reserve_size, reserve_space, write_manifest

LOG = logging.getLogger("dllm_bench")

ROW_PROPERTY = "dllm_bench_row"


@dataclass
class Recorder:
    """Rows, counts and the running manifest of one run."""

    output_dir: Path
    is_case: Callable[[str], bool]
    request_stop: Callable[[str], str | None]
    counts: Counts = field(default_factory=Counts)
    progress: Progress = field(init=False)
    manifest: Manifest | None = None
    storage_error: str = ""
    rows_written: int = 0
    unsaved: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.progress = Progress("off", self.counts)

    def start_manifest(self, manifest: Manifest, gate_pairs: int) -> None:
        """Write the running manifest, with the reserve that keeps room for the final one
        (the reserve first: a run refused here leaves no manifest saying 'running').
        Raises StorageError."""
        try:
            reserve_space(self.output_dir, reserve_size(manifest, gate_pairs))
            write_manifest(self.output_dir, manifest)
        except StorageError:
            release_space(self.output_dir)
            raise
        self.manifest = manifest  # from now on the session finishes it

    def record(self, report: pytest.TestReport) -> None:
        """Append the row a case attached to its report, and count the case once when its
        outcome is known."""
        row = row_of(report)
        if row is not None and report.when in ("call", "setup") and not self.record_row(row):
            self.unsaved.add(report.nodeid)
        if not self.is_case(report.nodeid):
            return
        if report.when == "call" or (report.when == "setup" and not report.passed):
            if report.nodeid in self.unsaved:
                return  # its row is not on disk: not counted, so it is not run (resume runs it)
            self.case_finished(report.outcome)
            if report.skipped:
                LOG.info("case %s: skipped: %s", report.nodeid, _skip_reason(report))

    def record_row(self, row: Row) -> bool:
        """Append a finished case's row durably; a storage failure stops the run cleanly.
        Returns whether the row was saved."""
        if self.storage_error:
            LOG.error("case %s: its row was not written (%s); resume to run it again", row.case_id, self.storage_error)
            return False
        try:
            append_row(self.output_dir / PARTIAL_CSV, row)
            self.rows_written += 1
            return True
        except StorageError as exc:
            self.storage_error = str(exc)
            LOG.error(
                "%s; the row of case %s is not saved. Stopping after this case: free space and resume", exc, row.case_id
            )
            error = self.request_stop("storage")
            if error:
                LOG.error("%s", error)
            return False

    def case_finished(self, outcome: str) -> None:
        """Count a case once by its outcome (passed, failed, skipped)."""
        if outcome == "passed":
            self.counts.ok += 1
        elif outcome == "failed":
            self.counts.failed += 1
        else:
            self.counts.skipped += 1
        self.progress.case_finished()


def row_of(report: pytest.TestReport) -> Row | None:
    """The row a case attached to its report (plain values survive the trip from a worker)."""
    for name, value in report.user_properties:
        if name == ROW_PROPERTY and isinstance(value, dict):
            return Row.from_record(value)
    return None


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)
