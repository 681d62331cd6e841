"""The suite's LLaDA2 model: a mixture-of-experts decoder run with block-causal (or full) attention.

Weight names are those of the published checkpoints (`model.word_embeddings`,
`model.layers.N.attention.{query_key_value,query_layernorm,key_layernorm,dense}`,
`model.layers.N.mlp.{gate_proj,up_proj,down_proj}` in the first `first_k_dense_replace`
layers, `model.layers.N.mlp.{gate,experts.E,shared_experts}` in the others,
`model.layers.N.{input,post_attention}_layernorm`, `model.norm`, `lm_head`), so an
`inclusionAI/LLaDA2.0-*` or `LLaDA2.1-*` folder loads into it by name. The logits of
position i predict the token at position i (no shift).

The router is the published one: sigmoid scores plus `expert_bias` choose the experts
(the best `topk_group` of `n_group` groups, each group scored by its two best experts,
then the top `num_experts_per_tok`), the unbiased scores of the chosen experts,
normalised and times `routed_scaling_factor`, weight their outputs; the shared experts are
added. The tokens of each expert run as one batch in the published order, so the logits
equal the published code's bit for bit in float32.

A KV cache (`KVCache`) serves the prefix cache of the block sampler: the keys
(after the rotary embedding) and values of the positions before the input.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from dllm_bench.models.layers import IGNORED_FORWARD_KWARGS, KVCache, ModelOutput, RMSNorm, rotary_tables, rotate
from dllm_bench.models.llada2.configuration import LLaDA2Config, LLaDA21Config, unsupported_keys


class UnsupportedLLaDA2ConfigError(ValueError):
    """A LLaDA2 config whose computation the suite's model does not implement."""


class LLaDA2Attention(nn.Module):
    def __init__(self, config: LLaDA2Config) -> None:
        super().__init__()
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(config.head_dim)
        self.scaling = self.head_dim**-0.5
        hidden = int(config.hidden_size)
        width = (self.heads + 2 * self.kv_heads) * self.head_dim
        self.query_key_value = nn.Linear(hidden, width, bias=bool(config.use_qkv_bias))
        self.query_layernorm: RMSNorm | None = None
        self.key_layernorm: RMSNorm | None = None
        if config.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, float(config.rms_norm_eps))
            self.key_layernorm = RMSNorm(self.head_dim, float(config.rms_norm_eps))
        self.dense = nn.Linear(self.heads * self.head_dim, hidden, bias=bool(config.use_bias))

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        keep: slice | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention of the rows `keep` of x (all when None) over every key (the cache's and x's)."""
        batch, length, _ = x.shape
        qkv = self.query_key_value(x).view(batch, length, self.heads + 2 * self.kv_heads, self.head_dim)
        q, k, v = (part.transpose(1, 2) for part in qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=-2))
        if self.query_layernorm is not None and self.key_layernorm is not None:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        cos, sin = rotary
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        kv = (k, v)
        if keep is not None:
            q = q[:, :, keep]
            mask = None if mask is None else mask[:, :, keep]
            length = q.shape[2]
        groups = self.heads // self.kv_heads
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scaling, enable_gqa=groups > 1)
        else:
            if groups > 1:
                k = k[:, :, None].expand(-1, -1, groups, -1, -1).reshape(batch, self.heads, -1, self.head_dim)
                v = v[:, :, None].expand(-1, -1, groups, -1, -1).reshape(batch, self.heads, -1, self.head_dim)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scaling)
        return self.dense(out.transpose(1, 2).reshape(batch, length, -1)), kv


class LLaDA2MLP(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_to(x)

    def apply_to(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation without the module-call machinery (the expert loop calls it per expert)."""
        gate, up, down = self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight
        return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


