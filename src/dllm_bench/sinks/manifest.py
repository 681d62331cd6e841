"""The run manifest: a small JSON file that says what a run (or a merge) was and how it ended.

One layout for runs and merges. `counts` always adds up:
planned = ok + failed + skipped + not_run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dllm_bench.sinks.atomic import storage_error, write_all, write_text_atomic

MANIFEST = "run_manifest.json"
# Space held on the output disk from the running manifest to the final one (see reserve_space).
RESERVE = ".dllm-bench-reserve"
RESERVE_MIN_BYTES = 8192
RESERVE_BLOCK = 4096


class ManifestError(RuntimeError):
    """A manifest that cannot be read; the message names the file."""


@dataclass
class Counts:
    """Cases of a run, each counted once by its outcome."""

    planned: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    not_run: int = 0
    already_done: int = 0

    def finished(self) -> int:
        return self.ok + self.failed + self.skipped

    def settle(self) -> None:
        """Cases planned but not finished (an interrupted run) are `not_run`."""
        self.not_run = max(0, self.planned - self.finished())


@dataclass
class GateRecord:
    """The regression gate's outcome, as written to the manifest."""

    rules: list[str]
    reference: str
    passed: bool
    compared: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    incomparable: list[str] = field(default_factory=list)
    error: str = ""


@dataclass
class Manifest:
    status: str
    config_path: str
    config: dict[str, Any]
    command_line: list[str]
    output_dir: str
    started_at: str
    ended_at: str | None = None
    signal: str | None = None
    reason: str = ""
    resumed: bool = False
    counts: Counts = field(default_factory=Counts)
    gate: GateRecord | None = None
    shards: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=str) + "\n"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write atomically; raises StorageError."""
    path = directory / MANIFEST
    write_text_atomic(path, manifest.to_json())
    return path


# What one case/metric pair can add to the gate record (a failure entry, indented JSON).
GATE_PAIR_BYTES = 320


def reserve_size(manifest: Manifest, gate_pairs: int = 0) -> int:
    """Room for the final manifest's temporary file: twice the running manifest (the end
    time, the reason) plus GATE_PAIR_BYTES per case/metric pair the gate may report, at least
    RESERVE_MIN_BYTES, in whole 4 KiB blocks."""
    wanted = 2 * len(manifest.to_json().encode("utf-8")) + gate_pairs * GATE_PAIR_BYTES
    wanted = max(RESERVE_MIN_BYTES, wanted)
    return -(-wanted // RESERVE_BLOCK) * RESERVE_BLOCK


def reserve_space(directory: Path, size: int) -> None:
    """Hold `size` bytes of the output disk in the file RESERVE until `release_space`, so
    that the final manifest finds room even when the rows filled the disk. The bytes are
    random, so a compressing file system stores them in full. An earlier run's reserve (a
    killed run) is reused. Raises StorageError."""
    path = directory / RESERVE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            write_all(fd, os.urandom(size))
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise storage_error(path, exc) from exc


def release_space(directory: Path) -> None:
    """Give the reserve's space back to the disk (just before the final manifest is written)."""
    # A reserve that cannot be removed keeps its space; the manifest write then says what failed.
    with contextlib.suppress(OSError):
        (directory / RESERVE).unlink(missing_ok=True)


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a run directory as a mapping; None when there is none. A file that is
    not a JSON object raises ManifestError."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} is not a readable JSON manifest ({exc})") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path} is not a JSON object (found {type(data).__name__})")
    return data


def final_status(*, interrupted: bool, counts: Counts, internal_error: bool, reason: str) -> str:
    """`failed` when results could not be written or the gate failed (`reason`) or pytest
    failed internally; else `interrupted` when a signal stopped the run or planned cases did
    not run; else `failed` when a case failed; else `complete`."""
    if reason or internal_error:
        return "failed"
    if interrupted or counts.not_run:
        return "interrupted"
    if counts.failed:
        return "failed"
    return "complete"
