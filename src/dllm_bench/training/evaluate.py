"""Accuracy of a LLaDA or AR model on a task, decoded the way the benchmark decodes.

LLaDA: :func:`dllm_bench.sampling.llada.generate` at temperature 0 with low-confidence
remasking; ``steps == gen_length`` is the exact decode (one token per forward). AR:
greedy ``generate`` with the KV cache, ``<eos>`` suppressed until ``gen_length`` new
tokens (as the benchmark's fixed-length baseline), or stopping at ``<eos>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllm_bench.sampling.llada import generate
from dllm_bench.sampling.schedule import LladaSettings
from dllm_bench.tasks.base import PromptBatch, Task
from dllm_bench.tasks.stats import AccuracyStats, accuracy_stats
from dllm_bench.tasks.vocab import TASK_VOCAB

__all__ = ["Decode", "evaluate", "generate_ar", "generate_llada"]


@dataclass(frozen=True)
class Decode:
    """How to decode: ``kind`` is ``llada`` or ``ar``; ``steps`` and ``block_length``
    (None: ``gen_length``) only apply to LLaDA."""

    kind: str
    gen_length: int
    steps: int | None = None
    block_length: int | None = None
    fixed_length: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("llada", "ar"):
            raise ValueError(f"decode kind must be 'llada' or 'ar', got {self.kind!r}")

    @property
    def tokens_per_forward(self) -> float:
        """Generated positions per model forward (LLaDA fixed steps; AR one per forward)."""
        if self.kind == "ar":
            return 1.0
        return self.gen_length / (self.steps or self.gen_length)


def generate_llada(model: torch.nn.Module, batch: PromptBatch, decode: Decode, *, mask_id: int) -> torch.Tensor:
    """The (batch, prompt + gen_length) canvas of a greedy LLaDA decode."""
    settings = LladaSettings(
        steps=decode.steps or decode.gen_length, block_length=decode.block_length or decode.gen_length, temperature=0.0
    )
    return generate(
        model,
        batch.input_ids,
        settings,
        gen_length=decode.gen_length,
        mask_id=mask_id,
        attention_mask=batch.attention_mask if batch.padded else None,
    )


def generate_ar(
    model: torch.nn.Module, batch: PromptBatch, decode: Decode, *, eos_id: int, pad_id: int
) -> torch.Tensor:
    """The (batch, prompt + generated) output of greedy AR decoding."""
    with torch.inference_mode():
        output: torch.Tensor = model.generate(  # type: ignore[operator]
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            max_new_tokens=decode.gen_length,
            min_new_tokens=decode.gen_length if decode.fixed_length else 0,
            do_sample=False,
            use_cache=True,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
    return output


def evaluate(
    model: torch.nn.Module,
    task: Task,
    decode: Decode,
    *,
    n_prompts: int,
    batch_size: int,
    seed: int,
    prompt_length: int | None = None,
) -> AccuracyStats:
    """Accuracy over the first ``n_prompts`` examples of the task's stream for ``seed``
    (rounds 0, 1, ... of ``batch_size`` prompts; the last round may score only part of its batch)."""
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    results: list[bool] = []
    round_index = 0
    while len(results) < n_prompts:
        batch = task.batch(batch_size=batch_size, prompt_length=prompt_length, seed=seed, round_index=round_index)
        if decode.kind == "llada":
            output = generate_llada(model, batch, decode, mask_id=TASK_VOCAB.mask_id)
        else:
            output = generate_ar(model, batch, decode, eos_id=TASK_VOCAB.eos_id, pad_id=TASK_VOCAB.pad_id)
        results.extend(task.score(batch, output))
        round_index += 1
    return accuracy_stats(results[:n_prompts])
