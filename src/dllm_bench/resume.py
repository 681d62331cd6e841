"""Match result rows to cases by their full parameter set: what is done, what is left."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from dllm_bench.cases import Case
from dllm_bench.outputs import holds_results
from dllm_bench.results import FINAL_CSV, PARTIAL_CSV, read_rows

# Parameters that identify a case; a row matches a case only if all of them agree.
KEY_COLUMNS: tuple[str, ...] = (
    "model",
    "kind",
    "source",
    "prompt_length",
    "gen_length",
    "batch_size",
    "steps",
    "block_length",
    "remasking",
    "temperature",
    "cfg_scale",
    "warmup_rounds",
    "measured_rounds",
)

CaseKey = tuple[str, ...]


def _cell(value: object) -> str:
    """How a value reads back from the CSV."""
    return "" if value is None else str(value)


def case_key(case: Case) -> CaseKey:
    params = case.params()
    return tuple(_cell(params[name]) for name in KEY_COLUMNS)


def row_key(row: Mapping[str, object]) -> CaseKey:
    return tuple(_cell(row.get(name)) for name in KEY_COLUMNS)


def previous_rows(directory: Path) -> list[dict[str, str]]:
    """Every complete row already in a run directory (the partial CSV holds them all)."""
    rows = read_rows(directory / PARTIAL_CSV)
    return rows if rows else read_rows(directory / FINAL_CSV)


def completed_keys(rows: Iterable[Mapping[str, object]]) -> set[CaseKey]:
    """Cases whose latest row is `ok`."""
    latest = {row_key(row): row for row in rows}
    return {key for key, row in latest.items() if row.get("status") == "ok"}


def latest_per_case(rows: Iterable[Mapping[str, object]]) -> list[Mapping[str, object]]:
    """One row per case, the last one written, in the order the cases were first seen."""
    latest: dict[CaseKey, Mapping[str, object]] = {}
    for row in rows:
        key = row_key(row)
        latest.pop(key, None)
        latest[key] = row
    return list(latest.values())


def newest_run_dir(results_root: Path, config_stem: str) -> Path | None:
    """The newest `results/<config>-<time>` directory that holds results, if any."""
    if not results_root.is_dir():
        return None
    prefix = f"{config_stem}-"
    runs = [
        p
        for p in results_root.iterdir()
        if p.is_dir() and p.name.startswith(prefix) and p.name[len(prefix) :][:1].isdigit() and holds_results(p)
    ]
    return max(runs, key=lambda p: (p.stat().st_mtime, p.name), default=None)


def resume_command(args: Sequence[str], output_dir: Path) -> list[str]:
    """The pytest command line that resumes a run: the same arguments, with
    `--resume --output-dir DIR` instead of any earlier --resume / --output-dir."""
    kept: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        if arg == "--output-dir":
            skip_next = True
            continue
        if arg.startswith("--output-dir=") or arg == "--resume":
            continue
        kept.append(arg)
    return ["pytest", *kept, "--resume", "--output-dir", str(output_dir)]
