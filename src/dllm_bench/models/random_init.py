"""Random-init model folders that load exactly like hub checkpoints, for every kind.

``write_model_folder`` writes the folder of a model a kind's backend builds (weights,
config and any code files the folder must carry), and returns an existing complete folder
as it is; each backend's ``write_random_init`` calls it with its own model class.
``folder_key`` names cache folders, ``verify_folder`` checks one before it is used.

Folders are written atomically: the model is saved into a temporary directory
beside the target, which is then renamed onto it, so a killed writer never
leaves a half-written folder under the final name (only a ``.<name>.tmp-*``
directory beside it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from dllm_bench.sinks.atomic import current_umask

__all__ = [
    "CACHE_MANIFEST",
    "CacheFolderError",
    "StagedFolder",
    "folder_key",
    "remove_stale_temporaries",
    "verify_folder",
    "write_model_folder",
]

logger = logging.getLogger(__name__)

#: The file in every folder the suite writes that lists the files it wrote (name, size, sha256).
CACHE_MANIFEST = "dllm-bench-cache.json"
#: Version of the cache folder layout; part of the folder name, so older folders are not reused.
CACHE_FORMAT = 2
#: Files up to this size are checked by their sha256 on every use; larger ones by their size.
HASHED_FILE_LIMIT = 64 * 2**20


def folder_key(kind: str, arch: Mapping[str, Any], seed: int, dtype: str) -> str:
    """A short stable name for a model folder: first 16 hex chars of the sha256 of a canonical JSON.

    The JSON has sorted keys and no whitespace, so the key does not depend on
    the order of ``arch``. Values of ``arch`` must be JSON-serialisable.
    """
    payload = {"kind": kind, "arch": dict(arch), "seed": seed, "dtype": dtype, "format": CACHE_FORMAT}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_model_folder(
    folder: Path,
    build: Callable[[], PreTrainedModel],
    *,
    name: str,
    arch: Mapping[str, Any],
    known_keys: frozenset[str],
    seed: int,
    dtype: torch.dtype,
    code_files: Sequence[Path] = (),
) -> Path:
    """Write the random-init folder of the model ``build`` makes (on the meta device; the
    weights are allocated once in ``dtype`` and initialised with ``seed``), with copies of
    ``code_files``. ``name`` names the architecture in messages; an ``arch`` key outside
    ``known_keys`` raises ``ValueError``. If ``folder`` already has a ``config.json`` it is
    returned as is: the weights are not rewritten, only the code files are refreshed if they
    differ from the package's."""
    folder = Path(folder)
    _check_keys(name, arch, known_keys)
    _check_dtype(dtype)
    if _is_complete(folder):
        logger.info("%s folder %s already exists, not rewriting it", name, folder)
        if code_files:
            _refresh_files(folder, code_files)
        return folder
    return _write_atomically(folder, build, seed=seed, dtype=dtype, extra_files=code_files)


