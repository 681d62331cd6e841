"""The pytest plugin: option wiring, hooks and fixtures. The work is in plain modules.

Registered through the `pytest11` entry point `dllm_bench`. Hooks are laid out in the order
pytest calls them. Rows travel in the test reports (`user_properties`), so the process
that writes them (the serial process, or the xdist controller) sees every case once.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import shlex
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from dllm_bench.cases import Case, expand_cases
from dllm_bench.config import BenchConfig, ConfigError, load_config
from dllm_bench.devices import PINNED_MARK, visible_gpus, worker_threads
from dllm_bench.environment import capture_environment
from dllm_bench.gate import GateError, GateRule, check_gate, load_baseline, parse_gate
from dllm_bench.manifest import Manifest, final_status, utc_now, write_manifest
from dllm_bench.models.loader import ModelCache, ModelLoadError, unknown_arch_keys
from dllm_bench.outputs import OutputDirError, new_run_dir, prepare_output_dir, refuse_existing_results
from dllm_bench.progress import MODES, BarLogHandler, Progress, TerminalStream, choose_mode
from dllm_bench.results import FINAL_CSV, PARTIAL_CSV, append_row, read_rows, write_rows_atomic
from dllm_bench.resume import (
    case_key,
    completed_keys,
    latest_per_case,
    newest_run_dir,
    previous_rows,
    resume_command,
    row_key,
)
from dllm_bench.runner import Measure, error_row, forwards_per_call, measure_with_own_timer, run_case
from dllm_bench.scheduling import ModelScheduling, case_id_of
from dllm_bench.sharding import assign_shards, parse_shard
from dllm_bench.signals import GracefulStop
from dllm_bench.summary import relative_speed_lines, summary_lines

LOG = logging.getLogger("dllm_bench")

DEFAULT_CONFIG = Path("config") / "default.yaml"
DEFAULT_TIMER = "dllm_bench.timing.synchronized_timer"
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LOG_NAME = "benchmark.log"
STOP_FILE = ".stop-requested"
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
    resume: bool
    allow_oom: bool
    command_line: list[str]
    repo_dir: Path
    gates: list[GateRule] = field(default_factory=list)
    gate_baseline: list[dict[str, str]] = field(default_factory=list)
    rows: list[dict[str, object]] = field(default_factory=list)
    final_rows: list[dict[str, object]] = field(default_factory=list)
    environment_cache: dict[str, str] | None = None
    prepared: bool = False
    manifest: Manifest | None = None
    interrupted_by: str | None = None
    stopper: GracefulStop | None = None
    shard: tuple[int, int] | None = None
    progress_mode: str = "off"
    progress: Progress = field(default_factory=lambda: Progress("off"))
    bar_log_handler: logging.Handler | None = None
    case_ids: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.case_ids = frozenset(case.case_id for case in self.cases)

    def is_case(self, nodeid: str) -> bool:
        """A benchmark case's node id ends in `[<case id>]` (also on the xdist controller,
        which does not collect, and with xdist's `@group` suffix)."""
        return "[" in nodeid and case_id_of(nodeid) in self.case_ids

    def environment(self) -> dict[str, str]:
        """GPU, driver, CUDA, library versions, host and git commit; captured once."""
        if self.environment_cache is None:
            self.environment_cache = capture_environment(self.repo_dir)
        return self.environment_cache


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
        help="directory for the CSV files, log and manifest (default: a new results/<config>-<time>/ per run)",
    )
    group.addoption(
        "--resume",
        dest="dllm_resume",
        action="store_true",
        default=False,
        help="skip the cases that already have an ok row in --output-dir (default: the newest run of this config)",
    )
    group.addoption(
        "--allow-oom",
        dest="dllm_allow_oom",
        action="store_true",
        default=False,
        help="report a case that runs out of memory as skipped instead of failed (its row keeps status oom)",
    )
    group.addoption(
        "--gate",
        dest="dllm_gates",
        action="append",
        default=[],
        metavar="METRIC:+-N%",
        help="fail the session if METRIC moved past N%% against --gate-baseline in the bad direction, "
        "e.g. tokens_per_s:-10%% or latency_mean_s:+15%% (repeatable)",
    )
    group.addoption(
        "--gate-baseline",
        dest="dllm_gate_baseline",
        default=None,
        metavar="PATH",
        help="raw_metrics.csv (or a run directory) that --gate compares against",
    )
    group.addoption(
        "--shard",
        dest="dllm_shard",
        default=None,
        metavar="I/K",
        help="run only shard I (0-based) of K cost-balanced shards of the grid (SLURM job arrays)",
    )
    group.addoption(
        "--progress",
        dest="dllm_progress",
        choices=MODES,
        default="auto",
        help="progress display: bar (tqdm bars), log (a progress line in the log every 10%% of the cases "
        "or 30 s), off; auto (default) is bar on a terminal and log elsewhere",
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
        output_dir = _output_dir(config, bench_config)
        gates, gate_baseline = _gates(config)
        shard = parse_shard(config.getoption("dllm_shard")) if config.getoption("dllm_shard") else None
    except (ConfigError, OutputDirError, GateError, ValueError) as exc:
        raise pytest.UsageError(str(exc)) from None
    progress_mode = choose_mode(
        config.getoption("dllm_progress"), is_tty=sys.stderr.isatty(), is_worker=hasattr(config, "workerinput")
    )
    _default_logging(config, live=progress_mode != "bar")
    config.stash[STATE_KEY] = RunState(
        config=bench_config,
        cases=expand_cases(bench_config),
        output_dir=output_dir,
        cache_dir=_cache_dir(config),
        writes_rows=not hasattr(config, "workerinput"),
        resume=bool(config.getoption("dllm_resume")),
        allow_oom=bool(config.getoption("dllm_allow_oom")),
        command_line=[sys.executable, "-m", "pytest", *config.invocation_params.args],
        repo_dir=Path(__file__).resolve().parent,
        gates=gates,
        gate_baseline=gate_baseline,
        progress_mode=progress_mode,
        shard=shard,
    )
    _xdist_defaults(config)
    state = config.stash[STATE_KEY]
    if state.writes_rows and config.pluginmanager.hasplugin("xdist"):
        # Registered now: xdist configures its workers during session start.
        config.pluginmanager.register(XdistController(state, config), "dllm-bench-xdist")


def _gates(config: pytest.Config) -> tuple[list[GateRule], list[dict[str, str]]]:
    """--gate rules and their baseline rows, checked before anything runs."""
    specs: list[str] = config.getoption("dllm_gates")
    baseline_path = config.getoption("dllm_gate_baseline")
    if not specs:
        return [], []
    if baseline_path is None:
        raise GateError("--gate needs --gate-baseline PATH (a raw_metrics.csv or a run directory)")
    return [parse_gate(spec) for spec in specs], load_baseline(Path(baseline_path))


def _xdist_defaults(config: pytest.Config) -> None:
    """With -n: schedule by model group unless the user chose --dist; pin each worker to
    its own GPU."""
    if getattr(config.option, "dist", "no") == "load" and not _dist_given(config.invocation_params.args):
        config.option.dist = "loadgroup"
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and os.environ.get(PINNED_MARK):
        LOG.info("xdist worker %s uses GPU %s", workerinput["workerid"], os.environ.get("CUDA_VISIBLE_DEVICES"))
    elif workerinput is not None and "OMP_NUM_THREADS" not in os.environ:
        # CPU workers share the cores: torch's default (all cores each) oversubscribes them,
        # which slows small CPU cases down several times over.
        threads = worker_threads(os.cpu_count() or 1, int(workerinput.get("workercount", 1)))
        torch.set_num_threads(threads)
        LOG.info("xdist worker %s uses %d CPU threads", workerinput["workerid"], threads)


def _dist_given(args: tuple[str, ...] | list[str]) -> bool:
    return any(arg == "--dist" or arg.startswith("--dist=") or arg == "-d" for arg in args)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: one worker per visible GPU; on a CPU-only machine, half the cores (at most 4)."""
    if config.stash.get(STATE_KEY, None) is None:
        return None
    gpus = visible_gpus(os.environ)
    if gpus:
        return len(gpus)
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _default_benchmark_timer(config: pytest.Config) -> None:
    """Make pytest-benchmark's timer synchronize the GPU unless the user chose a timer."""
    if "perf_counter" in str(getattr(config.option, "benchmark_timer", "")):
        config.option.benchmark_timer = DEFAULT_TIMER


def _default_logging(config: pytest.Config, *, live: bool) -> None:
    """Log to the console and to the run's log file unless the user said otherwise. The
    console gets pytest's live logging, or with progress bars a handler that prints above
    them (see `pytest_sessionstart`). The file's path is set once the output directory
    exists (see `_prepare`)."""
    if live and config.getoption("log_cli_level") is None and not config.getini("log_cli"):
        config.option.log_cli_level = "INFO"
    if config.getoption("log_file_level") is None:
        config.option.log_file_level = "INFO"
    if config.getoption("log_file_format") is None:
        config.option.log_file_format = LOG_FORMAT
    if config.getoption("log_format") is None:
        config.option.log_format = LOG_FORMAT
    if config.getoption("log_file_date_format") is None:
        config.option.log_file_date_format = LOG_DATE_FORMAT
    if config.getoption("log_file_mode") is None:
        config.option.log_file_mode = "a"


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
            config_class = "LLaDAConfig" if spec.kind == "llada" else "LlamaConfig"
            raise ConfigError(
                f"{bench_config.path}: key 'models[{index}].arch.{unknown[0]}': expected an architecture key of "
                f"{config_class} (unknown key)"
            )


def _output_dir(config: pytest.Config, bench_config: BenchConfig) -> Path:
    """The run directory: given, the newest earlier run (--resume), or a new one."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "dllm_output_dir" in workerinput:
        return Path(workerinput["dllm_output_dir"])  # chosen (and checked) by the xdist controller
    given = config.getoption("dllm_output_dir")
    resume = config.getoption("dllm_resume")
    results_root = config.rootpath / "results"
    if given is not None:
        directory = Path(given).resolve()
        if not resume and not config.option.collectonly:
            refuse_existing_results(directory)
        return directory
    if resume:
        found = newest_run_dir(results_root, bench_config.path.stem)
        if found is None:
            raise OutputDirError(
                f"--resume: no earlier run of {bench_config.path.name} under {results_root}; "
                "run without --resume, or name the run with --output-dir"
            )
        return found
    return new_run_dir(results_root, bench_config.path.stem, dt.datetime.now())


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


def pytest_sessionstart(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is None:
        return
    state.stopper = GracefulStop(lambda name: _request_stop(session, state, name))
    state.stopper.install()
    _start_progress(state, session.config)
    if state.writes_rows:
        session.config.pluginmanager.register(RowSink(state, session.config), "dllm-bench-rows")


def _start_progress(state: RunState, config: pytest.Config) -> None:
    """Bars write to the real stderr through the capture manager; log records are then
    printed above the bars and pytest's per-test letters are left out."""
    capman = config.pluginmanager.getplugin("capturemanager")
    stream = TerminalStream(capman.global_and_fixture_disabled) if capman is not None else None
    state.progress = Progress(state.progress_mode, stream)
    if state.progress_mode != "bar":
        return
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.showfspath = False
    if config.getoption("log_cli_level") is None and not config.getini("log_cli"):
        handler = BarLogHandler(state.progress)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
        LOG.addHandler(handler)
        state.bar_log_handler = handler


def _request_stop(session: pytest.Session, state: RunState, signal_name: str) -> None:
    """Stop between cases: the session's flag, and under xdist the controller's flag and
    a stop file that every worker checks after each case (a signal sent to the
    controller alone does not reach the workers, which would run all their queued cases)."""
    reason = f"received {signal_name}: stopped after the running case"
    session.shouldstop = reason
    dsession = session.config.pluginmanager.getplugin("dsession")
    if dsession is not None:
        dsession.shouldstop = reason
        if state.prepared:
            (state.output_dir / STOP_FILE).write_text(reason + "\n", encoding="utf-8")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """An xdist worker stops after this case when the controller asked for a stop."""
    result = yield
    state = item.config.stash.get(STATE_KEY, None)
    if state is not None and not state.writes_rows and not item.session.shouldstop:
        stop_file = state.output_dir / STOP_FILE
        if stop_file.exists():
            item.session.shouldstop = stop_file.read_text(encoding="utf-8").strip() or "stop requested"
    return result


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return
    if state.stopper is not None:
        state.stopper.restore()
    state.progress.close()
    if state.bar_log_handler is not None:
        LOG.removeHandler(state.bar_log_handler)
        state.bar_log_handler = None


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
    if state is None or not any(_case_of(item) is not None for item in items):
        return
    if state.shard:
        _deselect_other_shards(state, config, items)
    already_done = _deselect_done(state, config, items) if state.resume else 0
    if config.option.collectonly:
        return
    planned = len([item for item in items if _case_of(item) is not None])
    if not state.writes_rows:
        _worker_log_file(state, config)
        return
    state.progress.start(planned)
    _prepare(state, config)
    assert state.manifest is not None
    state.manifest.counts.planned = planned
    state.manifest.counts.deselected = already_done


def _deselect(config: pytest.Config, items: list[pytest.Item], drop_case: Callable[[Case], bool]) -> int:
    """Deselect the case items for which `drop_case` is true (reported as deselected)."""
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        case = _case_of(item)
        (drop if case is not None and drop_case(case) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    return len(drop)


def _deselect_other_shards(state: RunState, config: pytest.Config, items: list[pytest.Item]) -> int:
    assert state.shard is not None
    index, count = state.shard
    assignment = assign_shards(state.cases, count)
    dropped = _deselect(config, items, lambda case: assignment[case.case_id] != index)
    here = len([item for item in items if _case_of(item) is not None])
    LOG.info("shard %d/%d: %d cases here, %d in other shards", index, count, here, dropped)
    return dropped


def _deselect_done(state: RunState, config: pytest.Config, items: list[pytest.Item]) -> int:
    """--resume: drop the cases whose latest row in the output directory is ok."""
    done = completed_keys(previous_rows(state.output_dir))
    dropped = _deselect(config, items, lambda case: case_key(case) in done)
    left = len([item for item in items if _case_of(item) is not None])
    if left == 0:
        LOG.info("resume: all %d selected cases already have ok rows in %s; nothing to run", dropped, state.output_dir)
    else:
        LOG.info("resume: %d cases already done in %s, %d to run", dropped, state.output_dir, left)
    return dropped


def _worker_log_file(state: RunState, config: pytest.Config) -> None:
    """An xdist worker logs to its own file (`benchmark-gw0.log`, ...) beside the run's log."""
    logging_plugin = config.pluginmanager.get_plugin("logging-plugin")
    workerid = getattr(config, "workerinput", {}).get("workerid", "worker")
    if logging_plugin is not None and config.getoption("log_file") is None and not config.getini("log_file"):
        logging_plugin.set_log_path(str(state.output_dir / f"benchmark-{workerid}.log"))


def _prepare(state: RunState, config: pytest.Config) -> None:
    """Create the output directory before any model loads (a usage error if it is not
    writable), point pytest's log file there and write the manifest of a running run."""
    if state.prepared:
        return
    try:
        prepare_output_dir(state.output_dir)
    except OutputDirError as exc:
        raise pytest.UsageError(str(exc)) from None
    (state.output_dir / STOP_FILE).unlink(missing_ok=True)
    logging_plugin = config.pluginmanager.get_plugin("logging-plugin")
    if logging_plugin is not None and config.getoption("log_file") is None and not config.getini("log_file"):
        logging_plugin.set_log_path(str(state.output_dir / LOG_NAME))
    state.manifest = Manifest(
        status="running",
        config_path=str(state.config.path),
        config=dict(state.config.raw),
        command_line=state.command_line,
        output_dir=str(state.output_dir),
        started_at=utc_now(),
        resumed=state.resume,
        environment=state.environment(),
    )
    write_manifest(state.output_dir, state.manifest)
    state.prepared = True
    LOG.info("config %s: %d cases in the grid; results go to %s", state.config.path, len(state.cases), state.output_dir)


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
    """Appends each finished case's row and, at the end, writes the final CSV and manifest.

    Registered only in the process that writes rows: the serial process, or the xdist
    controller, which receives every worker's reports with their user properties.
    """

    def __init__(self, state: RunState, config: pytest.Config) -> None:
        self.state = state
        self.config = config
        self.gate_lines: list[str] = []

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        if self.state.is_case(nodeid):
            self.state.progress.case_started(case_id_of(nodeid))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        row = _row_of(report)
        if row is not None and report.when in ("call", "setup"):
            self._append(row)
        if self.state.is_case(report.nodeid) and (
            report.when == "call" or (report.when == "setup" and not report.passed)
        ):
            self.state.progress.case_finished(report.outcome)
        if report.skipped and report.when in ("setup", "call") and self.state.is_case(report.nodeid):
            LOG.info("case %s: skipped: %s", report.nodeid, _skip_reason(report))
            if self.state.manifest is not None:
                self.state.manifest.counts.skipped += 1

    def _append(self, row: dict[str, object]) -> None:
        _prepare(self.state, self.config)
        append_row(self.state.output_dir / PARTIAL_CSV, row)
        self.state.rows.append(row)
        assert self.state.manifest is not None
        if row.get("status") == "ok":
            self.state.manifest.counts.done += 1
        else:
            self.state.manifest.counts.failed += 1

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        stopper = self.state.stopper
        received = stopper.received if stopper else []
        self.state.interrupted_by = received[-1] if received else "SIGINT"

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.state.progress.close()
        if not self.state.prepared or self.state.manifest is None:
            return
        (self.state.output_dir / STOP_FILE).unlink(missing_ok=True)
        if self.state.interrupted_by is not None:
            LOG.warning("run interrupted by %s; saving the finished cases", self.state.interrupted_by)
        # The latest row of each case of this config (a resumed directory may also hold
        # rows of an earlier, changed config: they stay in the partial file only).
        grid = {case_key(case) for case in self.state.cases}
        partial = read_rows(self.state.output_dir / PARTIAL_CSV)
        rows = [dict(row) for row in latest_per_case(partial) if row_key(row) in grid]
        self.state.final_rows = rows
        final = self.state.output_dir / FINAL_CSV
        write_rows_atomic(final, rows)
        if self.state.gates and not self._gate_passes(rows):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        manifest = self.state.manifest
        interrupted = self.state.interrupted_by is not None or exitstatus == pytest.ExitCode.INTERRUPTED
        manifest.status = final_status(
            interrupted=interrupted,
            failed=manifest.counts.failed,
            internal_error=exitstatus == pytest.ExitCode.INTERNAL_ERROR,
        )
        manifest.signal = self.state.interrupted_by
        manifest.ended_at = utc_now()
        write_manifest(self.state.output_dir, manifest)
        LOG.info("saved %d rows (%d from this run) to %s", len(rows), len(self.state.rows), final)
        if self.state.resume and manifest.counts.planned == 0 and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK

    def _gate_passes(self, rows: list[dict[str, object]]) -> bool:
        result = check_gate(rows, self.state.gate_baseline, self.state.gates)
        self.gate_lines = [f"gate: compared {result.compared} case/metric pairs against the baseline"]
        if result.unmatched:
            self.gate_lines.append(f"gate: {len(result.unmatched)} cases have no ok baseline row and were not gated")
        self.gate_lines += [f"gate FAILED: {failure.describe()}" for failure in result.failures]
        for line in self.gate_lines:
            (LOG.error if "FAILED" in line else LOG.info)(line)
        return not result.failures

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.state.prepared or self.state.manifest is None:
            return
        rows = self.state.final_rows
        if rows:
            terminalreporter.section("dllm-bench summary", sep="-")
            for line in [*summary_lines(rows), "", *relative_speed_lines(rows)]:
                terminalreporter.write_line(line)
        for line in self.gate_lines:
            terminalreporter.write_line(line, red="FAILED" in line)
        if _xdist_active(self.config):
            terminalreporter.write_line(
                "dllm-bench: pytest-benchmark is off under xdist (no --benchmark-json, autosave or compare); "
                "every case is still fully measured in raw_metrics.csv"
            )
        out = self.state.output_dir
        counts = self.state.manifest.counts
        terminalreporter.write_line(
            f"dllm-bench: {counts.done} ok, {counts.failed} failed, {counts.skipped} skipped, "
            f"{counts.deselected} already done; results in {out / FINAL_CSV}, log {out / LOG_NAME}"
        )
        if self.state.manifest.status == "interrupted":
            resume = shlex.join(resume_command(self.config.invocation_params.args, out))
            terminalreporter.write_line(
                f"dllm-bench: interrupted by {self.state.interrupted_by}; resume with: {resume}"
            )


@pytest.hookimpl(wrapper=True)
def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    """With progress bars, pytest's per-test letters and words would land on the bars:
    keep the outcome category (for the summary counts), drop the letter and the word."""
    result = yield
    state = config.stash.get(STATE_KEY, None)
    if state is None or state.progress_mode != "bar" or not isinstance(result, tuple) or len(result) != 3:
        return result
    if not state.is_case(report.nodeid):
        return result
    return (result[0], "", "")


def _xdist_active(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "dist", "no") != "no" or hasattr(config, "workerinput"))


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    state = config.stash.get(STATE_KEY, None)
    if state is not None:
        machine_info["dllm_bench"] = state.environment()


class XdistController:
    """Controller-side xdist hooks, registered only when xdist is installed: hand the
    output directory to the workers and start the run when the first worker has
    collected (the controller itself does not collect)."""

    def __init__(self, state: RunState, config: pytest.Config) -> None:
        self.state = state
        self.config = config
        self.started = False

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "loadgroup":
            return None
        return ModelScheduling(config, log, self.state.cases)

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["dllm_output_dir"] = str(self.state.output_dir)

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.started:
            return
        selected = [nodeid for nodeid in ids if self.state.is_case(nodeid)]
        if not selected:
            return
        self.started = True
        _prepare(self.state, self.config)
        assert self.state.manifest is not None
        self.state.manifest.counts.planned = len(selected)
        if self.state.resume:
            done = completed_keys(previous_rows(self.state.output_dir))
            self.state.manifest.counts.deselected = len([c for c in self.state.cases if case_key(c) in done])
        self.state.progress.start(len(selected))


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


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
    allow_oom: bool
    environment: dict[str, str]
    progress: Progress

    def run(self, case: Case) -> dict[str, object]:
        LOG.info("case %s: start", case.case_id)
        loaded = None
        inner = None
        try:
            with self.progress.loading(case.model.name) if not self.models.is_loaded(case.model) else nullcontext():
                loaded = self.models.get(case.model)
            inner = self.progress.case_bar(forwards_per_call(case), case.warmup_rounds, case.measured_rounds)
            row = run_case(case, loaded, self._measure(case), inner)
        except torch.cuda.OutOfMemoryError as exc:
            self._failed(case, error_row(case, loaded, exc, status="oom"), exc)
            release_memory()
            if self.allow_oom:
                pytest.skip(f"out of memory (--allow-oom): {str(exc).splitlines()[0] if str(exc) else ''}")
            raise
        except ModelLoadError as exc:
            self._failed(case, error_row(case, loaded, exc), exc)
            pytest.fail(str(exc), pytrace=False)
        except Exception as exc:
            self._failed(case, error_row(case, loaded, exc), exc)
            release_memory()
            raise
        finally:
            if inner is not None:
                inner.close()
        self._attach(row)
        LOG.info(
            "case %s: done, mean %s s, %s tokens/s, nfe %s",
            case.case_id,
            row["latency_mean_s"],
            row["tokens_per_s"],
            row["nfe"],
        )
        return row

    def _failed(self, case: Case, row: dict[str, object], exc: BaseException) -> None:
        self._attach(row)
        LOG.error("case %s: %s: %s", case.case_id, row["status"], row["error"])

    def _attach(self, row: dict[str, object]) -> None:
        row.update(self.environment)
        self.request.node.user_properties.append((ROW_PROPERTY, row))
        if self.benchmark is not None and getattr(self.benchmark, "enabled", False):
            self.benchmark.extra_info.update({k: v for k, v in row.items() if v not in (None, "")})

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


def release_memory() -> None:
    """Give back what a failed case held so the next case starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@pytest.fixture
def bench(request: pytest.FixtureRequest, benchmark: Any, model_cache: ModelCache, dllm_state: RunState) -> CaseRunner:
    return CaseRunner(
        request=request,
        benchmark=benchmark,
        models=model_cache,
        allow_oom=dllm_state.allow_oom,
        environment=dllm_state.environment(),
        progress=dllm_state.progress,
    )
