"""One benchmark run's lifecycle: start, select, record each case, stop, finish.

`RunSession` is created by the plugin when the suite is asked for. It reads the grid and
the options and puts the run's parts together: the run directory (`rundir`: chosen,
locked, the rows it held, the final CSV), the recorder (`recorder`: each test report ->
row -> counts -> manifest), the stop control (`stopping`: signals and the xdist stop
file), and at the end the outputs (`finish`: final CSV, gate, report, manifest, summary),
which it calls in order. The process that writes rows is the serial pytest process or the
xdist controller; xdist workers only measure (their rows travel to the controller in the
test reports).
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from dllm_bench.backends import backend
from dllm_bench.cases import Case, case_id_of, expand_cases
from dllm_bench.config import BenchConfig, check_runnable, load_config
from dllm_bench.environment import capture_environment, threads_warning, usable_cores
from dllm_bench.finish import FINISH_SINKS, Finish
from dllm_bench.kinds import CASE_FIXTURES
from dllm_bench.logs import (
    LOG_DATE_FORMAT,
    LOG_FORMAT,
    LOG_NAME,
    close_pytest_log_file,
    configure_pytest_logging,
    has_logging_plugin,
    own_file_handler,
    remove_handler,
)
from dllm_bench.options import DEFAULT_CONFIG, Options
from dllm_bench.outputs import OutputDirError
from dllm_bench.progress import BarLogHandler, Progress, TerminalStream, choose_mode
from dllm_bench.recorder import ROW_PROPERTY, Recorder
from dllm_bench.resume import completed_keys
from dllm_bench.rows import CaseKey
from dllm_bench.rundir import RunDirectory
from dllm_bench.sharding import assign_shards, parse_shard
from dllm_bench.sinks.atomic import StorageError
from dllm_bench.sinks.csvfiles import ResultsFileError
from dllm_bench.sinks.gate import Gate, GateError
from dllm_bench.sinks.manifest import Counts, Manifest, release_space, utc_now
from dllm_bench.spec import ConfigError
from dllm_bench.stopping import StopControl

__all__ = ["ROW_PROPERTY", "RUN_ONLY_COLUMNS", "RunSession", "UsageProblem", "case_of"]

LOG = logging.getLogger("dllm_bench")

DEFAULT_THREADS = 1
RUN_ONLY_COLUMNS = frozenset({"git_commit", "git_dirty", "xdist_worker"})


class UsageProblem(ValueError):
    """Something the user must change before the run can start (pytest's exit code 4)."""


@dataclass
class RunSession:
    """Everything one pytest process knows about the benchmark run."""

    pytest_config: pytest.Config
    options: Options
    config: BenchConfig
    cases: list[Case]
    run_dir: RunDirectory
    role: str  # serial, controller or worker
    command_line: list[str]
    shard: tuple[int, int] | None = None
    gate: Gate | None = None
    recorder: Recorder = field(init=False)
    stop: StopControl = field(init=False)
    finished: Finish | None = None
    progress_mode: str = "off"
    case_ids: frozenset[str] = field(init=False)
    grid_keys: list[CaseKey] = field(init=False)
    _raise_exceptions: bool = True
    _environment: dict[str, object] | None = None
    _log_handlers: list[logging.Handler] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.case_ids = frozenset(case.case_id for case in self.cases)
        self.grid_keys = [case.key() for case in self.cases]
        self.stop = StopControl(
            self.pytest_config, self.run_dir.path, self._log_handlers, lambda: self.recorder.storage_error
        )
        self.recorder = Recorder(self.run_dir.path, self.is_case, self.stop.request)

    @property
    def output_dir(self) -> Path:
        return self.run_dir.path

    @property
    def counts(self) -> Counts:
        return self.recorder.counts

    @property
    def progress(self) -> Progress:
        return self.recorder.progress

    @property
    def manifest(self) -> Manifest | None:
        return self.recorder.manifest

    @property
    def storage_error(self) -> str:
        return self.finished.storage_error if self.finished is not None else self.recorder.storage_error

    # --- start -------------------------------------------------------------------------

    @classmethod
    def start(cls, config: pytest.Config, options: Options) -> RunSession:
        """Read the grid and every option, choose and lock the run directory; raises
        UsageProblem (nothing is written) for anything the user must change."""
        role = "worker" if hasattr(config, "workerinput") else ("controller" if _xdist_on(config) else "serial")
        try:
            bench_config = load_config(_config_path(config, options))
            if role != "worker" and not config.option.collectonly:
                check_runnable(bench_config)  # what only this machine can tell; listing cases works anywhere
            # Only the process that writes the rows applies the gate; a worker need not read the reference.
            gate = (
                Gate.from_options(options.gates, options.gate_reference, options.gate_allow_missing)
                if role != "worker"
                else None
            )
            shard = parse_shard(options.shard) if options.shard else None
        except (ConfigError, GateError, ValueError) as exc:
            raise UsageProblem(str(exc)) from None
        command_line = [sys.executable, "-m", "pytest", *config.invocation_params.args]
        session = cls(
            pytest_config=config,
            options=options,
            config=bench_config,
            cases=expand_cases(bench_config),
            run_dir=_run_dir(config, options, bench_config, role, command_line),
            role=role,
            command_line=command_line,
            shard=shard,
            gate=gate,
        )
        session._set_threads()
        session._configure_logging()
        return session

    def _set_threads(self) -> None:
        """torch's CPU threads in this process (an xdist worker too): the option, the grid's
        `threads`, OMP_NUM_THREADS when set, else DEFAULT_THREADS (see the README's
        'Stable numbers' for why one)."""
        threads = self.options.threads or self.config.threads
        if threads is None and "OMP_NUM_THREADS" in os.environ:
            return
        torch.set_num_threads(threads or DEFAULT_THREADS)
        LOG.debug("torch uses %d CPU threads", torch.get_num_threads())
        if warning := threads_warning(torch.get_num_threads(), usable_cores()):
            LOG.warning("%s", warning)

    def _configure_logging(self) -> None:
        config = self.pytest_config
        if config.option.collectonly:
            return
        # A log file on a full disk must not print a traceback for every record: the
        # storage problem is reported once, by the row writer.
        self._raise_exceptions = logging.raiseExceptions
        logging.raiseExceptions = False
        log_path = self.output_dir / self.log_name()
        self.progress_mode = choose_mode(
            self.options.progress, is_tty=sys.stderr.isatty(), is_worker=self.role == "worker"
        )
        if has_logging_plugin(config):
            configure_pytest_logging(config, log_path, live=self.progress_mode != "bar")
        else:
            self._log_handlers.append(own_file_handler(log_path))

    def log_name(self) -> str:
        """`benchmark.log`; an xdist worker logs to `benchmark-gw0.log`, ..."""
        if self.role == "worker":
            return f"benchmark-{self.pytest_config.workerinput['workerid']}.log"  # type: ignore[attr-defined]
        return LOG_NAME

    # --- session start -------------------------------------------------------------------

    def header(self) -> list[str]:
        kinds = Counter(c.kind for c in self.cases)
        per_kind = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
        return [
            f"dllm-bench: config {self.config.path} ({len(self.cases)} cases: {per_kind}); output {self.output_dir}"
        ]

    def begin(self, pytest_session: pytest.Session) -> None:
        """Install the signal handlers and the progress display (pytest_sessionstart)."""
        self.stop.install(pytest_session)
        mode = self.progress_mode
        capman = self.pytest_config.pluginmanager.getplugin("capturemanager")
        stream = TerminalStream(capman.global_and_fixture_disabled) if capman is not None else None
        self.recorder.progress = Progress(mode, self.counts, stream)
        if mode != "bar":
            return
        reporter = self.pytest_config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            reporter.showfspath = False
        if not has_logging_plugin(self.pytest_config) or (
            self.pytest_config.getoption("log_cli_level") is None and not self.pytest_config.getini("log_cli")
        ):
            handler = BarLogHandler(self.progress)
            handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
            LOG.addHandler(handler)
            self._log_handlers.append(handler)

    def environment(self) -> dict[str, object]:
        """GPU, driver, CUDA, library versions, host and git commit; captured once."""
        if self._environment is None:
            self._environment = capture_environment(Path(__file__).resolve().parent)
        return self._environment

    def machine_info(self) -> dict[str, object]:
        """The environment without what changes from run to run on one machine (the git
        commit and dirty flag, which pytest-benchmark keeps in its commit_info, and the
        xdist worker): pytest-benchmark warns when the machine_info of a compared run differs."""
        return {key: value for key, value in self.environment().items() if key not in RUN_ONLY_COLUMNS}

    # --- selection -----------------------------------------------------------------------

    def cases_for(self, fixture_name: str) -> list[Case]:
        """The cases a test with this case fixture is parametrized with (`<kind>_case`: the
        kind's cases)."""
        return [case for case in self.cases if backend(case.kind).case_fixture == fixture_name]

    def select(self, items: list[pytest.Item]) -> None:
        """pytest_collection_modifyitems: drop other shards' and (--resume) done cases, then
        fix the plan. Writes the running manifest in the process that writes rows."""
        drop_tests_without_cases(self.pytest_config, items)
        by_item = {id(item): case for item in items if (case := case_of(item)) is not None}
        if not by_item:
            return
        try:
            drop = self.deselect(list(by_item.values()))
        except ResultsFileError as exc:
            raise UsageProblem(str(exc)) from None
        if drop:
            dropped = [item for item in items if id(item) in by_item and by_item[id(item)].case_id in drop]
            self.pytest_config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if item not in dropped]
        if self.role != "controller":
            self.planned(len([item for item in items if id(item) in by_item]))

    def is_case(self, nodeid: str) -> bool:
        """A benchmark case's node id ends in `[<case id>]` (also on the xdist controller,
        which does not collect, and with xdist's `@group` suffix)."""
        return "[" in nodeid and case_id_of(nodeid) in self.case_ids

    def deselect(self, cases: Sequence[Case]) -> set[str]:
        """Case ids to drop: other shards' cases, and with --resume the cases already done."""
        drop: set[str] = set()
        if self.shard is not None:
            index, count = self.shard
            assignment = assign_shards(self.cases, count)
            other = {c.case_id for c in cases if assignment[c.case_id] != index}
            LOG.info(
                "shard %d/%d: %d cases here, %d in other shards", index, count, len(cases) - len(other), len(other)
            )
            drop |= other
        if self.options.resume:
            done = completed_keys(self.run_dir.rows_held_at_start())
            already = {c.case_id for c in cases if c.key() in done and c.case_id not in drop}
            self.counts.already_done = len(already)
            left = len(cases) - len(drop) - len(already)
            if left == 0:
                LOG.info(
                    "resume: all %d selected cases already have ok rows in %s; nothing to run",
                    len(already),
                    self.output_dir,
                )
            else:
                LOG.info("resume: %d cases already done in %s, %d to run", len(already), self.output_dir, left)
            drop |= already
        return drop

    def planned(self, count: int) -> None:
        """The selection is final: `count` cases will run. Writes the running manifest."""
        self.counts.planned = count
        if self.role == "worker" or self.pytest_config.option.collectonly:
            return
        self.progress.start(count)
        manifest = Manifest(
            status="running",
            config_path=str(self.config.path.resolve()),
            config=dict(self.config.raw),
            command_line=self.command_line,
            output_dir=str(self.output_dir),
            started_at=utc_now(),
            resumed=self.options.resume,
            counts=self.counts,
            environment=self.environment(),
        )
        self.stop.remove_stop_file()
        gate_pairs = count * len(self.gate.rules) if self.gate is not None else 0
        try:
            self.recorder.start_manifest(manifest, gate_pairs)
        except StorageError as exc:
            raise UsageProblem(f"{exc}; free space or pass another --output-dir") from None
        self.stop.stop_file_on = True
        LOG.info(
            "config %s: %d cases in the grid, %d to run; results go to %s",
            self.config.path,
            len(self.cases),
            count,
            self.output_dir,
        )

    # --- each case ------------------------------------------------------------------------

    def case_started(self, nodeid: str) -> None:
        if self.is_case(nodeid):
            self.progress.case_started(case_id_of(nodeid))

    def report(self, report: pytest.TestReport) -> None:
        """pytest_runtest_logreport (serial process or xdist controller): append the row a
        case attached, and count the case once when its outcome is known. A signal that
        arrives meanwhile is acted on afterwards: a row on disk is a counted row."""
        if self.role == "worker":
            return
        try:
            with self.stop.held():
                self.recorder.record(report)
        finally:
            self.stop.log_notes()

    def after_case(self, pytest_session: pytest.Session) -> None:
        """An xdist worker stops after this case when the controller asked for a stop."""
        if self.role == "worker":
            self.stop.worker_after_case(pytest_session)

    # --- stopping ------------------------------------------------------------------------

    def interrupted(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """pytest_keyboard_interrupt: what stopped the run; nothing interrupts the save."""
        self.stop.interrupted(excinfo)

    # --- finish --------------------------------------------------------------------------

    def finish(self, session: pytest.Session, exitstatus: int) -> None:
        """The outputs, in order (`finish.FINISH_SINKS`): the final CSV (the union of
        everything the directory holds), the gate, the report, the manifest, the summary.
        Signals arriving now are recorded, not acted on."""
        self.stop.defer()
        self.stop.log_notes()
        self.progress.close()
        if self.role == "worker" or self.manifest is None:
            return
        self.stop.remove_stop_file()
        interrupted_by = self.stop.interrupted_by
        if interrupted_by is not None:
            LOG.warning("run interrupted by %s; saving the finished cases", interrupted_by)
        if self.options.resume and self.counts.planned == 0 and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK  # a finished grid resumed: nothing to do is success
        finished = Finish(
            output_dir=self.output_dir,
            grid_keys=self.grid_keys,
            manifest=self.manifest,
            counts=self.counts,
            exitstatus=exitstatus,
            interrupted_by=interrupted_by,
            storage_error=self.recorder.storage_error,
            rows_written=self.recorder.rows_written,
            gate=self.gate,
            report=self.options.report,
            xdist=_xdist_on(self.pytest_config),
            invocation_args=self.pytest_config.invocation_params.args,
        )
        self.finished = finished
        for sink in FINISH_SINKS:
            sink.write(finished)
        self.stop.log_notes()
        if self.gate is not None and self.gate.result is not None and not self.gate.passed:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if finished.storage_error and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.INTERRUPTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    # --- reporting -----------------------------------------------------------------------

    def summary(self) -> list[tuple[str, bool]]:
        """The terminal summary's lines, each with whether it is bad news (red)."""
        return self.finished.summary if self.finished is not None else []

    def closing_line(self) -> str | None:
        """The last line of the terminal output, below pytest's "N passed", when results
        could not be written or the gate failed."""
        if self.storage_error and self.role != "worker":
            return f"dllm-bench: RESULTS NOT FULLY SAVED: {self.storage_error}; exit code 1"
        return self.gate.closing_line() if self.gate is not None else None

    # --- end -----------------------------------------------------------------------------

    def release(self) -> None:
        if self.manifest is not None and self.role != "worker":
            release_space(self.output_dir)
        self.run_dir.release()

    def close_log_files(self) -> list[str]:
        """pytest_unconfigure, before pytest's logging plugin: the run's log handlers closed;
        a console line for each whose last records could not be written (a full disk)."""
        self.stop.log_notes()
        errors = [close_pytest_log_file(self.pytest_config)]
        errors += [remove_handler(handler) for handler in self._log_handlers]
        self._log_handlers.clear()
        prefix = "dllm-bench: the last log records were not written to the log file"
        return [f"{prefix}: {error}" for error in errors if error]

    def close(self) -> None:
        """pytest_unconfigure, last: signal handlers back, progress closed, lock released."""
        self.stop.restore()
        self.progress.close()
        self.close_log_files()
        logging.raiseExceptions = self._raise_exceptions
        self.release()


def _run_dir(
    config: pytest.Config, options: Options, bench_config: BenchConfig, role: str, command_line: list[str]
) -> RunDirectory:
    """The run directory: an xdist worker's is the controller's; else chosen and locked."""
    if role == "worker":
        return RunDirectory(Path(config.workerinput["dllm_output_dir"]))  # type: ignore[attr-defined]
    try:
        return RunDirectory.choose(
            output_dir=options.output_dir,
            resume=options.resume,
            results_root=config.rootpath / "results",
            config_path=bench_config.path,
            config_raw=bench_config.raw,
            collect_only=bool(config.option.collectonly),
            command_line=command_line,
        )
    except (OutputDirError, ResultsFileError, OSError) as exc:
        raise UsageProblem(str(exc)) from None


def drop_tests_without_cases(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the benchmark test of a kind the config has no model of: pytest would show its
    empty parameter set as a skipped `[NOTSET]` test in every run."""
    empty = [
        item
        for item in items
        if case_of(item) is None and any(name in getattr(item, "fixturenames", ()) for name in CASE_FIXTURES)
    ]
    if empty:
        config.hook.pytest_deselected(items=empty)
        items[:] = [item for item in items if item not in empty]


def case_of(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for value in callspec.params.values():
        if isinstance(value, Case):
            return value
    return None


def _xdist_on(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "dist", "no") != "no" or hasattr(config, "workerinput"))


def _config_path(config: pytest.Config, options: Options) -> Path:
    if options.config is not None:
        return options.config
    default = config.rootpath / DEFAULT_CONFIG
    if not default.is_file():
        raise ConfigError(f"no grid: pass --config PATH (there is no {DEFAULT_CONFIG} under {config.rootpath})")
    return default
