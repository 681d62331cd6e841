"""The pytest plugin: option wiring, hooks and fixtures. The work is in plain modules.

Registered through the `pytest11` entry point `dllm_bench`. Hooks are laid out in the order
pytest calls them.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from dllm_bench.cases import Case, expand_cases
from dllm_bench.config import BenchConfig, ConfigError, load_config
from dllm_bench.models.loader import ModelCache, ModelLoadError, unknown_arch_keys
from dllm_bench.outputs import OutputDirError, new_run_dir, prepare_output_dir, refuse_existing_results
from dllm_bench.results import FINAL_CSV, PARTIAL_CSV, append_row, write_rows_atomic
from dllm_bench.runner import error_row, measure_with_own_timer, run_case

LOG = logging.getLogger("dllm_bench")

DEFAULT_CONFIG = Path("config") / "default.yaml"
DEFAULT_TIMER = "dllm_bench.timing.synchronized_timer"
ROW_PROPERTY = "dllm_bench_row"
CASE_FIXTURES = {"llada_case": "llada", "baseline_case": "baseline"}


@dataclass
class RunState:
    """Everything one pytest process knows about the benchmark run."""

    config: BenchConfig
    cases: list[Case]
    output_dir: Path
    cache_dir: Path
    writes_rows: bool
    rows: list[dict[str, object]] = field(default_factory=list)
    prepared: bool = False


STATE_KEY = pytest.StashKey[RunState]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dllm-bench", "dllm-bench: LLaDA vs autoregressive inference benchmark")
    group.addoption(
        "--config",
        dest="dllm_config",
        default=None,
        metavar="PATH",
        help=f"YAML grid to run (default: {DEFAULT_CONFIG} under the rootdir, if it exists)",
    )
    group.addoption(
        "--output-dir",
        dest="dllm_output_dir",
        default=None,
        metavar="DIR",
        help="directory for raw_metrics*.csv (default: a new results/<config>-<time>/ per run)",
    )
    group.addoption(
        "--model-cache-dir",
        dest="dllm_model_cache_dir",
        default=None,
        metavar="DIR",
        help="where random-init model folders are written and reused "
        "(default: $DLLM_BENCH_CACHE or ~/.cache/dllm-bench/models)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    _default_benchmark_timer(config)
    config_path = _config_path(config)
    if config_path is None:
        return
    try:
        bench_config = load_config(config_path)
        _check_arch_keys(bench_config)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    output_dir = _output_dir(config, bench_config)
    config.stash[STATE_KEY] = RunState(
        config=bench_config,
        cases=expand_cases(bench_config),
        output_dir=output_dir,
        cache_dir=_cache_dir(config),
        writes_rows=not hasattr(config, "workerinput"),
    )


def _default_benchmark_timer(config: pytest.Config) -> None:
    """Make pytest-benchmark's timer synchronize the GPU unless the user chose a timer."""
    if not hasattr(config.option, "benchmark_timer"):
        return
    if "perf_counter" in str(config.option.benchmark_timer):
        config.option.benchmark_timer = DEFAULT_TIMER


def _config_path(config: pytest.Config) -> Path | None:
    given = config.getoption("dllm_config")
    if given is not None:
        return Path(given)
    default = config.rootpath / DEFAULT_CONFIG
    return default if default.is_file() else None


def _check_arch_keys(bench_config: BenchConfig) -> None:
    for index, spec in enumerate(bench_config.models):
        unknown = unknown_arch_keys(spec) if spec.is_random_init else []
        if unknown:
            raise ConfigError(
                f"{bench_config.path}: key 'models[{index}].arch.{unknown[0]}': expected an architecture key of "
                f"{'LLaDAConfig' if spec.kind == 'llada' else 'LlamaConfig'} (unknown key)"
            )


def _output_dir(config: pytest.Config, bench_config: BenchConfig) -> Path:
    given = config.getoption("dllm_output_dir")
    if given is None:
        return new_run_dir(config.rootpath / "results", bench_config.path.stem, dt.datetime.now())
    directory = Path(given)
    if not config.option.collectonly:
        try:
            refuse_existing_results(directory)
        except OutputDirError as exc:
            raise pytest.UsageError(str(exc)) from None
    return directory


