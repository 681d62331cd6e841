"""Durable file writes that respect the umask and fail with one clear error."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

# Errors that mean "the storage cannot take more", not "the program is wrong".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.EACCES})


class StorageError(RuntimeError):
    """A result file could not be written (disk full, quota, I/O error, read-only); the
    message names the file and the reason."""


def storage_error(path: Path, exc: OSError) -> StorageError:
    reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return StorageError(f"cannot write {path}: {reason}")


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file."""
    return 0o666 & ~current_umask()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same directory, fsync, rename, fsync the
    directory. Raises StorageError (the old file, if any, is left as it was)."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    try:
        try:
            os.fchmod(fd, file_mode())
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, path)
        fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise storage_error(path, exc) from exc
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_all(fd: int, data: bytes) -> None:
    """`os.write` until every byte is written (a write may be short on a nearly full disk)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write wrote nothing")
        view = view[written:]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
