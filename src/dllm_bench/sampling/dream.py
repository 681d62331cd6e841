"""The Dream sampler: the published `diffusion_generate` algorithms and Fast-dLLM's Dream caches.

`generate` decodes `gen_length` masked positions after the prompts, with the suite's
Dream model (`dllm_bench.models.dream.modeling.DreamLM`). Dream's logits are shifted:
the prediction for canvas position i is the logit row of position i - 1.

- `cache: none`: the published sampler. A schedule of `steps + 1` timesteps from 1 to
  `eps`; at step i, `origin` commits each masked position with probability 1 - s/t,
  the other algorithms commit the `int(masked * (1 - s/t))` positions of highest
  confidence (`maskgit_plus`: the token's probability; `topk_margin`: top-1 minus top-2
  probability; `entropy`: minus the entropy), sampled instead from
  softmax(confidence / alg_temp) when `alg_temp > 0`; the last step commits the rest.
- `cache: prefix` / `dual`: Fast-dLLM's block sampler. Per block, a forward over the
  whole canvas refreshes the KV cache and commits the block's first token; the later
  steps run the block and what follows it (prefix) or the block alone (dual), ranking by
  entropy on the block's schedule of `steps / blocks` steps, or, with a `threshold`,
  committing every masked position whose probability is at least the threshold and
  always the most probable one, until the block is complete.

Where the suite differs from the published code: no forward is made that cannot commit a
token (the published loops run one per step, and the block sampler one more per block
after a one-token block); a batch with a threshold commits row by row (the published
threshold path updates batch row 0 only); left-padded prompts take positions counted
from their first real token in every mode (Fast-dLLM's model ignores the position ids).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from dllm_bench.kinds.dream import DreamSettings

LOG = logging.getLogger("dllm_bench.sampling.dream")


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """The logits outside the smallest set whose probability exceeds top_p set to the dtype's minimum."""
    ordered, order = torch.sort(logits, descending=True)
    cumulative = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1)
    remove = cumulative > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = False
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """The logits below the k-th largest set to the dtype's minimum."""
    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
    return logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)


def sample_tokens(
    logits: torch.Tensor, settings: DreamSettings, confidence: str = "maskgit_plus"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, token) of each row of logits (N, vocab). The token is the argmax, or at
    temperature > 0 a draw from the filtered distribution; `confidence` names the measure."""
    if settings.temperature > 0:
        logits = logits / settings.temperature
    if settings.top_p is not None and settings.top_p < 1:
        logits = top_p_filter(logits, settings.top_p)
    if settings.top_k is not None:
        logits = top_k_filter(logits, settings.top_k)
    probs = torch.softmax(logits, dim=-1)
    if settings.temperature > 0:
        # One categorical draw per row, as torch.distributions.Categorical draws it.
        tokens = torch.multinomial(probs / probs.sum(-1, keepdim=True), 1, True)[:, 0]
        score = probs.gather(-1, tokens[:, None])[:, 0]
    else:
        score, tokens = probs.max(dim=-1)
    if confidence == "topk_margin":
        top = torch.topk(probs, 2, dim=-1).values
        score = top[:, 0] - top[:, 1]
    elif confidence == "entropy":
        score = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return score, tokens


class Canvas:
    """The prompts and the masked positions of one call, with what every forward needs."""

    def __init__(
        self, prompt: torch.Tensor, gen_length: int, mask_id: int, attention_mask: torch.Tensor | None
    ) -> None:
        batch, self.prompt_length = prompt.shape
        self.mask_id = mask_id
        masks = torch.full((batch, gen_length), mask_id, dtype=prompt.dtype, device=prompt.device)
        self.x = torch.cat([prompt, masks], dim=1)
        self.key_mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            ones = torch.ones((batch, gen_length), dtype=torch.long, device=prompt.device)
            self.key_mask = torch.cat([attention_mask.to(prompt.device).long(), ones], dim=1)
            self.positions = (self.key_mask.cumsum(-1) - 1).clamp(min=0)

    @property
    def batch(self) -> int:
        return int(self.x.shape[0])

    @property
    def length(self) -> int:
        return int(self.x.shape[1])

    def positions_of(self, start: int, end: int) -> torch.Tensor | None:
        return None if self.positions is None else self.positions[:, start:end]


def generate(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    settings: DreamSettings,
    *,
    gen_length: int,
    mask_id: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The prompts (B, P), left padded where `attention_mask` has zeros, followed by
    `gen_length` decoded tokens: (B, P + gen_length). Random draws (origin, temperature,
    alg_temp) use torch's global generator."""
    settings.validate(gen_length)
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must have shape (batch, length >= 1), got {tuple(prompt.shape)}")
    if bool(torch.eq(prompt, mask_id).any()):
        raise ValueError(f"the prompts hold the mask id {mask_id}; Dream prompts must not")
    canvas = Canvas(prompt, gen_length, mask_id, attention_mask)
    with torch.inference_mode():
        if settings.cache == "none":
            _vanilla(model, canvas, settings)
        else:
            _blocks(model, canvas, settings)
    return canvas.x


