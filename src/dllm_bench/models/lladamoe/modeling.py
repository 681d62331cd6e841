"""The suite's LLaDA-MoE model: plain PyTorch, bidirectional attention, a routed mixture of experts.

Weight names are those of the published checkpoints, so an `inclusionAI/LLaDA-MoE-*`
folder loads into it by name::

    model.embed_tokens                               Embedding(vocab_size, hidden_size)
    model.layers.N.input_layernorm                   RMSNorm(hidden_size)
    model.layers.N.self_attn.{q,k,v,o}_proj          Linear (bias with attention_bias)
    model.layers.N.self_attn.{q,k}_norm              RMSNorm(head_dim), with qk_layernorm
    model.layers.N.post_attention_layernorm          RMSNorm(hidden_size)
    model.layers.N.mlp.{gate,up,down}_proj           a dense layer (moe_layer_freq[N] == 0)
    model.layers.N.mlp.gate                          the router, Linear(hidden_size, num_experts)
    model.layers.N.mlp.experts.E.{gate,up,down}_proj a routed expert
    model.layers.N.mlp.expert_bias                   with moe_router_enable_expert_bias
    model.layers.N.shared_expert.{gate,up,down}_proj with shared_expert_intermediate_size
    model.norm, lm_head

What it computes is the published forward's, operation for operation where the order of
floating-point operations matters (float32 logits are bit-identical; see
`tests/test_llada_moe.py`):

* Rotary embeddings on the first `int(head_dim * partial_rotary_factor)` channels of each
  head (rotate-half), the tables computed in float32 and cast to the hidden dtype.
* Query and key norms over each head's channels, before the rotation.
* Routing: a float32 softmax over the router logits, plus `expert_bias` where the config
  enables it; the top `num_experts_per_tok` of those biased scores are both the choice and
  the weights (not renormalised: the published forward ignores `norm_topk_prob`,
  `moe_router_score_function`, `routed_scaling_factor` and the group keys). Each expert's
  weighted output is added to a zero tensor in increasing expert order, as the published
  loop does; the shared expert's output is added after.

It is faster than the published loop by work the result does not depend on: the
token-expert pairs are sorted once (instead of a `one_hot` and a `where` per expert),
experts no token chose are skipped, and the linear layers are called as functions. A KV
cache with Fast-dLLM v1 semantics (the LLaDA kind's `cache` axis) and `logits_to_keep` work
as in the suite's LLaDA model (`LLaDAModelLM.forward`).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from dllm_bench.models.layers import IGNORED_FORWARD_KWARGS, RMSNorm, rotate
from dllm_bench.models.llada_hf.modeling_llada import (
    LLaDAKVCache,
    LLaDAOutput,
    LogitsToKeep,
    _check_cache_arguments,
    _keep_positions,
)
from dllm_bench.models.lladamoe.configuration import LLaDAMoEConfig, unsupported_keys


class UnsupportedLLaDAMoEConfigError(ValueError):
    """A LLaDA-MoE config whose computation the suite's model does not implement."""


def check_supported(config: LLaDAMoEConfig) -> None:
    problems = unsupported_keys(config)
    if problems:
        raise UnsupportedLLaDAMoEConfigError("not supported by dllm_bench's LLaDA-MoE model: " + "; ".join(problems))


def rotary_tables(
    start: int, length: int, rotary_dim: int, theta: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (1, 1, length, rotary_dim) of positions start.., in float32, cast to `dtype`."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device).to(torch.float32) / rotary_dim
    inv_freq = 1.0 / (theta**exponents)
    positions = torch.arange(start, start + length, device=device, dtype=torch.float32)
    angles = (inv_freq[:, None] @ positions[None, :]).transpose(0, 1)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype)[None, None], angles.sin().to(dtype)[None, None]


