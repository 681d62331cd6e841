"""Run one case: build the generate call, measure it, check its output, make the row.

What is timed is one generate call over the case's prompt batch, nothing else (prompt
construction, model loading, output analysis and row writing happen outside). Warm-up
calls run at every grid point; the last warm-up call is also profiled per forward pass.
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from dllm_bench.cases import Case
from dllm_bench.models.loader import LoadedModel
from dllm_bench.progress import CaseProgress
from dllm_bench.prompts import make_prompt
from dllm_bench.sampling.llada import generate
from dllm_bench.timing import LatencyStats, synchronized_timer, time_rounds
from dllm_bench.trackers import EnergyRecord, EnergyTracker, MemoryRecord, MemoryTracker

LOG = logging.getLogger("dllm_bench.runner")

# Times `call` for the case's measured rounds (running `before_round` untimed before each
# call) and returns the durations. The warm-up is run by `run_case` itself.
Measure = Callable[[Callable[[], torch.Tensor], int, Callable[[], None]], list[float]]


def measure_with_own_timer(
    call: Callable[[], torch.Tensor], measured_rounds: int, before_round: Callable[[], None]
) -> list[float]:
    return time_rounds(call, warmup_rounds=0, measured_rounds=measured_rounds, before_round=before_round)


@dataclass
class CallRecorder:
    """Counts forward passes and keeps the last output of the generate call."""

    forwards: int = 0
    calls: int = 0
    last_output: torch.Tensor | None = field(default=None, repr=False)

    def count_forward(self, *_: object) -> None:
        self.forwards += 1

    def record(self, output: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.last_output = output
        return output

    def forwards_per_call(self) -> int:
        if self.calls == 0:
            raise RuntimeError("the generate call never ran")
        return round(self.forwards / self.calls)


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


def case_row(case: Case, loaded: LoadedModel | None = None) -> dict[str, object]:
    """The row fields that describe the case, before anything is measured."""
    row: dict[str, object] = {"case_id": case.case_id, **case.params()}
    if loaded is not None:
        row["device"] = str(loaded.device)
        row["dtype"] = str(loaded.dtype).removeprefix("torch.")
    return row


def case_prompt(case: Case, loaded: LoadedModel) -> torch.Tensor:
    return make_prompt(
        batch_size=case.batch_size,
        prompt_length=case.prompt_length,
        vocab_size=loaded.vocab_size,
        forbidden_ids=loaded.special_ids,
        seed=case.seed,
    ).to(loaded.device)


def make_call(
    case: Case, loaded: LoadedModel, prompt: torch.Tensor, recorder: CallRecorder
) -> Callable[[], torch.Tensor]:
    """The function that is timed: one generate call over the case's prompt batch."""
    if case.kind == "llada":
        return _llada_call(case, loaded, prompt, recorder)
    return _baseline_call(case, loaded, prompt, recorder, new_tokens=case.gen_length)


def _llada_call(
    case: Case, loaded: LoadedModel, prompt: torch.Tensor, recorder: CallRecorder
) -> Callable[[], torch.Tensor]:
    assert case.steps is not None and case.block_length is not None and loaded.mask_id is not None
    steps, block_length, mask_id = case.steps, case.block_length, loaded.mask_id
    remasking = case.remasking or "low_confidence"
    temperature = case.temperature or 0.0
    cfg_scale = case.cfg_scale or 0.0

    def call() -> torch.Tensor:
        return recorder.record(
            generate(
                loaded.model,
                prompt,
                steps=steps,
                gen_length=case.gen_length,
                block_length=block_length,
                temperature=temperature,
                cfg_scale=cfg_scale,
                remasking=remasking,
                mask_id=mask_id,
            )
        )

    return call


def _baseline_call(
    case: Case,
    loaded: LoadedModel,
    prompt: torch.Tensor,
    recorder: CallRecorder,
    *,
    new_tokens: int,
    fixed_length: bool = True,
) -> Callable[[], torch.Tensor]:
    """Greedy transformers generate with the KV cache: exactly `new_tokens` new tokens
    (EOS suppressed until then), or with `fixed_length=False` stopping at EOS."""
    attention_mask = torch.ones_like(prompt)
    pad_id = loaded.pad_id if loaded.pad_id is not None else (loaded.eos_ids[0] if loaded.eos_ids else 0)
    generate_fn: Callable[..., torch.Tensor] = loaded.model.generate  # type: ignore[assignment]

    def call() -> torch.Tensor:
        with torch.inference_mode():
            output = generate_fn(
                input_ids=prompt,
                attention_mask=attention_mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens if fixed_length else 0,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad_id,
            )
        return recorder.record(output)

    return call


def check_output(case: Case, loaded: LoadedModel, output: torch.Tensor | None) -> None:
    """The last output has the expected shape (an error otherwise); a LLaDA canvas with
    mask tokens left is logged (the model itself predicted the mask id, which the
    reference algorithm allows; a trained model does not)."""
    expected = (case.batch_size, case.prompt_length + case.gen_length)
    if output is None or tuple(output.shape) != expected:
        shape = None if output is None else tuple(output.shape)
        raise RuntimeError(f"{case.case_id}: generate returned shape {shape}, expected {expected}")
    if case.kind == "llada" and loaded.mask_id is not None:
        left = int(torch.eq(output[:, case.prompt_length :], loaded.mask_id).sum().item())
        if left:
            LOG.warning("case %s: %d mask tokens remain: the model predicted the mask id", case.case_id, left)


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
) -> dict[str, object]:
    """Measure one case and return its complete row."""
    recorder = CallRecorder()
    progress = progress or CaseProgress(None, 0, 0, 0)
    prompt = case_prompt(case, loaded)
    call = make_call(case, loaded, prompt, recorder)
    progress_hook = loaded.model.register_forward_hook(progress.forward)
    try:
        profile = _warm_up(loaded, call, case.warmup_rounds, progress.round_started)
        count_hook = loaded.model.register_forward_hook(recorder.count_forward)
        recorder.forwards = recorder.calls = 0
        try:
            with MemoryTracker(loaded.device) as memory, EnergyTracker(loaded.device) as energy:
                durations = measure(call, case.measured_rounds, progress.round_started)
        finally:
            count_hook.remove()
    finally:
        progress_hook.remove()
    check_output(case, loaded, recorder.last_output)
    row = case_row(case, loaded)
    stats = LatencyStats.from_durations(durations)
    row.update(_latency_fields(stats))
    row.update(_token_fields(case, loaded, prompt, recorder, stats))
    row.update(_forward_fields(profile))
    row.update(_memory_fields(memory.record()))
    row.update(_energy_fields(case, energy.record(), loaded.device))
    if case.kind == "baseline":
        row.update(_ttft_fields(case, loaded, prompt, stats))
    row.update(status="ok", error="", timestamp=utc_now())
    return row