def _shifted_logits(model: torch.nn.Module, canvas: Canvas, wanted: torch.Tensor) -> torch.Tensor:
    """The logits (N, vocab) of the generated positions `wanted` (B, G) marks, in row-major
    order: each from the position before it, the LM head run for those rows only."""
    start = canvas.prompt_length
    keep = torch.zeros_like(canvas.x, dtype=torch.bool)
    keep[:, start - 1 : canvas.length - 1] = wanted
    out = model(canvas.x, attention_mask=canvas.key_mask, position_ids=canvas.positions, logits_to_keep=keep)
    logits: torch.Tensor = out.logits
    return logits


def _vanilla(model: torch.nn.Module, canvas: Canvas, settings: DreamSettings) -> None:
    steps = int(settings.steps or 1)
    timesteps = torch.linspace(1, settings.eps, steps + 1, device=canvas.x.device)
    generated = canvas.x[:, canvas.prompt_length :]
    for i in range(steps):
        masked = generated == canvas.mask_id
        if not bool(masked.any()):
            break
        last = i == steps - 1
        ratio = 1 - timesteps[i + 1] / timesteps[i]
        if settings.alg == "origin":
            _origin_step(model, canvas, settings, masked, 1.0 if last else ratio)
            continue
        count = masked.sum() / canvas.batch
        commits = int(count) if last else int(count * ratio)
        if commits > 0:
            _ranked_step(model, canvas, settings, masked, commits)


def _origin_step(
    model: torch.nn.Module, canvas: Canvas, settings: DreamSettings, masked: torch.Tensor, chance: torch.Tensor | float
) -> None:
    """Each masked position is committed with probability `chance` (a draw per masked position)."""
    generated = canvas.x[:, canvas.prompt_length :]
    drawn = torch.rand(int(masked.sum()), device=canvas.x.device) < chance
    proposal = torch.full(drawn.shape, canvas.mask_id, dtype=canvas.x.dtype, device=canvas.x.device)
    chosen = torch.zeros_like(masked)
    chosen[masked] = drawn
    logits = _shifted_logits(model, canvas, chosen)  # a forward also when nothing is drawn, as published
    if bool(drawn.any()):
        _, proposal[drawn] = sample_tokens(logits, settings)
    generated[masked] = proposal


def _ranked_step(
    model: torch.nn.Module, canvas: Canvas, settings: DreamSettings, masked: torch.Tensor, commits: int
) -> None:
    """Commit `commits` masked positions per row, ranked (or drawn) by the algorithm's confidence."""
    start = canvas.prompt_length
    logits = _shifted_logits(model, canvas, masked)
    score, tokens = sample_tokens(logits, settings, settings.alg)
    ranked = torch.full(canvas.x.shape, -torch.inf, dtype=logits.dtype, device=canvas.x.device)
    ranked[:, start:][masked] = score
    proposal = torch.full_like(canvas.x, canvas.mask_id)
    proposal[:, start:][masked] = tokens
    index = _choose(ranked, commits, settings.alg_temp)
    canvas.x.scatter_(1, index, proposal.gather(1, index))


def _choose(ranked: torch.Tensor, commits: int, alg_temp: float) -> torch.Tensor:
    """The positions of the `commits` highest scores of each row, or drawn from softmax(score / alg_temp)."""
    if alg_temp:
        return torch.multinomial(F.softmax(ranked / alg_temp, dim=-1), num_samples=commits)
    return torch.topk(ranked, commits).indices


