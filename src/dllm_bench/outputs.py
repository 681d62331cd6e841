"""Where a run writes: choosing, guarding and preparing the output directory."""

from __future__ import annotations

import datetime as dt
import errno
import os
from pathlib import Path

from dllm_bench.results import FINAL_CSV, PARTIAL_CSV


class OutputDirError(RuntimeError):
    """The output directory cannot be used; the message says what to do."""


def new_run_dir(results_root: Path, config_stem: str, now: dt.datetime) -> Path:
    """`results/<config>-<YYYYmmdd-HHMMSS>`, with a numeric suffix if that name is taken."""
    base = results_root / f"{config_stem}-{now.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def holds_results(directory: Path) -> bool:
    return any((directory / name).exists() for name in (PARTIAL_CSV, FINAL_CSV))


def refuse_existing_results(directory: Path) -> None:
    """An explicitly named directory with results in it is never overwritten."""
    if holds_results(directory):
        raise OutputDirError(
            f"--output-dir {directory} already holds results ({PARTIAL_CSV} or {FINAL_CSV}). "
            "Choose a new --output-dir, or leave it out to get a fresh directory under results/, "
            "or remove that directory to start over."
        )


def prepare_output_dir(directory: Path) -> None:
    """Create the directory and prove it is writable (a probe file is written and fsynced)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise OutputDirError(
            f"output directory {directory} is not writable ({reason}); pass --output-dir with a writable location"
        ) from exc
