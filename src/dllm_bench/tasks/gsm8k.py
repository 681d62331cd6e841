"""``dllm-bench-export-gsm8k``: write GSM8K's test split as a jsonl task file.

Needs the optional extra: ``pip install 'dllm-bench[gsm8k]'`` (the ``datasets`` library)
and access to the Hugging Face hub (or its cache). The suite ships no GSM8K data; this
writes it on the user's machine. Each record is ``{"prompt": question, "answer": n}``
with ``n`` the final answer after GSM8K's ``####`` marker, commas removed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["INSTALL_HINT", "gsm8k_record", "load_datasets_module", "main", "write_jsonl"]

LOG = logging.getLogger("dllm_bench.tasks.gsm8k")

INSTALL_HINT = "the GSM8K exporter needs the datasets library: pip install 'dllm-bench[gsm8k]'"
DATASET_ID = "openai/gsm8k"


def gsm8k_record(example: Mapping[str, Any], suffix: str = "") -> dict[str, str]:
    """One jsonl record of a GSM8K example ({"question", "answer"} with ``#### n`` at the end)."""
    question, solution = example.get("question"), example.get("answer")
    if not isinstance(question, str) or not isinstance(solution, str) or "####" not in solution:
        raise ValueError("a GSM8K example needs a string question and an answer ending in '#### <number>'")
    final = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise ValueError("a GSM8K answer has nothing after '####'")
    return {"prompt": question + suffix, "answer": final}


def write_jsonl(records: Iterable[Mapping[str, str]], path: Path) -> int:
    """Write records one JSON object per line; returns how many."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(dict(record), ensure_ascii=False) + "\n")
            count += 1
    return count


def load_datasets_module() -> Any:
    """The ``datasets`` module, or a ``SystemExit`` that says how to install it."""
    try:
        return importlib.import_module("datasets")
    except ImportError as exc:
        raise SystemExit(INSTALL_HINT) from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dllm-bench-export-gsm8k", description="Write GSM8K (test split by default) as a jsonl task file."
    )
    parser.add_argument("out", type=Path, help="the jsonl file to write")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    parser.add_argument("--suffix", default="", help="text appended to every question (e.g. an instruction)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    datasets = load_datasets_module()
    split = datasets.load_dataset(DATASET_ID, "main", split=args.split)
    count = write_jsonl((gsm8k_record(example, args.suffix) for example in split), args.out)
    LOG.info("wrote %d GSM8K %s records to %s", count, args.split, args.out)
    sys.stdout.write(f"{args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
