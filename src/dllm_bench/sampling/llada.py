"""LLaDA masked-diffusion sampler (semi-autoregressive, block-wise remasking).

The algorithm follows ML-GSAI/LLaDA ``generate.py``: the prompt is followed by
``gen_length`` mask tokens, the generated part is split into blocks of
``block_length`` tokens that are filled left to right, and within a block each
of ``steps // num_blocks`` steps runs the model once, predicts a token for
every masked position and commits the predictions with the highest
confidence.  How many are committed per step is the block's masked count split
evenly over the block's steps, the first steps taking the remainder.

:func:`generate` is token-identical to the plain algorithm (kept as the slow
oracle in :mod:`dllm_bench.sampling.reference`) but skips the work the result
does not depend on:

* Only masked positions of the current block can be committed: nothing after
  the block is a candidate and everything before it is already decoded.  So
  the vocabulary-sized work (cfg combination, Gumbel noise arithmetic, argmax,
  softmax) runs only on the logits rows of the block's still-masked positions,
  gathered with one ``index_select``; the rest (confidences, top-k) runs on
  the (B, block_length) window.  If the prompt itself contains ``mask_id``,
  those positions stay candidates, and the window then starts at position 0.
* Every block starts fully masked (no step can commit past the current
  block's end), so the per-step commit counts, and the number of masked
  positions left in the block, are the same for every row and known on the
  host before the loop: no per-row counts, no host sync to learn them, and
  one batched ``torch.topk`` per step.
* Softmax rows are computed with ``F.softmax`` row by row exactly as on the
  full tensor, so the confidences are bit-identical; ``torch.max(..).indices``
  replaces ``argmax`` (both return the first maximal index; max is faster).
* The per-row top-k of the plain algorithm is only ambiguous when the k-th and
  (k+1)-th largest confidences of a row are equal.  The batched top-k takes one
  extra element to detect that case, and only such rows are redone with the
  exact per-row call of the plain algorithm (same values, same length, same
  ``k``), so the chosen set is the same even under ties (frequent with bf16
  probabilities).  That check is the only host sync per step.

To keep the random streams identical to the plain algorithm, the Gumbel noise
is still drawn with the full ``(B, L, V)`` float64 shape, and for ``"random"``
remasking the confidences are drawn with the full ``(B, L)`` shape after the
noise; only the arithmetic on them is restricted to the block.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "REMASKING_STRATEGIES",
    "generate",
    "num_forward_passes",
    "transfer_schedule",
    "validate_schedule",
]

REMASKING_STRATEGIES: tuple[str, ...] = ("low_confidence", "random")

_NEG_INF = float("-inf")


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def validate_schedule(*, steps: int, gen_length: int, block_length: int) -> None:
    """Raise ``ValueError`` naming the problem if the step/block schedule is invalid.

    Valid means: all three are positive integers, ``gen_length`` is a multiple
    of ``block_length`` and ``steps`` is a multiple of the number of blocks
    ``gen_length // block_length``.
    """
    _check_positive_int("steps", steps)
    _check_positive_int("gen_length", gen_length)
    _check_positive_int("block_length", block_length)
    if gen_length % block_length != 0:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})")
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0:
        raise ValueError(
            f"steps ({steps}) must be a multiple of the number of blocks gen_length/block_length = {num_blocks}"
        )


def num_forward_passes(*, steps: int, gen_length: int, block_length: int) -> int:
    """Model forward passes made by :func:`generate` (one per step, with or without cfg)."""
    validate_schedule(steps=steps, gen_length=gen_length, block_length=block_length)
    return steps


def transfer_schedule(masked: int, steps: int) -> list[int]:
    """Tokens committed at each of ``steps`` steps when ``masked`` positions are masked.

    ``masked`` is split evenly; the first ``masked % steps`` steps commit one more.
    Steps may commit nothing when ``steps > masked``.
    """
    base, remainder = divmod(masked, steps)
    return [base + 1 if i < remainder else base for i in range(steps)]


def _validate_inputs(
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None,
    temperature: float,
    cfg_scale: float,
    remasking: str,
) -> None:
    if remasking not in REMASKING_STRATEGIES:
        raise ValueError(
            f"unknown remasking {remasking!r}; expected one of " + ", ".join(repr(r) for r in REMASKING_STRATEGIES)
        )
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if not math.isfinite(cfg_scale) or cfg_scale < 0:
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale}")
    if prompt.dim() != 2:
        raise ValueError(f"prompt must have shape (batch, prompt_len), got {tuple(prompt.shape)}")
    if prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool:
        raise ValueError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
    if attention_mask is not None and attention_mask.shape != prompt.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal prompt shape {tuple(prompt.shape)}"
        )


def _select_transfer(confidence: torch.Tensor, k: int, lo: int, hi: int, seq_len: int) -> torch.Tensor:
    """(B, W) bool: per row, the ``k`` window positions the plain per-row top-k picks.

    ``confidence`` is the (B, W) confidence of the window ``[lo, hi)`` of rows
    of length ``seq_len`` whose other entries are all ``-inf``.  ``0 < k``.
    """
    width = hi - lo
    transfer = torch.zeros(confidence.shape, dtype=torch.bool, device=confidence.device)
    if k >= width:
        # All window entries are taken.  The plain top-k could only prefer an
        # entry outside the window if the window held a -inf, i.e. fewer
        # candidates than k, which the schedule rules out.
        transfer.fill_(True)
        return transfer

    values, indices = torch.topk(confidence, k + 1, dim=-1, largest=True, sorted=True)
    transfer.scatter_(1, indices[:, :k], True)

    # The set of the k largest is unique unless the k-th and (k+1)-th are equal.
    kth, next_ = values[:, k - 1], values[:, k]
    tied = (kth == next_) | (kth.isnan() & next_.isnan())
    tied_rows = tied.nonzero().flatten().tolist()  # the one host sync per step
    for j in tied_rows:
        # Redo the tied row exactly as the plain algorithm does: top-k over the
        # full-length row, with -inf outside the window.
        row = confidence.new_full((seq_len,), _NEG_INF)
        row[lo:hi] = confidence[j]
        _, row_indices = torch.topk(row, k)
        transfer[j].zero_()
        transfer[j].scatter_(0, row_indices - lo, True)
    return transfer


@torch.no_grad()
def generate(
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
    on_forward: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Sample ``gen_length`` tokens after ``prompt`` with LLaDA's block-wise remasking.

    Args:
        model: called as ``model(input_ids, attention_mask=mask)``; must return
            an object with ``.logits`` of shape (batch, seq_len, vocab).
        prompt: (B, P) integer token ids (left padding allowed, with a mask).
        attention_mask: optional (B, P) mask for the prompt; it is extended
            with ones over the generated positions.
        steps: total denoising steps, a multiple of the number of blocks.
        gen_length: tokens to generate, a multiple of ``block_length``.
        block_length: tokens per semi-autoregressive block.
        temperature: 0 for greedy; otherwise Gumbel-max sampling in float64.
        cfg_scale: classifier-free guidance scale; 0 disables it.  With cfg
            the conditional and unconditional (prompt masked out) inputs are
            run as one doubled batch.
        remasking: ``"low_confidence"`` (commit the most probable predictions)
            or ``"random"`` (commit random masked positions).
        mask_id: the mask token id.
        on_forward: called once after every model forward pass (one per step).

    Returns:
        (B, P + gen_length) int64 canvas: the prompt followed by the generated
        tokens; no mask token remains in the generated part.
    """
    validate_schedule(steps=steps, gen_length=gen_length, block_length=block_length)
    _validate_inputs(prompt, attention_mask, temperature, cfg_scale, remasking)

    batch, prompt_len = prompt.shape
    seq_len = prompt_len + gen_length
    device = prompt.device

    x = torch.full((batch, seq_len), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_len] = prompt

    full_mask: torch.Tensor | None = None
    if attention_mask is not None:
        full_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, gen_length))], dim=1)

    use_cfg = cfg_scale > 0.0
    prompt_index = x != mask_id
    cfg_mask = None if full_mask is None else torch.cat([full_mask, full_mask], dim=0)
    # Masked prompt positions stay candidates for every block (the plain
    # algorithm commits them too), so the window must then start at 0.
    prompt_has_mask = prompt_len > 0 and bool((x[:, :prompt_len] == mask_id).any())

    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    # Each block is fully masked when it starts, in every row.
    counts = transfer_schedule(block_length, steps_per_block)
    low_confidence = remasking == "low_confidence"

    row_base = torch.arange(batch, device=device).unsqueeze(1) * seq_len  # (B, 1)

    for block in range(num_blocks):
        hi = prompt_len + (block + 1) * block_length
        lo = 0 if prompt_has_mask else hi - block_length
        width = hi - lo
        all_positions = torch.arange(width, device=device).expand(batch, width)
        remaining = block_length  # masked positions of the block, the same in every row

        for k in counts:
            out: torch.Tensor
            if use_cfg:
                un_x = x.masked_fill(prompt_index, mask_id)
                out = model(torch.cat([x, un_x], dim=0), attention_mask=cfg_mask).logits
            else:
                out = model(x, attention_mask=full_mask).logits
            if on_forward is not None:
                on_forward()

            # Random draws in the plain algorithm's order and shapes.
            noise: torch.Tensor | None = None
            if temperature > 0:
                # rand_like on the (combined) logits' layout, as the plain algorithm.
                noise = torch.rand_like(out[:batch], dtype=torch.float64)
            random_p: torch.Tensor | None = None
            if not low_confidence:
                random_p = torch.rand((batch, seq_len), device=device)

            if k == 0:
                continue  # nothing is committed at this step

            x_w = x[:, lo:hi]
            mask_w = x_w == mask_id
            # Window positions whose logits are needed: the masked ones (known
            # count, so no sync), in increasing order; every window position
            # when masked prompt tokens make the counts differ between rows.
            if prompt_has_mask or remaining == width:
                positions = all_positions
            else:
                unmasked_last = torch.argsort((~mask_w).to(torch.int8), dim=1, stable=True)
                positions = unmasked_last[:, :remaining]
            n_pos = positions.shape[1]
            rows = (row_base + lo + positions).reshape(-1)  # rows of the flattened (B*L, V)

            vocab = out.shape[-1]
            flat = out.reshape(-1, vocab)
            if use_cfg:
                cond = flat.index_select(0, rows)
                uncond = flat.index_select(0, rows + batch * seq_len)
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = flat.index_select(0, rows)  # (B * n_pos, V)

            # torch.max returns the first maximal index, like argmax, and is faster.
            if noise is None:
                x0 = torch.max(logits, dim=-1).indices
            else:
                noise_rows = noise.reshape(batch * seq_len, -1).index_select(0, rows)
                noisy = logits.to(torch.float64).exp() / (-torch.log(noise_rows)) ** temperature
                x0 = torch.max(noisy, dim=-1).indices

            if random_p is None:
                p = F.softmax(logits, dim=-1)
                x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).view(batch, n_pos)
            else:
                x0_p = random_p[:, lo:hi].gather(1, positions)

            x0_w = x_w.scatter(1, positions, x0.view(batch, n_pos))
            confidence_w = x0_p.new_full((batch, width), _NEG_INF).scatter_(1, positions, x0_p)
            if prompt_has_mask:
                confidence_w = torch.where(mask_w, confidence_w, _NEG_INF)
            transfer_w = _select_transfer(confidence_w, k, lo, hi, seq_len)
            x_w.copy_(torch.where(transfer_w & mask_w, x0_w, x_w))
            remaining -= k

    return x