def _cache_dir(config: pytest.Config) -> Path:
    given = config.getoption("dllm_model_cache_dir") or os.environ.get("DLLM_BENCH_CACHE")
    if given:
        return Path(given)
    return Path.home() / ".cache" / "dllm-bench" / "models"


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return []
    llada = sum(1 for c in state.cases if c.kind == "llada")
    return [
        f"dllm-bench: config {state.config.path} ({len(state.cases)} cases: {llada} llada, "
        f"{len(state.cases) - llada} baseline); output {state.output_dir}"
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture_name, kind in CASE_FIXTURES.items():
        if fixture_name not in metafunc.fixturenames:
            continue
        state = metafunc.config.stash.get(STATE_KEY, None)
        cases = [c for c in state.cases if c.kind == kind] if state else []
        metafunc.parametrize(fixture_name, cases, ids=[c.case_id for c in cases])


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is None or config.option.collectonly or not state.writes_rows:
        return
    if any(_case_of(item) is not None for item in items):
        _prepare(state)


def _prepare(state: RunState) -> None:
    """Create the output directory before any model loads; a usage error if unwritable."""
    if state.prepared:
        return
    try:
        prepare_output_dir(state.output_dir)
    except OutputDirError as exc:
        raise pytest.UsageError(str(exc)) from None
    state.prepared = True
    LOG.info("config %s: %d cases; results go to %s", state.config.path, len(state.cases), state.output_dir)


def _case_of(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for name in CASE_FIXTURES:
        if name in callspec.params:
            case: Case = callspec.params[name]
            return case
    return None


def _row_of(report: pytest.TestReport) -> dict[str, object] | None:
    for name, value in report.user_properties:
        if name == ROW_PROPERTY and isinstance(value, dict):
            return value
    return None


class RowSink:
    """Appends each finished case's row (from the test report) and writes the final CSV.

    Registered only in the process that writes rows: the serial process, or the xdist
    controller, which receives every worker's reports with their user properties.
    """

    def __init__(self, state: RunState) -> None:
        self.state = state

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = _row_of(report)
        if row is None or report.when not in ("call", "setup"):
            return
        _prepare(self.state)
        append_row(self.state.output_dir / PARTIAL_CSV, row)
        self.state.rows.append(row)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.state.rows:
            return
        final = self.state.output_dir / FINAL_CSV
        write_rows_atomic(final, self.state.rows)
        LOG.info("wrote %d rows to %s", len(self.state.rows), final)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.state.rows:
            terminalreporter.write_line(
                f"dllm-bench: {len(self.state.rows)} rows in {self.state.output_dir / FINAL_CSV}"
            )


def pytest_sessionstart(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is not None and state.writes_rows:
        session.config.pluginmanager.register(RowSink(state), "dllm-bench-rows")


@pytest.fixture(scope="session")
def dllm_state(pytestconfig: pytest.Config) -> RunState:
    state = pytestconfig.stash.get(STATE_KEY, None)
    if state is None:
        raise pytest.UsageError(f"dllm-bench has no grid: pass --config PATH (no {DEFAULT_CONFIG} under the rootdir)")
    return state


@pytest.fixture(scope="session")
def model_cache(dllm_state: RunState) -> ModelCache:
    """One model cache per process: each model entry is loaded once."""
    return ModelCache(dllm_state.cache_dir)


@dataclass
class CaseRunner:
    """What a benchmark test calls: load (cached), measure, attach the row to the report."""

    request: pytest.FixtureRequest
    benchmark: Any
    models: ModelCache

    def run(self, case: Case) -> dict[str, object]:
        loaded = None
        try:
            loaded = self.models.get(case.model)
            LOG.info("case %s: start", case.case_id)
            row = run_case(case, loaded, self._measure(case))
        except (Exception, torch.cuda.OutOfMemoryError) as exc:
            self._attach(error_row(case, loaded, exc))
            LOG.error("case %s: failed: %s", case.case_id, exc)
            if isinstance(exc, ModelLoadError):
                pytest.fail(str(exc), pytrace=False)
            raise
        self._attach(row)
        LOG.info(
            "case %s: done, mean %.4f s, %s tokens/s, nfe %s",
            case.case_id,
            float(str(row["latency_mean_s"])),
            row["tokens_per_s"],
            row["nfe"],
        )
        return row

    def _attach(self, row: dict[str, object]) -> None:
        self.request.node.user_properties.append((ROW_PROPERTY, row))
        if self.benchmark is not None and getattr(self.benchmark, "enabled", False):
            self.benchmark.extra_info.update({k: v for k, v in row.items() if v not in (None, "")})

    def _measure(self, case: Case) -> Callable[[Callable[[], torch.Tensor], int, int], list[float]]:
        bench = self.benchmark
        if bench is None or not getattr(bench, "enabled", False):
            return measure_with_own_timer
        bench.group = f"p{case.prompt_length}-g{case.gen_length}-b{case.batch_size}"

        def measure(call: Callable[[], torch.Tensor], warmup_rounds: int, measured_rounds: int) -> list[float]:
            bench.pedantic(call, rounds=measured_rounds, warmup_rounds=warmup_rounds, iterations=1)
            return list(bench.stats.stats.data)

        return measure


@pytest.fixture
def bench(request: pytest.FixtureRequest, benchmark: Any, model_cache: ModelCache) -> CaseRunner:
    return CaseRunner(request=request, benchmark=benchmark, models=model_cache)
