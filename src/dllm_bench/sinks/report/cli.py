"""Write the report (report.html and its figures) of existing run directories.

    dllm-bench-report RUN_DIR [RUN_DIR ...] [--reference RUN_DIR] [--gate RULE ...] [--gate-allow-missing] [-o OUT]

Several RUN_DIRs whose cases do not overlap (SLURM shards) are one run: their rows are
combined, the latest row of each case kept. Two RUN_DIRs that share cases, without
--reference, are a comparison: the first is the reference, the second the run reported on.
Without --reference, a run made with --gate-reference is compared with that reference
when it still exists. The gate rules drawn are --gate's, else the run's own (its manifest).
Exit codes: 0 the report was written (and --gate's rules passed); 1 the report was written but
--gate failed (a regression, or nothing compared without --gate-allow-missing); 2 nothing
was written (a bad directory, file or rule; --gate without a reference run).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dllm_bench.rows import Row
from dllm_bench.sinks.atomic import StorageError
from dllm_bench.sinks.csvfiles import (
    BOM,
    RESULT_FILES,
    ResultsFileError,
    latest_per_case,
    read_results,
    read_run_rows,
)
from dllm_bench.sinks.gate import GateError, GateResult, GateRule, check_gate, parse_gate
from dllm_bench.sinks.manifest import ManifestError, read_manifest
from dllm_bench.sinks.report.data import missing_metric_columns
from dllm_bench.sinks.report.writer import write_report

LOG = logging.getLogger("dllm_bench.report")

PARTIAL_STATUSES = frozenset({"running", "interrupted", "incomplete"})

# Exit codes of the command.
EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2


class ReportError(RuntimeError):
    """Run directories that cannot be reported on; the message says what to do."""


@dataclass(frozen=True)
class Run:
    """The rows and manifest of one or more run directories taken as one run."""

    directories: tuple[Path, ...]
    rows: list[Row]
    manifest: dict[str, Any] | None
    missing_columns: dict[str, list[str]]

    @property
    def name(self) -> str:
        return ", ".join(map(str, self.directories))


def directory_rows(directory: Path) -> list[Row]:
    """Every readable row of a run directory (final and partial file) or of one results CSV,
    the latest per case."""
    if not directory.exists():
        raise ReportError(f"{directory} does not exist; name a run directory")
    try:
        rows = read_run_rows(directory) if directory.is_dir() else read_results(directory)
    except ResultsFileError as exc:
        raise ReportError(str(exc)) from exc
    if not rows:
        raise ReportError(f"{directory} holds no result rows (raw_metrics.csv or raw_metrics_partial.csv)")
    return latest_per_case(rows)


def csv_header(path: Path) -> list[str] | None:
    """The column names of a results CSV's header line; None for a file without one (its rows
    have the current columns), a missing or empty file, or one that cannot be read."""
    try:
        with path.open("rb") as handle:
            first = handle.readline().removeprefix(BOM)
        cells = next(csv.reader([first.decode("utf-8")]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return cells if "case_id" in cells and "status" in cells else None


def missing_columns(directory: Path) -> dict[str, list[str]]:
    """The measurement columns each results file of a run directory (or the results CSV) lacks."""
    files = [directory / name for name in RESULT_FILES] if directory.is_dir() else [directory]
    found: dict[str, list[str]] = {}
    for path in files:
        header = csv_header(path) if path.is_file() else None
        missing = missing_metric_columns(header) if header is not None else []
        if missing:
            LOG.warning("%s has no %s column: those values are empty in the report", path, ", ".join(missing))
            found[str(path)] = missing
    return found


def directory_manifest(directory: Path) -> dict[str, Any] | None:
    if not directory.is_dir():
        return None
    try:
        return read_manifest(directory)
    except ManifestError as exc:
        LOG.warning("%s; the report shows the environment from the rows instead", exc)
        return None


def combined_manifest(directories: Sequence[Path], manifests: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One directory: its manifest. Several (shards): the first manifest's config, command and
    environment, with each directory's status and counts as `shards` and no counts of its own."""
    if len(directories) == 1:
        return manifests[0]
    first = next((m for m in manifests if m), None)
    if first is None:
        return None
    statuses = [str(m.get("status")) if m else "no manifest" for m in manifests]
    partial = any(status in PARTIAL_STATUSES or status == "no manifest" for status in statuses)
    return {
        **{key: value for key, value in first.items() if key not in ("counts", "gate", "shards", "output_dir")},
        "status": "incomplete" if partial else "combined",
        "shards": [
            {"dir": str(d), "status": status, "counts": m.get("counts") if m else None}
            for d, status, m in zip(directories, statuses, manifests, strict=True)
        ],
    }


def load_run(directories: Sequence[Path]) -> Run:
    rows: list[Row] = []
    for directory in directories:
        rows += directory_rows(directory)
    manifests = [directory_manifest(directory) for directory in directories]
    missing = {path: columns for directory in directories for path, columns in missing_columns(directory).items()}
    return Run(tuple(directories), latest_per_case(rows), combined_manifest(directories, manifests), missing)


def is_partial(manifest: Mapping[str, Any] | None) -> bool:
    """A run that did not finish its planned cases: interrupted, killed (still `running`), an
    incomplete merge, or any planned case not run."""
    if manifest is None:
        return False
    counts = manifest.get("counts")
    not_run = counts.get("not_run") if isinstance(counts, Mapping) else 0
    return manifest.get("status") in PARTIAL_STATUSES or bool(not_run)


