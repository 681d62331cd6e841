"""The items read from one suite run: a run that cannot be trusted as a whole fails each of them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dllm_bench.gpu_check.grids import DGEMMA_CANVAS, DGEMMA_GEN, DGEMMA_STEPS
from dllm_bench.gpu_check.outcome import CheckResult, failed
from dllm_bench.gpu_check.row_checks import (
    check_cache_speed,
    check_dgemma,
    check_energy,
    check_environment,
    check_memory,
    check_oom,
    check_pinning,
)
from dllm_bench.gpu_check.suite_run import SuiteRun


def grid_items(run: SuiteRun) -> list[CheckResult]:
    problem = run.problem()
    if problem is not None:
        return [failed(item, problem) for item in ("memory", "energy", "environment", "oom")]
    rows = run.rows()
    return [
        check_memory(rows),
        check_energy(rows),
        check_environment(rows, torch.cuda.get_device_name(0), torch.version.cuda or ""),
        check_oom(run.partial_rows(), run.exit_code),
    ]


def cache_item(run: SuiteRun) -> CheckResult:
    problem = run.problem()
    if problem is not None:
        return failed("cache", problem)
    return check_cache_speed(run.rows())


def pinning_item(run: SuiteRun, visible: Sequence[str]) -> CheckResult:
    problem = run.problem()
    if problem is not None:
        return failed("pinning", problem)
    return check_pinning(run.rows(), visible)


def dgemma_item(run: SuiteRun) -> CheckResult:
    problem = run.problem()
    if problem is not None:
        return failed("dgemma", problem)
    return check_dgemma(run.rows(), canvases=DGEMMA_GEN // DGEMMA_CANVAS, steps=DGEMMA_STEPS, canvas=DGEMMA_CANVAS)
