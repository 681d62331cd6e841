"""Plain, literal LLaDA sampler: the slow oracle the fast sampler is checked and timed against.

This module spells out the LLaDA masked-diffusion sampling loop (after the
algorithm of ML-GSAI/LLaDA ``generate.py``) as directly as possible, without
any of the shortcuts taken by :func:`dllm_bench.sampling.llada.generate`:

* the softmax, the argmax and the Gumbel noise are computed on the full
  ``(B, L, V)`` logits at every step,
* the number of tokens to commit is computed per row from that row's masked
  count, and
* the top-k selection runs row by row on the full ``(L,)`` confidence vector.

It is deliberately slow. Do not use it for real generation; it exists so that
the fast sampler can be checked token for token against something that is easy
to read (by the tests and by the GPU self-check's ``sampler`` item,
:mod:`dllm_bench.gpu_check.sampler`), and so that ``benchmarks/perf/bench_sampler.py``
has the plain algorithm to measure the fast sampler's speed-up against.

Unlike the original script it does not crash when ``cfg_scale > 0`` and no
attention mask is given, it never predicts the mask id (the argmax skips its
logit; the confidences are the unchanged softmax), and it has no EOS/EoT
options.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["generate_reference"]


def _num_transfer_tokens(block_mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) int64: each row's masked count split evenly, earlier steps get the remainder."""
    mask_num = block_mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer = torch.zeros(mask_num.size(0), steps, device=block_mask_index.device, dtype=torch.int64)
    num_transfer = num_transfer + base
    for i in range(mask_num.size(0)):
        num_transfer[i, : int(remainder[i])] += 1
    return num_transfer


def _add_gumbel_noise(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Gumbel-max in float64: argmax(exp(l) / (-log u) ** t) samples softmax(l / t)."""
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


@torch.no_grad()
def generate_reference(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    steps: int,
    gen_length: int,
    block_length: int,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    mask_id: int = 126336,
) -> torch.Tensor:
    """Slow oracle with the same arguments and results as ``llada.generate``."""
    if steps <= 0 or gen_length <= 0 or block_length <= 0:
        raise ValueError("steps, gen_length and block_length must be positive")
    if gen_length % block_length != 0:
        raise ValueError("gen_length must be a multiple of block_length")
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0:
        raise ValueError("steps must be a multiple of the number of blocks")
    if remasking not in ("low_confidence", "random"):
        raise ValueError(f"unknown remasking {remasking!r}")
    steps_per_block = steps // num_blocks

    batch, prompt_len = prompt.shape
    x = torch.full((batch, prompt_len + gen_length), mask_id, dtype=torch.long, device=prompt.device)
    x[:, :prompt_len] = prompt.clone()

    if attention_mask is not None:
        attention_mask = torch.cat(
            [
                attention_mask,
                torch.ones(
                    (batch, gen_length),
                    dtype=attention_mask.dtype,
                    device=attention_mask.device,
                ),
            ],
            dim=-1,
        )

    prompt_index = x != mask_id

    for num_block in range(num_blocks):
        block_start = prompt_len + num_block * block_length
        block_end = prompt_len + (num_block + 1) * block_length
        block_mask_index = x[:, block_start:block_end] == mask_id
        num_transfer_tokens = _num_transfer_tokens(block_mask_index, steps_per_block)

        for i in range(steps_per_block):
            mask_index = x == mask_id

            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                x_ = torch.cat([x, un_x], dim=0)
                attention_mask_ = None
                if attention_mask is not None:
                    attention_mask_ = torch.cat([attention_mask, attention_mask], dim=0)
                logits = model(x_, attention_mask=attention_mask_).logits
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(x, attention_mask=attention_mask).logits

            logits_with_noise = _add_gumbel_noise(logits, temperature=temperature).clone()
            if 0 <= mask_id < logits_with_noise.shape[-1]:
                logits_with_noise[..., mask_id] = float("-inf")  # never predict the mask id
            x0 = torch.argmax(logits_with_noise, dim=-1)  # (B, L)

            if remasking == "low_confidence":
                p = F.softmax(logits, dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            else:
                x0_p = torch.rand((x0.shape[0], x0.shape[1]), device=x0.device)

            x0_p[:, block_end:] = float("-inf")

            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, float("-inf"))

            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]

    return x
