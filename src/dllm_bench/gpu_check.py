"""GPU self-check: verify the suite's CUDA paths on one GPU in a few minutes, downloading nothing.

    python -m dllm_bench.gpu_check [--repo DIR] [--work-dir DIR] [--budget-s 450]

(`scripts/gpu_check.sh` runs this.) Prints one line per item, `PASS <item>: ...`,
`FAIL <item>: ...` or `SKIP <item>: ...`, then a verdict line `VERDICT: PASS|FAIL|SKIP: ...`.
Exit status 0 unless an item failed. Without a CUDA GPU every item is skipped with the
reason and the verdict says "no GPU" (exit 0).

The timer and sampler items run in this process; the others run the suite itself
(`pytest benchmarks --config ... --output-dir ...` in a subprocess) on random-init models
and read the rows it wrote, so they check what a user's run produces.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from unittest import mock

import torch
import yaml

from dllm_bench.models.llada_hf.configuration_llada import LLaDAConfig
from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM
from dllm_bench.rows import format_cell
from dllm_bench.runner import release_memory
from dllm_bench.sampling.llada import generate_keywords
from dllm_bench.sampling.reference import generate_reference
from dllm_bench.sinks.csvfiles import read_results
from dllm_bench.timing import synchronized_timer

LOG = logging.getLogger("dllm_bench.gpu_check")

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

# Item name -> what it checks, in the order of the README.
ITEMS: tuple[tuple[str, str], ...] = (
    ("timer", "synchronized timer against CUDA events on the same calls, within 2%"),
    ("memory", "CUDA memory columns non-zero, allocated <= reserved"),
    ("energy", "NVML energy columns present, with a plausible watts figure"),
    ("environment", "GPU name, driver and CUDA version in the rows"),
    ("pinning", "one GPU per worker under -n auto"),
    ("sampler", "bf16 LLaDA sampler token-identical to the reference on GPU, tied confidences handled"),
    ("cache", "8B-shape LLaDA (4 layers, bf16), cache none and dual at two grid points: dual faster, tokens/s"),
    ("oom", "an oversized batch with --allow-oom: the row says oom and the run goes on"),
)
ITEM_NAMES: tuple[str, ...] = tuple(name for name, _ in ITEMS)

TIMER_LIMIT = 0.02  # relative difference allowed between the two timers
WATTS_RANGE = (10.0, 1500.0)  # plausible average board power during a generate call
ENERGY_MIN_REGION_S = 0.5  # measured regions at least this long must have energy figures
OOM_BATCH = 131072  # the embedding output alone needs 275 GB (Llama, prompt 256) and 412 GB (LLaDA, 384 positions)
DEFAULT_BUDGET_S = 450.0  # with start-up and the hard stop's margin, within 8 minutes

FINAL_CSV = "raw_metrics.csv"
PARTIAL_CSV = "raw_metrics_partial.csv"

Row = Mapping[str, str]


@dataclass(frozen=True)
class CheckResult:
    item: str
    outcome: str
    detail: str

    def line(self) -> str:
        return f"{self.outcome} {self.item}: {self.detail}"


def passed(item: str, detail: str) -> CheckResult:
    return CheckResult(item, PASS, detail)


def failed(item: str, detail: str) -> CheckResult:
    return CheckResult(item, FAIL, detail)


def verdict_line(results: Sequence[CheckResult]) -> str:
    """`VERDICT: FAIL: 2 failed (cache, oom), 6 passed` and the like."""
    fails = [r.item for r in results if r.outcome == FAIL]
    n_pass = sum(r.outcome == PASS for r in results)
    n_skip = sum(r.outcome == SKIP for r in results)
    counts = f"{n_pass} passed" + (f", {n_skip} skipped" if n_skip else "")
    if fails:
        return f"VERDICT: FAIL: {len(fails)} failed ({', '.join(fails)}), {counts}"
    return f"VERDICT: PASS: {counts}"


# ---------------------------------------------------------------- no GPU


def no_gpu_reason() -> str | None:
    """Why no CUDA GPU can be used here, or None when one can."""
    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    shown = "unset" if visible is None else repr(visible)
    return f"no GPU: torch {torch.__version__} ({build}) sees no CUDA device (CUDA_VISIBLE_DEVICES {shown})"


def skip_all(reason: str) -> list[CheckResult]:
    return [CheckResult(name, SKIP, reason) for name in ITEM_NAMES]


# ---------------------------------------------------------------- pure checks on measurements and rows


def compare_timers(host_s: Sequence[float], event_s: Sequence[float]) -> CheckResult:
    """The synchronized timer and CUDA events timed the same calls: totals and the median call agree."""
    if not host_s or len(host_s) != len(event_s) or min(event_s) <= 0:
        return failed("timer", f"no comparable timings (host {len(host_s)}, events {len(event_s)})")
    total = abs(sum(host_s) - sum(event_s)) / sum(event_s)
    per_call = statistics.median(abs(h - e) / e for h, e in zip(host_s, event_s, strict=True))
    detail = (
        f"{len(host_s)} calls of {statistics.median(event_s) * 1e3:.1f} ms: total differs by {total:.2%}, "
        f"median call by {per_call:.2%} (limit {TIMER_LIMIT:.0%})"
    )
    return passed("timer", detail) if max(total, per_call) <= TIMER_LIMIT else failed("timer", detail)


def as_float(value: str | None) -> float | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def ok_rows(rows: Sequence[Row]) -> list[Row]:
    return [row for row in rows if row.get("status") == "ok"]


def check_memory(rows: Sequence[Row]) -> CheckResult:
    good = ok_rows(rows)
    if not good:
        return failed("memory", "no ok rows to check")
    problems = []
    for row in good:
        allocated = as_float(row.get("peak_memory_allocated_mb"))
        reserved = as_float(row.get("peak_memory_reserved_mb"))
        if allocated is None or reserved is None or allocated <= 0 or reserved <= 0:
            problems.append(f"{row.get('case_id')}: allocated {allocated}, reserved {reserved}")
        elif allocated > reserved:
            problems.append(f"{row.get('case_id')}: allocated {allocated} > reserved {reserved}")
    if problems:
        return failed("memory", "; ".join(problems))
    peak = max(as_float(row.get("peak_memory_allocated_mb")) or 0.0 for row in good)
    return passed("memory", f"{len(good)} rows non-zero with allocated <= reserved (largest allocated {peak:.0f} MiB)")


def row_watts(row: Row) -> float | None:
    energy, latency = as_float(row.get("energy_j")), as_float(row.get("latency_mean_s"))
    if energy is None or latency is None or latency <= 0:
        return None
    return energy / latency


def check_energy(rows: Sequence[Row]) -> CheckResult:
    """Every ok row with a long enough measured region has energy figures, all at plausible watts."""
    good = ok_rows(rows)
    with_energy = [row for row in good if as_float(row.get("energy_j")) is not None]
    if not with_energy:
        return failed("energy", f"no row has energy_j ({len(good)} ok rows); see benchmark.log for NVML's reason")
    problems = []
    for row in good:
        latency = as_float(row.get("latency_mean_s")) or 0.0
        region = latency * (as_float(row.get("measured_rounds")) or 1.0)
        if as_float(row.get("energy_j")) is None:
            if region >= ENERGY_MIN_REGION_S:
                problems.append(f"{row.get('case_id')}: no energy_j over a {region:.2f} s measured region")
            continue
        watts = row_watts(row)
        if watts is None or not WATTS_RANGE[0] <= watts <= WATTS_RANGE[1]:
            problems.append(f"{row.get('case_id')}: {watts} W is outside {WATTS_RANGE[0]:g}-{WATTS_RANGE[1]:g} W")
        if as_float(row.get("energy_per_token_j")) is None:
            problems.append(f"{row.get('case_id')}: energy_j without energy_per_token_j")
    if problems:
        return failed("energy", "; ".join(problems))
    watts_seen = [w for w in (row_watts(row) for row in with_energy) if w is not None]
    return passed(
        "energy",
        f"{len(with_energy)} of {len(good)} rows, {min(watts_seen):.0f}-{max(watts_seen):.0f} W "
        f"(plausible: {WATTS_RANGE[0]:g}-{WATTS_RANGE[1]:g} W)",
    )


def check_environment(rows: Sequence[Row], gpu_name: str, cuda_version: str) -> CheckResult:
    good = ok_rows(rows)
    if not good:
        return failed("environment", "no ok rows to check")
    problems = []
    for row in good:
        if not row.get("device", "").startswith("cuda"):
            problems.append(f"{row.get('case_id')}: device {row.get('device')!r}")
        if row.get("gpu_name") != gpu_name:
            problems.append(f"{row.get('case_id')}: gpu_name {row.get('gpu_name')!r}, expected {gpu_name!r}")
        if not row.get("driver_version"):
            problems.append(f"{row.get('case_id')}: driver_version empty")
        if row.get("cuda_version") != cuda_version:
            problems.append(f"{row.get('case_id')}: cuda_version {row.get('cuda_version')!r}, not {cuda_version!r}")
    if problems:
        return failed("environment", "; ".join(problems))
    first = good[0]
    return passed(
        "environment",
        f"{len(good)} rows: {first.get('gpu_name')}, driver {first.get('driver_version')}, "
        f"CUDA {first.get('cuda_version')}",
    )


def check_pinning(rows: Sequence[Row], visible: Sequence[str]) -> CheckResult:
    """Each worker ran on exactly one GPU of its own (device cuda:0 inside it), no more workers than GPUs."""
    good = ok_rows(rows)
    if not good:
        return failed("pinning", "no ok rows to check")
    problems = []
    gpus_of: dict[str, set[str]] = {}
    for row in good:
        worker, pinned = row.get("xdist_worker", ""), row.get("cuda_visible_devices", "")
        if not worker:
            problems.append(f"{row.get('case_id')}: no xdist_worker (did -n auto start workers?)")
        if pinned not in visible:
            problems.append(f"{row.get('case_id')}: cuda_visible_devices {pinned!r} is not one GPU of {list(visible)}")
        if row.get("device") != "cuda:0":
            problems.append(f"{row.get('case_id')}: device {row.get('device')!r}, expected the worker's own cuda:0")
        gpus_of.setdefault(worker, set()).add(pinned)
    for worker, gpus in gpus_of.items():
        if len(gpus) > 1:
            problems.append(f"worker {worker} ran on several GPUs: {sorted(gpus)}")
    pinned_gpus = [next(iter(gpus)) for gpus in gpus_of.values() if len(gpus) == 1]
    if len(pinned_gpus) != len(set(pinned_gpus)):
        problems.append(f"workers share a GPU: {gpus_of}")
    if len(gpus_of) > len(visible):
        problems.append(f"{len(gpus_of)} workers for {len(visible)} GPUs")
    if problems:
        return failed("pinning", "; ".join(problems))
    mapping = ", ".join(f"{w}->GPU {next(iter(g))}" for w, g in sorted(gpus_of.items()))
    return passed("pinning", f"{len(good)} rows, {len(gpus_of)} workers for {len(visible)} visible GPUs: {mapping}")


def check_cache_speed(rows: Sequence[Row]) -> CheckResult:
    """At each grid point (prompt, gen, batch) both cache none and dual ran, dual with more tokens/s."""
    points: dict[tuple[str, str, str], dict[str, float | None]] = {}
    for row in rows:
        if row.get("kind") != "llada":
            continue
        key = (row.get("prompt_length", ""), row.get("gen_length", ""), row.get("batch_size", ""))
        speed = as_float(row.get("tokens_per_s")) if row.get("status") == "ok" else None
        points.setdefault(key, {})[row.get("cache") or "none"] = speed
    problems, shown = [], []
    for (prompt, gen, batch), speeds in sorted(points.items()):
        none, dual = speeds.get("none"), speeds.get("dual")
        label = f"p{prompt} g{gen} b{batch}"
        if none is None or dual is None or none <= 0 or dual <= 0:
            problems.append(f"{label}: tokens/s none {none}, dual {dual} (a case missing or not ok)")
        elif dual <= none:
            problems.append(f"{label}: dual {dual:.1f} tokens/s is not faster than none {none:.1f}")
        else:
            shown.append(f"{label}: none {none:.1f}, dual {dual:.1f} tokens/s ({dual / none:.1f}x)")
    if len(points) < 2:
        problems.append(f"{len(points)} grid points with LLaDA rows, expected 2")
    if problems:
        return failed("cache", "; ".join(problems))
    return passed("cache", "; ".join(shown))


def check_oom(partial_rows: Sequence[Row], exit_code: int | None) -> CheckResult:
    """An `oom` row, an ok row written after it (the run went on), and a run that ended cleanly."""
    oom_at = [i for i, row in enumerate(partial_rows) if row.get("status") == "oom"]
    if not oom_at:
        statuses = [f"{row.get('case_id')}: {row.get('status')} {row.get('error', '')}".strip() for row in partial_rows]
        return failed("oom", f"no row says oom (rows: {statuses or 'none'})")
    later_ok = [row for row in partial_rows[oom_at[0] + 1 :] if row.get("status") == "ok"]
    if not later_ok:
        return failed("oom", "no case finished ok after the out-of-memory case: the run did not go on")
    if exit_code != 0:
        return failed("oom", f"with --allow-oom the run should exit 0, it exited {exit_code}")
    first = partial_rows[oom_at[0]]
    return passed(
        "oom",
        f"{first.get('case_id')} says oom ({first.get('error', '')[:80]}); "
        f"{len(later_ok)} cases ran ok after it, exit 0",
    )


# ---------------------------------------------------------------- in-process GPU items


def time_with_both_timers(work: Callable[[], None], calls: int, warmup: int = 3) -> tuple[list[float], list[float]]:
    """Seconds per call of `work` from the synchronized timer and from CUDA events, the same calls."""
    for _ in range(warmup):
        work()
    host, event = [], []
    for _ in range(calls):
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        t0 = synchronized_timer()
        start.record()
        work()
        end.record()
        t1 = synchronized_timer()
        host.append(t1 - t0)
        event.append(start.elapsed_time(end) / 1000.0)
    return host, event


def check_timer(calls: int = 20) -> CheckResult:
    """Matrix products of about 20 ms per call, timed both ways."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def work() -> None:
        for _ in range(10):
            torch.mm(a, a)

    host, event = time_with_both_timers(work, calls)
    return compare_timers(host, event)


