"""Which GPUs a process may use, and one GPU per pytest-xdist worker.

Nothing here initialises CUDA: the GPUs are counted with NVML, so that an xdist worker
can still set CUDA_VISIBLE_DEVICES before torch first touches the device.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

try:
    import pynvml  # type: ignore[import-untyped]
except ImportError:  # nvidia-ml-py absent: no GPU is counted
    pynvml = None

LOG = logging.getLogger("dllm_bench.devices")

PINNED_MARK = "DLLM_BENCH_PINNED_GPU"


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES if set (an empty value or -1
    means none), else every GPU NVML sees."""
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        entries = [entry.strip() for entry in given.split(",") if entry.strip()]
        return [] if not entries or entries[0] == "-1" else entries
    return [str(index) for index in range(_nvml_gpu_count())]


def _nvml_gpu_count() -> int:
    if pynvml is None:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return 0
    finally:
        pynvml.nvmlShutdown()


def worker_index(worker_id: str) -> int:
    """`gw3` -> 3 (a restarted worker gets a new, higher id: callers use it modulo)."""
    digits = worker_id.removeprefix("gw")
    if not digits.isdigit():
        raise ValueError(f"not an xdist worker id: {worker_id!r}")
    return int(digits)


def pin_worker_gpu(worker_id: str, env: Mapping[str, str]) -> str | None:
    """The CUDA_VISIBLE_DEVICES value for this worker: one of the visible GPUs, round
    robin; None without GPUs, or when this process was pinned already."""
    if env.get(PINNED_MARK):
        return None
    gpus = visible_gpus(env)
    if not gpus:
        return None
    return gpus[worker_index(worker_id) % len(gpus)]