class LLaDA2Router(nn.Module):
    """The published gate: sigmoid scores, `expert_bias` for the choice, group-limited top-k."""

    def __init__(self, config: LLaDA2Config) -> None:
        super().__init__()
        self.experts = int(config.num_experts)
        self.top_k = int(config.num_experts_per_tok)
        self.groups = int(config.n_group)
        self.top_groups = int(config.topk_group)
        self.scaling = float(config.routed_scaling_factor)
        self.weight = nn.Parameter(torch.empty(self.experts, int(config.hidden_size)))
        self.register_buffer("expert_bias", torch.zeros(self.experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen experts (T, top_k) of the tokens x (T, hidden) and their weights (float32)."""
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))
        choice = scores + cast(torch.Tensor, self.expert_bias)
        tokens = choice.shape[0]
        group_scores = choice.view(tokens, self.groups, -1).topk(2, dim=-1)[0].sum(dim=-1)
        best_groups = torch.topk(group_scores, k=self.top_groups, dim=-1, sorted=False)[1]
        keep = torch.zeros_like(group_scores).scatter_(1, best_groups, 1)
        keep = keep.unsqueeze(-1).expand(tokens, self.groups, self.experts // self.groups).reshape(tokens, -1)
        chosen = torch.topk(choice.masked_fill(~keep.bool(), float("-inf")), k=self.top_k, dim=-1)[1]
        weights = torch.gather(scores, dim=1, index=chosen)
        if self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return chosen, weights * self.scaling


class LLaDA2SparseMoe(nn.Module):
    """Routed experts plus the shared experts."""

    def __init__(self, config: LLaDA2Config) -> None:
        super().__init__()
        hidden, inner = int(config.hidden_size), int(config.moe_intermediate_size)
        self.experts = nn.ModuleList(LLaDA2MLP(hidden, inner) for _ in range(int(config.num_experts)))
        self.gate = LLaDA2Router(config)
        shared = config.num_shared_experts
        self.shared_experts = None if shared is None else LLaDA2MLP(hidden, inner * int(shared))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        chosen, weights = self.gate(flat)
        y = self._routed(flat, chosen, weights).view(shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y

    def _routed(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Each expert over its tokens in one batch (sorted by expert, the published order)."""
        order = chosen.view(-1).argsort()
        counts = torch.bincount(chosen.view(-1), minlength=len(self.experts)).tolist()
        tokens = x[order // chosen.shape[1]]
        outputs = []
        start = 0
        for expert, count in zip(self.experts, counts, strict=True):
            if count:
                outputs.append(cast(LLaDA2MLP, expert).apply_to(tokens[start : start + count]))
                start += count
        sorted_out = torch.cat(outputs, dim=0)
        out = torch.empty_like(sorted_out)
        out[order] = sorted_out
        mixed = out.view(*chosen.shape, -1).to(weights.dtype).mul_(weights.unsqueeze(-1)).sum(dim=1)
        return mixed.to(out.dtype)


class LLaDA2Layer(nn.Module):
    def __init__(self, config: LLaDA2Config, index: int) -> None:
        super().__init__()
        hidden, eps = int(config.hidden_size), float(config.rms_norm_eps)
        self.attention = LLaDA2Attention(config)
        sparse = config.num_experts is not None and index >= int(config.first_k_dense_replace)
        self.mlp: nn.Module = (
            LLaDA2SparseMoe(config) if sparse else LLaDA2MLP(hidden, int(config.intermediate_size))
        )
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        keep: slice | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The layer's output for the rows `keep` of x (all when None), and its keys and values of every row."""
        attended, kv = self.attention(self.input_layernorm(x), rotary, mask, cache, keep)
        if keep is not None:
            x = x[:, keep]
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), kv


class LLaDA2Backbone(nn.Module):
    """Embeddings, layers and the final norm (`LLaDA2MoeLM.model`)."""

    def __init__(self, config: LLaDA2Config) -> None:
        super().__init__()
        pad = config.pad_token_id
        vocab = int(config.vocab_size)
        padding_idx = pad if isinstance(pad, int) and 0 <= pad < vocab else None
        self.word_embeddings = nn.Embedding(vocab, int(config.hidden_size), padding_idx)
        self.layers = nn.ModuleList(LLaDA2Layer(config, i) for i in range(int(config.num_hidden_layers)))
        self.norm = RMSNorm(int(config.hidden_size), float(config.rms_norm_eps))


class LLaDA2MoeLM(PreTrainedModel):  # type: ignore[no-untyped-call]
    """LLaDA2.0 mask predictor with the transformers interface; loads `inclusionAI/LLaDA2.0-*` weights by name."""

    config_class: type[LLaDA2Config] = LLaDA2Config
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["LLaDA2Layer"]  # noqa: RUF012 (a plain attribute in the base class)
    _supports_sdpa = True
    _tied_weights_keys: dict[str, str] = {}  # noqa: RUF012

    def __init__(self, config: LLaDA2Config) -> None:
        problems = unsupported_keys(config)
        if problems:
            raise UnsupportedLLaDA2ConfigError("not supported by dllm_bench's LLaDA2 model: " + "; ".join(problems))
        super().__init__(config)
        self.model = LLaDA2Backbone(config)
        self.lm_head = nn.Linear(int(config.hidden_size), int(config.vocab_size), bias=False)
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
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, LLaDA2Router):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            cast(torch.Tensor, module.expert_bias).zero_()
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def _silence_mask_logit(self, weight: torch.Tensor) -> None:
        """A random model should not predict the mask token (a trained one does not): its logit is 0."""
        mask_id = getattr(self.config, "mask_token_id", None)
        if isinstance(mask_id, int) and 0 <= mask_id < weight.shape[0]:
            weight[mask_id].zero_()

    def get_input_embeddings(self) -> nn.Module:
        return cast(nn.Module, self.model.word_embeddings)

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.word_embeddings = value

    def get_output_embeddings(self) -> nn.Module:
        return cast(nn.Module, self.lm_head)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: slice | None = None,
        **kwargs: Any,
    ) -> ModelOutput | tuple[Any, ...]:
        """Logits (B, kept positions, vocab), float32, of `input_ids` (B, S).

        `attention_mask`: None (every position attends to every one, as the published model
        without a mask), or a 4-D SDPA mask (B or 1, 1, S, keys), boolean (True attends) or
        additive. `position_ids` (B or 1, S): rotary positions (default: the positions after
        the cache). `past_key_values`: the cache of the positions before the input (keys =
        its length + S). `use_cache=True` returns the cache of every position (cache and
        input). `logits_to_keep`: the input positions whose logits are computed (None: all); the
        last layer then runs its attention output and experts for those rows only (equal up to float
        rounding).
        """
        unexpected = sorted(k for k, v in kwargs.items() if v is not None and k not in IGNORED_FORWARD_KWARGS)
        if unexpected:
            raise TypeError(f"LLaDA2MoeLM.forward got unsupported arguments: {', '.join(unexpected)}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        start = 0 if past_key_values is None else past_key_values.length
        if position_ids is None:
            position_ids = torch.arange(start, start + length, device=input_ids.device)[None]
        x = self.model.word_embeddings(input_ids)
        config = self.config
        rotary = rotary_tables(position_ids, config.rope_dim, float(config.rope_theta), x.dtype)
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        last = len(self.model.layers) - 1
        for index, layer in enumerate(self.model.layers):
            cached = None if past_key_values is None else (past_key_values.keys[index], past_key_values.values[index])
            # The last layer's output is read only at the kept rows: the others need only its keys and values.
            x, (k, v) = layer(x, rotary, attention_mask, cached, logits_to_keep if index == last else None)
            keys.append(k)
            values.append(v)
        x = self.model.norm(x)
        logits = self.lm_head(x).float()
        output = ModelOutput(logits=logits, past_key_values=KVCache(keys, values) if use_cache else None)
        return output if return_dict is not False else output.to_tuple()


class LLaDA21MoeLM(LLaDA2MoeLM):  # type: ignore[no-untyped-call]
    """LLaDA2.1's mask predictor: the same architecture; loads `inclusionAI/LLaDA2.1-*` weights by name."""

    config_class = LLaDA21Config
