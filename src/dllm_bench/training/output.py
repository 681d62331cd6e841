"""Where ``dllm-bench-train`` writes its models, checked before training, and its Ctrl+C.

Each model goes to ``OUT/tasks-<kind>``. Before any training, every target is checked
(not a file, not a folder that already holds files unless ``--force``) and a temporary
folder is made beside it (``OUT/.tasks-<kind>.tmp-*``), which proves the location
writable. The trained model is saved into the temporary folder and renamed into place
only when complete, so the target's name never holds a half-written model.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from dllm_bench.models.random_init import StagedFolder

__all__ = ["OutputError", "check_target", "interrupt_once", "stage_target"]


class OutputError(RuntimeError):
    """``--out`` cannot take a model; the message says why and what to do."""


def check_target(out: Path, target: Path, *, force: bool) -> None:
    """Refuse an ``--out`` that is a file and a target that is a file, a link, or a folder
    holding files (an earlier model) unless ``force``."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; give a folder")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise OutputError(f"{target} exists and is not a folder; remove it or give another --out")
    if target.is_dir() and not force and any(target.iterdir()):
        raise OutputError(
            f"{target} already holds files (an earlier model?); pass --force to replace it, or give another --out"
        )


def stage_target(out: Path, target: Path, *, force: bool) -> StagedFolder:
    """The checked target's temporary folder; raises OutputError when it cannot be made."""
    check_target(out, target, force=force)
    try:
        return StagedFolder(target)
    except OSError as exc:
        raise OutputError(f"cannot write to --out {out}: {exc.strerror or exc}") from None


@contextmanager
def interrupt_once() -> Iterator[None]:
    """Within the block the first SIGINT raises KeyboardInterrupt and later ones are ignored,
    so that the cleanup it starts (removing temporary folders) and the exit are not
    themselves interrupted: after a SIGINT, SIGINT stays ignored when the block ends (the
    command is ending); without one, Python's default handler is put back. Does nothing off
    the main thread or where SIGINT is not Python's default handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def first(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first)
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN if interrupted else signal.default_int_handler)
