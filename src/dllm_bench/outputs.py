"""Where a run writes: choosing, guarding, locking and preparing the run directory.

The run directory is held with an exclusive lock for the whole run, so two runs never
write into the same directory (the second is refused and told who holds it). The checks
that follow ("already holds results", readable result files) happen under that lock.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from dllm_bench.sinks.atomic import fsync_dir, write_all
from dllm_bench.sinks.csvfiles import RESULT_FILES
from dllm_bench.sinks.manifest import MANIFEST, ManifestError, read_manifest

LOG = logging.getLogger("dllm_bench.outputs")

LOCK_FILE = ".dllm-bench.lock"
OWNER_FILE = ".dllm-bench-owner.json"


class OutputDirError(RuntimeError):
    """The output directory cannot be used; the message says what to do."""


def check_output_dir_argument(given: str) -> Path:
    """An explicit --output-dir: not empty, and its parent must exist (a typo must not
    silently create a whole tree)."""
    if not given.strip():
        raise OutputDirError("--output-dir is empty; name a directory (it is created if its parent exists)")
    directory = Path(given).expanduser().resolve()
    if directory.exists() and not directory.is_dir():
        raise OutputDirError(f"--output-dir {directory} is a file; name a directory")
    if not directory.parent.is_dir():
        raise OutputDirError(
            f"--output-dir {directory}: its parent {directory.parent} does not exist; create it first "
            "(the suite creates only the last folder)"
        )
    return directory


def new_run_dir(results_root: Path, config_stem: str, now: dt.datetime) -> Path:
    """Create `results/<config>-<YYYYmmdd-HHMMSS>` (a numeric suffix if that name is taken);
    the directory is created here, so two runs started in the same second get two names."""
    results_root.mkdir(parents=True, exist_ok=True)
    base = results_root / f"{config_stem}-{now.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = base, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")


def holds_results(directory: Path) -> bool:
    return any((directory / name).exists() or (directory / name).is_symlink() for name in RESULT_FILES)


def refuse_existing_results(directory: Path) -> None:
    """A directory with results in it is never overwritten."""
    if holds_results(directory):
        raise OutputDirError(
            f"--output-dir {directory} already holds results ({' or '.join(RESULT_FILES)}). "
            "Add --resume to run only the cases that have no ok row there, choose a new --output-dir, "
            "or leave it out to get a fresh directory under results/."
        )


def refuse_symlinks(directory: Path) -> None:
    """Result files must be plain files: a link could point anywhere."""
    for name in (*RESULT_FILES, MANIFEST):
        if (directory / name).is_symlink():
            raise OutputDirError(f"{directory / name} is a symbolic link; replace it with the file it points to")


def probe_writable(directory: Path) -> None:
    """Prove the directory takes a write (a probe file is written, fsynced and removed)."""
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, b"probe\n" * 512)
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise OutputDirError(
            f"output directory {directory} is not writable ({reason}); pass --output-dir with a writable location"
        ) from exc


@dataclass
class RunDirLock:
    """An exclusive lock on a run directory, held by the process that writes its results."""

    directory: Path
    _lock: FileLock | None = field(default=None, init=False)

    def acquire(self, command_line: list[str]) -> None:
        lock = FileLock(str(self.directory / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise OutputDirError(
                f"{self.directory} is in use by {describe_owner(self.directory)}; "
                "wait for that run to end, or choose another --output-dir"
            ) from None
        except OSError as exc:
            raise OutputDirError(f"cannot lock {self.directory}: {exc.strerror or exc}") from exc
        self._lock = lock
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command_line": command_line,
        }
        try:
            (self.directory / OWNER_FILE).write_text(json.dumps(owner) + "\n", encoding="utf-8")
        except OSError as exc:
            LOG.debug("could not write %s: %s", OWNER_FILE, exc)

    def release(self) -> None:
        if self._lock is None:
            return
        (self.directory / OWNER_FILE).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None


def describe_owner(directory: Path) -> str:
    """`process 1234 on host h (started ..., pytest ...)`, or what is known of it."""
    try:
        owner: dict[str, Any] = json.loads((directory / OWNER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "another process (it holds the lock; its details are not readable)"
    command = " ".join(map(str, owner.get("command_line", [])))[:200]
    return f"process {owner.get('pid')} on host {owner.get('host')} (started {owner.get('started_at')}: {command})"


def remove_if_unused(directory: Path) -> None:
    """Remove a run directory this run created and left without any result (e.g. nothing
    was selected); anything else in it keeps it."""
    leftovers = {p.name for p in directory.iterdir()} - {LOCK_FILE, OWNER_FILE}
    if leftovers:
        return
    for name in (LOCK_FILE, OWNER_FILE):
        (directory / name).unlink(missing_ok=True)
    try:
        directory.rmdir()
        fsync_dir(directory.parent)
    except OSError as exc:
        LOG.debug("could not remove the unused %s: %s", directory, exc)


def newest_run_dir(results_root: Path, config_path: Path, config_raw: object) -> Path:
    """The newest `results/<config>-<time>` directory run from this config file with this
    content; OutputDirError says what was found otherwise."""
    stem = config_path.stem
    found: list[Path] = []
    other: list[str] = []
    prefix = f"{stem}-"
    runs = (
        sorted(
            (p for p in results_root.iterdir() if p.is_dir() and p.name.startswith(prefix) and holds_results(p)),
            key=lambda p: (p.stat().st_mtime, p.name),
        )
        if results_root.is_dir()
        else []
    )
    for run in runs:
        why = _mismatch(run, config_path, config_raw)
        (other.append(f"{run.name} ({why})") if why else found.append(run))
    if found:
        return found[-1]
    seen = f"; runs of other configs with that name: {', '.join(other[-3:])}" if other else ""
    raise OutputDirError(
        f"--resume: no earlier run of {config_path} with this content under {results_root}{seen}. "
        "Run without --resume, or name the run to resume into with --output-dir"
    )


def _mismatch(run: Path, config_path: Path, config_raw: object) -> str:
    try:
        manifest = read_manifest(run)
    except ManifestError:
        return "unreadable manifest"
    if manifest is None:
        return "no manifest"
    recorded = manifest.get("config_path")
    if not isinstance(recorded, str) or Path(recorded).resolve() != config_path.resolve():
        return f"config {recorded}"
    if json.dumps(manifest.get("config"), sort_keys=True, default=str) != json.dumps(
        config_raw, sort_keys=True, default=str
    ):
        return "the config's content changed since"
    return ""
