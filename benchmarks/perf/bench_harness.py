"""How much time the suite adds per case beyond the model's generate calls.

For every case of a grid (default: config/default.yaml) this runs the suite's own case
runner on the real models, appends the row durably (write + fsync) and logs a record, as
the plugin does, and splits the wall time into the time inside generate calls (the timed
rounds, and the warm-up, prefill-only and natural-length calls the suite makes on
purpose) and everything else: prompt building, hooks, trackers, statistics, the row, the
fsync and the log record. The latter is the harness overhead, reported per case and as a
share of the measured rounds. Run it on a quiet machine:

    python benchmarks/perf/bench_harness.py [--config config/default.yaml] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dllm_bench.backends import llada as llada_backend
from dllm_bench.cases import Case, expand_cases
from dllm_bench.config import load_config
from dllm_bench.models.loader import ModelCache
from dllm_bench.runner import run_case
from dllm_bench.sinks.csvfiles import append_row

LOG = logging.getLogger("bench_harness")


class CallClock:
    """Wraps the generate entry points to add up the time spent in them."""

    def __init__(self) -> None:
        self.inside = 0.0
        self.depth = 0

    def wrap(self, function):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            if self.depth:
                return function(*args, **kwargs)
            self.depth += 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.inside += time.perf_counter() - start
                self.depth -= 1

        return timed


def measure_case(case: Case, models: ModelCache, rows_file: Path, log: logging.Logger) -> dict[str, float]:
    """Wall time of one case (run, durable row append, log record) and the part of it
    spent inside generate calls (LLaDA sampler or transformers generate)."""
    loaded = models.get(case.model)
    clock = CallClock()
    original_llada = llada_backend.generate
    llada_backend.generate = clock.wrap(original_llada)  # type: ignore[assignment]
    baseline = case.kind == "baseline"
    if baseline:
        original_generate = loaded.model.generate
        loaded.model.generate = clock.wrap(original_generate)  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        row = run_case(case, loaded)
        append_row(rows_file, row)
        log.info("case %s: done, mean %s s", case.case_id, row.latency_mean_s)
        wall = time.perf_counter() - start
    finally:
        llada_backend.generate = original_llada  # type: ignore[assignment]
        if baseline:
            loaded.model.generate = original_generate  # type: ignore[method-assign]
    measured = (row.latency_mean_s or 0.0) * case.measured_rounds
    return {"wall": wall, "in_generate": clock.inside, "measured": measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config/default.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    torch.manual_seed(0)
    cases = expand_cases(load_config(args.config))
    with tempfile.TemporaryDirectory() as tmp:
        models = ModelCache(Path(tmp) / "models")
        file_log = logging.getLogger("bench_harness.cases")
        file_log.propagate = False
        file_log.addHandler(logging.FileHandler(Path(tmp) / "cases.log"))
        file_log.setLevel(logging.INFO)
        results: dict[str, list[dict[str, float]]] = {c.case_id: [] for c in cases}
        for _ in range(args.repeats):
            for case in cases:
                results[case.case_id].append(measure_case(case, models, Path(tmp) / "rows.csv", file_log))
    overheads, shares = [], []
    for case_id, runs in results.items():
        outside = statistics.median(r["wall"] - r["in_generate"] for r in runs)
        measured = statistics.median(r["measured"] for r in runs)
        overheads.append(outside)
        shares.append(outside / measured)
        LOG.info("%-34s harness %.2f ms, measured rounds %.1f ms", case_id, outside * 1e3, measured * 1e3)
    LOG.info(
        "harness time per case (outside generate calls): median %.2f ms, max %.2f ms; "
        "as a share of the measured rounds: median %.1f%%, max %.1f%%",
        statistics.median(overheads) * 1e3,
        max(overheads) * 1e3,
        statistics.median(shares) * 100,
        max(shares) * 100,
    )


if __name__ == "__main__":
    main()