def _check_keys(name: str, arch: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(key for key in arch if key not in known)
    if unknown:
        raise ValueError(f"unknown {name} architecture key(s): {', '.join(map(repr, unknown))}")


def _check_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file()


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _random_model(build: Callable[[], PreTrainedModel], *, seed: int, dtype: torch.dtype) -> PreTrainedModel:
    """Build the model on the meta device, allocate it once in ``dtype`` on the CPU, then initialise it.

    This skips torch's own per-layer initialisation (which would be overwritten)
    and never holds a second copy of the weights. Memory that ``init_weights`` leaves
    untouched would hold whatever was there (DiffusionGemma's ``_init_weights`` skips the
    encoder layers' ``layer_scalar`` buffers): everything is set to NaN first, and a model
    with any tensor still not finite after ``init_weights`` is built again on the CPU, where
    the constructor gives such tensors their values. The caller's RNG state is left untouched.
    """
    with _default_dtype(dtype), torch.device("meta"):
        model = build()
    model.to_empty(device="cpu")
    if dtype.is_floating_point:
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                if tensor.is_floating_point():
                    tensor.fill_(float("nan"))
    _seeded_init(model, seed)
    if not _all_finite(model):
        logger.info("init_weights leaves tensors of %s unset: building it on the CPU", type(model).__name__)
        del model
        with _default_dtype(dtype), torch.random.fork_rng(devices=[]):
            model = build()  # torch's own initialisation draws from the RNG: not the caller's
        _seeded_init(model, seed)
    model.eval()  # type: ignore[no-untyped-call]
    return model


def _seeded_init(model: PreTrainedModel, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.init_weights()  # type: ignore[no-untyped-call]


def _all_finite(model: PreTrainedModel) -> bool:
    return all(
        bool(torch.isfinite(t).all()) for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()
    )


def _write_atomically(
    folder: Path,
    build: Callable[[], PreTrainedModel],
    *,
    seed: int,
    dtype: torch.dtype,
    extra_files: Sequence[Path],
) -> Path:
    # The folder is a shared cache entry: readable as the umask allows but never writable by
    # group or others (verify_folder refuses that).
    with StagedFolder(folder, mode=0o755 & ~current_umask()) as staged:
        model = _random_model(build, seed=seed, dtype=dtype)
        n_params = sum(p.numel() for p in model.parameters())
        logger.info(
            "writing %s (%d parameters, %s, seed %d) to %s", type(model).__name__, n_params, dtype, seed, folder
        )
        model.save_pretrained(staged.path)
        del model
        for source in extra_files:
            shutil.copyfile(source, staged.path / source.name)
        for written in staged.path.iterdir():  # save_pretrained may write some files private (0600)
            os.chmod(written, cache_file_mode())
        write_cache_manifest(staged.path)
        try:
            staged.commit()
        except OSError as err:
            if _is_complete(folder):
                logger.info("%s was written concurrently by another writer, keeping that one", folder)
                return folder
            if err.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                raise FileExistsError(
                    f"{folder} exists but is not a model folder (no config.json); refusing to replace it"
                ) from err
            raise
    return folder


class StagedFolder:
    """A folder written in a temporary folder beside its target and renamed into place.

    The temporary folder (``.<name>.tmp-*`` beside ``target``) is made at once, so an
    unwritable location fails before any work. ``commit`` renames it onto ``target``;
    leaving a ``with`` block without a commit (an error, Ctrl+C) removes it. A writer that
    is killed leaves only the temporary folder, never a half-written folder under the
    target's name.
    """

    def __init__(self, target: Path, *, mode: int | None = None) -> None:
        self.target = target
        self.committed = False
        target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            # mkdtemp makes it private; by default it gets the mode a plain mkdir would give.
            os.chmod(self.path, 0o777 & ~current_umask() if mode is None else mode)
        except BaseException:
            self.discard()
            raise

    def commit(self, *, replace: bool = False) -> None:
        """Rename the folder onto the target. A missing or empty target is replaced; with
        ``replace`` a target folder with files is moved aside first and removed after (it is
        put back if the rename fails); otherwise that raises OSError."""
        old: Path | None = None
        if replace and self.target.is_dir() and not self.target.is_symlink() and any(self.target.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
            os.rename(self.target, old)  # onto the empty folder mkdtemp made
            try:
                os.rename(self.path, self.target)
            except BaseException:
                os.rename(old, self.target)
                raise
        else:
            os.rename(self.path, self.target)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        """Remove the temporary folder unless it was committed."""
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> StagedFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def _refresh_files(folder: Path, sources: Sequence[Path]) -> None:
    """Atomically replace the copies in ``folder`` of files that differ from ``sources``
    (the suite's own code after an upgrade), then rewrite the folder's cache manifest."""
    changed = False
    for source in sources:
        target = folder / source.name
        data = source.read_bytes()
        if target.is_file() and target.read_bytes() == data:
            continue
        logger.info("updating %s from %s", target, source)
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{source.name}.tmp-", dir=folder)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.chmod(tmp_name, cache_file_mode())
                os.replace(tmp_name, target)
                changed = True
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
                raise
        except OSError as err:
            logger.warning("could not update %s: %s", target, err)
    if changed and (folder / CACHE_MANIFEST).is_file():
        write_cache_manifest(folder)


class CacheFolderError(RuntimeError):
    """A model cache folder the suite will not use; the message says why and what to do."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    return {"size": size, "sha256": _sha256(path) if size <= HASHED_FILE_LIMIT else None}


def write_cache_manifest(folder: Path) -> None:
    """List every file of ``folder`` (size, and sha256 for files up to HASHED_FILE_LIMIT)."""
    files = {p.name: _file_record(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != CACHE_MANIFEST}
    text = json.dumps({"format": CACHE_FORMAT, "files": files}, indent=2, sort_keys=True) + "\n"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{CACHE_MANIFEST}.", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp_name, cache_file_mode())
        os.replace(tmp_name, folder / CACHE_MANIFEST)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


def cache_file_mode() -> int:
    """A cache file is readable as the umask allows and never writable by group or others
    (verify_folder refuses such files: their content could change under the manifest)."""
    return 0o644 & ~current_umask()


def verify_folder(folder: Path, code_sources: Sequence[Path] = ()) -> None:
    """Refuse a cache folder the suite did not write for this user, or that changed since.

    The folder must be owned by the current user and not writable by group or others; its
    cache manifest must list exactly the files present, with their sizes (and sha256 for
    small files); the code files must equal the installed package's. Raises CacheFolderError.
    """
    remedy = f"remove {folder} to have it written again"
    info = folder.lstat()
    if not folder.is_dir() or folder.is_symlink():
        raise CacheFolderError(f"model cache entry {folder} is not a folder; {remedy}")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise CacheFolderError(f"model cache folder {folder} belongs to uid {info.st_uid}, not to you; {remedy}")
    if info.st_mode & 0o022:
        raise CacheFolderError(f"model cache folder {folder} is writable by group or others; {remedy}")
    writable = sorted(p.name for p in folder.iterdir() if p.lstat().st_mode & 0o022)
    if writable:
        names = ", ".join(writable)
        raise CacheFolderError(f"model cache folder {folder} has files writable by group or others ({names}); {remedy}")
    try:
        listed = json.loads((folder / CACHE_MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheFolderError(f"model cache folder {folder} has no valid {CACHE_MANIFEST} ({exc}); {remedy}") from exc
    present = {p.name for p in folder.iterdir() if p.name != CACHE_MANIFEST}
    if not isinstance(listed, dict) or present != set(listed):
        extra = sorted(present - set(listed)) if isinstance(listed, dict) else sorted(present)
        raise CacheFolderError(f"model cache folder {folder} holds files the suite did not write {extra}; {remedy}")
    for name, record in listed.items():
        _check_file(folder / name, record, remedy)
    for source in code_sources:
        if (folder / source.name).read_bytes() != source.read_bytes():
            raise CacheFolderError(f"{folder / source.name} differs from the installed suite's {source}; {remedy}")


def _check_file(path: Path, record: Any, remedy: str) -> None:
    if not path.is_file() or path.is_symlink():
        raise CacheFolderError(f"{path} is not a regular file; {remedy}")
    size = path.stat().st_size
    if not isinstance(record, dict) or record.get("size") != size:
        expected = record.get("size") if isinstance(record, dict) else "?"
        raise CacheFolderError(f"{path} has {size} bytes, {expected} were written (truncated or changed); {remedy}")
    if record.get("sha256") is not None and record["sha256"] != _sha256(path):
        raise CacheFolderError(f"{path} changed since the suite wrote it (sha256 differs); {remedy}")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the ``.<name>.tmp-*`` folders a killed writer of ``folder`` left beside it.

    Call only while holding the folder's writer lock: every writer holds it while its
    temporary folder exists, so any such folder found then belongs to a writer that is gone.
    """
    removed = []
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale)
        logger.info("removed %s, left by a writer that was stopped", stale)
    return removed
