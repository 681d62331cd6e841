"""The `bench` fixture: what a benchmark test calls to run its case.

`bench.run(case)` loads the case's model (once per process), measures the case, and
attaches the row to the test report, from where the session appends it to the CSV (in
the serial process, or on the xdist controller). A failed case gets a row too (status
`oom` or `error`) and its memory is released before the next case.

This module is registered as a plugin only when the suite is active.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from dllm_bench.cases import Case
from dllm_bench.models.loader import LoadedModel, ModelCache, ModelLoadError
from dllm_bench.options import Options
from dllm_bench.plugin import SESSION_KEY
from dllm_bench.progress import Progress
from dllm_bench.rows import Row
from dllm_bench.runner import Measure, error_row, is_out_of_memory, measure_with_own_timer, release_memory, run_case
from dllm_bench.session import ROW_PROPERTY, RunSession, UsageProblem
from dllm_bench.signals import drop_lineless_frames
from dllm_bench.xdist import XdistController

LOG = logging.getLogger("dllm_bench")


def start_session(config: pytest.Config, opts: Options) -> RunSession:
    """The run session, with the hooks that carry no config bound to it; a problem the
    user must fix is pytest's usage error (exit code 4), with nothing written."""
    try:
        session = RunSession.start(config, opts)
    except UsageProblem as exc:
        raise pytest.UsageError(str(exc)) from None
    config.pluginmanager.register(RunHooks(session), "dllm-bench-run")
    if session.role == "controller":
        # Registered now: xdist configures its workers during session start.
        config.pluginmanager.register(XdistController(session), "dllm-bench-xdist")
    return session


class RunHooks:
    """Hooks whose arguments carry no config, bound to the run session."""

    def __init__(self, session: RunSession) -> None:
        self.session = session

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.session.case_started(nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.session.report(report)

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        drop_lineless_frames(excinfo)  # before pytest's reporter formats it
        self.session.interrupted(excinfo)


@dataclass
class CaseRunner:
    """What a benchmark test calls: load (cached), measure, attach the row to the report."""

    request: pytest.FixtureRequest
    benchmark: Any
    models: ModelCache
    allow_oom: bool
    environment: dict[str, object]
    progress: Progress

    def run(self, case: Case) -> Row:
        LOG.info("case %s: start", case.case_id)
        loaded: LoadedModel | None = None
        inner = None
        try:
            with self.progress.loading(case.model.name) if not self.models.is_loaded(case.model) else nullcontext():
                loaded = self.models.get(case.model)
            inner = self.progress.case_bar(case.expected_nfe(), case.warmup_rounds, case.measured_rounds)
            row = run_case(case, loaded, self._measure(case), inner)
        except ModelLoadError as exc:
            self._failed(case, error_row(case, loaded, exc))
            pytest.fail(str(exc), pytrace=False)
        except Exception as exc:
            oom = is_out_of_memory(exc)
            self._failed(case, error_row(case, loaded, exc, status="oom" if oom else "error"))
            release_memory()
            if oom and self.allow_oom:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                pytest.skip(f"out of memory (--allow-oom): {first}")
            raise
        finally:
            if inner is not None:
                inner.close()
        self._attach(row)
        LOG.info(
            "case %s: done, mean %.6f s, %.3f tokens/s, nfe %s",
            case.case_id,
            row.latency_mean_s or 0.0,
            row.tokens_per_s or 0.0,
            row.nfe,
        )
        return row

    def _failed(self, case: Case, row: Row) -> None:
        self._attach(row)
        LOG.error("case %s: %s: %s", case.case_id, row.status, row.error)

    def _attach(self, row: Row) -> None:
        row = row.with_values(self.environment)
        self.request.node.user_properties.append((ROW_PROPERTY, row.to_record()))
        if self.benchmark is not None and getattr(self.benchmark, "enabled", False):
            self.benchmark.extra_info.update({k: v for k, v in row.to_record().items() if v is not None})

    def _measure(self, case: Case) -> Measure:
        bench = self.benchmark
        if bench is None or not getattr(bench, "enabled", False):
            if bench is not None:
                # Disabled (--benchmark-disable, xdist): a no-op call tells pytest-benchmark the
                # fixture was used on purpose; the suite measures with its own timer.
                bench.pedantic(_no_op)
            return measure_with_own_timer
        bench.group = f"p{case.prompt_length}-g{case.gen_length}-b{case.batch_size}"

        def measure(
            call: Callable[[], torch.Tensor], measured_rounds: int, before_round: Callable[[], None]
        ) -> list[float]:
            # The suite runs (and profiles) the warm-up itself; `setup` runs untimed.
            bench.pedantic(call, setup=before_round, rounds=measured_rounds, warmup_rounds=0, iterations=1)
            return list(bench.stats.stats.data)

        return measure


def _no_op() -> None:
    """Nothing to do."""


@pytest.fixture(scope="session")
def dllm_session(pytestconfig: pytest.Config) -> RunSession:
    return pytestconfig.stash[SESSION_KEY]


@pytest.fixture(scope="session")
def model_cache(dllm_session: RunSession) -> ModelCache:
    """One model cache per process: each model entry is loaded once."""
    return ModelCache(dllm_session.options.model_cache_dir)


@pytest.fixture
def bench(
    request: pytest.FixtureRequest, benchmark: Any, model_cache: ModelCache, dllm_session: RunSession
) -> CaseRunner:
    return CaseRunner(
        request=request,
        benchmark=benchmark,
        models=model_cache,
        allow_oom=dllm_session.options.allow_oom,
        environment=dllm_session.environment(),
        progress=dllm_session.progress,
    )
