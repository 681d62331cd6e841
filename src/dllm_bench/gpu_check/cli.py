"""GPU self-check: verify the suite's CUDA paths on one GPU in a few minutes, downloading nothing.

    python -m dllm_bench.gpu_check [--repo DIR] [--work-dir DIR] [--budget-s 450]

(`scripts/gpu_check.sh` runs this.) Prints one line per item, `PASS <item>: ...`,
`FAIL <item>: ...` or `SKIP <item>: ...`, then a verdict line `VERDICT: PASS|FAIL|SKIP: ...`.
Exit status 0 unless an item failed. Without a CUDA GPU every item is skipped with the
reason and the verdict says "no GPU" (exit 0).

The timer and sampler items run in this process; the others run the suite itself
(`pytest benchmarks --config ... --output-dir ...` in a subprocess) on random-init models
and read the rows it wrote, so they check what a user's run produces.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from dllm_bench.gpu_check.driver import emit, run_gpu_checks
from dllm_bench.gpu_check.outcome import FAIL, skip_all, verdict_line
from dllm_bench.gpu_check.suite_run import Budget

LOG = logging.getLogger("dllm_bench.gpu_check")

DEFAULT_BUDGET_S = 450.0  # with start-up and the hard stop's margin, within 8 minutes


def no_gpu_reason() -> str | None:
    """Why no CUDA GPU can be used here, or None when one can."""
    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = "unset" if visible is None else repr(visible)
    return f"no GPU: torch {torch.__version__} ({build}) sees no CUDA device (CUDA_VISIBLE_DEVICES {shown})"


def default_repo() -> Path:
    """The checkout holding this package (src/dllm_bench/gpu_check/), else the current directory."""
    candidate = Path(__file__).resolve().parents[3]
    return candidate if (candidate / "benchmarks").is_dir() else Path.cwd()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=None, help="the checkout with benchmarks/ (default: this one)")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where the suite runs write (default: results/gpu-check-<UTC time>)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time limit of the whole check, seconds"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    reason = no_gpu_reason()
    if reason is not None:
        for result in skip_all(reason):
            emit(result)
        sys.stdout.write(f"VERDICT: SKIP: {reason}; nothing was checked\n")
        return 0
    repo = (args.repo or default_repo()).resolve()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    work_dir = (args.work_dir or repo / "results" / f"gpu-check-{stamp}").resolve()
    LOG.info("GPU self-check of %s; suite runs under %s", repo, work_dir)
    results = run_gpu_checks(repo, work_dir, Budget(args.budget_s))
    sys.stdout.write(verdict_line(results) + "\n")
    return 1 if any(result.outcome == FAIL for result in results) else 0
