"""Synthetic, seeded prompts of exactly the configured length."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def make_prompt(
    *, batch_size: int, prompt_length: int, vocab_size: int, forbidden_ids: Iterable[int], seed: int
) -> torch.Tensor:
    """A (batch_size, prompt_length) int64 tensor of token ids drawn uniformly from the
    vocabulary minus `forbidden_ids` (mask, pad, EOS, BOS, ...), reproducible for a seed."""
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    for token in forbidden_ids:
        if 0 <= token < vocab_size:
            allowed[token] = False
    choices = allowed.nonzero().squeeze(1)
    if choices.numel() == 0:
        raise ValueError("every token id is forbidden; the vocabulary is too small")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, choices.numel(), (batch_size, prompt_length), generator=generator)
    return choices[picks]
