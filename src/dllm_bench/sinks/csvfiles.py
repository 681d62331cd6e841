"""The results CSV files: a durable appender, the atomic final file and one reader.

`raw_metrics_partial.csv` gets one line per finished case, appended and fsynced before the
next case starts; `raw_metrics.csv` is rewritten atomically at the end of a run. Every
reader of either file (resume, the gate, merge, the report) goes through `read_results`,
which never crashes on a damaged file: torn or undecodable lines are skipped and logged,
and a file that is not a results file raises `ResultsFileError` with what to do.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dllm_bench.rows import COLUMN_NAMES, CaseKey, Row, format_cells
from dllm_bench.sinks.atomic import StorageError, storage_error, write_all, write_bytes_atomic

LOG = logging.getLogger("dllm_bench.results")

PARTIAL_CSV = "raw_metrics_partial.csv"
FINAL_CSV = "raw_metrics.csv"
RESULT_FILES = (PARTIAL_CSV, FINAL_CSV)
BOM = b"\xef\xbb\xbf"


class ResultsFileError(RuntimeError):
    """A results file that cannot be read as one; the message names it and says what to do."""


def _line(cells: Sequence[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def header_line() -> str:
    return _line(COLUMN_NAMES)


def format_row(row: Row) -> str:
    """One CSV line (with its newline) in column order."""
    return _line(format_cells(row))


def append_row(path: Path, row: Row) -> None:
    """Append one row and fsync it before returning; writes the header on first use.

    The line is written with `O_APPEND` and looped until complete (a write can be short on
    a nearly full disk); a kill leaves at worst one incomplete last line, which readers
    skip and report. A symbolic link is refused, not followed. Raises StorageError.
    """
    line = format_row(row).encode("utf-8")
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StorageError(f"{path} is a symbolic link; refusing to write through it") from exc
        raise storage_error(path, exc) from exc
    size = 0
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            line = header_line().encode("utf-8") + line
        elif os.pread(fd, 1, size - 1) != b"\n":
            # A previous writer was stopped mid-line: close that line so ours stays whole.
            line = b"\n" + line
        write_all(fd, line)
        os.fsync(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)  # leave no torn line of ours behind
        raise storage_error(path, exc) from exc
    finally:
        os.close(fd)


def write_rows_atomic(path: Path, rows: Iterable[Row]) -> None:
    """Write a complete results CSV (header and rows) atomically. Raises StorageError."""
    text = header_line() + "".join(format_row(row) for row in rows)
    write_bytes_atomic(path, text.encode("utf-8"))


@dataclass
class ReadReport:
    """What `read_results` found: the rows and the lines it had to skip."""

    rows: list[Row] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    headerless: bool = False


def read_results(path: Path) -> list[Row]:
    """The rows of a results CSV ([] if it does not exist); skipped lines are logged."""
    report = scan_results(path)
    for reason in report.skipped:
        LOG.warning("%s: skipped %s", path, reason)
    if report.headerless:
        LOG.warning("%s has no header line; read its rows with the current column order", path)
    return report.rows



def read_run_rows(directory: Path) -> list[Row]:
    """Every readable row of a run directory: its partial file, then its final file.
    Raises ResultsFileError for a file that is not a results file."""
    return [row for name in RESULT_FILES for row in read_results(directory / name)]

def scan_results(path: Path) -> ReadReport:
    """Read a results CSV without logging. Raises ResultsFileError for a file that is not one."""
    if path.is_symlink():
        raise ResultsFileError(f"{path} is a symbolic link; refusing to follow it (replace it with the file)")
    if not path.exists():
        return ReadReport()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ResultsFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _parse(path, data.removeprefix(BOM))


def _parse(path: Path, data: bytes) -> ReadReport:
    report = ReadReport()
    lines = data.split(b"\n")
    complete, torn = lines[:-1], lines[-1]
    if torn:
        report.skipped.append(f"an incomplete last line ({len(torn)} bytes, a write that was cut off)")
    if not complete:
        return report
    header = _header(path, complete[0])
    if header is None:
        report.headerless = True
        header = list(COLUMN_NAMES)
        body = complete
    else:
        body = complete[1:]
    for number, raw in enumerate(body, start=1 if report.headerless else 2):
        cells, problem = _cells(raw, len(header))
        if problem:
            report.skipped.append(f"line {number}: {problem}")
        elif cells is not None:
            report.rows.append(Row.from_cells(dict(zip(header, cells, strict=True))))
    return report


def _header(path: Path, raw: bytes) -> list[str] | None:
    """The header's column names, or None when the first line is a row of the current
    columns without a header. Anything else is not a results file."""
    cells, problem = _cells(raw, None)
    if cells is not None and not problem and "case_id" in cells and "status" in cells:
        return cells
    if cells is not None and not problem and len(cells) == len(COLUMN_NAMES):
        return None
    raise ResultsFileError(
        f"{path} is not a dllm-bench results file: its first line is not a header with case_id and status "
        "columns. Move it aside (or repair its header) and run again."
    )


def _cells(raw: bytes, expected: int | None) -> tuple[list[str] | None, str]:
    """The cells of one line and "" -- or None and why the line was skipped."""
    if not raw.strip():
        return None, ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "bytes that are not UTF-8 (a torn or foreign line)"
    try:
        cells = next(csv.reader([text]), [])
    except csv.Error as exc:
        return None, f"not a CSV line ({exc})"
    if expected is not None and len(cells) != expected:
        return None, f"{len(cells)} fields instead of {expected} (a torn line)"
    return cells, ""


def latest_per_case(rows: Iterable[Row], order: Sequence[CaseKey] = ()) -> list[Row]:
    """One row per case: the one that finished last (by timestamp; for equal or missing
    timestamps the later one in `rows`). Cases in `order` come first in that order, the
    others after them in the order they were first seen."""
    latest: dict[CaseKey, Row] = {}
    for row in rows:
        key = row.key()
        held = latest.get(key)
        if held is None or (row.timestamp or "") >= (held.timestamp or ""):
            latest[key] = row
    first = [latest[key] for key in dict.fromkeys(order) if key in latest]
    listed = set(order)
    return first + [row for key, row in latest.items() if key not in listed]