class LLaDAMoEMLP(nn.Module):
    """A SwiGLU feed-forward: a dense layer, an expert or the shared expert."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _swiglu(self, x)


def _swiglu(mlp: LLaDAMoEMLP, x: torch.Tensor) -> torch.Tensor:
    gate = F.linear(x, mlp.gate_proj.weight)
    return F.linear(F.silu(gate) * F.linear(x, mlp.up_proj.weight), mlp.down_proj.weight)


class LLaDAMoESparseBlock(nn.Module):
    """The router and the routed experts of a MoE layer."""

    def __init__(self, config: LLaDAMoEConfig) -> None:
        super().__init__()
        self.num_experts = int(config.num_experts)
        self.top_k = int(config.num_experts_per_tok)
        hidden = int(config.hidden_size)
        self.gate = nn.Linear(hidden, self.num_experts, bias=False)
        self.experts = nn.ModuleList(
            LLaDAMoEMLP(hidden, int(config.expert_intermediate_size)) for _ in range(self.num_experts)
        )
        self.expert_bias: torch.Tensor | None
        if config.moe_router_enable_expert_bias:
            self.register_buffer("expert_bias", torch.zeros(self.num_experts))
        else:
            self.expert_bias = None

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chosen experts (T, top_k) and their weights (in the hidden dtype) of each token."""
        scores = F.softmax(F.linear(flat, self.gate.weight), dim=1, dtype=torch.float32)
        if self.expert_bias is not None:
            scores = scores + self.expert_bias
        weights, chosen = torch.topk(scores, self.top_k, dim=-1)
        return chosen, weights.to(flat.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        flat = x.reshape(-1, hidden)
        chosen, weights = self.route(flat)
        # Pairs in the published loop's order: by expert, then by top-k slot, then by token.
        by_slot = chosen.transpose(0, 1).reshape(-1)
        order = torch.argsort(by_slot, stable=True)
        tokens = order % flat.shape[0]
        pair_weights = weights.transpose(0, 1).reshape(-1, 1).index_select(0, order)
        counts = torch.bincount(by_slot, minlength=self.num_experts).tolist()
        inputs = flat.index_select(0, tokens)  # one gather; each expert reads its contiguous slice
        out = torch.zeros_like(flat)
        start = 0
        for expert, count in enumerate(counts):
            if count:
                end = start + count
                mlp = cast(LLaDAMoEMLP, self.experts[expert])
                out.index_add_(0, tokens[start:end], _swiglu(mlp, inputs[start:end]) * pair_weights[start:end])
                start = end
        return out.view(batch, length, hidden)


class LLaDAMoEAttention(nn.Module):
    def __init__(self, config: LLaDAMoEConfig) -> None:
        super().__init__()
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads)
        self.head_dim = config.head_dim
        hidden = int(config.hidden_size)
        bias = bool(config.attention_bias)
        self.clip = None if config.clip_qkv is None else float(config.clip_qkv)
        self.q_proj = nn.Linear(hidden, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(hidden, hidden, bias=bias)
        self.q_norm: RMSNorm | None = None
        self.k_norm: RMSNorm | None = None
        if config.qk_layernorm:
            self.q_norm = RMSNorm(self.head_dim, float(config.rms_norm_eps))
            self.k_norm = RMSNorm(self.head_dim, float(config.rms_norm_eps))

    def _project(self, x: torch.Tensor, linear: nn.Linear, heads: int, norm: RMSNorm | None) -> torch.Tensor:
        batch, length, _ = x.shape
        y = F.linear(x, linear.weight, linear.bias).view(batch, length, heads, self.head_dim)
        if norm is not None:
            y = norm(y)
        if self.clip is not None:
            y = y.clamp(min=-self.clip, max=self.clip)
        return y.transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        start: int,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch, length, hidden = x.shape
        q = self._project(x, self.q_proj, self.heads, self.q_norm)
        k = self._project(x, self.k_proj, self.kv_heads, self.k_norm)
        v = self._project(x, self.v_proj, self.kv_heads, None)
        q, k = rotate(q, *rotary), rotate(k, *rotary)
        if cache is not None:
            cached_k, cached_v = cache
            cached_k[:, :, start : start + length].copy_(k)
            cached_v[:, :, start : start + length].copy_(v)
            k, v = cached_k, cached_v
        present = (k, v)
        groups = self.heads // self.kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        if mask is not None:
            mask = mask.expand(batch, 1, length, k.shape[2])
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        att = att.transpose(1, 2).reshape(batch, length, hidden)
        return F.linear(att, self.o_proj.weight, self.o_proj.bias), present


class LLaDAMoEDecoderLayer(nn.Module):
    def __init__(self, config: LLaDAMoEConfig, index: int) -> None:
        super().__init__()
        hidden, eps = int(config.hidden_size), float(config.rms_norm_eps)
        self.self_attn = LLaDAMoEAttention(config)
        self.input_layernorm = RMSNorm(hidden, eps)
        self.post_attention_layernorm = RMSNorm(hidden, eps)
        self.is_moe = config.moe_layer_freq[index] != 0
        self.mlp: nn.Module = (
            LLaDAMoESparseBlock(config) if self.is_moe else LLaDAMoEMLP(hidden, int(config.dense_intermediate_size))
        )
        self.shared_expert: LLaDAMoEMLP | None = None
        if self.is_moe and config.shared_expert_intermediate_size is not None:
            self.shared_expert = LLaDAMoEMLP(hidden, int(config.shared_expert_intermediate_size))

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        start: int,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attended, present = self.self_attn(self.input_layernorm(x), rotary, mask, cache, start)
        x = x + attended
        h = self.post_attention_layernorm(x)
        out = self.mlp(h)
        if self.shared_expert is not None:
            out = out + _swiglu(self.shared_expert, h)
        return x + out, present


def additive_mask(
    attention_mask: torch.Tensor | None, batch: int, keys: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """The published model's attention mask: (B, 1, 1, keys), 0 where attended and the dtype's
    lowest value where not (an all-padding row then attends uniformly, as there)."""
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != (batch, keys):
        raise ValueError(
            f"attention_mask must have shape (batch, key positions) = {(batch, keys)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    hidden = ~attention_mask.to(device=device).bool()
    mask = torch.zeros((batch, 1, 1, keys), dtype=dtype, device=device)
    return mask.masked_fill(hidden[:, None, None, :], torch.finfo(dtype).min)


class LLaDAMoEModel(nn.Module):
    """The network without the LM head (`LLaDAMoEModelLM.model`)."""

    def __init__(self, config: LLaDAMoEConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(int(config.vocab_size), int(config.hidden_size))
        self.layers = nn.ModuleList(LLaDAMoEDecoderLayer(config, i) for i in range(int(config.num_hidden_layers)))
        self.norm = RMSNorm(int(config.hidden_size), float(config.rms_norm_eps))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: LLaDAKVCache | None,
        start: int,
        use_cache: bool,
    ) -> tuple[torch.Tensor, LLaDAKVCache | None]:
        batch, length = input_ids.shape
        x = self.embed_tokens(input_ids)
        keys = length if cache is None else cache.length
        mask = additive_mask(attention_mask, batch, keys, x.dtype, x.device)
        rotary = rotary_tables(
            start, length, self.config.rotary_dim, float(self.config.rope_theta), x.dtype, x.device
        )
        new_keys: list[torch.Tensor] = []
        new_values: list[torch.Tensor] = []
        for index, layer in enumerate(self.layers):
            x, (k, v) = layer(x, rotary, mask, None if cache is None else cache.layer(index), start)
            if use_cache:
                new_keys.append(k)
                new_values.append(v)
        out_cache = None
        if use_cache:
            out_cache = cache if cache is not None else LLaDAKVCache(new_keys, new_values)
        return self.norm(x), out_cache


class LLaDAMoEModelLM(PreTrainedModel):  # type: ignore[no-untyped-call]
    """LLaDA-MoE mask predictor with the `transformers` interface (`from_pretrained`, `save_pretrained`)."""

    config_class = LLaDAMoEConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["LLaDAMoEDecoderLayer"]  # noqa: RUF012 (the base class declares it as a plain attribute)
    _supports_sdpa = True
    _tied_weights_keys: dict[str, str] = {}  # noqa: RUF012

    def __init__(self, config: LLaDAMoEConfig) -> None:
        check_supported(config)
        super().__init__(config)
        self.model = LLaDAMoEModel(config)
        self.lm_head = nn.Linear(int(config.hidden_size), int(config.vocab_size), bias=False)
        self.post_init()  # type: ignore[no-untyped-call]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = float(self.config.initializer_range)
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if module is self.lm_head:
                self._silence_mask_logit(module)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, LLaDAMoESparseBlock) and module.expert_bias is not None:
            module.expert_bias.zero_()

    def _silence_mask_logit(self, head: nn.Linear) -> None:
        """A random model should not predict the mask token (a trained one never does)."""
        mask_id = self.config.mask_token_id
        if isinstance(mask_id, int) and 0 <= mask_id < head.weight.shape[0]:
            head.weight[mask_id].zero_()

    def get_input_embeddings(self) -> nn.Module:
        return cast(nn.Module, self.model.embed_tokens)

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = cast(nn.Embedding, value)

    def get_output_embeddings(self) -> nn.Module:
        return cast(nn.Module, self.lm_head)

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = cast(nn.Linear, value)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: LLaDAKVCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        labels: torch.Tensor | None = None,
        replace_position: int | None = None,
        logits_to_keep: LogitsToKeep = None,
        **kwargs: Any,
    ) -> LLaDAOutput | tuple[Any, ...]:
        """Logits (B, L, vocab_size) with bidirectional attention; the cache arguments and
        `logits_to_keep` are those of the suite's `LLaDAModelLM.forward`."""
        if labels is not None:
            raise ValueError("labels are not supported: the masked-diffusion loss is computed by the caller")
        unexpected = sorted(k for k, v in kwargs.items() if v is not None and k not in IGNORED_FORWARD_KWARGS)
        if unexpected:
            raise TypeError(f"LLaDAMoEModelLM.forward got unsupported arguments: {', '.join(unexpected)}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        start = _check_cache_arguments(
            input_ids, past_key_values, replace_position, int(self.config.num_hidden_layers)
        )
        hidden, cache = self.model(input_ids, attention_mask, past_key_values, start, bool(use_cache))
        logits = F.linear(_keep_positions(hidden, logits_to_keep), self.lm_head.weight)
        output = LLaDAOutput(logits=logits, past_key_values=cache)
        if return_dict is None:
            return_dict = bool(self.config.return_dict)
        return output if return_dict else output.to_tuple()
