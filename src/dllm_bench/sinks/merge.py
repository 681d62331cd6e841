"""Merge the output directories of several shards (SLURM array tasks) into one result set.

    dllm-bench-merge OUT_DIR SHARD_DIR [SHARD_DIR ...] [--force]

Writes OUT_DIR/raw_metrics.csv (one row per case: the one that finished last, by its
timestamp, also when shards overlap, with a warning per overlap) and OUT_DIR/run_manifest.json
in the layout of a run's manifest. The status is `complete` only when every case of the
config has an ok row. Shards run from different configs or suite commits are refused
unless --force. Rows OUT_DIR already holds are kept (the union is written, never less).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dllm_bench.cases import expand_cases
from dllm_bench.config import parse_config
from dllm_bench.rows import CaseKey, Row
from dllm_bench.sinks.atomic import StorageError
from dllm_bench.sinks.csvfiles import (
    FINAL_CSV,
    ResultsFileError,
    latest_per_case,
    read_run_rows,
    write_rows_atomic,
)
from dllm_bench.sinks.manifest import Counts, Manifest, ManifestError, read_manifest, utc_now, write_manifest
from dllm_bench.spec import ConfigError

LOG = logging.getLogger("dllm_bench.merge")


class MergeError(RuntimeError):
    """Shards that cannot be merged; the message says why and what to do."""


def shard_identity(manifest: dict[str, Any]) -> tuple[str, str]:
    """What must agree between shards: the config and the suite's git commit."""
    config = repr(manifest.get("config"))
    environment = manifest.get("environment")
    commit = str(environment.get("git_commit") or "") if isinstance(environment, dict) else ""
    return config, commit


def check_compatible(manifests: dict[Path, dict[str, Any]]) -> None:
    identities = {path: shard_identity(m) for path, m in manifests.items()}
    first_path, (first_config, first_commit) = next(iter(identities.items()))
    for path, (config, commit) in identities.items():
        if config != first_config:
            raise MergeError(f"{path} was run from another config than {first_path}; pass --force to merge anyway")
        if commit != first_commit:
            raise MergeError(
                f"{path} was run at suite commit {commit or '(none)'}, {first_path} at {first_commit or '(none)'}; "
                "pass --force to merge anyway"
            )


def directory_rows(directory: Path) -> list[Row]:
    """Every readable row a run directory holds: its final and its partial file."""
    try:
        return read_run_rows(directory)
    except ResultsFileError as exc:
        raise MergeError(str(exc)) from exc


def _manifests(shard_dirs: Sequence[Path]) -> dict[Path, dict[str, Any]]:
    manifests: dict[Path, dict[str, Any]] = {}
    for directory in shard_dirs:
        try:
            manifest = read_manifest(directory)
        except ManifestError as exc:
            raise MergeError(f"{exc}; fix or remove it, or leave that shard out") from exc
        if manifest is not None:
            manifests[directory] = manifest
    return manifests


def _warn_overlaps(rows_by_dir: dict[Path, list[Row]], kept: list[Row]) -> int:
    """Log each case found in more than one shard and which row was kept."""
    seen: dict[CaseKey, list[Path]] = {}
    for directory, rows in rows_by_dir.items():
        for key in dict.fromkeys(row.key() for row in rows):
            seen.setdefault(key, []).append(directory)
    winners = {row.key(): row for row in kept}
    overlaps = 0
    for key, dirs in seen.items():
        if len(dirs) > 1:
            overlaps += 1
            row = winners[key]
            LOG.warning(
                "case %s is in %d shards (%s); keeping the row that finished last (%s)",
                row.case_id,
                len(dirs),
                ", ".join(map(str, dirs)),
                row.timestamp or "no timestamp",
            )
    return overlaps


def _config_keys(manifest: dict[str, Any]) -> list[CaseKey] | None:
    """The keys of every case of the shards' config, or None if it cannot be read."""
    try:
        config = parse_config(manifest.get("config"), Path(str(manifest.get("config_path") or "config.yaml")))
    except ConfigError as exc:
        LOG.warning("cannot expand the shards' config to check completeness: %s", exc)
        return None
    return [case.key() for case in expand_cases(config)]


def _counts(rows: list[Row], keys: list[CaseKey] | None) -> Counts:
    by_key = {row.key(): row for row in rows}
    planned = keys if keys is not None else list(by_key)
    present = [by_key[key] for key in planned if key in by_key]
    counts = Counts(planned=len(planned), ok=sum(r.ok for r in present), failed=sum(not r.ok for r in present))
    counts.settle()
    return counts


def merge(out_dir: Path, shard_dirs: Sequence[Path], *, force: bool = False) -> Manifest:
    """Merge the shards' rows and manifests into `out_dir`; returns the merged manifest."""
    missing = [d for d in shard_dirs if not d.is_dir()]
    if missing:
        raise MergeError(f"not a directory: {', '.join(map(str, missing))}")
    if out_dir.exists() and not out_dir.is_dir():
        raise MergeError(f"output {out_dir} is a file; name a directory")
    manifests = _manifests(shard_dirs)
    if not manifests:
        raise MergeError("no run_manifest.json in any of the shard directories")
    if not force:
        check_compatible(manifests)
    rows_by_dir = {d: directory_rows(d) for d in shard_dirs}
    first = next(iter(manifests.values()))
    keys = _config_keys(first)
    already = directory_rows(out_dir) if out_dir.is_dir() else []
    rows = latest_per_case([*already, *(row for rows in rows_by_dir.values() for row in rows)], keys or ())
    overlaps = _warn_overlaps(rows_by_dir, rows)
    counts = _counts(rows, keys)
    complete = keys is not None and counts.ok == counts.planned and len(manifests) == len(shard_dirs)
    environment = first.get("environment")
    merged = Manifest(
        status="complete" if complete else ("failed" if counts.failed else "incomplete"),
        config_path=str(first.get("config_path") or ""),
        config=dict(first["config"]) if isinstance(first.get("config"), dict) else {},
        command_line=[sys.argv[0], str(out_dir), *map(str, shard_dirs)],
        output_dir=str(out_dir),
        started_at=utc_now(),
        ended_at=utc_now(),
        reason=f"{overlaps} cases in more than one shard" if overlaps else "",
        counts=counts,
        shards=[
            {
                "dir": str(d),
                "status": manifests[d].get("status") if d in manifests else "no manifest",
                "counts": manifests[d].get("counts") if d in manifests else None,
            }
            for d in shard_dirs
        ],
        environment=environment if isinstance(environment, dict) else {},
    )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_rows_atomic(out_dir / FINAL_CSV, rows)
        write_manifest(out_dir, merged)
    except (OSError, StorageError) as exc:
        raise MergeError(f"cannot write the merged results to {out_dir}: {exc}") from exc
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dllm-bench-merge", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="directory for the merged raw_metrics.csv and run_manifest.json")
    parser.add_argument("shard_dirs", type=Path, nargs="+", help="the shards' output directories")
    parser.add_argument("--force", action="store_true", help="merge shards of different configs or commits")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    try:
        merged = merge(args.out_dir, args.shard_dirs, force=args.force)
    except MergeError as exc:
        LOG.error("%s", exc)
        return 2
    counts = merged.counts
    LOG.info(
        "merged %d shards: %d of %d cases ok, %d failed, %d missing: %s (%s)",
        len(args.shard_dirs),
        counts.ok,
        counts.planned,
        counts.failed,
        counts.not_run,
        args.out_dir / FINAL_CSV,
        merged.status,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