def forwards_per_call(case: Case) -> int:
    """Forward passes one generate call makes: LLaDA steps, or one per new AR token."""
    return case.steps if case.kind == "llada" and case.steps else case.gen_length


def _warm_up(
    loaded: LoadedModel, call: Callable[[], torch.Tensor], rounds: int, before_round: Callable[[], None]
) -> ForwardProfile | None:
    """Untimed warm-up calls; the last one is profiled per forward pass."""
    for _ in range(rounds - 1):
        before_round()
        call()
    if rounds == 0:
        return None
    before_round()
    return profile_call(loaded.model, call)


def _latency_fields(stats: LatencyStats) -> dict[str, object]:
    return {
        "latency_mean_s": f"{stats.mean:.6f}",
        "latency_median_s": f"{stats.median:.6f}",
        "latency_min_s": f"{stats.min:.6f}",
        "latency_max_s": f"{stats.max:.6f}",
        "latency_stddev_s": f"{stats.stddev:.6f}",
    }


def natural_length_output(case: Case, loaded: LoadedModel, prompt: torch.Tensor) -> torch.Tensor:
    """The baseline's output when it may stop at EOS (an untimed extra call): the timed
    calls suppress EOS to fix the length, so where the model would stop is seen here."""
    return _baseline_call(case, loaded, prompt, CallRecorder(), new_tokens=case.gen_length, fixed_length=False)()


def _token_fields(
    case: Case, loaded: LoadedModel, prompt: torch.Tensor, recorder: CallRecorder, stats: LatencyStats
) -> dict[str, object]:
    assert recorder.last_output is not None
    generated = case.batch_size * case.gen_length
    output = recorder.last_output if case.kind == "llada" else natural_length_output(case, loaded, prompt)
    until_eos = tokens_until_eos(output[:, case.prompt_length :], loaded.eos_ids, length=case.gen_length)
    nfe = recorder.forwards_per_call()
    return {
        "generated_tokens": generated,
        "tokens_per_s": f"{generated / stats.mean:.3f}",
        "tokens_until_eos": until_eos,
        "eos_tokens_per_s": f"{until_eos / stats.mean:.3f}",
        "nfe": nfe,
        "cfg_batch_factor": 2 if case.cfg_scale else 1,
        "tokens_per_forward": f"{case.gen_length / nfe:.4f}" if nfe else "",
    }


def _forward_fields(profile: ForwardProfile | None) -> dict[str, object]:
    if profile is None or not profile.forward_s:
        return {}
    share = profile.outside_forward_share()
    return {
        "forward_mean_s": f"{statistics.fmean(profile.forward_s):.6f}",
        "outside_forward_share": "" if share is None else f"{share:.4f}",
    }


def _memory_fields(record: MemoryRecord) -> dict[str, object]:
    values = {
        "peak_memory_allocated_mb": record.peak_memory_allocated_mb,
        "peak_memory_reserved_mb": record.peak_memory_reserved_mb,
        "peak_rss_increase_mb": record.peak_rss_increase_mb,
    }
    return {name: "" if value is None else f"{value:.1f}" for name, value in values.items()}


def _energy_fields(case: Case, record: EnergyRecord, device: torch.device) -> dict[str, object]:
    if record.energy_j is None:
        level = logging.INFO if device.type == "cuda" else logging.DEBUG
        LOG.log(level, "case %s: no energy figure: %s", case.case_id, record.reason)
        return {}
    per_call = record.energy_j / case.measured_rounds
    return {
        "energy_j": f"{per_call:.3f}",
        "energy_per_token_j": f"{per_call / (case.batch_size * case.gen_length):.6f}",
    }


def _ttft_fields(case: Case, loaded: LoadedModel, prompt: torch.Tensor, stats: LatencyStats) -> dict[str, object]:
    """Time to first token: a prefill-only call (one new token), timed the same way."""
    prefill = _baseline_call(case, loaded, prompt, CallRecorder(), new_tokens=1)
    ttft = statistics.fmean(time_rounds(prefill, warmup_rounds=1, measured_rounds=case.measured_rounds))
    fields: dict[str, object] = {"ttft_s": f"{ttft:.6f}"}
    if case.gen_length > 1:
        fields["tpot_s"] = f"{max(0.0, stats.mean - ttft) / (case.gen_length - 1):.6f}"
    return fields


def error_row(case: Case, loaded: LoadedModel | None, exc: BaseException, status: str = "error") -> dict[str, object]:
    """The row of a failed case: status `error` or `oom` and the error's first line."""
    row = case_row(case, loaded)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    row.update(status=status, error=f"{type(exc).__name__}: {first}"[:500], timestamp=utc_now())
    return row


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
