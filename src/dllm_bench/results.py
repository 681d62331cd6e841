"""Result rows: the CSV columns, a durable appender and the atomic final file.

`COLUMNS` is the one list of CSV columns; the README's column table documents each name
(a test checks that they agree).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

PARTIAL_CSV = "raw_metrics_partial.csv"
FINAL_CSV = "raw_metrics.csv"

COLUMNS: tuple[tuple[str, str], ...] = (
    ("case_id", "the pytest case id part, e.g. tiny-llada-p32-g32-b1-s16-k32"),
    ("model", "model name from the config"),
    ("kind", "llada or baseline"),
    ("source", "random-init, a hub id or a local path"),
    ("device", "device the case ran on, e.g. cpu or cuda:0"),
    ("dtype", "torch dtype of the weights"),
    ("prompt_length", "prompt tokens per sequence (grid.prompt_length)"),
    ("gen_length", "generated positions per sequence (grid.gen_length)"),
    ("batch_size", "sequences per generate call (grid.batch_size)"),
    ("steps", "LLaDA diffusion steps (llada.steps); empty for baseline"),
    ("block_length", "LLaDA block length (llada.block_length); empty for baseline"),
    ("remasking", "LLaDA remasking strategy (llada.remasking); empty for baseline"),
    ("temperature", "LLaDA Gumbel temperature (llada.temperature); empty for baseline"),
    ("cfg_scale", "LLaDA classifier-free guidance scale (llada.cfg_scale); empty for baseline"),
    ("warmup_rounds", "untimed calls before measuring (warmup_rounds)"),
    ("measured_rounds", "timed calls (measured_rounds)"),
    ("status", "ok; oom (out of memory) or error for a failed case"),
    ("error", "first line of the error for a failed case; empty when ok"),
    ("latency_mean_s", "mean seconds per generate call over the measured rounds"),
    ("latency_median_s", "median seconds per generate call"),
    ("latency_min_s", "fastest generate call, seconds"),
    ("latency_max_s", "slowest generate call, seconds"),
    ("latency_stddev_s", "sample standard deviation of the calls, seconds (0 for one round)"),
    ("generated_tokens", "generated positions per call: batch_size x gen_length (prompt excluded)"),
    ("tokens_per_s", "generated positions per second: generated_tokens / latency_mean_s"),
    ("tokens_until_eos", "generated tokens up to and including each sequence's first EOS (all if none), summed"),
    ("eos_tokens_per_s", "tokens_until_eos / latency_mean_s"),
    ("nfe", "model forward passes per generate call, counted (LLaDA: steps; baseline: gen_length)"),
    (
        "cfg_batch_factor",
        "batch multiplier of each forward pass: 2 with cfg_scale > 0 (one pass, doubled batch), else 1",
    ),
    ("tokens_per_forward", "gen_length / nfe: positions committed per forward pass per sequence"),
    ("forward_mean_s", "mean seconds per forward pass, timed with device sync in the last warm-up call"),
    ("outside_forward_share", "share of that call's time spent outside forward passes (sampling, generate loop)"),
    ("ttft_s", "baseline only: time to first token, mean of prefill-only calls (max_new_tokens=1)"),
    ("tpot_s", "baseline only: time per output token after the first: (latency_mean_s - ttft_s) / (gen_length - 1)"),
    ("peak_memory_allocated_mb", "CUDA: torch.cuda.max_memory_allocated over the measured rounds, MiB"),
    ("peak_memory_reserved_mb", "CUDA: torch.cuda.max_memory_reserved over the measured rounds, MiB"),
    ("peak_rss_increase_mb", "CPU: increase of the process's peak resident set size during the measured rounds, MiB"),
    ("energy_j", "NVIDIA GPUs: joules per generate call from NVML's total-energy counter; empty if unavailable"),
    ("energy_per_token_j", "energy_j / generated_tokens"),
    ("gpu_name", "GPU model name; empty without CUDA"),
    ("gpu_count", "number of visible GPUs"),
    ("driver_version", "NVIDIA driver version (NVML); empty without it"),
    ("cuda_version", "CUDA version torch was built with; empty for CPU builds"),
    ("torch_version", "torch version"),
    ("transformers_version", "transformers version"),
    ("python_version", "Python version"),
    ("host", "host name"),
    ("git_commit", "git commit of the suite; empty outside a git checkout"),
    ("git_dirty", "true if the suite's tracked files had uncommitted changes"),
    ("cuda_visible_devices", "CUDA_VISIBLE_DEVICES of the process that ran the case (an xdist worker's own GPU)"),
    ("xdist_worker", "the pytest-xdist worker that ran the case (gw0, ...); empty in a serial run"),
    ("timestamp", "UTC time the case finished, ISO 8601"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)


def format_row(row: Mapping[str, object]) -> str:
    """One CSV line (with its newline) in `COLUMN_NAMES` order; unknown keys are an error."""
    unknown = set(row) - set(COLUMN_NAMES)
    if unknown:
        raise KeyError(f"row has keys that are not CSV columns: {sorted(unknown)}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["" if row.get(name) is None else row.get(name) for name in COLUMN_NAMES])
    return buffer.getvalue()


def header_line() -> str:
    return ",".join(COLUMN_NAMES) + "\n"


def append_row(path: Path, row: Mapping[str, object]) -> None:
    """Append one row and fsync it before returning; writes the header on first use.

    The line is written with a single `os.write` on an `O_APPEND` descriptor, so a kill
    leaves at worst one incomplete last line, which `read_rows` ignores.
    """
    line = format_row(row).encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            line = header_line().encode("utf-8") + line
        elif not _ends_with_newline(fd):
            # A previous writer was killed mid-line: close that line so ours stays whole.
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a results CSV; lines that are incomplete (a torn last write) are skipped."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if not lines:
        return []
    header = next(csv.reader([lines[0]]))
    rows = []
    for line in lines[1:]:
        if not line.endswith("\n"):
            continue
        values = next(csv.reader([line]), [])
        if len(values) != len(header):
            continue
        rows.append(dict(zip(header, values, strict=True)))
    return rows


def write_rows_atomic(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    """Write a complete CSV through a temporary file, fsync and rename."""
    text = header_line() + "".join(format_row(_known(row)) for row in rows)
    write_text_atomic(path, text)


def _known(row: Mapping[str, object]) -> dict[str, object]:
    return {k: v for k, v in row.items() if k in COLUMN_NAMES}


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
