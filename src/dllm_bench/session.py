"""One benchmark run's lifecycle: start, select, record each case, stop, finish.

`RunSession` is created by the plugin when the suite is asked for. It reads the grid,
holds the run directory, keeps the one set of case counts (used by the manifest, the
progress display and the terminal summary), appends each finished case's row, and at the
end writes the final CSV, applies the gate and writes the manifest. The process that
writes rows is the serial pytest process or the xdist controller; xdist workers only
measure (their rows travel to the controller in the test reports).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import logging
import os
import shlex
import sys
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from dllm_bench.backends import backend
from dllm_bench.cases import Case, case_id_of, expand_cases
from dllm_bench.config import BenchConfig, check_runnable, load_config
from dllm_bench.environment import capture_environment
from dllm_bench.logs import (
    LOG_DATE_FORMAT,
    LOG_FORMAT,
    LOG_NAME,
    close_pytest_log_file,
    configure_pytest_logging,
    has_logging_plugin,
    log_file_handlers,
    own_file_handler,
    remove_handler,
    write_to_log_files,
)
from dllm_bench.options import DEFAULT_CONFIG, Options
from dllm_bench.outputs import (
    OutputDirError,
    RunDirLock,
    check_output_dir_argument,
    new_run_dir,
    newest_run_dir,
    probe_writable,
    refuse_existing_results,
    refuse_symlinks,
    remove_if_unused,
)
from dllm_bench.progress import BarLogHandler, Progress, TerminalStream, choose_mode
from dllm_bench.resume import completed_keys, previous_rows, resume_command
from dllm_bench.rows import CaseKey, Row
from dllm_bench.sharding import assign_shards, parse_shard
from dllm_bench.signals import GracefulStop, note_records
from dllm_bench.sinks.atomic import StorageError
from dllm_bench.sinks.csvfiles import (
    FINAL_CSV,
    PARTIAL_CSV,
    ResultsFileError,
    append_row,
    latest_per_case,
    write_rows_atomic,
)
from dllm_bench.sinks.gate import GateError, GateResult, GateRule, check_gate, load_reference, parse_gate
from dllm_bench.sinks.manifest import (
    MANIFEST,
    Counts,
    Manifest,
    final_status,
    release_space,
    reserve_size,
    reserve_space,
    utc_now,
    write_manifest,
)
from dllm_bench.sinks.quality import with_aup
from dllm_bench.sinks.summary import aup_lines, relative_speed_lines, summary_lines
from dllm_bench.spec import ConfigError
from dllm_bench.xdist import STOP_FILE, stop_requested, write_stop_file

LOG = logging.getLogger("dllm_bench")

DEFAULT_THREADS = 1


class UsageProblem(ValueError):
    """Something the user must change before the run can start (pytest's exit code 4)."""


@dataclass
class Gate:
    rules: list[GateRule]
    reference_path: Path
    baseline: list[Row]
    allow_missing: bool
    result: GateResult | None = None

    @property
    def passed(self) -> bool:
        return self.result is not None and self.result.passed(allow_missing=self.allow_missing)


@dataclass
class RunSession:
    """Everything one pytest process knows about the benchmark run."""

    pytest_config: pytest.Config
    options: Options
    config: BenchConfig
    cases: list[Case]
    output_dir: Path
    role: str  # serial, controller or worker
    command_line: list[str]
    shard: tuple[int, int] | None = None
    gate: Gate | None = None
    counts: Counts = field(default_factory=Counts)
    manifest: Manifest | None = None
    progress: Progress = field(init=False)
    stopper: GracefulStop | None = None
    interrupted_by: str | None = None
    storage_error: str = ""
    final_rows: list[Row] = field(default_factory=list)
    rows_written: int = 0
    final_written: bool = False
    unsaved: set[str] = field(default_factory=set)
    lock: RunDirLock | None = None
    created_dir: bool = False
    pytest_session: pytest.Session | None = None
    progress_mode: str = "off"
    case_ids: frozenset[str] = field(init=False)
    grid_keys: list[CaseKey] = field(init=False)
    _raise_exceptions: bool = True
    _environment: dict[str, object] | None = None
    _log_handlers: list[logging.Handler] = field(default_factory=list)
    # With --resume, the rows the directory held when the run started (read once; the lock
    # keeps other runs out, so they stay what the directory holds until this run writes).
    _resumed_rows: list[Row] | None = None

    def __post_init__(self) -> None:
        self.progress = Progress("off", self.counts)
        self.case_ids = frozenset(case.case_id for case in self.cases)
        self.grid_keys = [case.key() for case in self.cases]

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
            gate = _gate(options) if role != "worker" else None
            shard = parse_shard(options.shard) if options.shard else None
        except (ConfigError, GateError, ValueError) as exc:
            raise UsageProblem(str(exc)) from None
        session = cls(
            pytest_config=config,
            options=options,
            config=bench_config,
            cases=expand_cases(bench_config),
            output_dir=Path("."),
            role=role,
            command_line=[sys.executable, "-m", "pytest", *config.invocation_params.args],
            shard=shard,
            gate=gate,
        )
        session._choose_output_dir()
        session._set_threads()
        session._configure_logging()
        return session

    def _choose_output_dir(self) -> None:
        config = self.pytest_config
        if self.role == "worker":
            self.output_dir = Path(config.workerinput["dllm_output_dir"])  # type: ignore[attr-defined]
            return
        collect_only = bool(config.option.collectonly)
        try:
            if self.options.output_dir is not None:
                self.output_dir = check_output_dir_argument(self.options.output_dir)
            elif self.options.resume:
                self.output_dir = newest_run_dir(config.rootpath / "results", self.config.path, self.config.raw)
            elif collect_only:
                self.output_dir = config.rootpath / "results" / f"{self.config.path.stem}-(new)"
                return
            else:
                self.output_dir = new_run_dir(config.rootpath / "results", self.config.path.stem, dt.datetime.now())
                self.created_dir = True
            if collect_only:
                return
            if not self.output_dir.exists():
                self.output_dir.mkdir()
                self.created_dir = True
            self.lock = RunDirLock(self.output_dir)
            self.lock.acquire(self.command_line)
            refuse_symlinks(self.output_dir)
            if not self.options.resume:
                refuse_existing_results(self.output_dir)
            else:
                self._resumed_rows = previous_rows(self.output_dir)  # readable, or a clear error now
            probe_writable(self.output_dir)
        except (OutputDirError, ResultsFileError, OSError) as exc:
            self.release()
            raise UsageProblem(str(exc)) from None

    def _set_threads(self) -> None:
        """torch's CPU threads in this process (an xdist worker too): the option, the grid's
        `threads`, OMP_NUM_THREADS when set, else DEFAULT_THREADS (see the README's
        'Stable numbers' for why one)."""
        threads = self.options.threads or self.config.threads
        if threads is None and "OMP_NUM_THREADS" in os.environ:
            return
        torch.set_num_threads(threads or DEFAULT_THREADS)
        LOG.debug("torch uses %d CPU threads", torch.get_num_threads())

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
        self.pytest_session = pytest_session
        self.stopper = GracefulStop(self.request_stop, console=True)
        self.stopper.install()
        mode = self.progress_mode
        capman = self.pytest_config.pluginmanager.getplugin("capturemanager")
        stream = TerminalStream(capman.global_and_fixture_disabled) if capman is not None else None
        self.progress = Progress(mode, self.counts, stream)
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
        """The cases a test with this case fixture is parametrized with (`llada_case`: the
        LLaDA kind's cases)."""
        return [case for case in self.cases if backend(case.kind).case_fixture == fixture_name]

    def select(self, items: list[pytest.Item]) -> None:
        """pytest_collection_modifyitems: drop other shards' and (--resume) done cases, then
        fix the plan. Writes the running manifest in the process that writes rows."""
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

    def _rows_held_at_start(self) -> list[Row]:
        """The rows the run directory held at the start (an xdist worker reads them here)."""
        if self._resumed_rows is None:
            self._resumed_rows = previous_rows(self.output_dir)
        return self._resumed_rows

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
            done = completed_keys(self._rows_held_at_start())
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
        (self.output_dir / STOP_FILE).unlink(missing_ok=True)
        try:
            # The reserve first: a run refused here leaves no manifest saying 'running'.
            gate_pairs = count * len(self.gate.rules) if self.gate is not None else 0
            reserve_space(self.output_dir, reserve_size(manifest, gate_pairs))
            write_manifest(self.output_dir, manifest)
        except StorageError as exc:
            release_space(self.output_dir)
            raise UsageProblem(f"{exc}; free space or pass another --output-dir") from None
        self.manifest = manifest  # from now on the session finishes it
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
            with self.stopper.held() if self.stopper is not None else nullcontext():
                self._record_and_count(report)
        finally:
            self.log_signal_notes()

    def _record_and_count(self, report: pytest.TestReport) -> None:
        row = row_of(report)
        if row is not None and report.when in ("call", "setup") and not self.record_row(row):
            self.unsaved.add(report.nodeid)
        if not self.is_case(report.nodeid):
            return
        if report.when == "call" or (report.when == "setup" and not report.passed):
            if report.nodeid in self.unsaved:
                return  # its row is not on disk: not counted, so it is not run (resume runs it)
            self.case_finished(report.outcome)
            if report.skipped:
                LOG.info("case %s: skipped: %s", report.nodeid, _skip_reason(report))

    def after_case(self, pytest_session: pytest.Session) -> None:
        """An xdist worker stops after this case when the controller asked for a stop."""
        if self.role == "worker" and not pytest_session.shouldstop:
            reason = stop_requested(self.output_dir)
            if reason:
                pytest_session.shouldstop = reason

    def record_row(self, row: Row) -> bool:
        """Append a finished case's row durably; a storage failure stops the run cleanly.
        Returns whether the row was saved."""
        if self.storage_error:
            LOG.error("case %s: its row was not written (%s); resume to run it again", row.case_id, self.storage_error)
            return False
        try:
            append_row(self.output_dir / PARTIAL_CSV, row)
            self.rows_written += 1
            return True
        except StorageError as exc:
            self.storage_error = str(exc)
            LOG.error(
                "%s; the row of case %s is not saved. Stopping after this case: free space and resume", exc, row.case_id
            )
            error = self.request_stop("storage")
            if error:
                LOG.error("%s", error)
            return False

    def case_finished(self, outcome: str) -> None:
        """Count a case once by its outcome (passed, failed, skipped)."""
        if outcome == "passed":
            self.counts.ok += 1
        elif outcome == "failed":
            self.counts.failed += 1
        else:
            self.counts.skipped += 1
        self.progress.case_finished()

    # --- stopping ------------------------------------------------------------------------

    def request_stop(self, reason: str) -> str | None:
        """Stop between cases: the session's flag, and under xdist the controller's flag
        and a stop file that every worker checks after each case (a signal sent to the
        controller alone does not reach the workers). Called from a signal handler, so it
        does not log: returns the error text when the stop file could not be written."""
        session = self.pytest_session
        text = (
            f"received {reason}: stopped after the running case"
            if reason != "storage"
            else (f"stopped: {self.storage_error}")
        )
        if session is not None:
            session.shouldstop = text
        dsession = self.pytest_config.pluginmanager.getplugin("dsession")
        if dsession is not None:
            dsession.shouldstop = text
            if self.manifest is not None:
                try:
                    write_stop_file(self.output_dir, text)
                except OSError as exc:
                    return f"could not write the stop file for the workers: {exc}"
        return None

    def interrupted(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        """pytest_keyboard_interrupt: remember what stopped the run (a signal, or the stop
        the suite asked for itself after a storage error), and from now on let nothing
        interrupt the save."""
        received = self.stopper.received if self.stopper else []
        requested = isinstance(excinfo.value, pytest.Session.Interrupted)
        if received:
            self.interrupted_by = received[-1]
        elif not (requested and self.storage_error):
            self.interrupted_by = "SIGINT"
        if self.stopper is not None:
            self.stopper.defer()
        self.log_signal_notes()

    def log_signal_notes(self) -> None:
        """What the signal handlers noted since the last call, into the log file (they
        wrote their console line themselves). Called only outside handlers."""
        if self.stopper is None:
            return
        notes = self.stopper.take_notes()
        if notes:
            write_to_log_files(log_file_handlers(self.pytest_config, self._log_handlers), note_records(notes, LOG))

    # --- finish --------------------------------------------------------------------------

    def finish(self, session: pytest.Session, exitstatus: int) -> None:
        """Write the final CSV (the union of everything the directory holds), apply the
        gate and write the manifest. Signals arriving now are recorded, not acted on."""
        if self.stopper is not None:
            self.stopper.defer()
        self.log_signal_notes()
        self.progress.close()
        if self.role == "worker" or self.manifest is None:
            return
        (self.output_dir / STOP_FILE).unlink(missing_ok=True)
        if self.interrupted_by is not None:
            LOG.warning("run interrupted by %s; saving the finished cases", self.interrupted_by)
        if self.options.resume and self.counts.planned == 0 and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK  # a finished grid resumed: nothing to do is success
        rows = self._final_rows()
        if self.gate is not None and not self.storage_error:
            self._apply_gate(rows)
            if not self.gate.passed:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self._settle_manifest(exitstatus)
        if self._write_report() is not None:
            self._settle_manifest(exitstatus)  # the report's storage error is the run's reason
        self._write_manifest()
        self.log_signal_notes()
        if self.storage_error and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.INTERRUPTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _final_rows(self) -> list[Row]:
        """raw_metrics.csv: the latest row of every case the directory holds, this grid's
        cases first. Never fewer rows than the directory held."""
        try:
            held = previous_rows(self.output_dir)
        except ResultsFileError as exc:
            self.storage_error = self.storage_error or str(exc)
            LOG.error("%s; raw_metrics.csv is left as it was", exc)
            return []
        rows = with_aup(latest_per_case(held, self.grid_keys))
        grid = set(self.grid_keys)
        self.final_rows = [row for row in rows if row.key() in grid]
        try:
            write_rows_atomic(self.output_dir / FINAL_CSV, rows)
            self.final_written = True
        except StorageError as exc:
            self.storage_error = self.storage_error or str(exc)
            LOG.error("%s; the finished rows are in %s", exc, self.output_dir / PARTIAL_CSV)
            return self.final_rows
        LOG.info("saved %d rows (%d from this run) to %s", len(rows), self.rows_written, self.output_dir / FINAL_CSV)
        return self.final_rows

    def _apply_gate(self, rows: list[Row]) -> None:
        assert self.gate is not None
        self.gate.result = check_gate(rows, self.gate.baseline, self.gate.rules)
        for line in self.gate_lines():
            (LOG.error if "FAILED" in line else LOG.info)(line)

    def _write_report(self) -> str | None:
        """report.html and its figures (unless --no-report). Bad data never fails the run;
        a report that cannot be written is a storage error (returned): the run fails."""
        if not self.options.report or self.manifest is None or self.storage_error:
            return None
        # Imported here, not at the top: the report draws with matplotlib (about half a second
        # to import), which a run with --no-report should not pay.
        report = importlib.import_module("dllm_bench.sinks.report")
        gate = self.gate
        try:
            page = report.write_report(
                self.output_dir,
                self.final_rows,
                dataclasses.asdict(self.manifest),
                reference_rows=gate.baseline if gate is not None else None,
                reference_name=str(gate.reference_path) if gate is not None else None,
                gate_rules=gate.rules if gate is not None else None,
                partial=self.manifest.status == "interrupted" or self.counts.not_run > 0,
            )
        except StorageError as exc:
            self.storage_error = str(exc)
            LOG.error("%s; the report was not written", exc)
            return self.storage_error
        LOG.info("report: %s", page)
        return None

    def _settle_manifest(self, exitstatus: int) -> None:
        """The manifest's final fields, in memory (the report shows them before it is written)."""
        manifest = self.manifest
        assert manifest is not None
        self.counts.settle()
        interrupted = self.interrupted_by is not None or exitstatus == pytest.ExitCode.INTERRUPTED
        reason = self.storage_error or self._gate_reason()
        manifest.status = final_status(
            interrupted=interrupted,
            counts=self.counts,
            internal_error=exitstatus == pytest.ExitCode.INTERNAL_ERROR,
            reason=reason,
        )
        manifest.reason = reason
        manifest.signal = self.interrupted_by
        manifest.ended_at = utc_now()
        if self.gate is not None and self.gate.result is not None:
            manifest.gate = self.gate.result.record(
                self.gate.rules, self.gate.reference_path, allow_missing=self.gate.allow_missing
            )

    def _write_manifest(self) -> None:
        """The final manifest, into the space the reserve held until now (nothing is logged
        between the release and the write: the log is on the same disk)."""
        assert self.manifest is not None
        release_space(self.output_dir)
        try:
            write_manifest(self.output_dir, self.manifest)
        except StorageError as exc:
            self.storage_error = self.storage_error or str(exc)
            left = "the manifest still says 'running'" if (self.output_dir / MANIFEST).exists() else "no manifest"
            LOG.error("%s; %s", exc, left)

    def _gate_failure(self) -> tuple[str, str] | None:
        """("gate" or "gate failed", what) when the gate failed the run: a problem that kept
        it from counting as a check, else the regressed pairs; None without a failed gate."""
        if self.gate is None or self.gate.result is None or self.gate.passed:
            return None
        result = self.gate.result
        problem = result.problem(allow_missing=self.gate.allow_missing)
        if problem:
            return "gate", problem
        metrics = ", ".join(sorted({f.metric for f in result.failures}))
        return "gate failed", f"{len(result.failures)} case/metric pairs regressed ({metrics})"

    def _gate_reason(self) -> str:
        """Why the gate failed the run ("" when there is no gate or it passed)."""
        failure = self._gate_failure()
        return "" if failure is None else f"{failure[0]}: {failure[1]}"

    # --- reporting -----------------------------------------------------------------------

    def gate_lines(self) -> list[str]:
        if self.gate is None or self.gate.result is None:
            return []
        return self.gate.result.lines(allow_missing=self.gate.allow_missing)

    def summary(self) -> list[tuple[str, bool]]:
        """The terminal summary's lines, each with whether it is bad news (red)."""
        if self.manifest is None:
            return []
        lines: list[tuple[str, bool]] = []
        if self.final_rows:
            tables = [*summary_lines(self.final_rows), "", *relative_speed_lines(self.final_rows)]
            aup = aup_lines(self.final_rows)
            lines += [(line, False) for line in [*tables, *(["", *aup] if aup else [])]]
        lines += [(line, "FAILED" in line) for line in self.gate_lines()]
        if _xdist_on(self.pytest_config):
            lines.append(
                (
                    "dllm-bench: pytest-benchmark is off under xdist (no --benchmark-json, autosave or compare); "
                    "every case is still fully measured in raw_metrics.csv",
                    False,
                )
            )
        out = self.output_dir
        counts = self.counts
        lines.append(
            (
                f"dllm-bench: {counts.ok} ok, {counts.failed} failed, {counts.skipped} skipped, "
                f"{counts.not_run} not run, {counts.already_done} already done; "
                f"results in {out / (FINAL_CSV if self.final_written else PARTIAL_CSV)}, log {out / LOG_NAME}",
                False,
            )
        )
        if self.storage_error:
            lines.append((f"dllm-bench: stopped because results could not be written: {self.storage_error}", True))
        if self.manifest.status in ("interrupted", "failed") and (self.interrupted_by or self.storage_error):
            why = f"interrupted by {self.interrupted_by}" if self.interrupted_by else "stopped"
            resume = shlex.join(resume_command(self.pytest_config.invocation_params.args, out))
            lines.append((f"dllm-bench: {why}; resume with: {resume}", False))
        return lines

    def closing_line(self) -> str | None:
        """The last line of the terminal output, below pytest's "N passed", when results
        could not be written or the gate failed."""
        if self.storage_error and self.role != "worker":
            return f"dllm-bench: RESULTS NOT FULLY SAVED: {self.storage_error}; exit code 1"
        failure = self._gate_failure()
        if failure is None or self.gate is None:
            return None
        return f"dllm-bench: GATE FAILED against {self.gate.reference_path}: {failure[1]}; exit code 1"

    # --- end -----------------------------------------------------------------------------

    def release(self) -> None:
        if self.manifest is not None and self.role != "worker":
            release_space(self.output_dir)
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.created_dir and self.output_dir.is_dir():
            remove_if_unused(self.output_dir)

    def close_log_files(self) -> list[str]:
        """pytest_unconfigure, before pytest's logging plugin: the run's log handlers closed;
        a console line for each whose last records could not be written (a full disk)."""
        self.log_signal_notes()
        errors = [close_pytest_log_file(self.pytest_config)]
        errors += [remove_handler(handler) for handler in self._log_handlers]
        self._log_handlers.clear()
        prefix = "dllm-bench: the last log records were not written to the log file"
        return [f"{prefix}: {error}" for error in errors if error]

    def close(self) -> None:
        """pytest_unconfigure, last: signal handlers back, progress closed, lock released."""
        if self.stopper is not None:
            self.stopper.restore()
        self.progress.close()
        self.close_log_files()
        logging.raiseExceptions = self._raise_exceptions
        self.release()


ROW_PROPERTY = "dllm_bench_row"
RUN_ONLY_COLUMNS = frozenset({"git_commit", "git_dirty", "xdist_worker"})


def row_of(report: pytest.TestReport) -> Row | None:
    """The row a case attached to its report (plain values survive the trip from a worker)."""
    for name, value in report.user_properties:
        if name == ROW_PROPERTY and isinstance(value, dict):
            return Row.from_record(value)
    return None


def case_of(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    for value in callspec.params.values():
        if isinstance(value, Case):
            return value
    return None


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _xdist_on(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "dist", "no") != "no" or hasattr(config, "workerinput"))


def _config_path(config: pytest.Config, options: Options) -> Path:
    if options.config is not None:
        return options.config
    default = config.rootpath / DEFAULT_CONFIG
    if not default.is_file():
        raise ConfigError(f"no grid: pass --config PATH (there is no {DEFAULT_CONFIG} under {config.rootpath})")
    return default


def _gate(options: Options) -> Gate | None:
    if not options.gates:
        if options.gate_reference is not None:
            raise GateError("--gate-reference without --gate: add a rule such as --gate tokens_per_s:-10%")
        return None
    if options.gate_reference is None:
        raise GateError("--gate needs --gate-reference PATH (a raw_metrics.csv or a run directory)")
    rules = [parse_gate(spec) for spec in options.gates]
    return Gate(rules, options.gate_reference, load_reference(options.gate_reference), options.gate_allow_missing)
