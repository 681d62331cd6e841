"""Resuming a run: what a run directory already holds, and the command that resumes it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from dllm_bench.rows import CaseKey, Row
from dllm_bench.sinks.csvfiles import FINAL_CSV, PARTIAL_CSV, latest_per_case, read_results


def previous_rows(directory: Path) -> list[Row]:
    """Every row a run directory holds: its final file and its partial file (which may
    have been removed or damaged; the final file still counts). Raises ResultsFileError."""
    return [*read_results(directory / FINAL_CSV), *read_results(directory / PARTIAL_CSV)]


def completed_keys(rows: Iterable[Row]) -> set[CaseKey]:
    """Cases whose latest row is `ok`."""
    return {row.key() for row in latest_per_case(rows) if row.ok}


def resume_command(args: Sequence[str], output_dir: Path) -> list[str]:
    """The pytest command line that resumes a run: the same arguments, with
    `--resume --output-dir DIR` instead of any earlier --resume / --output-dir."""
    kept: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        if arg == "--output-dir":
            skip_next = True
            continue
        if arg.startswith("--output-dir=") or arg == "--resume":
            continue
        kept.append(arg)
    return ["pytest", *kept, "--resume", "--output-dir", str(output_dir)]
