"""One run of the suite itself in a subprocess, within the self-check's time budget, and its rows.

`pytest benchmarks --config <work_dir>/<name>.yaml --output-dir <work_dir>/<name>` on
random-init models; the items read the rows it wrote with the suite's own reader, typed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from dllm_bench.rows import Row
from dllm_bench.sinks.csvfiles import FINAL_CSV, PARTIAL_CSV, read_results

LOG = logging.getLogger("dllm_bench.gpu_check")

USAGE_ERROR = 4  # pytest's exit code for a refused config or option


@dataclass
class Budget:
    """The check's time budget: every subprocess gets at most what is left."""

    total_s: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.total_s - (time.monotonic() - self.started)


@dataclass(frozen=True)
class SuiteRun:
    output_dir: Path
    exit_code: int | None  # None: killed at the time limit
    output: str

    def rows(self) -> list[Row]:
        return read_results(self.output_dir / FINAL_CSV)

    def partial_rows(self) -> list[Row]:
        return read_results(self.output_dir / PARTIAL_CSV)

    def problem(self) -> str | None:
        """Why the run cannot be trusted as a whole (timed out, refused its config), or None."""
        if self.exit_code is None:
            return "the suite run was stopped at the time limit"
        errors = [line.removeprefix("ERROR: ") for line in self.output.splitlines() if line.startswith("ERROR: ")]
        if self.exit_code == USAGE_ERROR or (errors and not self.rows()):
            return f"the suite refused the run (exit {self.exit_code}): {'; '.join(errors) or 'see the output'}"
        return None


def run_suite(
    repo: Path, work_dir: Path, name: str, config: Mapping[str, Any], extra_args: Sequence[str], budget: Budget
) -> SuiteRun:
    """`pytest benchmarks --config <work_dir>/<name>.yaml --output-dir <work_dir>/<name>` in a subprocess."""
    config_path = work_dir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    output_dir = work_dir / name
    command = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        f"--config={config_path}",
        f"--output-dir={output_dir}",
        *extra_args,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    timeout = max(1.0, budget.left())
    LOG.info("running %s (at most %.0f s)", " ".join(command), timeout)
    # Console output goes to a file: nothing to drain, and it survives a kill.
    log_path = work_dir / f"{name}.out"
    with log_path.open("w", encoding="utf-8") as log_file:
        exit_code = run_in_own_group(command, repo, env, log_file, timeout)
    return SuiteRun(output_dir, exit_code, log_path.read_text(encoding="utf-8", errors="replace"))


def run_in_own_group(
    command: Sequence[str], cwd: Path, env: Mapping[str, str], log_file: IO[str], timeout: float
) -> int | None:
    """Run `command` in its own process group; at the time limit kill the group (xdist workers
    included) and return None."""
    process = subprocess.Popen(
        command, cwd=cwd, env=dict(env), stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        LOG.error("%s ran past %.0f s: killing its process group", command[0], timeout)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return None
