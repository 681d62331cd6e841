"""The run manifest: a small JSON file that says what a run was and how it ended."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dllm_bench.results import write_text_atomic

MANIFEST = "run_manifest.json"


@dataclass
class Counts:
    planned: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    deselected: int = 0


@dataclass
class Manifest:
    status: str  # running, complete, interrupted, failed
    config_path: str
    config: dict[str, Any]
    command_line: list[str]
    output_dir: str
    started_at: str
    ended_at: str | None = None
    signal: str | None = None
    resumed: bool = False
    counts: Counts = field(default_factory=Counts)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False, default=str) + "\n"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = directory / MANIFEST
    write_text_atomic(path, manifest.to_json())
    return path


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def final_status(*, interrupted: bool, failed: int, internal_error: bool) -> str:
    if interrupted:
        return "interrupted"
    if failed or internal_error:
        return "failed"
    return "complete"
