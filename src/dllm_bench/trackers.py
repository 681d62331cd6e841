"""Peak memory and energy of a measured block, as context managers.

    with MemoryTracker(device) as memory, EnergyTracker(device) as energy:
        run_the_rounds()
    memory.record(), energy.record()

Neither tracker makes a figure up: what a device cannot report is None, and the energy
record says why.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

try:
    import pynvml  # type: ignore[import-untyped]
except ImportError:  # nvidia-ml-py is absent: energy records say so
    pynvml = None

logger = logging.getLogger(__name__)

BYTES_PER_MIB = 2**20


@dataclass(frozen=True)
class MemoryRecord:
    """Peaks of one block in MiB; the CUDA fields are None off CUDA, the RSS field None on CUDA."""

    peak_memory_allocated_mb: float | None
    peak_memory_reserved_mb: float | None
    peak_rss_increase_mb: float | None


class MemoryTracker:
    """Peak memory of the block run inside `with`.

    On a CUDA device: the peaks of memory allocated and reserved by PyTorch's caching
    allocator on that device during the block (peak statistics are reset on entry).

    On the CPU: how much the process's peak resident set size (`ru_maxrss`) grew during the
    block. It counts the whole process, not only tensors, and it is 0 when the block stayed
    below a peak the process had already reached before the block, however much the block
    allocated.
    On Linux a process started by fork/exec begins with its parent's peak as its own
    (`ru_maxrss` survives exec), so even a fresh worker's first block can show 0.

    On other device types every field is None.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._peak_rss_before: int | None = None
        self._result: MemoryRecord | None = None

    def __enter__(self) -> MemoryTracker:
        self._result = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.device.type == "cpu":
            self._peak_rss_before = peak_rss_bytes()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._result = self._measure()

    def record(self) -> MemoryRecord:
        """The block's peaks; only after the `with` block has ended."""
        if self._result is None:
            raise RuntimeError("MemoryTracker.record() called before the tracked block ended")
        return self._result

    def _measure(self) -> MemoryRecord:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            allocated = torch.cuda.max_memory_allocated(self.device) / BYTES_PER_MIB
            reserved = torch.cuda.max_memory_reserved(self.device) / BYTES_PER_MIB
            return MemoryRecord(allocated, reserved, None)
        if self.device.type == "cpu" and self._peak_rss_before is not None:
            increase = (peak_rss_bytes() - self._peak_rss_before) / BYTES_PER_MIB
            return MemoryRecord(None, None, increase)
        logger.debug("no memory figures for device %s", self.device)
        return MemoryRecord(None, None, None)


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (`ru_maxrss`: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass(frozen=True)
class EnergyRecord:
    """Energy used by the device during one block; `energy_j` is None and `reason` says why when unknown."""

    energy_j: float | None
    reason: str


class EnergyTracker:
    """Energy the NVIDIA GPU `device` used during the block run inside `with`.

    Reads NVML's total energy counter (millijoules since the driver loaded; Volta and newer)
    before and after the block, each time after synchronizing the device. The counter is
    updated only every 20-100 ms, so a block shorter than `min_seconds` gets no figure.
    Nothing about NVML is raised: a device, driver or library that cannot report gives
    `energy_j=None` and the reason. NVML is initialised on entry and shut down on exit.
    """

    def __init__(self, device: torch.device, min_seconds: float = 0.1) -> None:
        if min_seconds < 0:
            raise ValueError(f"min_seconds must not be negative, got {min_seconds}")
        self.device = device
        self.min_seconds = min_seconds
        self._nvml_started = False
        self._handle: Any = None
        self._start_mj = 0
        self._start_s = 0.0
        self._unavailable = ""
        self._result: EnergyRecord | None = None

    def __enter__(self) -> EnergyTracker:
        self._result = None
        self._unavailable = self._start()
        if self._unavailable:
            logger.debug("no energy figure for %s: %s", self.device, self._unavailable)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        try:
            self._result = self._finish()
        finally:
            self._shutdown()

    def record(self) -> EnergyRecord:
        """The block's energy; only after the `with` block has ended."""
        if self._result is None:
            raise RuntimeError("EnergyTracker.record() called before the tracked block ended")
        return self._result

    def _start(self) -> str:
        """Read the counter before the block: "" on success, else why there will be no figure."""
        if self.device.type != "cuda":
            return f"energy is measured only on NVIDIA GPUs (device type cuda), not on device {self.device}"
        if pynvml is None:
            return "pynvml (nvidia-ml-py) is not installed"
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            return f"NVML could not be initialised: {error}"
        self._nvml_started = True
        try:
            self._handle = nvml_handle(self.device)
            if self._handle is None:
                return f"cannot tell which NVML device is {self.device}: no PCI bus id and CUDA_VISIBLE_DEVICES is set"
            torch.cuda.synchronize(self.device)
            self._start_mj = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except pynvml.NVMLError as error:
            return f"NVML energy counter unavailable for {self.device}: {error}"
        self._start_s = time.perf_counter()
        return ""

    def _finish(self) -> EnergyRecord:
        if self._unavailable:
            return EnergyRecord(None, self._unavailable)
        torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - self._start_s
        try:
            end_mj = int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except pynvml.NVMLError as error:
            return EnergyRecord(None, f"NVML energy counter unavailable for {self.device}: {error}")
        if elapsed < self.min_seconds:
            return EnergyRecord(
                None,
                f"measured region {elapsed:.3f} s is shorter than the energy counter's update period"
                f" (at least {self.min_seconds:g} s needed)",
            )
        if end_mj < self._start_mj:
            return EnergyRecord(None, f"NVML energy counter went backwards ({self._start_mj} mJ to {end_mj} mJ)")
        return EnergyRecord((end_mj - self._start_mj) / 1000, "")

    def _shutdown(self) -> None:
        if not self._nvml_started:
            return
        self._nvml_started = False
        self._handle = None
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as error:
            logger.debug("NVML shutdown failed: %s", error)


def nvml_pci_bus_id(device: torch.device) -> str | None:
    """The PCI bus id of a CUDA device in NVML's form "DDDDDDDD:BB:DD.0", or None when torch does not report it."""
    properties = torch.cuda.get_device_properties(_cuda_index(device))
    parts = [getattr(properties, name, None) for name in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    if not all(isinstance(part, int) for part in parts):
        return None
    domain, bus, slot = parts
    return f"{domain:08X}:{bus:02X}:{slot:02X}.0"


def nvml_handle(device: torch.device) -> Any:
    """The NVML handle of a CUDA device (NVML must be initialised), or None when it cannot be told.

    Matched by PCI bus id. NVML's indices ignore CUDA_VISIBLE_DEVICES, so the index is used
    instead only when that variable is unset. Raises `pynvml.NVMLError` on NVML failures.
    """
    bus_id = nvml_pci_bus_id(device)
    if bus_id is not None:
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return None
    return pynvml.nvmlDeviceGetHandleByIndex(_cuda_index(device))


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()
