"""The run directory of one run: chosen, locked, the rows it held at the start, the final CSV.

The process that writes rows (serial pytest or the xdist controller) chooses the directory
(--output-dir, the newest run of the config with --resume, or a new `results/<config>-<time>`),
creates and locks it, and checks that it can be written; an xdist worker gets the
controller's path and only reads from it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dllm_bench.outputs import (
    RunDirLock,
    check_output_dir_argument,
    new_run_dir,
    newest_run_dir,
    probe_writable,
    refuse_existing_results,
    refuse_symlinks,
    remove_if_unused,
)
from dllm_bench.resume import previous_rows
from dllm_bench.rows import CaseKey, Row
from dllm_bench.sinks.atomic import StorageError
from dllm_bench.sinks.csvfiles import FINAL_CSV, PARTIAL_CSV, ResultsFileError, latest_per_case, write_rows_atomic
from dllm_bench.sinks.quality import with_aup

LOG = logging.getLogger("dllm_bench")


@dataclass
class RunDirectory:
    """Where the run writes, and the lock that keeps other runs out of it."""

    path: Path
    lock: RunDirLock | None = None
    created: bool = False
    # With --resume, the rows the directory held when the run started (read once; the lock
    # keeps other runs out, so they stay what the directory holds until this run writes).
    _held_at_start: list[Row] | None = field(default=None, repr=False)

    @classmethod
    def choose(
        cls,
        *,
        output_dir: str | None,
        resume: bool,
        results_root: Path,
        config_path: Path,
        config_raw: object,
        collect_only: bool,
        command_line: list[str],
    ) -> RunDirectory:
        """Choose, create and lock the directory (only its name when listing cases); raises
        OutputDirError, ResultsFileError or OSError after releasing what it took."""
        created = False
        if output_dir is not None:
            path = check_output_dir_argument(output_dir)
        elif resume:
            path = newest_run_dir(results_root, config_path, config_raw)
        elif collect_only:
            return cls(results_root / f"{config_path.stem}-(new)")
        else:
            path = new_run_dir(results_root, config_path.stem, dt.datetime.now())
            created = True
        directory = cls(path, created=created)
        if collect_only:
            return directory
        try:
            directory._take(resume, command_line)
        except BaseException:
            directory.release()
            raise
        return directory

    def _take(self, resume: bool, command_line: list[str]) -> None:
        if not self.path.exists():
            self.path.mkdir()
            self.created = True
        self.lock = RunDirLock(self.path)
        self.lock.acquire(command_line)
        refuse_symlinks(self.path)
        if not resume:
            refuse_existing_results(self.path)
        else:
            self._held_at_start = previous_rows(self.path)  # readable, or a clear error now
        probe_writable(self.path)

    def rows_held_at_start(self) -> list[Row]:
        """The rows the directory held at the start (an xdist worker reads them here)."""
        if self._held_at_start is None:
            self._held_at_start = previous_rows(self.path)
        return self._held_at_start

    def release(self) -> None:
        """Unlock; a directory this run created and left without results is removed."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.created and self.path.is_dir():
            remove_if_unused(self.path)


@dataclass
class FinalCsv:
    """What writing raw_metrics.csv gave: this grid's rows, whether the file was written,
    and the storage error when it was not."""

    grid_rows: list[Row]
    written: bool
    error: str = ""


def write_final_csv(directory: Path, grid_keys: Sequence[CaseKey], rows_written: int) -> FinalCsv:
    """raw_metrics.csv: the latest row of every case the directory holds, this grid's cases
    first. Never fewer rows than the directory held."""
    try:
        held = previous_rows(directory)
    except ResultsFileError as exc:
        LOG.error("%s; raw_metrics.csv is left as it was", exc)
        return FinalCsv([], written=False, error=str(exc))
    rows = with_aup(latest_per_case(held, list(grid_keys)))
    grid = set(grid_keys)
    grid_rows = [row for row in rows if row.key() in grid]
    try:
        write_rows_atomic(directory / FINAL_CSV, rows)
    except StorageError as exc:
        LOG.error("%s; the finished rows are in %s", exc, directory / PARTIAL_CSV)
        return FinalCsv(grid_rows, written=False, error=str(exc))
    LOG.info("saved %d rows (%d from this run) to %s", len(rows), rows_written, directory / FINAL_CSV)
    return FinalCsv(grid_rows, written=True)
