"""The LLaDA2 block sampler: the published LLaDA2.0 / LLaDA2.1 `generate`, for a batch.

The canvas (prompt, then masks, rounded up to whole blocks) is decoded block by block under
a block-causal mask (bidirectional inside a block, causal across blocks). A step runs the
model over the blocks so far (`cache: none`, as the published sampler) or over the current
block alone after the finished blocks' keys and values (`cache: prefix`; the first step of
a block also runs the block just finished, whose keys and values it keeps), and commits in
each sequence every masked position whose greedy token's probability is above `threshold`,
or, when fewer than the step's share of the block (`block_length` spread over the block's
steps) are, the most confident ones of that share. LLaDA2.1's editing phase
(`editing_threshold`) also replaces a placed non-prompt token of the block whose greedy
token differs with a probability above the threshold; a finished block gets up to
`max_post_steps` more passes while they still edit.

Each sequence decides alone (the published code decides for the first only): a sequence
whose block is done waits, unchanged, while the others finish theirs. Prompts are left
padded (`attention_mask`): padding is never attended to and positions start at each
sequence's first token. A sequence stops after the block in which it placed an EOS
(LLaDA2.0 always, LLaDA2.1 with `eos_early_stop` once nothing before is masked), or with
`eos_early_stop` on LLaDA2.0 as soon as the EOS is placed and nothing before it is masked;
its positions after the first EOS read EOS. The published code looks for that EOS in the
whole canvas, the prompt included; this sampler in the generated part (the same for a
prompt without EOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dllm_bench.kinds.llada2 import Llada2Settings
from dllm_bench.models.layers import KVCache


@dataclass(frozen=True)
class Llada2Result:
    """One generate call: the canvas (B, prompt + gen_length) and the edits of the call (all sequences)."""

    tokens: torch.Tensor
    edits: int


@dataclass(frozen=True)
class _Canvas:
    """What a call's steps share: the tokens, the block-causal mask, positions and sizes."""

    x: torch.Tensor  # (B, total) tokens, masks where not decoded
    mask: torch.Tensor  # (B or 1, 1, total, total) boolean, True attends
    positions: torch.Tensor  # (B or 1, total)
    prompt_length: int
    gen_length: int
    block_length: int


def transfer_schedule(block_length: int, steps: int) -> list[int]:
    """How many positions each step of a block commits at least: the block spread evenly, earlier steps first."""
    base, extra = divmod(block_length, steps)
    return [base + (1 if step < extra else 0) for step in range(steps)]


