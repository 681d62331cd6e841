"""The items judged from the rows of a suite run: pure functions of typed rows (`dllm_bench.rows.Row`).

Each returns the item's `CheckResult`, naming the case and the value that failed.
"""

from __future__ import annotations

from collections.abc import Sequence

from dllm_bench.gpu_check.outcome import CheckResult, failed, passed
from dllm_bench.rows import Row, number

WATTS_RANGE = (10.0, 1500.0)  # plausible average board power during a generate call
ENERGY_MIN_REGION_S = 0.5  # measured regions at least this long must have energy figures


def ok_rows(rows: Sequence[Row]) -> list[Row]:
    return [row for row in rows if row.ok]


def check_memory(rows: Sequence[Row]) -> CheckResult:
    good = ok_rows(rows)
    if not good:
        return failed("memory", "no ok rows to check")
    problems = []
    for row in good:
        allocated = number(row, "peak_memory_allocated_mb")
        reserved = number(row, "peak_memory_reserved_mb")
        if allocated is None or reserved is None or allocated <= 0 or reserved <= 0:
            problems.append(f"{row.case_id}: allocated {allocated}, reserved {reserved}")
        elif allocated > reserved:
            problems.append(f"{row.case_id}: allocated {allocated} > reserved {reserved}")
    if problems:
        return failed("memory", "; ".join(problems))
    peak = max(number(row, "peak_memory_allocated_mb") or 0.0 for row in good)
    return passed("memory", f"{len(good)} rows non-zero with allocated <= reserved (largest allocated {peak:.0f} MiB)")


def row_watts(row: Row) -> float | None:
    energy, latency = number(row, "energy_j"), number(row, "latency_mean_s")
    if energy is None or latency is None or latency <= 0:
        return None
    return energy / latency


def check_energy(rows: Sequence[Row]) -> CheckResult:
    """Every ok row with a long enough measured region has energy figures, all at plausible watts."""
    good = ok_rows(rows)
    with_energy = [row for row in good if row.energy_j is not None]
    if not with_energy:
        return failed("energy", f"no row has energy_j ({len(good)} ok rows); see benchmark.log for NVML's reason")
    problems = []
    for row in good:
        latency = number(row, "latency_mean_s") or 0.0
        region = latency * (number(row, "measured_rounds") or 1.0)
        if row.energy_j is None:
            if region >= ENERGY_MIN_REGION_S:
                problems.append(f"{row.case_id}: no energy_j over a {region:.2f} s measured region")
            continue
        watts = row_watts(row)
        if watts is None or not WATTS_RANGE[0] <= watts <= WATTS_RANGE[1]:
            problems.append(f"{row.case_id}: {watts} W is outside {WATTS_RANGE[0]:g}-{WATTS_RANGE[1]:g} W")
        if row.energy_per_token_j is None:
            problems.append(f"{row.case_id}: energy_j without energy_per_token_j")
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
        device, name, cuda = row.device or "", row.gpu_name or "", row.cuda_version or ""
        if not device.startswith("cuda"):
            problems.append(f"{row.case_id}: device {device!r}")
        if name != gpu_name:
            problems.append(f"{row.case_id}: gpu_name {name!r}, expected {gpu_name!r}")
        if not row.driver_version:
            problems.append(f"{row.case_id}: driver_version empty")
        if cuda != cuda_version:
            problems.append(f"{row.case_id}: cuda_version {cuda!r}, not {cuda_version!r}")
    if problems:
        return failed("environment", "; ".join(problems))
    first = good[0]
    return passed(
        "environment",
        f"{len(good)} rows: {first.gpu_name}, driver {first.driver_version}, CUDA {first.cuda_version}",
    )


