"""The suite's Dream model: a Qwen2-style decoder run with bidirectional attention.

Weight names are those of the published checkpoints (`model.embed_tokens`,
`model.layers.N.self_attn.{q,k,v,o}_proj`, `model.layers.N.mlp.{gate,up,down}_proj`,
`model.layers.N.{input,post_attention}_layernorm`, `model.norm`, `lm_head`), so a
`Dream-org/Dream-v0-*` folder loads into it by name. The logits are those of the input
positions, as the published model returns them: Dream was adapted from an autoregressive
model, so the prediction for position i is the logit row of position i - 1; the sampler
(`dllm_bench.sampling.dream`) shifts them.

A KV cache (`KVCache`) serves Fast-dLLM's prefix and dual caches: a full forward with
`use_cache=True` keeps every layer's keys (after the rotary embedding of their position)
and values; a later forward of a slice of the canvas (`replace_position`, its first
position) writes its own keys and values into the cache in place and attends to all
cached positions.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from dllm_bench.models.dream.configuration import DreamConfig, unsupported_keys
from dllm_bench.models.layers import IGNORED_FORWARD_KWARGS, KVCache, ModelOutput, RMSNorm, rotary_tables, rotate

LogitsToKeep = slice | torch.Tensor | None


class UnsupportedDreamConfigError(ValueError):
    """A Dream config whose computation the suite's model does not implement."""


