"""Markdown summary of one CI benchmark run, for $GITHUB_STEP_SUMMARY (scripts/ci/gpu_benchmark.sh).

Reads only the run's output files, so it works with any version of the suite that writes them:
`raw_metrics.csv` of the run and of the reference run, the run's `benchmark.log` (the gate's
lines) and the pytest console output (pytest-benchmark's regression lines, usage errors).

    python scripts/ci/ci_summary.py --run-dir RUN --config CONFIG --exit-code RC [--reference-dir REF ...]

Writes the markdown to stdout.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

FINAL_CSV = "raw_metrics.csv"
LOG_NAME = "benchmark.log"

# Table columns in this order, each shown when the CSV has it and some row fills it in
# (the decoding axes and accuracy columns appear once the suite writes them).
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("case_id", "case"),
    ("status", "status"),
    ("cache", "cache"),
    ("threshold", "threshold"),
    ("factor", "factor"),
    ("task", "task"),
    ("tokens_per_s", "tokens/s"),
    ("latency_mean_s", "latency mean (s)"),
    ("nfe", "NFE"),
    ("tokens_per_forward", "tokens/forward"),
    ("accuracy", "accuracy"),
    ("peak_memory_allocated_mb", "peak alloc (MiB)"),
    ("energy_per_token_j", "J/token"),
    ("error", "error"),
)
CHANGE_AFTER = "tokens_per_s"  # the "vs reference" column follows this one

EXIT_MEANINGS: Mapping[int, str] = {
    0: "passed",
    1: "a case, the gate or the pytest-benchmark comparison failed",
    2: "interrupted",
    3: "pytest internal error",
    4: "usage error (bad option or config)",
    5: "no case ran",
}

_GATE_LINE = re.compile(r" - [A-Z]+ - (gate\b.*)$")


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a results CSV; none if it does not exist. Torn lines (wrong field count) are skipped."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return []
        return [dict(zip(header, values, strict=True)) for values in reader if len(values) == len(header)]


def gate_lines(log_path: Path) -> list[str]:
    """The gate's own lines from the run's benchmark.log (`gate: compared ...`, `gate FAILED: ...`)."""
    if not log_path.is_file():
        return []
    lines = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _GATE_LINE.search(line)
        if match:
            lines.append(match.group(1))
    return lines


def regression_lines(console: str) -> list[str]:
    """pytest-benchmark's `Performance has regressed:` entries (the tab-indented lines after it)."""
    found: list[str] = []
    lines = console.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != "Performance has regressed:":
            continue
        for entry in lines[i + 1 :]:
            if not entry.startswith("\t"):
                break
            found.append(entry.strip())
    return found


def usage_errors(console: str) -> list[str]:
    """pytest's usage-error lines (`ERROR: ...`), e.g. a config the suite refused."""
    return [line.removeprefix("ERROR: ").strip() for line in console.splitlines() if line.startswith("ERROR: ")]


def as_float(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def change_text(current: str | None, reference: str | None) -> str:
    """`+3.1%` / `-12.0%`, or empty when either side is missing or the reference is zero."""
    now, before = as_float(current), as_float(reference)
    if now is None or before is None or before == 0:
        return ""
    return f"{(now - before) / abs(before) * 100:+.1f}%"


def format_cell(value: str) -> str:
    """A CSV value for a markdown cell: numbers to 4 significant digits, pipes escaped."""
    number = as_float(value)
    if number is not None and not value.strip().isdigit():
        return f"{number:.4g}"
    return value.replace("|", "\\|").replace("\n", " ")


def visible_columns(rows: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    return [(key, title) for key, title in TABLE_COLUMNS if any(row.get(key, "").strip() for row in rows)]


def results_table(rows: Sequence[Mapping[str, str]], reference_rows: Sequence[Mapping[str, str]]) -> list[str]:
    """One markdown row per case; with a reference, tokens/s is followed by its change against it."""
    columns = visible_columns(rows)
    reference = {row.get("case_id", ""): row for row in reference_rows if row.get("status") == "ok"}
    titles: list[str] = []
    for key, title in columns:
        titles.append(title)
        if key == CHANGE_AFTER and reference:
            titles.append("vs reference")
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in rows:
        cells: list[str] = []
        for key, _ in columns:
            cells.append(format_cell(row.get(key, "")))
            if key == CHANGE_AFTER and reference:
                base = reference.get(row.get("case_id", ""))
                cells.append(change_text(row.get(key), base.get(key) if base else None))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def bullet_section(title: str, items: Sequence[str]) -> list[str]:
    if not items:
        return []
    return ["", f"**{title}**", "", *[f"- `{item}`" for item in items]]


def build_summary(args: argparse.Namespace) -> str:
    run_dir = Path(args.run_dir)
    rows = read_csv_rows(run_dir / FINAL_CSV)
    reference_rows = read_csv_rows(Path(args.reference_dir) / FINAL_CSV) if args.reference_dir else []
    console = Path(args.console_log).read_text(encoding="utf-8", errors="replace") if args.console_log else ""
    code = args.exit_code
    verdict = "passed" if code == 0 else f"FAILED (exit {code}: {EXIT_MEANINGS.get(code, 'see the log')})"

    lines = [f"## dllm-bench benchmark `{args.config}`: {verdict}", ""]
    lines.append(f"- machine `{args.machine}`, branch `{args.branch}`, commit `{args.commit}`")
    lines.append(f"- run directory `{run_dir}`")
    if args.reference_dir:
        lines.append(f"- reference: main's run `{args.reference_name}`; gate `{args.gates}`")
        if args.compare_fail:
            lines.append(f"- pytest-benchmark comparison with that run: `--benchmark-compare-fail {args.compare_fail}`")
        else:
            lines.append("- pytest-benchmark comparison: none (the reference has no pytest-benchmark JSON)")
    else:
        lines.append("- reference: none yet, so nothing was compared or gated (a passing run on main becomes one)")

    failed_cases = [
        f"{row.get('case_id', '')}: {row.get('status', '')}: {row.get('error', '')}"
        for row in rows
        if row.get("status") != "ok"
    ]
    gates = gate_lines(run_dir / LOG_NAME)
    lines += bullet_section("Gate failures", [line for line in gates if line.startswith("gate FAILED")])
    lines += bullet_section("pytest-benchmark regressions", regression_lines(console))
    lines += bullet_section("Cases that did not finish ok", failed_cases)
    lines += bullet_section("Usage errors", usage_errors(console))
    lines += bullet_section("Gate", [line for line in gates if not line.startswith("gate FAILED")])

    lines.append("")
    if rows:
        lines += results_table(rows, reference_rows)
    else:
        lines.append(f"No rows: `{run_dir / FINAL_CSV}` is missing or empty.")
    return "\n".join(lines) + "\n\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="the run's output directory")
    parser.add_argument("--config", required=True, help="the grid file that ran")
    parser.add_argument("--exit-code", type=int, required=True, help="pytest's exit status")
    parser.add_argument("--console-log", default="", help="pytest's console output")
    parser.add_argument("--reference-dir", default="", help="the reference run directory, if any")
    parser.add_argument("--reference-name", default="", help="the reference run's name")
    parser.add_argument("--gates", default="", help="the --gate rules that were applied")
    parser.add_argument("--compare-fail", default="", help="the --benchmark-compare-fail expressions applied")
    parser.add_argument("--branch", default="", help="the branch of this run")
    parser.add_argument("--commit", default="", help="the commit of this run")
    parser.add_argument("--machine", default="", help="the machine name of the history namespace")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sys.stdout.write(build_summary(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
