"""LLaDA masked-diffusion sampler (semi-autoregressive, block-wise remasking), with Fast-dLLM acceleration.

The algorithm follows ML-GSAI/LLaDA ``generate.py``: the prompt is followed by
``gen_length`` mask tokens, the generated part is split into blocks of
``block_length`` tokens that are filled left to right, and within a block each
step runs the model once, predicts a token for every masked position and
commits some of the predictions. Two knobs from Fast-dLLM v1 (Wu et al. 2025,
arXiv 2505.22618) accelerate it:

* ``cache``: ``"none"`` runs every step over the whole canvas. ``"prefix"``
  and ``"dual"`` run one full forward at the first step of a block, which
  returns every layer's keys and values (the KV cache) and also decides that
  step's commits. The later steps of the block feed ``x[:, block_start:]``
  (prefix: the positions before the block come from the cache) or only the
  block (dual: the positions after it come from the cache as well; the
  block's own entries are replaced at every step).
* What a step commits: a commit rule of :mod:`dllm_bench.sampling.rules`, one
  module each: the fixed schedule (``steps``: the block's masked count split
  evenly over ``steps / num_blocks`` steps, the first steps taking the
  remainder), or a confidence rule: ``threshold`` tau commits every masked
  position of the block whose confidence is >= tau, and always at least the
  most confident one; ``factor`` f commits the longest run of ranks n = 1, 2,
  ... (confidences sorted descending) with (n + 1) * (1 - c_n) < f, the first
  always.

Rules that hold in every mode:

* The mask id is never committed: it is excluded from the predictions (its
  logit is skipped by the argmax; confidences are the unchanged softmax).
* No forward is made that cannot commit anything. A fixed schedule with more
  steps per block than the block has positions has steps that commit nothing:
  they are skipped (``cache="none"`` still draws their random numbers, so the
  random stream stays the reference's). With a confidence rule a block ends
  as soon as every row has committed all of it.
* With batch > 1 every forward runs all rows; a row whose block is complete
  commits nothing while the others go on. The number of forwards (NFE) is the
  number of model calls, each over the whole batch (cfg doubles the batch of a
  call, not the count).

The fixed uncached mode (``cache="none"``, fixed schedule) is token-identical to the plain
algorithm (the slow oracle :mod:`dllm_bench.sampling.reference`) but skips the
work the result does not depend on:

* Only masked positions of the current block can be committed, so the
  vocabulary-sized work (cfg combination, Gumbel noise arithmetic, argmax,
  softmax) runs only on the logits rows of the block's still-masked positions,
  gathered with one ``index_select``. If the prompt itself contains
  ``mask_id``, those positions stay candidates and the window starts at 0.
* Every block starts fully masked, so the per-step commit counts are the same
  for every row and known before the loop: one batched ``torch.topk`` per
  step. The top-k is only ambiguous when the k-th and (k+1)-th confidences of
  a row are equal; such rows are redone with the plain per-row call, so the
  chosen set is the same even under ties.
* The random draws keep the plain algorithm's order and shapes (full
  ``(B, L, V)`` float64 Gumbel noise, then ``(B, L)`` remasking noise).

The accelerated modes (a cache, or a confidence rule) draw, per forward,
``(B, block_length, V)`` float64 uniforms for the Gumbel noise when
``temperature > 0`` and then ``(B, block_length)`` uniforms for ``random``
remasking; confidences are float32 softmax probabilities; ties between equal
confidences go to the lower position. They need a prompt without the mask id.
With a cache the LM head runs only on the block's positions
(``logits_to_keep``); ``cache="none"`` computes the logits of the whole canvas,
as the fixed uncached mode always did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dllm_bench.sampling.rules import StepRule, active_rule, step_rule, transfer_schedule
from dllm_bench.sampling.schedule import LladaSettings

__all__ = ["generate", "generate_keywords"]

_NEG_INF = float("-inf")

OnForward = Callable[[], None] | None


def _validate_inputs(prompt: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    if prompt.dim() != 2:
        raise ValueError(f"prompt must have shape (batch, prompt_len), got {tuple(prompt.shape)}")
    if prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool:
        raise ValueError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
    if attention_mask is not None and attention_mask.shape != prompt.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} must equal prompt shape {tuple(prompt.shape)}"
        )


# --------------------------------------------------------------------------- entry point


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    settings: LladaSettings,
    *,
    gen_length: int,
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
    on_forward: OnForward = None,
) -> torch.Tensor:
    """Sample ``gen_length`` tokens after ``prompt`` with LLaDA's block-wise remasking.

    Args:
        model: called as ``model(input_ids, attention_mask=mask, ...)``; must
            return an object with ``.logits`` (batch, positions, vocab). With a
            cache it must also take ``use_cache``, ``past_key_values``,
            ``replace_position`` and ``logits_to_keep`` as
            :class:`dllm_bench.models.llada_hf.modeling_llada.LLaDAModelLM` does.
        prompt: (B, P) integer token ids (left padding allowed, with a mask).
        settings: how to decode (:class:`dllm_bench.sampling.schedule.LladaSettings`):
            ``steps`` of the fixed schedule (a multiple of the number of blocks; may be
            None with a confidence rule), ``block_length`` (tokens per
            semi-autoregressive block), ``temperature`` (0 for greedy, else Gumbel-max
            sampling in float64), ``cfg_scale`` (classifier-free guidance; with it the
            conditional and unconditional inputs run as one doubled batch, with a cache
            one cache per branch), ``remasking`` (``"low_confidence"``: the
            prediction's probability is its confidence; ``"random"``: uniform noise),
            ``cache`` (``"none"``, ``"prefix"`` or ``"dual"``, see the module
            docstring) and the confidence rules (``threshold``, ``factor``; see
            :mod:`dllm_bench.sampling.rules`).
        gen_length: tokens to generate, a multiple of ``block_length``.
        mask_id: the mask token id.
        attention_mask: optional (B, P) mask for the prompt; it is extended
            with ones over the generated positions.
        on_forward: called once after every model forward pass.

    Returns:
        (B, P + gen_length) int64 canvas: the prompt followed by the generated
        tokens; no mask token remains in the generated part.
    """
    settings.validate(gen_length)
    _validate_inputs(prompt, attention_mask)
    options = _Options(
        gen_length=gen_length,
        block_length=settings.block_length,
        temperature=float(settings.temperature),
        cfg_scale=float(settings.cfg_scale),
        low_confidence=settings.remasking == "low_confidence",
        mask_id=mask_id,
        on_forward=on_forward,
    )
    rules = settings.rule_values()
    if settings.cache == "none" and active_rule(rules) is None:
        assert settings.steps is not None
        return _generate_fixed_uncached(model, prompt, attention_mask, settings.steps, options)
    if prompt.numel() and bool((prompt == mask_id).any()):
        raise ValueError(
            f"the prompt contains the mask id {mask_id}: cache and threshold/factor decoding need a prompt "
            "without mask tokens (and a pad id different from the mask id)"
        )
    rule = step_rule(rules, settings.steps, gen_length // settings.block_length, settings.block_length)
    return _generate_blockwise(model, prompt, attention_mask, options, rule, settings.cache)


def generate_keywords(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    gen_length: int,
    mask_id: int,
    on_forward: OnForward = None,
    **options: Any,
) -> torch.Tensor:
    """:func:`generate` called the way the reference sampler and the published code are
    (``steps=..., block_length=..., cache=...`` as keywords): the comparisons with them, the
    benchmarks of ``benchmarks/perf/`` and the sampler's tests pass one set of keywords to
    both."""
    settings = LladaSettings(**options)
    return generate(
        model,
        prompt,
        settings,
        gen_length=gen_length,
        mask_id=mask_id,
        attention_mask=attention_mask,
        on_forward=on_forward,
    )


@dataclass(frozen=True)
class _Options:
    gen_length: int
    block_length: int
    temperature: float
    cfg_scale: float
    low_confidence: bool
    mask_id: int
    on_forward: OnForward

    @property
    def use_cfg(self) -> bool:
        return self.cfg_scale > 0.0


def _canvas(
    prompt: torch.Tensor, attention_mask: torch.Tensor | None, options: _Options
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (B, P + G) canvas (prompt, then masks) and the prompt's mask extended over the generated part."""
    batch, prompt_len = prompt.shape
    x = torch.full((batch, prompt_len + options.gen_length), options.mask_id, dtype=torch.long, device=prompt.device)
    x[:, :prompt_len] = prompt
    if attention_mask is None:
        return x, None
    ones = attention_mask.new_ones((batch, options.gen_length))
    return x, torch.cat([attention_mask, ones], dim=1)


def _exclude_mask_id(scores: torch.Tensor, mask_id: int) -> torch.Tensor:
    """``scores`` (N, V) with the mask id's column at -inf (in place), so that no argmax picks it."""
    if 0 <= mask_id < scores.shape[-1]:
        scores[:, mask_id] = _NEG_INF
    return scores


def _gumbel_argmax(logits: torch.Tensor, noise: torch.Tensor | None, temperature: float, mask_id: int) -> torch.Tensor:
    """Per row of ``logits`` (N, V): the argmax (no noise) or the Gumbel-max sample in float64, never the mask id.

    Modifies ``logits`` in place when ``noise`` is None (the callers pass a copy).
    """
    scores = logits if noise is None else logits.to(torch.float64).exp() / (-torch.log(noise)) ** temperature
    return _first_argmax(_exclude_mask_id(scores, mask_id))


def _first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """Per row of ``scores`` (N, V), the index of the first maximum: ``torch.argmax(scores, -1)``, faster.

    The rows are cut into chunks of up to 64 columns: the vectorised ``amax`` finds each
    chunk's maximum, ``argmax`` the first chunk holding the row's maximum, and ``argmax``
    within that chunk the first position (NaN counts as the maximum, as in argmax).
    """
    rows, vocab = scores.shape
    width = next(c for c in (64, 32, 16, 8, 4, 2, 1) if vocab % c == 0)
    if width == 1 or rows == 0:
        return torch.argmax(scores, dim=-1)
    chunks = scores.contiguous().view(rows, vocab // width, width)
    chunk = chunks.amax(dim=-1).argmax(dim=-1)
    inner = chunks[torch.arange(rows, device=scores.device), chunk].argmax(dim=-1)
    return chunk * width + inner


# --------------------------------------------------------------------------- fixed uncached mode


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


def _generate_fixed_uncached(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None,
    steps: int,
    options: _Options,
) -> torch.Tensor:
    """Fixed schedule, no cache: token-identical to :func:`dllm_bench.sampling.reference.generate_reference`."""
    batch, prompt_len = prompt.shape
    x, full_mask = _canvas(prompt, attention_mask, options)
    seq_len = x.shape[1]
    device = x.device
    block_length, mask_id = options.block_length, options.mask_id

    prompt_index = x != mask_id
    cfg_mask = None if full_mask is None else torch.cat([full_mask, full_mask], dim=0)
    # Masked prompt positions stay candidates for every block (the plain
    # algorithm commits them too), so the window must then start at 0.
    prompt_has_mask = prompt_len > 0 and bool((x[:, :prompt_len] == mask_id).any())

    num_blocks = options.gen_length // block_length
    # Each block is fully masked when it starts, in every row.
    counts = transfer_schedule(block_length, steps // num_blocks)
    row_base = torch.arange(batch, device=device).unsqueeze(1) * seq_len  # (B, 1)
    vocab = 0

    for block in range(num_blocks):
        hi = prompt_len + (block + 1) * block_length
        lo = 0 if prompt_has_mask else hi - block_length
        width = hi - lo
        all_positions = torch.arange(width, device=device).expand(batch, width)
        remaining = block_length  # masked positions of the block, the same in every row

        for k in counts:
            if k == 0:
                # Nothing can be committed: no forward, but the plain algorithm's random draws.
                _draw_noise(options, (batch, seq_len, vocab), device)
                continue
            out: torch.Tensor
            if options.use_cfg:
                un_x = x.masked_fill(prompt_index, mask_id)
                out = model(torch.cat([x, un_x], dim=0), attention_mask=cfg_mask).logits
            else:
                out = model(x, attention_mask=full_mask).logits
            if options.on_forward is not None:
                options.on_forward()
            vocab = out.shape[-1]
            noise, random_p = _draw_noise(options, (batch, seq_len, vocab), device)

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
            logits = _gathered_logits(out, rows, batch * seq_len, options.cfg_scale)

            p = F.softmax(logits, dim=-1) if random_p is None else None
            noise_rows = None if noise is None else noise.reshape(batch * seq_len, -1).index_select(0, rows)
            x0 = _gumbel_argmax(logits, noise_rows, options.temperature, mask_id)
            if p is not None:
                x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).view(batch, n_pos)
            else:
                assert random_p is not None
                x0_p = random_p[:, lo:hi].gather(1, positions)

            x0_w = x_w.scatter(1, positions, x0.view(batch, n_pos))
            confidence_w = x0_p.new_full((batch, width), _NEG_INF).scatter_(1, positions, x0_p)
            if prompt_has_mask:
                confidence_w = torch.where(mask_w, confidence_w, _NEG_INF)
            transfer_w = _select_transfer(confidence_w, k, lo, hi, seq_len)
            x_w.copy_(torch.where(transfer_w & mask_w, x0_w, x_w))
            remaining -= k

    return x


def _draw_noise(
    options: _Options, shape: tuple[int, int, int], device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One step's random draws, in a fixed order and shape whatever is masked:
    (B, L, V) float64 Gumbel uniforms, then (B, L) remasking uniforms."""
    noise = torch.rand(shape, dtype=torch.float64, device=device) if options.temperature > 0 else None
    random_p = None if options.low_confidence else torch.rand(shape[:2], device=device)
    return noise, random_p


def _gathered_logits(out: torch.Tensor, rows: torch.Tensor, half: int, cfg_scale: float) -> torch.Tensor:
    """A copy of the logits rows ``rows`` of ``out`` flattened to (N, V); with cfg, the
    guided combination of those rows of the conditional and unconditional halves."""
    flat = out.reshape(-1, out.shape[-1])
    cond = flat.index_select(0, rows)
    if cfg_scale <= 0:
        return cond
    return _guided(cond, flat.index_select(0, rows + half), cfg_scale)


def _guided(cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance: the unconditional logits moved (cfg_scale + 1) times the
    way the conditional ones differ from them."""
    return uncond + (cfg_scale + 1) * (cond - uncond)


# --------------------------------------------------------------------------- accelerated modes


class _Forwards:
    """The model calls of one block: the full forward of its first step (which fills the
    cache), then cached forwards (prefix: ``x[:, start:]``, dual: the block)."""

    def __init__(self, model: torch.nn.Module, cache: str, model_mask: torch.Tensor | None, options: _Options) -> None:
        self.model = model
        self.cache = cache
        self.model_mask = model_mask
        self.options = options
        self.kv: Any = None

    def block_logits(
        self, x: torch.Tensor, start: int, end: int, prompt_len: int, needed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward for the block [start, end): the logits (B', S, V) and which block positions they hold.

        ``needed`` lists the block positions (0-based, increasing) whose logits are used.
        With a cache the LM head runs on those only, and they are returned as the second
        value; without one the logits cover the whole canvas (None).
        """
        if self.cache == "none":
            return self._run(self._full_input(x, prompt_len)).logits, None
        if self.kv is None:
            out = self._run(self._full_input(x, prompt_len), use_cache=True, logits_to_keep=needed + start)
            self.kv = out.past_key_values
            return out.logits, needed
        inputs = x[:, start:] if self.cache == "prefix" else x[:, start:end]
        if self.options.use_cfg:
            inputs = torch.cat([inputs, inputs], dim=0)  # after the prompt both branches see the same tokens
        out = self._run(inputs, past_key_values=self.kv, replace_position=start, logits_to_keep=needed)
        return out.logits, needed

    def _full_input(self, x: torch.Tensor, prompt_len: int) -> torch.Tensor:
        """The canvas; with cfg, followed by the unconditional canvas (prompt replaced by masks)."""
        if not self.options.use_cfg:
            return x
        un_x = x.clone()
        un_x[:, :prompt_len] = self.options.mask_id
        return torch.cat([x, un_x], dim=0)

    def _run(self, inputs: torch.Tensor, **kwargs: Any) -> Any:
        out = self.model(inputs, attention_mask=self.model_mask, **kwargs)
        if self.options.on_forward is not None:
            self.options.on_forward()
        return out


def _generate_blockwise(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    attention_mask: torch.Tensor | None,
    options: _Options,
    rule: StepRule,
    cache: str,
) -> torch.Tensor:
    """Cache modes and confidence rules; see the module docstring."""
    prompt_len = prompt.shape[1]
    x, full_mask = _canvas(prompt, attention_mask, options)
    model_mask = full_mask
    if options.use_cfg and full_mask is not None:
        model_mask = torch.cat([full_mask, full_mask], dim=0)
    width = options.block_length
    for block in range(options.gen_length // width):
        start = prompt_len + block * width
        forwards = _Forwards(model, cache, model_mask, options)
        step = 0
        while True:
            block_x = x[:, start : start + width]
            masked = block_x == options.mask_id
            if rule.block_done(step, masked):
                break
            needed = masked.any(dim=0).nonzero().squeeze(1)
            logits, kept = forwards.block_logits(x, start, start + width, prompt_len, needed)
            x0, confidence = _predict(logits, start if kept is None else kept, masked, options)
            transfer = rule.select(confidence, masked, step)
            block_x.copy_(torch.where(transfer, x0, block_x))
            step += 1
    return x


def _block_rows(
    logits: torch.Tensor, held: int | torch.Tensor, flat_index: torch.Tensor, batch: int, width: int, cfg_scale: float
) -> torch.Tensor:
    """The logits rows (N, V) of the masked block positions ``flat_index`` (b * width + w), under
    cfg combined with their unconditional rows.

    ``logits`` is (B', S, V); ``held`` is the canvas offset of the block when the S rows span
    the canvas, else the (increasing) block positions the S rows hold. A view of the model's
    output when every row is used (its mask-id column may then be overwritten), else a copy.
    """
    span = logits.shape[1]
    half = batch * span
    if flat_index.numel() != half:
        blocks, positions = flat_index // width, flat_index % width
        if isinstance(held, int):
            rows = blocks * span + held + positions
        else:
            rows = blocks * span + torch.searchsorted(held, positions)
        return _gathered_logits(logits, rows, half, cfg_scale)
    # Masked positions are increasing and distinct, so using every row means all rows in order.
    flat = logits.reshape(-1, logits.shape[-1])
    return flat[:half] if cfg_scale <= 0 else _guided(flat[:half], flat[half:], cfg_scale)


def _predict(
    logits: torch.Tensor, held: int | torch.Tensor, masked: torch.Tensor, options: _Options
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, W) predictions and confidences of the block's masked positions (-inf confidence elsewhere).

    ``logits`` is (B', S, V), see :func:`_block_rows` for ``held``. With cfg B' = 2B and the
    unconditional half follows the conditional one.
    """
    batch, width = masked.shape
    vocab = logits.shape[-1]
    noise, random_p = _draw_noise(options, (batch, width, vocab), masked.device)

    flat_index = masked.reshape(-1).nonzero().squeeze(1)  # b * W + w of every masked position
    chosen = _block_rows(logits, held, flat_index, batch, width, options.cfg_scale)
    if random_p is None:
        # Float32 softmax probability of the prediction, as softmax computes it: exp(l - max) / sum exp(l - max).
        as_float = chosen.float()
        exps = as_float - as_float.amax(dim=-1, keepdim=True)
        exps.exp_()
        normalizer = exps.sum(dim=-1)
    noise_rows = None if noise is None else noise.view(batch * width, vocab).index_select(0, flat_index)
    predicted = _gumbel_argmax(chosen, noise_rows, options.temperature, options.mask_id)
    if random_p is None:
        chosen_p = exps.gather(1, predicted.unsqueeze(1)).squeeze(1) / normalizer
    else:
        chosen_p = random_p.reshape(-1).index_select(0, flat_index)

    x0 = torch.full((batch * width,), options.mask_id, dtype=torch.long, device=masked.device)
    x0.index_copy_(0, flat_index, predicted)
    confidence = torch.full((batch * width,), _NEG_INF, dtype=torch.float32, device=masked.device)
    confidence.index_copy_(0, flat_index, chosen_p.to(torch.float32))
    return x0.view(batch, width), confidence.view(batch, width)