def check_pinning(rows: Sequence[Row], visible: Sequence[str]) -> CheckResult:
    """Each worker ran on exactly one GPU of its own (device cuda:0 inside it), no more workers than GPUs."""
    good = ok_rows(rows)
    if not good:
        return failed("pinning", "no ok rows to check")
    problems = []
    gpus_of: dict[str, set[str]] = {}
    for row in good:
        worker, pinned = row.xdist_worker or "", row.cuda_visible_devices or ""
        if not worker:
            problems.append(f"{row.case_id}: no xdist_worker (did -n auto start workers?)")
        if pinned not in visible:
            problems.append(f"{row.case_id}: cuda_visible_devices {pinned!r} is not one GPU of {list(visible)}")
        if row.device != "cuda:0":
            problems.append(f"{row.case_id}: device {row.device or ''!r}, expected the worker's own cuda:0")
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


GridPoint = tuple[int, int, int]  # prompt_length, gen_length, batch_size


def check_cache_speed(rows: Sequence[Row]) -> CheckResult:
    """At each grid point (prompt, gen, batch) both cache none and dual ran, dual with more tokens/s.

    The rows read are those with a `cache` setting (the kinds that have one)."""
    points: dict[GridPoint, dict[str, float | None]] = {}
    for row in rows:
        if row.cache is None:
            continue
        key = (row.prompt_length or 0, row.gen_length or 0, row.batch_size or 0)
        points.setdefault(key, {})[row.cache] = number(row, "tokens_per_s") if row.ok else None
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
        problems.append(f"{len(points)} grid points with cache rows, expected 2")
    if problems:
        return failed("cache", "; ".join(problems))
    return passed("cache", "; ".join(shown))


def check_oom(partial_rows: Sequence[Row], exit_code: int | None) -> CheckResult:
    """An `oom` row, an ok row written after it (the run went on), and a run that ended cleanly."""
    oom_at = [i for i, row in enumerate(partial_rows) if row.status == "oom"]
    if not oom_at:
        statuses = [f"{row.case_id}: {row.status} {row.error or ''}".strip() for row in partial_rows]
        return failed("oom", f"no row says oom (rows: {statuses or 'none'})")
    later_ok = ok_rows(partial_rows[oom_at[0] + 1 :])
    if not later_ok:
        return failed("oom", "no case finished ok after the out-of-memory case: the run did not go on")
    if exit_code != 0:
        return failed("oom", f"with --allow-oom the run should exit 0, it exited {exit_code}")
    first = partial_rows[oom_at[0]]
    return passed(
        "oom",
        f"{first.case_id} says oom ({(first.error or '')[:80]}); {len(later_ok)} cases ran ok after it, exit 0",
    )


def check_dgemma(rows: Sequence[Row], *, canvases: int, steps: int, canvas: int) -> CheckResult:
    """Every DiffusionGemma row ok, for both cache implementations, with the decoder passes a
    random-weight model makes (adaptive stopping never fires: every canvas runs all its
    steps), the encoder's passes (the prompt, then each canvas but the last) and the library's
    tokens_per_forward (at most a canvas per pass, and at most the tokens over the passes)."""
    if not rows:
        return failed("dgemma", "no rows")
    problems = [f"{row.case_id}: {row.status} {row.error or ''}".strip() for row in rows if not row.ok]
    caches = {row.cache_implementation for row in rows if row.ok}
    if caches != {"dynamic", "static"}:
        problems.append(f"ok rows for caches {sorted(c or '' for c in caches)}, expected dynamic and static")
    for row in ok_rows(rows):
        if row.nfe != canvases * steps:
            problems.append(f"{row.case_id}: nfe {row.nfe}, expected {canvases * steps} decoder passes")
        if row.encoder_nfe != canvases:
            problems.append(f"{row.case_id}: encoder_nfe {row.encoder_nfe}, expected {canvases}")
        tpf = row.tokens_per_forward
        if tpf is None or not 0 < tpf <= canvas * canvases / (canvases * steps):
            problems.append(f"{row.case_id}: tokens_per_forward {tpf}")
    if problems:
        return failed("dgemma", "; ".join(problems))
    fastest = max(number(row, "tokens_per_s") or 0.0 for row in rows)
    detail = f"{len(rows)} rows ok (dynamic and static cache), nfe {canvases * steps}, up to {fastest:.0f} tokens/s"
    return passed("dgemma", detail)