def _shares_cases(first: Path, second: Path) -> bool:
    keys = {row.key() for row in directory_rows(first)}
    return any(row.key() in keys for row in directory_rows(second))


def split_runs(directories: Sequence[Path], reference: Path | None) -> tuple[list[Path], Path | None]:
    """(the directories of the run reported on, the reference directory or None)."""
    if reference is None and len(directories) == 2 and _shares_cases(directories[0], directories[1]):
        LOG.info("%s and %s share cases: comparing %s against %s", *directories, directories[1], directories[0])
        return [directories[1]], directories[0]
    return list(directories), reference


def manifest_reference(manifest: Mapping[str, Any] | None) -> Path | None:
    """The gate reference a run was compared with, when it still exists."""
    gate = manifest.get("gate") if manifest else None
    if not isinstance(gate, Mapping) or not gate.get("reference"):
        return None
    path = Path(str(gate["reference"]))
    directory = path if path.is_dir() else path.parent
    if not directory.is_dir():
        LOG.warning("the run's gate reference %s no longer exists; no comparison", path)
        return None
    return directory


def gate_rules(specs: Sequence[str], manifest: Mapping[str, Any] | None) -> list[GateRule]:
    """--gate's rules, else the rules recorded in the run's manifest (unreadable ones skipped)."""
    if specs:
        return [parse_gate(spec) for spec in specs]
    gate = manifest.get("gate") if manifest else None
    recorded = gate.get("rules") if isinstance(gate, Mapping) else None
    rules: list[GateRule] = []
    for spec in recorded if isinstance(recorded, list) else []:
        try:
            rules.append(parse_gate(str(spec)))
        except GateError as exc:
            LOG.warning("the manifest's gate rule is skipped: %s", exc)
    return rules


def output_directory(requested: Path | None, run_dirs: Sequence[Path]) -> Path:
    if requested is not None:
        if requested.exists() and not requested.is_dir():
            raise ReportError(f"-o {requested} is a file; name a directory")
        try:
            requested.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReportError(f"cannot create {requested}: {exc.strerror or exc}") from exc
        return requested
    if len(run_dirs) == 1:
        return run_dirs[0]
    raise ReportError(f"{len(run_dirs)} run directories make one report: name its directory with -o OUT")


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(
        prog="dllm-bench-report",
        description=" ".join(
            paragraph.replace("\n", " ").strip() for i, paragraph in enumerate((__doc__ or "").split("\n\n")) if i != 1
        ),
    )
    result.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run (or shard) directories")
    result.add_argument("--reference", type=Path, metavar="RUN_DIR", help="compare with this run")
    result.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="RULE",
        help="a gate rule to draw and check, e.g. tokens_per_s:-10%% (repeatable; default: the run's own)",
    )
    result.add_argument(
        "--gate-allow-missing",
        action="store_true",
        help="let --gate pass when it compared nothing, or when a case with a reference row has no value to compare",
    )
    result.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="OUT",
        help="directory for report.html and report_figures/ (default: the run directory)",
    )
    return result


@dataclass(frozen=True)
class Outcome:
    """What the command did: the page it wrote and, with --gate, what the gate found."""

    page: Path
    gate: GateResult | None = None


def run(args: argparse.Namespace) -> Outcome:
    run_dirs, reference_dir = split_runs(args.run_dirs, args.reference)
    current = load_run(run_dirs)
    if reference_dir is None and args.reference is None:
        reference_dir = manifest_reference(current.manifest)
    try:
        rules = gate_rules(args.gate, current.manifest)
    except GateError as exc:
        raise ReportError(str(exc)) from exc
    if args.gate and reference_dir is None:
        raise ReportError("--gate needs a reference run to compare with: pass --reference RUN_DIR")
    reference = load_run([reference_dir]) if reference_dir is not None else None
    out = output_directory(args.output, run_dirs)
    page = write_report(
        out,
        current.rows,
        current.manifest,
        reference_rows=reference.rows if reference else None,
        reference_name=reference.name if reference else None,
        gate_rules=rules,
        partial=is_partial(current.manifest),
        source=current.name,
        gate_allow_missing=args.gate_allow_missing,
        missing_columns=current.missing_columns,
    )
    if not args.gate or reference is None:
        return Outcome(page)
    return Outcome(page, check_gate(current.rows, reference.rows, rules))


def exit_code(outcome: Outcome, *, allow_missing: bool) -> int:
    """EXIT_GATE_FAILED when --gate failed (as in a run: a regression, or a gate that compared
    nothing unless --gate-allow-missing), else EXIT_OK; the gate's lines are logged."""
    if outcome.gate is None:
        return EXIT_OK
    for line in outcome.gate.lines(allow_missing=allow_missing):
        (LOG.error if "FAILED" in line else LOG.info)(line)
    return EXIT_OK if outcome.gate.passed(allow_missing=allow_missing) else EXIT_GATE_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    try:
        outcome = run(args)
    except (ReportError, StorageError) as exc:
        LOG.error("%s", exc)
        return EXIT_BAD_INPUT
    sys.stdout.write(f"{outcome.page}\n")
    return exit_code(outcome, allow_missing=args.gate_allow_missing)


if __name__ == "__main__":
    sys.exit(main())
