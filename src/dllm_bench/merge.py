"""Merge the output directories of several shards (SLURM array tasks) into one result set.

    dllm-bench-merge OUT_DIR SHARD_DIR [SHARD_DIR ...] [--force]

Writes OUT_DIR/raw_metrics.csv (one row per case, the latest of each) and
OUT_DIR/run_manifest.json. Shards run from different configs or suite commits are
refused unless --force.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dllm_bench.manifest import MANIFEST, read_manifest, utc_now
from dllm_bench.results import FINAL_CSV, write_rows_atomic, write_text_atomic
from dllm_bench.resume import latest_per_case, previous_rows

LOG = logging.getLogger("dllm_bench.merge")


class MergeError(RuntimeError):
    """Shards that cannot be merged; the message says why and what to do."""


def shard_identity(manifest: dict[str, Any]) -> tuple[str, str]:
    """What must agree between shards: the config and the suite's git commit."""
    config = repr(manifest.get("config"))
    commit = str(manifest.get("environment", {}).get("git_commit", ""))
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


def merge(out_dir: Path, shard_dirs: Sequence[Path], *, force: bool = False) -> dict[str, Any]:
    """Merge the shards' rows and manifests into `out_dir`; returns the merged manifest."""
    missing = [d for d in shard_dirs if not d.is_dir()]
    if missing:
        raise MergeError(f"not a directory: {', '.join(map(str, missing))}")
    manifests = {d: m for d in shard_dirs if (m := read_manifest(d)) is not None}
    if not manifests:
        raise MergeError(f"no {MANIFEST} in any of the shard directories")
    if not force:
        check_compatible(manifests)
    rows = latest_per_case(row for d in shard_dirs for row in previous_rows(d))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_rows_atomic(out_dir / FINAL_CSV, rows)
    merged = _merged_manifest(out_dir, shard_dirs, manifests, len(rows))
    write_text_atomic(out_dir / MANIFEST, _to_json(merged))
    return merged


def _merged_manifest(
    out_dir: Path, shard_dirs: Sequence[Path], manifests: dict[Path, dict[str, Any]], rows: int
) -> dict[str, Any]:
    first = next(iter(manifests.values()))
    statuses = [str(m.get("status")) for m in manifests.values()]
    complete = len(manifests) == len(shard_dirs) and all(status == "complete" for status in statuses)
    return {
        "status": "complete" if complete else "incomplete",
        "merged_at": utc_now(),
        "output_dir": str(out_dir),
        "rows": rows,
        "config_path": first.get("config_path"),
        "config": first.get("config"),
        "environment": first.get("environment"),
        "shards": [
            {
                "dir": str(d),
                "status": manifests[d].get("status") if d in manifests else "no manifest",
                "counts": manifests[d].get("counts") if d in manifests else None,
            }
            for d in shard_dirs
        ],
    }


def _to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dllm-bench-merge", description=__doc__.split("\n\n")[0])
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
    LOG.info(
        "merged %d shards into %d rows: %s (%s)",
        len(args.shard_dirs),
        merged["rows"],
        args.out_dir / FINAL_CSV,
        merged["status"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
