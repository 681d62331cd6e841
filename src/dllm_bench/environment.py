"""What a result row was measured on: GPU, driver, library versions, host and source commit.

Every value is what was read, or None (an empty cell) where it is not available: nothing is
guessed or filled in with a placeholder.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import socket
import subprocess
from pathlib import Path

import torch

from dllm_bench.rows import ENVIRONMENT_COLUMNS

try:
    import pynvml  # type: ignore[import-untyped]
except ImportError:  # nvidia-ml-py is absent: the driver version stays empty
    pynvml = None

logger = logging.getLogger(__name__)

GIT_TIMEOUT_S = 5.0


def capture_environment(repo_dir: Path) -> dict[str, object]:
    """The values of `ENVIRONMENT_COLUMNS` for this process, with git state read in `repo_dir`."""
    git_commit, git_dirty = _git_state(repo_dir)
    values: dict[str, object] = {
        "cpu_model": cpu_model(),
        "gpu_name": _gpu_name(),
        "gpu_count": _gpu_count(),
        "driver_version": _driver_version(),
        "cuda_version": torch.version.cuda or "",
        "torch_version": str(torch.__version__),
        "transformers_version": _distribution_version("transformers"),
        "python_version": platform.python_version(),
        "host": socket.gethostname(),
        "git_commit": git_commit,
        "git_dirty": git_dirty,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "xdist_worker": os.environ.get("PYTEST_XDIST_WORKER", ""),
    }
    return {column: None if values[column] == "" else values[column] for column in ENVIRONMENT_COLUMNS}


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; all cores where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_warning(threads: int, cores: int) -> str | None:
    """Why ``threads`` torch threads on ``cores`` usable cores make timings unreliable, or None.

    More threads than cores is oversubscription: OpenMP threads that wait for each other on
    a busy core make a run many times slower (``--threads 10000`` on 2 cores: 600x).
    """
    if threads <= cores:
        return None
    return (
        f"{threads} torch threads but this process may use only {cores} CPU core(s): "
        f"the run will be much slower and its timings unreliable; use at most {cores} threads"
    )


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_count() -> int:
    """Visible CUDA devices; 0 for a CPU-only build or a machine without a GPU."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _gpu_name() -> str:
    """The current CUDA device's name, followed by the other distinct names of visible devices."""
    count = _gpu_count()
    if count == 0:
        return ""
    current = torch.cuda.current_device()
    names = [torch.cuda.get_device_name(current)]
    names.extend(torch.cuda.get_device_name(index) for index in range(count))
    return "; ".join(dict.fromkeys(names))


def _driver_version() -> str:
    """The NVIDIA driver version from NVML, or "" when NVML is missing or fails."""
    if pynvml is None:
        return ""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        logger.debug("NVML unavailable, no driver version: %s", error)
        return ""
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
    except pynvml.NVMLError as error:
        logger.debug("NVML could not report the driver version: %s", error)
        version = ""
    finally:
        _nvml_shutdown()
    return version.decode() if isinstance(version, bytes) else str(version)


def _nvml_shutdown() -> None:
    try:
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as error:
        logger.debug("NVML shutdown failed: %s", error)


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _git_state(repo_dir: Path) -> tuple[str, bool | None]:
    """(commit, dirty) for the git work tree holding `repo_dir`; "" and None for what git cannot tell."""
    commit = _run_git(repo_dir, "rev-parse", "HEAD")
    status = _run_git(repo_dir, "status", "--porcelain", "--untracked-files=no")
    commit = commit.strip() if commit is not None else ""
    if status is None:
        return commit, None
    return commit, bool(status.strip())


def _run_git(repo_dir: Path, *args: str) -> str | None:
    """stdout of `git ARGS` run in `repo_dir`, or None when git is missing, fails or times out."""
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock under someone else's feet.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        completed = subprocess.run(
            ["git", *args],
            cwd=repo_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        logger.debug("git %s in %s failed: %s", " ".join(args), repo_dir, error)
        return None
    if completed.returncode != 0:
        logger.debug("git %s in %s: %s", " ".join(args), repo_dir, completed.stderr.strip())
        return None
    return completed.stdout