def check_supported(config: DreamConfig) -> None:
    problems = unsupported_keys(config)
    if problems:
        raise UnsupportedDreamConfigError("not supported by dllm_bench's Dream model: " + "; ".join(problems))


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = config.head_dim
        hidden = int(config.hidden_size)
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.heads * self.head_dim, hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        start: int,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rotary
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            cached_k, cached_v = cache
            cached_k[:, :, start : start + length] = k
            cached_v[:, :, start : start + length] = v
            k, v = cached_k, cached_v
        kv = (k, v)
        groups = self.heads // self.kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1)), kv


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        hidden, inner = int(config.hidden_size), int(config.intermediate_size)
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class DreamLayer(nn.Module):
    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.self_attn = DreamAttention(config)
        self.mlp = DreamMLP(config)
        self.input_layernorm = RMSNorm(int(config.hidden_size), float(config.rms_norm_eps))
        self.post_attention_layernorm = RMSNorm(int(config.hidden_size), float(config.rms_norm_eps))

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        key_mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        start: int,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, kv = self.self_attn(self.input_layernorm(x), rotary, key_mask, cache, start)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class DreamBackbone(nn.Module):
    """Embeddings, layers and the final norm (`DreamLM.model`)."""

    def __init__(self, config: DreamConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(int(config.vocab_size), int(config.hidden_size))
        self.layers = nn.ModuleList(DreamLayer(config) for _ in range(int(config.num_hidden_layers)))
        self.norm = RMSNorm(int(config.hidden_size), float(config.rms_norm_eps))


def key_mask_of(attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor | None:
    """Boolean SDPA mask (B, 1, 1, L), True = attend; None when every key is attended."""
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != (batch, length):
        raise ValueError(
            f"attention_mask must have shape (batch, key positions) = {(batch, length)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    keep = attention_mask.bool()
    if bool(keep.all()):
        return None
    keep = keep | ~keep.any(dim=-1, keepdim=True)  # an all-padding row attends everywhere (no NaN)
    return keep[:, None, None, :]


class DreamLM(PreTrainedModel):  # type: ignore[no-untyped-call]
    """Dream mask predictor with the transformers interface; loads `Dream-org/Dream-v0-*` weights by name."""

    config_class = DreamConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DreamLayer"]  # noqa: RUF012 (a plain attribute in the base class)
    _supports_sdpa = True
    # Nothing to tie: with tie_word_embeddings the LM head module is absent and forward uses the embedding.
    _tied_weights_keys: dict[str, str] = {}  # noqa: RUF012

    def __init__(self, config: DreamConfig) -> None:
        check_supported(config)
        super().__init__(config)
        self.model = DreamBackbone(config)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(int(config.hidden_size), int(config.vocab_size), bias=False)
        )
        self.post_init()  # type: ignore[no-untyped-call]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = float(self.config.initializer_range)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            if module is self.lm_head:
                self._silence_mask_logit(module.weight)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def _silence_mask_logit(self, weight: torch.Tensor) -> None:
        """A random model should not predict the mask token (a trained one does not): its logit is 0."""
        mask_id = getattr(self.config, "mask_token_id", None)
        if isinstance(mask_id, int) and 0 <= mask_id < weight.shape[0]:
            weight[mask_id].zero_()

    def get_input_embeddings(self) -> nn.Module:
        return cast(nn.Module, self.model.embed_tokens)

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module | None:
        return cast(nn.Module | None, self.lm_head)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits of final hidden states."""
        if self.lm_head is None:
            return F.linear(hidden, self.model.embed_tokens.weight)
        return cast(torch.Tensor, self.lm_head(hidden))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        replace_position: int | None = None,
        logits_to_keep: LogitsToKeep = None,
        **kwargs: Any,
    ) -> ModelOutput | tuple[Any, ...]:
        """Logits (B, kept positions, vocab) of `input_ids` (B, S), attention bidirectional.

        `attention_mask` (B, keys): 1 to attend, 0 for padding (keys = S, or the cache's length
        with a cache). `position_ids` (B, S): rotary positions (default: the canvas positions
        `replace_position + 0..S-1`). `use_cache=True` on a forward without a cache returns a
        `KVCache` of its keys and values; with `past_key_values`, the input is the
        positions `[replace_position, replace_position + S)` of the cached canvas, written
        into the cache in place. `logits_to_keep`: a slice or 1-D positions of the input whose
        logits are computed (None: all), or a boolean (B, S) tensor: the logits of its True
        positions, (N, vocab) in row-major order.
        """
        unexpected = sorted(k for k, v in kwargs.items() if v is not None and k not in IGNORED_FORWARD_KWARGS)
        if unexpected:
            raise TypeError(f"DreamLM.forward got unsupported arguments: {', '.join(unexpected)}")
        batch, length = input_ids.shape
        start = _check_cache(input_ids, past_key_values, replace_position, len(self.model.layers))
        total = length if past_key_values is None else past_key_values.length
        if position_ids is None:
            position_ids = torch.arange(start, start + length, device=input_ids.device).expand(batch, -1)
        x = self.model.embed_tokens(input_ids)
        rotary = rotary_tables(position_ids, self.config.head_dim, float(self.config.rope_theta), x.dtype)
        key_mask = key_mask_of(attention_mask, batch, total)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for index, layer in enumerate(self.model.layers):
            cached = None if past_key_values is None else (past_key_values.keys[index], past_key_values.values[index])
            x, (k, v) = layer(x, rotary, key_mask, cached, start)
            keys.append(k)
            values.append(v)
        x = self.model.norm(x)
        x = _kept(x, logits_to_keep)
        cache = past_key_values
        if use_cache and cache is None:
            cache = KVCache(keys, values)
        output = ModelOutput(logits=self.head(x), past_key_values=cache if use_cache else None)
        return output if return_dict is not False else output.to_tuple()


def _kept(x: torch.Tensor, logits_to_keep: LogitsToKeep) -> torch.Tensor:
    """The final hidden states whose logits are asked for (see `DreamLM.forward`)."""
    if logits_to_keep is None:
        return x
    if isinstance(logits_to_keep, slice):
        return x[:, logits_to_keep]
    if logits_to_keep.dtype == torch.bool:
        if logits_to_keep.shape != x.shape[:2]:
            raise ValueError(f"a boolean logits_to_keep must have the input's shape {tuple(x.shape[:2])}")
        return x[logits_to_keep]
    return x.index_select(1, logits_to_keep)


def _check_cache(input_ids: torch.Tensor, cache: KVCache | None, position: int | None, layers: int) -> int:
    """The canvas position of the first input token; refuses inconsistent cache arguments."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
    if cache is None:
        if position is not None:
            raise ValueError("replace_position needs past_key_values (the cache of a forward with use_cache=True)")
        return 0
    if not isinstance(cache, KVCache) or len(cache) != layers:
        raise ValueError(f"past_key_values must be the KVCache of this model's {layers} layers")
    if isinstance(position, bool) or not isinstance(position, int):
        raise ValueError(f"with past_key_values, replace_position must be an int, got {position!r}")
    length = input_ids.shape[1]
    if input_ids.shape[0] != cache.batch_size or position < 0 or position + length > cache.length:
        raise ValueError(
            f"input of batch {input_ids.shape[0]} at positions [{position}, {position + length}) does not fit the "
            f"cache of batch {cache.batch_size} and {cache.length} positions"
        )
    return position
