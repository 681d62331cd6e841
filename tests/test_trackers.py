"""Environment capture, memory and energy trackers: real values, None with a reason where a
figure cannot be had. The GPU tests are skipped on a machine without CUDA."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers

from dllm_bench.environment import capture_environment
from dllm_bench.rows import ENVIRONMENT_COLUMNS
from dllm_bench.trackers import EnergyTracker, MemoryTracker, nvml_handle, nvml_pci_bus_id, peak_rss_bytes

REPO_DIR = Path(__file__).resolve().parents[1]
SHA_PATTERN = re.compile(r"[0-9a-f]{40}")
CPU = torch.device("cpu")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
on_linux = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and ru_maxrss in KiB")
BALLAST_CHUNK_BYTES = 32 * 2**20


def git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
    return subprocess.run([*command, *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def isolated_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path where git does not look into parent folders for a repository."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    return tmp_path


@pytest.fixture
def temp_repo(isolated_tmp: Path) -> Path:
    """A git repository with one commit of one tracked file."""
    git(isolated_tmp, "init", "-q")
    (isolated_tmp / "tracked.txt").write_text("first\n")
    git(isolated_tmp, "add", "tracked.txt")
    git(isolated_tmp, "commit", "-q", "-m", "first")
    return isolated_tmp


def test_environment_has_exactly_the_columns_and_real_versions() -> None:
    environment = capture_environment(REPO_DIR)
    assert tuple(environment) == ENVIRONMENT_COLUMNS
    assert all(isinstance(value, str | int | bool) or value is None for value in environment.values())
    assert environment["cpu_model"]
    assert environment["python_version"] == platform.python_version()
    assert environment["torch_version"] == str(torch.__version__)
    assert environment["transformers_version"] == transformers.__version__
    assert environment["cuda_version"] == (torch.version.cuda or None)
    assert environment["host"]


def test_environment_git_state_of_this_repo() -> None:
    head = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"], capture_output=True, text=True)
    environment = capture_environment(REPO_DIR)
    if head.returncode == 0:
        assert SHA_PATTERN.fullmatch(environment["git_commit"])
        assert environment["git_commit"] == head.stdout.strip()
        assert environment["git_dirty"] in (True, False)
    else:
        assert environment["git_commit"] is None


def test_git_commit_and_dirty_flag_of_a_temp_repo(temp_repo: Path) -> None:
    clean = capture_environment(temp_repo)
    assert SHA_PATTERN.fullmatch(clean["git_commit"])
    assert clean["git_commit"] == git(temp_repo, "rev-parse", "HEAD")
    assert clean["git_dirty"] is False

    (temp_repo / "untracked.txt").write_text("not tracked\n")
    assert capture_environment(temp_repo)["git_dirty"] is False

    (temp_repo / "tracked.txt").write_text("changed\n")
    dirty = capture_environment(temp_repo)
    assert dirty["git_dirty"] is True
    assert dirty["git_commit"] == clean["git_commit"]


def test_repo_without_commits_has_no_commit(isolated_tmp: Path) -> None:
    git(isolated_tmp, "init", "-q")
    environment = capture_environment(isolated_tmp)
    assert environment["git_commit"] is None
    assert environment["git_dirty"] is False


def test_folder_outside_any_repo_has_no_git_state(isolated_tmp: Path) -> None:
    environment = capture_environment(isolated_tmp)
    assert environment["git_commit"] is None
    assert environment["git_dirty"] is None


def test_missing_git_gives_empty_git_state(temp_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_bin = temp_repo / "no-binaries"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    environment = capture_environment(temp_repo)
    assert environment["git_commit"] is None
    assert environment["git_dirty"] is None


@without_cuda
def test_machine_without_cuda_reports_no_gpu() -> None:
    environment = capture_environment(REPO_DIR)
    assert environment["gpu_count"] == 0
    assert environment["gpu_name"] is None


def test_transformers_version_is_the_installed_distribution() -> None:
    assert capture_environment(REPO_DIR)["transformers_version"] == importlib.metadata.version("transformers")


def current_rss_bytes() -> int:
    """Resident set size now, from /proc (Linux)."""
    resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def rss_up_to_peak() -> list[torch.Tensor]:
    """Touched tensors that lift the current RSS to the process's peak so far.

    Earlier tests (and, on Linux, the parent process of a fresh interpreter) may have left a
    peak above the current RSS; a block's allocation counts only above that peak.
    """
    ballast = []
    while peak_rss_bytes() - current_rss_bytes() > BALLAST_CHUNK_BYTES // 2:
        ballast.append(torch.ones(BALLAST_CHUNK_BYTES // 4, dtype=torch.float32))
    return ballast


@on_linux
def test_cpu_memory_of_a_fresh_200_mib_tensor() -> None:
    ballast = rss_up_to_peak()
    with MemoryTracker(CPU) as tracker:
        tensor = torch.ones(200 * 2**20 // 4, dtype=torch.float32)
        del tensor
    del ballast
    record = tracker.record()
    assert record.peak_rss_increase_mb is not None
    assert 150 <= record.peak_rss_increase_mb < 400
    assert record.peak_memory_allocated_mb is None
    assert record.peak_memory_reserved_mb is None


def test_cpu_block_below_an_earlier_peak_has_a_small_increase() -> None:
    earlier = torch.ones(100 * 2**20 // 4, dtype=torch.float32)
    del earlier
    with MemoryTracker(CPU) as tracker:
        total = sum(range(1000))
    record = tracker.record()
    assert total == 499500
    assert record.peak_rss_increase_mb is not None
    assert 0 <= record.peak_rss_increase_mb < 20
    assert record.peak_memory_allocated_mb is None
    assert record.peak_memory_reserved_mb is None


def test_records_are_refused_before_the_block_ends() -> None:
    memory, energy = MemoryTracker(CPU), EnergyTracker(CPU)
    with pytest.raises(RuntimeError, match="before the tracked block ended"):
        memory.record()
    with energy, pytest.raises(RuntimeError, match="before the tracked block ended"):
        energy.record()


def test_cpu_energy_is_none_with_a_reason_naming_the_device() -> None:
    with EnergyTracker(CPU) as tracker:
        time.sleep(0.01)
    record = tracker.record()
    assert record.energy_j is None
    assert "device cpu" in record.reason


def test_energy_tracker_refuses_a_negative_minimum() -> None:
    with pytest.raises(ValueError, match="min_seconds"):
        EnergyTracker(CPU, min_seconds=-1.0)


def test_trackers_do_not_swallow_the_blocks_exception() -> None:
    with pytest.raises(KeyError), MemoryTracker(CPU) as memory, EnergyTracker(CPU) as energy:
        raise KeyError("from the block")
    assert memory.record().peak_rss_increase_mb is not None
    assert energy.record().energy_j is None


@requires_cuda
def test_gpu_environment() -> None:
    environment = capture_environment(REPO_DIR)
    assert environment["gpu_count"] == str(torch.cuda.device_count())
    assert torch.cuda.get_device_name(torch.cuda.current_device()) in environment["gpu_name"].split("; ")
    assert re.fullmatch(r"\d+\.\d+(\.\d+)*", environment["driver_version"])
    assert environment["cuda_version"] == torch.version.cuda


@requires_cuda
def test_gpu_peak_memory_covers_the_tensor() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    with MemoryTracker(device) as tracker:
        tensor = torch.ones(256 * 2**20 // 4, dtype=torch.float32, device=device)
        del tensor
    record = tracker.record()
    assert record.peak_memory_allocated_mb is not None
    assert record.peak_memory_reserved_mb is not None
    assert record.peak_memory_allocated_mb >= 256
    assert record.peak_memory_reserved_mb >= record.peak_memory_allocated_mb
    assert record.peak_rss_increase_mb is None


@requires_cuda
def test_nvml_handle_is_the_torch_device() -> None:
    pynvml = pytest.importorskip("pynvml")
    device = torch.device("cuda", torch.cuda.current_device())
    bus_id = nvml_pci_bus_id(device)
    assert bus_id is not None
    assert re.fullmatch(r"[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.0", bus_id)
    pynvml.nvmlInit()
    try:
        nvml_uuid = pynvml.nvmlDeviceGetUUID(nvml_handle(device))
    finally:
        pynvml.nvmlShutdown()
    assert nvml_uuid.removeprefix("GPU-") == str(torch.cuda.get_device_properties(device).uuid)


@requires_cuda
def test_gpu_energy_of_a_one_second_matmul_loop() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    matrix = torch.randn(4096, 4096, device=device)
    with EnergyTracker(device) as tracker:
        deadline = time.perf_counter() + 1.0
        while time.perf_counter() < deadline:
            for _ in range(10):
                matrix = (matrix @ matrix).clamp_(-1.0, 1.0)
            torch.cuda.synchronize(device)
    record = tracker.record()
    assert record.reason == ""
    assert record.energy_j is not None
    # Joules, not millijoules: no single GPU draws 5 kW for about a second.
    assert 0 < record.energy_j < 5000


@requires_cuda
def test_gpu_energy_of_a_region_shorter_than_the_minimum_is_none() -> None:
    device = torch.device("cuda", torch.cuda.current_device())
    with EnergyTracker(device, min_seconds=30.0) as tracker:
        torch.ones(16, device=device).sum()
    record = tracker.record()
    assert record.energy_j is None
    assert "shorter than the energy counter's update period" in record.reason