@dataclass
class TieCounter:
    """Counts per-row top-k selections whose k-th and (k+1)-th finite values are equal."""

    calls: int = 0
    ties: int = 0

    def observe(self, values: torch.Tensor, k: int, original: Callable[..., Any]) -> None:
        self.calls += 1
        if values.dim() != 1 or k >= values.numel() or k <= 0:
            return
        top = original(values, k + 1).values
        if bool(torch.isfinite(top[k])) and bool(top[k - 1] == top[k]):
            self.ties += 1


@contextmanager
def counting_topk_ties(counter: TieCounter) -> Iterator[None]:
    """Wrap `torch.topk` so that the reference's per-row selections are inspected for ties."""
    original = torch.topk

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        values = args[0] if args else kwargs["input"]
        k = args[1] if len(args) > 1 else kwargs["k"]
        counter.observe(values, int(k), original)
        return result

    with mock.patch.object(torch, "topk", wrapper):
        yield


@dataclass(frozen=True)
class SamplerSetting:
    name: str
    temperature: float = 0.0
    cfg_scale: float = 0.0
    remasking: str = "low_confidence"
    padded: bool = False


SAMPLER_SETTINGS: tuple[SamplerSetting, ...] = (
    SamplerSetting("greedy"),
    SamplerSetting("temperature 0.7", temperature=0.7),
    SamplerSetting("random remasking", remasking="random"),
    SamplerSetting("cfg 1.0, left padding", cfg_scale=1.0, padded=True),
)


