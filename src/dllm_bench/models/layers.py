"""Pieces the suite's own decoder models share (Dream, LLaDA2, LLaDA-MoE): RMS normalisation,
rotary tables and the (partial) rotary embedding, the KV cache of a prefix, the forward output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: Keyword arguments transformers' generation utilities pass that the models accept and ignore.
IGNORED_FORWARD_KWARGS = frozenset({"cache_position", "token_type_ids", "num_items_in_batch", "output_attentions"})


class RMSNorm(nn.Module):
    """RMS normalisation; the statistics in float32, the scale applied in the input's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_tables(
    positions: torch.Tensor, rope_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (B, 1, S, rope_dim) of the positions (B, S), computed in float32, cast to `dtype`."""
    exponents = torch.arange(0, rope_dim, 2, dtype=torch.int64, device=positions.device).float() / rope_dim
    inv_freq = 1.0 / (theta**exponents)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotary embedding (rotate-half) of the first `cos.shape[-1]` features of each head of
    x (B, H, S, D); the rest pass unchanged."""
    dim = cos.shape[-1]
    part = x[..., :dim] if dim < x.shape[-1] else x
    half = dim // 2
    rotated = part * cos + torch.cat((-part[..., half:], part[..., :half]), dim=-1) * sin
    return torch.cat((rotated, x[..., dim:]), dim=-1) if dim < x.shape[-1] else rotated


class KVCache:
    """Every layer's keys (rotated) and values, (batch, kv_heads, length, head_dim), of a prefix."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        if len(keys) != len(values) or not keys:
            raise ValueError(f"a cache needs as many key as value tensors, at least one: {len(keys)}, {len(values)}")
        self.keys = keys
        self.values = values

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])

    @property
    def batch_size(self) -> int:
        return int(self.keys[0].shape[0])

    def truncated(self, length: int) -> KVCache:
        """The cache of the first `length` positions."""
        return KVCache([k[:, :, :length] for k in self.keys], [v[:, :, :length] for v in self.values])

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class ModelOutput:
    """What a model's forward returns (a plain dataclass: one field name in every transformers)."""

    logits: torch.Tensor
    past_key_values: KVCache | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(f for f in (self.logits, self.past_key_values) if f is not None)
