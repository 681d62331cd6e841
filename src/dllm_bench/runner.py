"""Run one case: build the generate call, measure it, check its output, make the row.

What is timed is one generate call over the case's prompt batch, nothing else (prompt
construction, model loading, output analysis and row writing happen outside). Warm-up
calls run at every grid point; the last warm-up call is also profiled per forward pass.
What differs between model kinds comes from the case's backend.
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from dllm_bench.backends import backend
from dllm_bench.cases import Case
from dllm_bench.environment import threads_warning, usable_cores
from dllm_bench.feed import PromptFeed
from dllm_bench.models.loader import LoadedModel
from dllm_bench.progress import CaseProgress
from dllm_bench.rows import Row
from dllm_bench.sinks.manifest import utc_now
from dllm_bench.tasks import Task, accuracy_stats, make_task, rounds_needed
from dllm_bench.timing import LatencyStats, synchronized_timer, time_rounds
from dllm_bench.trackers import EnergyRecord, EnergyTracker, MemoryRecord, MemoryTracker

LOG = logging.getLogger("dllm_bench.runner")

# Above this coefficient of variation of the measured rounds a row is marked `cv`.
CV_LIMIT = 0.25
# At least this many prompts are scored per case of a scored task.
MIN_SCORED = 64

# Times `call` for the case's measured rounds (running `before_round` untimed before each
# call) and returns the durations. The warm-up is run by `run_case` itself.
Measure = Callable[[Callable[[], torch.Tensor], int, Callable[[], None]], list[float]]


def measure_with_own_timer(
    call: Callable[[], torch.Tensor], measured_rounds: int, before_round: Callable[[], None]
) -> list[float]:
    return time_rounds(call, warmup_rounds=0, measured_rounds=measured_rounds, before_round=before_round)


@dataclass
class CallRecorder:
    """Counts forward passes per call and keeps the last output of the generate call."""

    forwards: int = 0
    calls: int = 0
    per_call: list[int] = field(default_factory=list)
    outputs: list[torch.Tensor] = field(default_factory=list, repr=False)
    # Figures a kind's call reports itself (its library's tokens_per_forward), one dict per call.
    figures: list[dict[str, float]] = field(default_factory=list, repr=False)

    @property
    def last_output(self) -> torch.Tensor | None:
        return self.outputs[-1] if self.outputs else None

    def count_forward(self, *_: object) -> None:
        self.forwards += 1

    def record(self, output: torch.Tensor, **figures: float) -> torch.Tensor:
        """Close one call: its forward passes, its output and the figures its kind reports."""
        self.calls += 1
        self.per_call.append(self.forwards - sum(self.per_call))
        self.outputs.append(output)
        self.figures.append(figures)
        return output

    def reset(self) -> None:
        self.forwards = self.calls = 0
        self.per_call.clear()
        self.outputs.clear()
        self.figures.clear()

    def mean_figure(self, name: str) -> float | None:
        """The mean of a figure over the recorded calls; None unless every call reported it."""
        values = [figures.get(name) for figures in self.figures]
        if not values or any(value is None for value in values):
            return None
        return statistics.fmean(value for value in values if value is not None)

    def nfe(self) -> float:
        """Forward passes per generate call, the mean over the calls recorded."""
        if self.calls == 0:
            raise RuntimeError("the generate call never ran")
        if self.forwards == 0:
            # A generate call without a forward pass is impossible: the counting hook missed them.
            raise RuntimeError(
                "no forward pass of the counted module was seen in the measured calls (a compiled forward the "
                "hooks cannot see?); the row would have no nfe"
            )
        return self.forwards / self.calls


@dataclass
class ForwardProfile:
    """Durations of each forward pass of one call, timed with device synchronization."""

    forward_s: list[float] = field(default_factory=list)
    call_s: float = 0.0
    _start: float = 0.0

    def before(self, *_: object) -> None:
        self._start = synchronized_timer()

    def after(self, *_: object) -> None:
        self.forward_s.append(synchronized_timer() - self._start)

    def outside_forward_share(self) -> float | None:
        if not self.forward_s or self.call_s <= 0:
            return None
        return max(0.0, 1.0 - sum(self.forward_s) / self.call_s)


@dataclass(frozen=True)
class HostLoad:
    """How busy the machine was for a case: load at the start, CPU time over the rounds."""

    load_avg_1m: float | None
    cpu_count: int
    threads: int


def host_load() -> HostLoad:
    try:
        load: float | None = os.getloadavg()[0]
    except OSError:
        load = None
    return HostLoad(load_avg_1m=load, cpu_count=usable_cores(), threads=torch.get_num_threads())


def noise_warning(load: HostLoad, latency_cv: float | None) -> str:
    """`load`, `threads`, `cv`, joined by commas, or "" (see the README's 'Stable numbers')."""
    reasons = []
    if load.load_avg_1m is not None and load.load_avg_1m > load.cpu_count:
        reasons.append("load")
    if threads_warning(load.threads, load.cpu_count):
        reasons.append("threads")
    if latency_cv is not None and latency_cv > CV_LIMIT:
        reasons.append("cv")
    return ",".join(reasons)


def profile_call(model: torch.nn.Module, call: Callable[[], torch.Tensor]) -> ForwardProfile:
    """Run `call` once with every forward pass of `model` timed (not a measured round)."""
    profile = ForwardProfile()
    pre = model.register_forward_pre_hook(profile.before)
    post = model.register_forward_hook(profile.after)
    try:
        start = synchronized_timer()
        call()
        profile.call_s = synchronized_timer() - start
    finally:
        pre.remove()
        post.remove()
    return profile


def case_row(case: Case, loaded: LoadedModel | None = None) -> Row:
    """The row fields that describe the case, before anything is measured."""
    row = Row(case_id=case.case_id).with_values({**case.params(), "model_seed": case.model.seed})
    if loaded is not None:
        row = row.with_values({"device": str(loaded.device), "dtype": str(loaded.dtype).removeprefix("torch.")})
    return row


def case_task(case: Case, loaded: LoadedModel) -> Task:
    """The task object of a case: its prompts and scorer, for this model's vocabulary; made
    once per model, task and options."""
    key = (case.task, case.task_options)
    if key not in loaded.tasks:
        loaded.tasks[key] = make_task(
            case.task,
            dict(case.task_options),
            vocab_size=loaded.vocab_size,
            forbidden_ids=loaded.special_ids,
            tokenizer=loaded.tokenizer() if case.task == "jsonl" else None,
            eos_ids=loaded.eos_ids,
        )
    return loaded.tasks[key]


def case_feed(case: Case, loaded: LoadedModel, task: Task) -> PromptFeed:
    """Every round's batch: the measured rounds', then, for a scored task, the untimed extra
    rounds that bring the scored prompts to at least MIN_SCORED."""
    rounds = case.measured_rounds
    if task.scored:
        rounds = rounds_needed(batch_size=case.batch_size, min_scored=MIN_SCORED, measured_rounds=rounds)
    batches = [
        task.batch(batch_size=case.batch_size, prompt_length=case.prompt_length, seed=case.seed, round_index=r)
        for r in range(rounds)
    ]
    return PromptFeed(batches, loaded.device)


def check_length(case: Case, loaded: LoadedModel) -> None:
    """A checkpoint's maximum sequence length must hold the prompt and the generated tokens."""
    total = case.prompt_length + case.gen_length
    if loaded.max_length is not None and total > loaded.max_length:
        raise ValueError(
            f"prompt_length + gen_length = {total} exceeds the maximum sequence length {loaded.max_length} "
            f"of model '{case.model.name}'"
        )


def check_output(case: Case, loaded: LoadedModel, output: torch.Tensor | None) -> None:
    """The last output has the expected shape (an error otherwise), and what the kind checks."""
    expected = (case.batch_size, case.prompt_length + case.gen_length)
    if output is None or tuple(output.shape) != expected:
        shape = None if output is None else tuple(output.shape)
        raise RuntimeError(f"{case.case_id}: generate returned shape {shape}, expected {expected}")
    backend(case.kind).check_output(case, loaded, output)


def tokens_until_eos(generated: torch.Tensor, eos_ids: Sequence[int], *, length: int | None = None) -> int:
    """Generated tokens up to and including each sequence's first EOS (`length`, default
    all generated positions, if there is none), summed over the batch. `generated` holds
    the generated part only; it may be shorter than `length` when generation stopped."""
    length = generated.shape[1] if length is None else length
    if not eos_ids or length == 0:
        return int(generated.shape[0] * length)
    is_eos = torch.isin(generated, torch.tensor(list(eos_ids), device=generated.device))
    first = torch.where(
        is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, torch.full_like(is_eos[:, 0], length, dtype=torch.long)
    )
    return int(first.sum().item())


def run_case(
    case: Case,
    loaded: LoadedModel,
    measure: Measure = measure_with_own_timer,
    progress: CaseProgress | None = None,
) -> Row:
    """Measure one case and return its complete row.

    Warm-up calls read round 0's prompts; measured round r reads round r's (a batch is
    selected before each call, untimed). For a scored task, the measured calls' outputs are
    scored, then untimed extra rounds of the same call until MIN_SCORED prompts are scored.
    """
    check_length(case, loaded)
    kind = backend(case.kind)
    recorder = CallRecorder()
    progress = progress or CaseProgress(None, 0, 0, 0)
    load = host_load()
    task = case_task(case, loaded)
    feed = case_feed(case, loaded, task)
    call = kind.build_call(case, loaded, feed, recorder)
    rounds = iter(range(case.measured_rounds))

    def before_measured_round() -> None:
        progress.round_started()
        feed.select(next(rounds))

    counted = kind.counted_module(loaded)
    progress_hook = counted.register_forward_hook(progress.forward)
    try:
        profile = _warm_up(counted, call, case.warmup_rounds, progress.round_started)
        count_hook = counted.register_forward_hook(recorder.count_forward)
        recorder.reset()
        try:
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            with MemoryTracker(loaded.device) as memory, EnergyTracker(loaded.device) as energy:
                durations = measure(call, case.measured_rounds, before_measured_round)
            cpu_s, wall_s = time.process_time() - cpu_start, time.perf_counter() - wall_start
        finally:
            count_hook.remove()
    finally:
        progress_hook.remove()
    check_output(case, loaded, recorder.last_output)
    stats = LatencyStats.from_durations(durations)
    values: dict[str, object] = {
        **_latency_fields(stats),
        **_token_fields(case, loaded, feed, recorder, stats),
        **_forward_fields(profile),
        **_memory_fields(memory.record()),
        **_energy_fields(case, energy.record(), loaded.device),
        **kind.extra_fields(case, loaded, feed, stats),
        **_load_fields(load, stats, cpu_s / wall_s if loaded.device.type == "cpu" and wall_s > 0 else None),
    }
    measured_outputs = list(recorder.outputs)
    values["agreement_exact"] = kind.agreement(case, loaded, feed, measured_outputs)
    values.update(_accuracy_fields(task, feed, call, measured_outputs))
    values.update(status="ok", error=None, timestamp=utc_now())
    return case_row(case, loaded).with_values(values)


def _accuracy_fields(
    task: Task, feed: PromptFeed, call: Callable[[], torch.Tensor], outputs: Sequence[torch.Tensor]
) -> dict[str, object]:
    """Score the measured calls' outputs, then untimed extra rounds of the same call."""
    if not task.scored:
        return {}
    results: list[bool] = []
    for round_index, batch in enumerate(feed.batches):
        if round_index < len(outputs):
            output = outputs[round_index]
        else:
            feed.select(round_index)
            output = call()
        results += task.score(batch, output.detach().to("cpu"))
    stats = accuracy_stats(results)
    return {"accuracy": stats.accuracy, "accuracy_se": stats.accuracy_se, "n_scored": stats.n_scored}


def _warm_up(
    counted: torch.nn.Module, call: Callable[[], torch.Tensor], rounds: int, before_round: Callable[[], None]
) -> ForwardProfile | None:
    """Untimed warm-up calls; the last one is profiled per forward pass of the counted module."""
    for _ in range(rounds - 1):
        before_round()
        call()
    if rounds == 0:
        return None
    before_round()
    return profile_call(counted, call)


def _latency_fields(stats: LatencyStats) -> dict[str, object]:
    return {
        "latency_mean_s": stats.mean,
        "latency_median_s": stats.median,
        "latency_min_s": stats.min,
        "latency_max_s": stats.max,
        "latency_stddev_s": stats.stddev,
        "latency_cv": stats.stddev / stats.mean if stats.mean > 0 else None,
    }


def _token_fields(
    case: Case, loaded: LoadedModel, feed: PromptFeed, recorder: CallRecorder, stats: LatencyStats
) -> dict[str, object]:
    assert recorder.last_output is not None
    generated = case.batch_size * case.gen_length
    output = backend(case.kind).eos_output(case, loaded, feed, recorder.last_output)
    until_eos = tokens_until_eos(output[:, case.prompt_length :], loaded.eos_ids, length=case.gen_length)
    nfe = recorder.nfe()
    reported = recorder.mean_figure("tokens_per_forward")
    return {
        "generated_tokens": generated,
        "tokens_per_s": generated / stats.mean,
        "tokens_until_eos": until_eos,
        "eos_tokens_per_s": until_eos / stats.mean,
        "nfe": nfe,
        "nfe_min": min(recorder.per_call),
        "nfe_max": max(recorder.per_call),
        "cfg_batch_factor": case.settings.batch_factor(),
        "tokens_per_forward": reported if reported is not None else (case.gen_length / nfe if nfe else None),
        "encoder_nfe": recorder.mean_figure("encoder_nfe"),
        "edits": recorder.mean_figure("edits"),
    }


def _forward_fields(profile: ForwardProfile | None) -> dict[str, object]:
    if profile is None or not profile.forward_s:
        return {}
    return {
        "forward_mean_s": statistics.fmean(profile.forward_s),
        "outside_forward_share": profile.outside_forward_share(),
    }


def _memory_fields(record: MemoryRecord) -> dict[str, object]:
    return {
        "peak_memory_allocated_mb": record.peak_memory_allocated_mb,
        "peak_memory_reserved_mb": record.peak_memory_reserved_mb,
        "peak_rss_increase_mb": record.peak_rss_increase_mb,
    }


def _energy_fields(case: Case, record: EnergyRecord, device: torch.device) -> dict[str, object]:
    if record.energy_j is None:
        level = logging.INFO if device.type == "cuda" else logging.DEBUG
        LOG.log(level, "case %s: no energy figure: %s", case.case_id, record.reason)
        return {}
    per_call = record.energy_j / case.measured_rounds
    return {"energy_j": per_call, "energy_per_token_j": per_call / (case.batch_size * case.gen_length)}


def _load_fields(load: HostLoad, stats: LatencyStats, cpu_time_ratio: float | None) -> dict[str, object]:
    latency_cv = stats.stddev / stats.mean if stats.mean > 0 else None
    return {
        "torch_threads": load.threads,
        "cpu_count": load.cpu_count,
        "load_avg_1m": load.load_avg_1m,
        "cpu_time_ratio": cpu_time_ratio,
        "noise_warning": noise_warning(load, latency_cv) or None,
    }


def error_row(case: Case, loaded: LoadedModel | None, exc: BaseException, status: str = "error") -> Row:
    """The row of a failed case: status `error` or `oom` and the error's first line."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return case_row(case, loaded).with_values(
        {"status": status, "error": f"{type(exc).__name__}: {first}"[:500], "timestamp": utc_now()}
    )


def release_memory() -> None:
    """Give back what a failed case or check held so the next one starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA out of memory, Python's MemoryError, or a CPU allocator failure."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "DefaultCPUAllocator: can't allocate memory" in text
        or "not enough memory" in text
        or "out of memory" in text.lower()
    )
