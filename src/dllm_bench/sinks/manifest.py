"""The run manifest: a small JSON file that says what a run (or a merge) was and how it ended.

One layout for runs and merges. `counts` always adds up:
planned = ok + failed + skipped + not_run.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dllm_bench.sinks.atomic import write_text_atomic

MANIFEST = "run_manifest.json"

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