def _canvas(
    prompt: torch.Tensor, attention_mask: torch.Tensor | None, gen_length: int, block_length: int, mask_id: int
) -> _Canvas:
    batch, prompt_length = prompt.shape
    blocks = -(-(prompt_length + gen_length) // block_length)
    total = blocks * block_length
    device = prompt.device
    x = torch.full((batch, total), mask_id, dtype=torch.long, device=device)
    x[:, :prompt_length] = prompt
    block = torch.arange(total, device=device) // block_length
    allowed = block[:, None] >= block[None, :]
    if attention_mask is None or bool(attention_mask.bool().all()):
        return _Canvas(x, allowed[None, None], torch.arange(total, device=device)[None], prompt_length, gen_length,
                       block_length)
    real = torch.ones(batch, total, dtype=torch.bool, device=device)
    real[:, :prompt_length] = attention_mask.bool()
    eye = torch.eye(total, dtype=torch.bool, device=device)
    mask = (allowed[None] & real[:, None, :]) | eye[None]  # a padding query attends to itself (no empty row)
    positions = (real.long().cumsum(-1) - 1).clamp(min=0)
    return _Canvas(x, mask[:, None], positions, prompt_length, gen_length, block_length)


class _Decoder:
    """The forwards of one call, with or without the prefix cache."""

    def __init__(self, model: torch.nn.Module, canvas: _Canvas, cached: bool, mask_id: int, eos_id: int) -> None:
        self.model = model
        self.canvas = canvas
        self.cached = cached
        self.mask_id = mask_id
        self.eos_id = eos_id
        self.cache: KVCache | None = None

    def logits(self, start: int, end: int) -> torch.Tensor:
        """The logits (B, end - start, vocab) of the block [start, end)."""
        c = self.canvas
        if not self.cached:
            out = self.model(
                c.x[:, :end], attention_mask=c.mask[:, :, :end, :end], position_ids=c.positions[:, :end],
                logits_to_keep=slice(start, end),
            )
            return out.logits  # type: ignore[no-any-return]
        begin = 0 if self.cache is None else self.cache.length
        out = self.model(
            c.x[:, begin:end], attention_mask=c.mask[:, :, begin:end, :end], position_ids=c.positions[:, begin:end],
            past_key_values=self.cache, use_cache=begin < start, logits_to_keep=slice(start - begin, end - begin),
        )
        if begin < start:
            self.cache = out.past_key_values.truncated(start)
        return out.logits  # type: ignore[no-any-return]


def _greedy(logits: torch.Tensor, version: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy tokens and their probabilities (LLaDA2.0 ranks the probabilities, LLaDA2.1 the logits)."""
    probs = torch.softmax(logits, dim=-1)
    tokens = probs.argmax(dim=-1) if version == "2.0" else logits.argmax(dim=-1)
    return tokens, probs.gather(-1, tokens[..., None]).squeeze(-1)


def _commits(
    masked: torch.Tensor, probs: torch.Tensor, threshold: float | None, share: int
) -> torch.Tensor:
    """The masked positions each sequence commits: those above the threshold, or the `share` most confident."""
    confidence = torch.where(masked, probs, -torch.inf)
    high = confidence > threshold if threshold is not None else torch.zeros_like(masked)
    wanted = torch.clamp(masked.sum(dim=1), max=share)
    top = torch.zeros_like(masked)
    most = int(wanted.max().item())
    if most:
        ranked = torch.topk(confidence, k=most, dim=1).indices
        keep = torch.arange(most, device=masked.device)[None] < wanted[:, None]
        top.scatter_(1, ranked, keep)
    return torch.where((high.sum(dim=1) >= wanted)[:, None], high, top)


@dataclass
class _BlockState:
    """Which sequences are done with the current block, and their editing passes so far."""

    done: torch.Tensor
    post: torch.Tensor


def _run_block(
    decoder: _Decoder, settings: Llada2Settings, version: str, block: int, stopped: torch.Tensor, steps: int
) -> int:
    """Decode one block in place; returns its edits. Sequences in `stopped` are left alone and
    may be stopped inside the block (LLaDA2.0's EOS early stop)."""
    c = decoder.canvas
    start, end = block * c.block_length, (block + 1) * c.block_length
    view = c.x[:, start:end]
    prompt_in_block = (torch.arange(start, end, device=c.x.device) < c.prompt_length)[None]
    state = _BlockState(done=stopped.clone(), post=torch.zeros_like(stopped, dtype=torch.long))
    schedule = transfer_schedule(c.block_length, steps)
    edits = 0
    step = 0
    while True:
        masked = view == decoder.mask_id
        filled = ~masked.any(dim=1)
        if settings.editing:
            state.post += (filled & ~state.done).long()
            state.done |= state.post > settings.post_steps()
        else:
            state.done |= filled
        if bool(state.done.all()):
            return edits
        tokens, probs = _greedy(decoder.logits(start, end), version)
        live = ~state.done[:, None]
        commit = _commits(masked, probs, settings.threshold, schedule[min(step, steps - 1)]) & live
        edit = torch.zeros_like(commit)
        if settings.editing:
            assert settings.editing_threshold is not None
            edit = ~masked & ~prompt_in_block & (probs > settings.editing_threshold) & (tokens != view) & live
            edits += int(edit.sum().item())
            state.done |= filled & ~edit.any(dim=1)
        view[commit | edit] = tokens[commit | edit]
        if settings.eos_early_stop and version == "2.0":
            _stop_at_eos(decoder, commit, tokens, stopped, state, end)
        step += 1


def _first_eos(x: torch.Tensor, eos_id: int, prompt_length: int, end: int) -> torch.Tensor:
    """The first EOS position (B,) of the generated part [prompt_length, end); `end` where none."""
    found = x[:, prompt_length:end] == eos_id
    first = torch.where(found.any(dim=1), found.int().argmax(dim=1), end - prompt_length)
    return first + prompt_length


def _stop_at_eos(
    decoder: _Decoder, commit: torch.Tensor, tokens: torch.Tensor, stopped: torch.Tensor, state: _BlockState, end: int
) -> None:
    """LLaDA2.0's early stop: a sequence that just placed an EOS with nothing masked before it stops."""
    c = decoder.canvas
    eos_id = decoder.eos_id
    placed = (commit & (tokens == eos_id)).any(dim=1) & ~state.done
    if not bool(placed.any()):
        return
    first = _first_eos(c.x, eos_id, c.prompt_length, end)
    index = torch.arange(c.x.shape[1], device=c.x.device)[None]
    before = (index >= c.prompt_length) & (index < first[:, None])
    clear = ~((c.x == decoder.mask_id) & before).any(dim=1)
    newly = placed & clear
    stopped |= newly
    state.done |= newly


def generate(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    settings: Llada2Settings,
    *,
    gen_length: int,
    mask_id: int,
    eos_id: int,
    version: str = "2.0",
    attention_mask: torch.Tensor | None = None,
) -> Llada2Result:
    """Decode `gen_length` positions after each prompt of `prompt` (B, P), left padded per
    `attention_mask` (B, P); see the module docstring. `version` is the model's, 2.0 or 2.1."""
    settings.validate(gen_length)
    if settings.editing and version != "2.1":
        raise ValueError(f"llada2.editing_threshold: null for a LLaDA{version} model (editing is LLaDA2.1's)")
    canvas = _canvas(prompt, attention_mask, gen_length, settings.block_length, mask_id)
    decoder = _Decoder(model, canvas, settings.cache == "prefix", mask_id, eos_id)
    stopped = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    steps = settings.block_steps(gen_length)
    edits = 0
    total_blocks = canvas.x.shape[1] // settings.block_length
    with torch.no_grad():
        for block in range(canvas.prompt_length // settings.block_length, total_blocks):
            if bool(stopped.all()):
                break
            edits += _run_block(decoder, settings, version, block, stopped, steps)
            _stop_after_block(canvas, settings, version, stopped, eos_id, mask_id, (block + 1) * settings.block_length)
    return Llada2Result(tokens=_finish(canvas, eos_id), edits=edits)


def _stop_after_block(
    canvas: _Canvas, settings: Llada2Settings, version: str, stopped: torch.Tensor, eos_id: int, mask_id: int, end: int
) -> None:
    generated = canvas.x[:, canvas.prompt_length : end]
    has_eos = (generated == eos_id).any(dim=1)
    if version == "2.0":
        stopped |= has_eos
    elif settings.eos_early_stop:
        stopped |= has_eos & ~(generated == mask_id).any(dim=1)


def _finish(canvas: _Canvas, eos_id: int) -> torch.Tensor:
    """The prompt and gen_length positions, EOS after each sequence's first EOS."""
    end = canvas.prompt_length + canvas.gen_length
    x = canvas.x[:, :end].clone()
    first = _first_eos(x, eos_id, canvas.prompt_length, end)
    index = torch.arange(end, device=x.device)[None]
    x[index > first[:, None]] = eos_id
    return x