def _blocks(model: torch.nn.Module, canvas: Canvas, settings: DreamSettings) -> None:
    """Fast-dLLM's block sampler with a prefix or dual cache."""
    block = int(settings.block_length or 1)
    blocks = (canvas.length - canvas.prompt_length) // block
    per_block = (settings.steps or 1) // blocks
    timesteps = torch.linspace(1, settings.eps, per_block + 1, device=canvas.x.device)
    for number in range(blocks):
        start = canvas.prompt_length + number * block
        cache = _refresh(model, canvas, settings, start)
        step = 1
        while bool(torch.eq(canvas.x[:, start : start + block], canvas.mask_id).any()):
            if settings.threshold is not None:
                left = int(torch.eq(canvas.x[:, start : start + block], canvas.mask_id).sum())
                _threshold_step(model, canvas, settings, cache, start, block)
                if int(torch.eq(canvas.x[:, start : start + block], canvas.mask_id).sum()) == left:
                    raise RuntimeError(
                        f"the model predicts the mask id {canvas.mask_id} as its most probable token at block "
                        f"position {start}: the threshold rule would never complete the block (Fast-dLLM's loops "
                        "forever); use a threshold-free setting or check the checkpoint's mask_token_id"
                    )
                continue
            if step >= per_block:
                break
            masked = canvas.x[:, start : start + block] == canvas.mask_id
            count = masked.sum() / canvas.batch
            ratio = 1 - timesteps[step + 1] / timesteps[step]
            commits = int(count) if step == per_block - 1 else int(count * ratio)
            step += 1
            if commits > 0:
                _entropy_step(model, canvas, settings, cache, start, block, commits)


def _refresh(model: torch.nn.Module, canvas: Canvas, settings: DreamSettings, start: int) -> object:
    """A forward over the whole canvas: the KV cache of the block, and the block's first token."""
    out = model(
        canvas.x,
        attention_mask=canvas.key_mask,
        position_ids=canvas.positions,
        use_cache=True,
        logits_to_keep=slice(start - 1, start),
    )
    _, tokens = sample_tokens(out.logits[:, 0], settings)
    canvas.x[:, start] = tokens
    return out.past_key_values


def _block_logits(
    model: torch.nn.Module, canvas: Canvas, settings: DreamSettings, cache: object, start: int, block: int
) -> torch.Tensor:
    """The shifted logits (N, vocab) of the block's masked positions, row-major, from a cached
    forward. The fed part starts at the block, so the block's first position takes its own
    logits (as Fast-dLLM's does); it was committed by the refresh forward, unless the model
    predicted the mask id there."""
    end = canvas.length if settings.cache == "prefix" else start + block
    masked = canvas.x[:, start : start + block] == canvas.mask_id
    keep: slice | torch.Tensor = slice(0, block)
    if not bool(masked[:, 0].any()):  # the usual case: the LM head for the masked rows only
        keep = torch.zeros((canvas.batch, end - start), dtype=torch.bool, device=canvas.x.device)
        keep[:, : block - 1] = masked[:, 1:]
    out = model(
        canvas.x[:, start:end],
        attention_mask=canvas.key_mask,
        position_ids=canvas.positions_of(start, end),
        past_key_values=cache,
        replace_position=start,
        use_cache=True,
        logits_to_keep=keep,
    )
    logits: torch.Tensor = out.logits
    if isinstance(keep, torch.Tensor):
        return logits
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)[masked]


def _entropy_step(
    model: torch.nn.Module,
    canvas: Canvas,
    settings: DreamSettings,
    cache: object,
    start: int,
    block: int,
    commits: int,
) -> None:
    view = canvas.x[:, start : start + block]
    masked = view == canvas.mask_id
    logits = _block_logits(model, canvas, settings, cache, start, block)
    score, tokens = sample_tokens(logits, settings, "entropy")
    ranked = torch.full(view.shape, -torch.inf, dtype=logits.dtype, device=view.device)
    ranked[masked] = score
    proposal = torch.full_like(view, canvas.mask_id)
    proposal[masked] = tokens
    index = _choose(ranked, commits, settings.alg_temp)
    view.scatter_(1, index, proposal.gather(1, index))


def _threshold_step(
    model: torch.nn.Module, canvas: Canvas, settings: DreamSettings, cache: object, start: int, block: int
) -> None:
    """Every row with masked positions commits its most probable one and all at or above the threshold."""
    view = canvas.x[:, start : start + block]
    masked = view == canvas.mask_id
    logits = _block_logits(model, canvas, settings, cache, start, block)
    score, tokens = sample_tokens(logits, settings)
    ranked = torch.full(view.shape, -torch.inf, dtype=logits.dtype, device=view.device)
    ranked[masked] = score
    commit = ranked >= float(settings.threshold or 1.0)
    best = torch.topk(ranked, 1).indices
    commit.scatter_(1, best, masked.any(dim=1, keepdim=True))
    proposal = torch.full_like(view, canvas.mask_id)
    proposal[masked] = tokens
    view[commit] = proposal[commit]