@dataclass(frozen=True)
class SamplerShape:
    batch: int = 4
    prompt_length: int = 64
    gen_length: int = 64
    block_length: int = 16
    steps: int = 32  # 2 tokens per step: top-k with k = 2, where ties decide
    pad: int = 8


def sampler_prompt(
    shape: SamplerShape, vocab_limit: int, padded: bool, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(1234)
    prompt = torch.randint(0, vocab_limit, (shape.batch, shape.prompt_length), generator=generator)
    if not padded:
        return prompt.to(device), None
    mask = torch.ones_like(prompt)
    prompt[0, : shape.pad] = pad_id
    mask[0, : shape.pad] = 0
    return prompt.to(device), mask.to(device)


@dataclass
class SamplerOutcome:
    identical: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    ties: TieCounter = field(default_factory=TieCounter)


def compare_samplers(
    model: torch.nn.Module,
    *,
    mask_id: int,
    pad_id: int,
    vocab_limit: int,
    device: torch.device,
    shape: SamplerShape,
    settings: Sequence[SamplerSetting] = SAMPLER_SETTINGS,
) -> SamplerOutcome:
    """Run the fast sampler and the reference on the same prompts and seeds, setting by setting."""
    outcome = SamplerOutcome()
    for index, setting in enumerate(settings):
        prompt, mask = sampler_prompt(shape, vocab_limit, setting.padded, pad_id, device)
        kwargs: dict[str, Any] = {
            "steps": shape.steps,
            "gen_length": shape.gen_length,
            "block_length": shape.block_length,
            "temperature": setting.temperature,
            "cfg_scale": setting.cfg_scale,
            "remasking": setting.remasking,
            "mask_id": mask_id,
        }
        torch.manual_seed(100 + index)
        fast = generate_keywords(model, prompt, mask, **kwargs)
        torch.manual_seed(100 + index)
        with counting_topk_ties(outcome.ties):
            reference = generate_reference(model, prompt, mask, **kwargs)
        (outcome.identical if torch.equal(fast, reference) else outcome.different).append(setting.name)
    return outcome


def sampler_result(outcome: SamplerOutcome, what: str) -> CheckResult:
    if outcome.different:
        return failed("sampler", f"{what}: tokens differ from the reference for {', '.join(outcome.different)}")
    if outcome.ties.ties == 0:
        return failed(
            "sampler",
            f"{what}: identical, but no tied confidences occurred in {outcome.ties.calls} selections, "
            "so tie handling was not exercised",
        )
    return passed(
        "sampler",
        f"{what}: identical in {len(outcome.identical)} settings ({', '.join(outcome.identical)}); "
        f"{outcome.ties.ties} of {outcome.ties.calls} per-row selections had tied confidences",
    )


def build_llada(arch: Mapping[str, Any], device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """A random-init model of the suite's LLaDA architecture (the class a random-init folder holds)."""
    torch.manual_seed(seed)
    model: torch.nn.Module = LLaDAModelLM(LLaDAConfig(**arch))
    model.to(device=device, dtype=dtype)
    return model.eval()


SAMPLER_ARCH: Mapping[str, Any] = {
    "d_model": 1024,
    "n_heads": 8,
    "n_kv_heads": 8,
    "n_layers": 2,
    "mlp_hidden_size": 2816,
}  # the LLaDA-8B vocabulary (126464) and special ids are the config defaults


def check_sampler() -> CheckResult:
    device = torch.device("cuda")
    model = build_llada(SAMPLER_ARCH, device, torch.bfloat16)
    config: Any = getattr(model, "config")  # noqa: B009 (a transformers config, untyped)
    outcome = compare_samplers(
        model,
        mask_id=int(config.mask_token_id),
        pad_id=int(config.pad_token_id),
        vocab_limit=126000,  # below the special ids (BOS 126080, EOS/pad 126081, mask 126336)
        device=device,
        shape=SamplerShape(),
    )
    del model
    release_memory()
    return sampler_result(outcome, "bf16, d1024, 2 layers, vocabulary 126464, B4 P64 G64 block 16, 32 steps")


# ---------------------------------------------------------------- suite runs


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

    def rows(self) -> list[dict[str, str]]:
        return text_rows(self.output_dir / FINAL_CSV)

    def partial_rows(self) -> list[dict[str, str]]:
        return text_rows(self.output_dir / PARTIAL_CSV)

    def problem(self) -> str | None:
        """Why the run cannot be trusted as a whole (timed out, refused its config), or None."""
        if self.exit_code is None:
            return "the suite run was stopped at the time limit"
        errors = [line.removeprefix("ERROR: ") for line in self.output.splitlines() if line.startswith("ERROR: ")]
        if self.exit_code == 4 or (errors and not self.rows()):
            return f"the suite refused the run (exit {self.exit_code}): {'; '.join(errors) or 'see the output'}"
        return None


def text_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results CSV (read by the suite's one reader) as the cells the checks read."""
    return [{name: format_cell(name, value) for name, value in row.to_record().items()} for row in read_results(path)]


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


LLADA_8B_SHAPE_L4: Mapping[str, Any] = {
    "name": "llada-8b-shape-l4",
    "kind": "llada",
    "source": "random-init",
    "dtype": "bfloat16",
    "device": "cuda",
    "arch": {"n_layers": 4},  # the LLaDAConfig defaults are the 8B shape
}
LLAMA3_8B_SHAPE_L4: Mapping[str, Any] = {
    "name": "llama3-8b-shape-l4",
    "kind": "baseline",
    "source": "random-init",
    "dtype": "bfloat16",
    "device": "cuda",
    "arch": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 4,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "pad_token_id": 128001,
    },
}
TINY_ARCH_LLADA: Mapping[str, Any] = {
    "d_model": 64,
    "n_heads": 2,
    "n_kv_heads": 2,
    "n_layers": 1,
    "mlp_hidden_size": 128,
    "vocab_size": 512,
    "embedding_size": 512,
    "mask_token_id": 511,
    "eos_token_id": 510,
    "pad_token_id": 510,
    "bos_token_id": 509,
    "max_sequence_length": 128,
}


def grid_config() -> dict[str, Any]:
    """8B-shape LLaDA and Llama (4 layers, bf16): an oversized batch first, then batch 1."""
    return {
        "models": [dict(LLADA_8B_SHAPE_L4), dict(LLAMA3_8B_SHAPE_L4)],
        "grid": {"prompt_length": [256], "gen_length": [128], "batch_size": [OOM_BATCH, 1]},
        "llada": {"steps": [128], "block_length": [32]},
        "warmup_rounds": 1,
        "measured_rounds": 2,
        "seed": 0,
    }


def cache_config() -> dict[str, Any]:
    """The same LLaDA at two grid points (batch 1 and 4), cache none and dual, one token per step."""
    return {
        "models": [dict(LLADA_8B_SHAPE_L4)],
        "grid": {"prompt_length": [256], "gen_length": [128], "batch_size": [1, 4]},
        "llada": {"steps": [128], "block_length": [32], "cache": ["none", "dual"]},
        "warmup_rounds": 1,
        "measured_rounds": 2,
        "seed": 0,
    }


def pinning_config(gpu_count: int) -> dict[str, Any]:
    """A tiny LLaDA with two cases per GPU, on the default device (each worker's own GPU)."""
    return {
        "models": [{"name": "tiny-llada", "kind": "llada", "source": "random-init", "arch": dict(TINY_ARCH_LLADA)}],
        "grid": {"prompt_length": [16], "gen_length": [16], "batch_size": list(range(1, 2 * gpu_count + 1))},
        "llada": {"steps": [4], "block_length": [16]},
        "warmup_rounds": 0,
        "measured_rounds": 1,
        "seed": 0,
    }


def visible_gpus() -> list[str]:
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [entry.strip() for entry in given.split(",") if entry.strip()]
    return [str(index) for index in range(torch.cuda.device_count())]


def grid_items(run: SuiteRun) -> list[CheckResult]:
    problem = run.problem()
    if problem is not None:
        return [failed(item, problem) for item in ("memory", "energy", "environment", "oom")]
    rows = run.rows()
    return [
        check_memory(rows),
        check_energy(rows),
        check_environment(rows, torch.cuda.get_device_name(0), torch.version.cuda or ""),
        check_oom(run.partial_rows(), run.exit_code),
    ]


def cache_item(run: SuiteRun) -> CheckResult:
    problem = run.problem()
    if problem is not None:
        return failed("cache", problem)
    return check_cache_speed(run.rows())


def pinning_item(run: SuiteRun, visible: Sequence[str]) -> CheckResult:
    problem = run.problem()
    if problem is not None:
        return failed("pinning", problem)
    return check_pinning(run.rows(), visible)


# ---------------------------------------------------------------- driver


def guarded(item: str, check: Callable[[], CheckResult]) -> CheckResult:
    """Run one in-process check; an exception is that item's failure, not the end of the check."""
    try:
        return check()
    except Exception as exc:
        LOG.exception("item %s raised", item)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return failed(item, f"{type(exc).__name__}: {first}")
    finally:
        release_memory()


def emit(result: CheckResult) -> CheckResult:
    sys.stdout.write(result.line() + "\n")
    sys.stdout.flush()
    return result


def run_gpu_checks(repo: Path, work_dir: Path, budget: Budget) -> list[CheckResult]:
    results = [emit(guarded("timer", check_timer)), emit(guarded("sampler", check_sampler))]
    work_dir.mkdir(parents=True, exist_ok=True)
    grid = run_suite(repo, work_dir, "grid", grid_config(), ["--allow-oom"], budget)
    results += [emit(result) for result in grid_items(grid)]
    cache = run_suite(repo, work_dir, "cache", cache_config(), [], budget)
    results.append(emit(cache_item(cache)))
    visible = visible_gpus()
    pinning = run_suite(repo, work_dir, "pinning", pinning_config(len(visible)), ["-n", "auto"], budget)
    results.append(emit(pinning_item(pinning, visible)))
    return sorted(results, key=lambda r: ITEM_NAMES.index(r.item))


def default_repo() -> Path:
    """The checkout holding this module (src/dllm_bench/gpu_check.py), else the current directory."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / "benchmarks").is_dir() else Path.cwd()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", type=Path, default=None, help="the checkout with benchmarks/ (default: this one)")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="where the suite runs write (default: results/gpu-check-<UTC time>)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time limit of the whole check, seconds"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    reason = no_gpu_reason()
    if reason is not None:
        for result in skip_all(reason):
            emit(result)
        sys.stdout.write(f"VERDICT: SKIP: {reason}; nothing was checked\n")
        return 0
    repo = (args.repo or default_repo()).resolve()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    work_dir = (args.work_dir or repo / "results" / f"gpu-check-{stamp}").resolve()
    LOG.info("GPU self-check of %s; suite runs under %s", repo, work_dir)
    results = run_gpu_checks(repo, work_dir, Budget(args.budget_s))
    verdict = verdict_line(results)
    sys.stdout.write(verdict + "\n")
    return 1 if verdict.startswith("VERDICT: FAIL") else 0


if __name__ == "__main__":
    sys.exit(main())
