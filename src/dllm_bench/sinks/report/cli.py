"""Write the report (report.html and its figures) of existing run directories.

    dllm-bench-report RUN_DIR [RUN_DIR ...] [--reference RUN_DIR] [--gate RULE ...] [-o OUT]

Several RUN_DIRs whose cases do not overlap (SLURM shards) are one run: their rows are
combined, the latest row of each case kept. Two RUN_DIRs that share cases, without
--reference, are a comparison: the first is the reference, the second the run reported on.
Without --reference, a run made with --gate-reference is compared with that reference
when it still exists. The gate rules drawn are --gate's, else the run's own (its manifest).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dllm_bench.rows import Row
from dllm_bench.sinks.atomic import StorageError
from dllm_bench.sinks.csvfiles import ResultsFileError, latest_per_case, read_results, read_run_rows
from dllm_bench.sinks.gate import GateError, GateRule, parse_gate
from dllm_bench.sinks.manifest import ManifestError, read_manifest
from dllm_bench.sinks.report.writer import write_report

LOG = logging.getLogger("dllm_bench.report")

PARTIAL_STATUSES = frozenset({"running", "interrupted", "incomplete"})


class ReportError(RuntimeError):
    """Run directories that cannot be reported on; the message says what to do."""


@dataclass(frozen=True)
class Run:
    """The rows and manifest of one or more run directories taken as one run."""

    directories: tuple[Path, ...]
    rows: list[Row]
    manifest: dict[str, Any] | None

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
    return Run(tuple(directories), latest_per_case(rows), combined_manifest(directories, manifests))


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
        "-o",
        "--output",
        type=Path,
        metavar="OUT",
        help="directory for report.html and report_figures/ (default: the run directory)",
    )
    return result


def run(args: argparse.Namespace) -> Path:
    run_dirs, reference_dir = split_runs(args.run_dirs, args.reference)
    current = load_run(run_dirs)
    if reference_dir is None and args.reference is None:
        reference_dir = manifest_reference(current.manifest)
    reference = load_run([reference_dir]) if reference_dir is not None else None
    try:
        rules = gate_rules(args.gate, current.manifest)
    except GateError as exc:
        raise ReportError(str(exc)) from exc
    out = output_directory(args.output, run_dirs)
    return write_report(
        out,
        current.rows,
        current.manifest,
        reference_rows=reference.rows if reference else None,
        reference_name=reference.name if reference else None,
        gate_rules=rules,
        partial=is_partial(current.manifest),
        source=current.name,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    try:
        path = run(args)
    except (ReportError, StorageError) as exc:
        LOG.error("%s", exc)
        return 2
    sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
