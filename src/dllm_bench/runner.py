"""Run one case: build the generate call, measure it, check its output, make the row."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dllm_bench.cases import Case
from dllm_bench.models.loader import LoadedModel
from dllm_bench.prompts import make_prompt
from dllm_bench.sampling.llada import generate
from dllm_bench.timing import LatencyStats, time_rounds

LOG = logging.getLogger("dllm_bench.runner")

# Runs `call` for the case's warm-up and measured rounds and returns the measured durations.
Measure = Callable[[Callable[[], torch.Tensor], int, int], list[float]]


def measure_with_own_timer(call: Callable[[], torch.Tensor], warmup_rounds: int, measured_rounds: int) -> list[float]:
    return time_rounds(call, warmup_rounds=warmup_rounds, measured_rounds=measured_rounds)


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


def case_row(case: Case, loaded: LoadedModel | None = None) -> dict[str, object]:
    """The row fields that describe the case, before anything is measured."""
    row: dict[str, object] = {"case_id": case.case_id, **case.params()}
    if loaded is not None:
        row["device"] = str(loaded.device)
        row["dtype"] = str(loaded.dtype).removeprefix("torch.")
    return row


def make_call(case: Case, loaded: LoadedModel, recorder: CallRecorder) -> Callable[[], torch.Tensor]:
    """The function that is timed: one generate call over the case's prompt batch."""
    prompt = make_prompt(
        batch_size=case.batch_size,
        prompt_length=case.prompt_length,
        vocab_size=loaded.vocab_size,
        forbidden_ids=loaded.special_ids,
        seed=case.seed,
    ).to(loaded.device)
    if case.kind == "llada":
        return _llada_call(case, loaded, prompt, recorder)
    return _baseline_call(case, loaded, prompt, recorder)


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
    case: Case, loaded: LoadedModel, prompt: torch.Tensor, recorder: CallRecorder
) -> Callable[[], torch.Tensor]:
    attention_mask = torch.ones_like(prompt)
    pad_id = loaded.pad_id if loaded.pad_id is not None else (loaded.eos_ids[0] if loaded.eos_ids else 0)
    generate_fn: Callable[..., torch.Tensor] = loaded.model.generate  # type: ignore[assignment]

    def call() -> torch.Tensor:
        with torch.inference_mode():
            output = generate_fn(
                input_ids=prompt,
                attention_mask=attention_mask,
                max_new_tokens=case.gen_length,
                min_new_tokens=case.gen_length,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad_id,
            )
        return recorder.record(output)

    return call


def check_output(case: Case, loaded: LoadedModel, output: torch.Tensor | None) -> None:
    """The last output has the expected shape and, for LLaDA, no mask token left."""
    expected = (case.batch_size, case.prompt_length + case.gen_length)
    if output is None or tuple(output.shape) != expected:
        shape = None if output is None else tuple(output.shape)
        raise RuntimeError(f"{case.case_id}: generate returned shape {shape}, expected {expected}")
    if case.kind == "llada" and loaded.mask_id is not None and bool(torch.eq(output, loaded.mask_id).any()):
        raise RuntimeError(f"{case.case_id}: mask tokens remain in the generated canvas")


def run_case(case: Case, loaded: LoadedModel, measure: Measure = measure_with_own_timer) -> dict[str, object]:
    """Measure one case and return its complete row."""
    recorder = CallRecorder()
    call = make_call(case, loaded, recorder)
    hook = loaded.model.register_forward_hook(recorder.count_forward)
    try:
        durations = measure(call, case.warmup_rounds, case.measured_rounds)
    finally:
        hook.remove()
    check_output(case, loaded, recorder.last_output)
    stats = LatencyStats.from_durations(durations)
    generated = case.batch_size * case.gen_length
    row = case_row(case, loaded)
    row.update(
        status="ok",
        error="",
        latency_mean_s=f"{stats.mean:.6f}",
        latency_median_s=f"{stats.median:.6f}",
        latency_min_s=f"{stats.min:.6f}",
        latency_max_s=f"{stats.max:.6f}",
        latency_stddev_s=f"{stats.stddev:.6f}",
        generated_tokens=generated,
        tokens_per_s=f"{generated / stats.mean:.3f}",
        nfe=recorder.forwards_per_call(),
        timestamp=utc_now(),
    )
    return row


def error_row(case: Case, loaded: LoadedModel | None, exc: BaseException, status: str = "error") -> dict[str, object]:
    """The row of a failed case: status `error` or `oom` and the error's first line."""
    row = case_row(case, loaded)
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    row.update(status=status, error=f"{type(exc).__name__}: {first}"[:500], timestamp=utc_now())
    return row


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
