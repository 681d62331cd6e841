"""Time and peak memory of `dllm-bench-report` on runs of many rows of one task and shape.

Each run directory is built from one LLaDA row and one AR row of the same task and shape,
copied N/2 times each: copy i gets seed i and its own case_id (`...-seed<i>`), so LLaDA
copy i pairs with AR copy i only. The two rows come from a real run given with
`--from RUN_DIR` (its first LLaDA and first AR row; its manifest is copied too), else
from two built-in rows of the tiny grid's shape.

Every size is reported on in a fresh process (`python -m dllm_bench.sinks.report.cli`, as
the command runs), `--runs` times; logged per run: the wall time and the child's peak
resident set size (`ru_maxrss`) and CPU time (user + system). A run past `--timeout` seconds is killed and logged as
such. The machine's load average is logged before each run: check `uptime` first, the
machine may be shared.

Usage (from the repository root)::

    python benchmarks/perf/bench_report.py [--rows 500 1000 2000 20000] [--runs 3] [--from RUN_DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dllm_bench.rows import Row
from dllm_bench.sinks.csvfiles import FINAL_CSV, read_run_rows, write_rows_atomic
from dllm_bench.sinks.manifest import MANIFEST

LOG = logging.getLogger("bench_report")

POLL_S = 0.05


def builtin_rows() -> tuple[Row, Row]:
    """An ok LLaDA row and an ok AR row of the tiny grid's shape (random task)."""
    shared: dict[str, object] = {
        "source": "random-init",
        "device": "cpu",
        "dtype": "float32",
        "prompt_length": 32,
        "gen_length": 64,
        "batch_size": 1,
        "seed": 0,
        "task": "random",
        "warmup_rounds": 1,
        "measured_rounds": 3,
        "status": "ok",
        "generated_tokens": 64,
    }
    llada = Row(case_id="tiny-llada-p32-g64-b1-s16-k32").with_values(
        {
            **shared,
            "model": "tiny-llada",
            "kind": "llada",
            "model_id": "aaaaaaaaaaaa",
            "steps": 16,
            "block_length": 32,
            "remasking": "low_confidence",
            "temperature": 0.0,
            "cfg_scale": 0.0,
            "cache": "none",
            "latency_mean_s": 0.4,
            "tokens_per_s": 160.0,
            "nfe": 16.0,
            "tokens_per_forward": 4.0,
            "agreement_exact": 0.8,
        }
    )
    ar = Row(case_id="tiny-llama-p32-g64-b1").with_values(
        {
            **shared,
            "model": "tiny-llama",
            "kind": "baseline",
            "model_id": "bbbbbbbbbbbb",
            "latency_mean_s": 0.5,
            "tokens_per_s": 128.0,
            "nfe": 64.0,
            "tokens_per_forward": 1.0,
        }
    )
    return llada, ar


def rows_of_run(directory: Path) -> tuple[Row, Row]:
    """The first ok LLaDA row and the first ok AR row of a run directory."""
    rows = [row for row in read_run_rows(directory) if row.ok]
    llada = next((row for row in rows if row.kind == "llada"), None)
    ar = next((row for row in rows if row.kind == "baseline"), None)
    if llada is None or ar is None:
        raise SystemExit(f"{directory} needs an ok llada row and an ok baseline row")
    return llada, ar


def replicate(pair: tuple[Row, Row], count: int) -> list[Row]:
    """`count` rows: alternately a copy of each row of `pair`, copy i with seed i."""
    rows: list[Row] = []
    for seed in range(count // 2):
        rows += [dataclasses.replace(row, seed=seed, case_id=f"{row.case_id}-seed{seed}") for row in pair]
    return rows


def build_run(directory: Path, pair: tuple[Row, Row], count: int, manifest: Path | None) -> Path:
    directory.mkdir(parents=True)
    write_rows_atomic(directory / FINAL_CSV, replicate(pair, count))
    if manifest is not None:
        shutil.copyfile(manifest, directory / MANIFEST)
    return directory


@dataclass(frozen=True)
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    exit_code: int | None  # None: killed at the timeout
    load_1m: float


def report_once(directory: Path, timeout_s: float) -> Measured:
    """Run the report command on `directory` in a fresh process; its wall time and peak RSS."""
    load = os.getloadavg()[0]
    command = [sys.executable, "-m", "dllm_bench.sinks.report.cli", str(directory)]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = False
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if not killed and time.perf_counter() - start > timeout_s:
            process.kill()
            killed = True
        time.sleep(POLL_S)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(wall, cpu, usage.ru_maxrss / 1024.0, None if killed else process.returncode, load)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[500, 1000, 2000, 20000], help="run sizes (rows)")
    parser.add_argument("--runs", type=int, default=3, help="reports per size")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a report is killed")
    parser.add_argument("--from", dest="source", type=Path, help="a real run directory to copy the two rows from")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pair = rows_of_run(args.source) if args.source else builtin_rows()
    manifest = args.source / MANIFEST if args.source and (args.source / MANIFEST).is_file() else None
    LOG.info("machine: %s, %d cores; python %s", cpu_model(), os.cpu_count() or 0, platform.python_version())
    LOG.info(
        "rows: %s and %s, %d runs per size, timeout %.0f s", pair[0].case_id, pair[1].case_id, args.runs, args.timeout
    )
    with tempfile.TemporaryDirectory(prefix="bench-report-") as scratch:
        for count in args.rows:
            directory = build_run(Path(scratch) / f"rows-{count}", pair, count, manifest)
            results = [report_once(directory, args.timeout) for _ in range(args.runs)]
            for index, result in enumerate(results, 1):
                outcome = f"exit {result.exit_code}" if result.exit_code is not None else "killed at the timeout"
                LOG.info(
                    "%6d rows, run %d: %7.2f s wall, %7.2f s CPU, peak RSS %6.0f MB, %s (load %.2f)",
                    count,
                    index,
                    result.wall_s,
                    result.cpu_s,
                    result.peak_rss_mb,
                    outcome,
                    result.load_1m,
                )
            LOG.info(
                "%6d rows: median %.2f s wall, %.2f s CPU, peak RSS median %.0f MB",
                count,
                statistics.median(r.wall_s for r in results),
                statistics.median(r.cpu_s for r in results),
                statistics.median(r.peak_rss_mb for r in results),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
