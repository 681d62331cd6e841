"""Every item in order: the in-process items, then the four suite runs and the items read from them."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dllm_bench.devices import visible_gpus
from dllm_bench.gpu_check.grids import cache_config, dgemma_config, grid_config, pinning_config
from dllm_bench.gpu_check.outcome import CheckResult, failed, in_item_order
from dllm_bench.gpu_check.run_items import cache_item, dgemma_item, grid_items, pinning_item
from dllm_bench.gpu_check.sampler import check_sampler
from dllm_bench.gpu_check.suite_run import Budget, run_suite
from dllm_bench.gpu_check.timer import check_timer
from dllm_bench.runner import release_memory

LOG = logging.getLogger("dllm_bench.gpu_check")


def guarded(item: str, check: Callable[[], CheckResult]) -> CheckResult:
    """Run one in-process check; an exception is that item's failure, not the end of the check."""
    try:
        return check()
    except Exception as exc:
        LOG.exception("item %s raised", item)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return failed(item, f"{type(exc).__name__}: {first}")
    finally:
        release_memory()


def emit(result: CheckResult) -> CheckResult:
    """Print the item's line as soon as it is known."""
    sys.stdout.write(result.line() + "\n")
    sys.stdout.flush()
    return result


def run_gpu_checks(repo: Path, work_dir: Path, budget: Budget) -> list[CheckResult]:
    results = [emit(guarded("timer", check_timer)), emit(guarded("sampler", check_sampler))]
    work_dir.mkdir(parents=True, exist_ok=True)
    grid = run_suite(repo, work_dir, "grid", grid_config(), ["--allow-oom"], budget)
    results += [emit(result) for result in grid_items(grid)]
    cache = run_suite(repo, work_dir, "cache", cache_config(), [], budget)
    results.append(emit(cache_item(cache)))
    dgemma = run_suite(repo, work_dir, "dgemma", dgemma_config(), [], budget)
    results.append(emit(dgemma_item(dgemma)))
    visible = visible_gpus(os.environ)
    pinning = run_suite(repo, work_dir, "pinning", pinning_config(len(visible)), ["-n", "auto"], budget)
    results.append(emit(pinning_item(pinning, visible)))
    return in_item_order(results)
