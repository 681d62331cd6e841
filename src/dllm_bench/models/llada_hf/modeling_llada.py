"""LLaDA masked-diffusion language model (Hugging Face remote code), dllm-bench's own implementation.

The module and parameter names match the published ``GSAI-ML/LLaDA-8B-*``
checkpoints, so that a folder written by ``dllm_bench.models.random_init`` and a
hub checkpoint load the same way::

    model.transformer.wte                      Embedding(embedding_size, d_model)
    model.transformer.blocks.N.attn_norm       RMSNorm(d_model)
    model.transformer.blocks.N.q_proj          Linear(d_model, d_model)
    model.transformer.blocks.N.k_proj          Linear(d_model, n_kv_heads * head_dim)
    model.transformer.blocks.N.v_proj          Linear(d_model, n_kv_heads * head_dim)
    model.transformer.blocks.N.attn_out        Linear(d_model, d_model)
    model.transformer.blocks.N.ff_norm         RMSNorm(d_model)
    model.transformer.blocks.N.ff_proj         Linear(d_model, mlp_hidden_size)
    model.transformer.blocks.N.up_proj         Linear(d_model, mlp_hidden_size)
    model.transformer.blocks.N.ff_out          Linear(mlp_hidden_size, d_model)
    model.transformer.ln_f                     RMSNorm(d_model)
    model.transformer.ff_out                   Linear(d_model, embedding_size), absent with weight_tying

Attention is bidirectional (a mask predictor, not an autoregressive decoder) and
there is no KV cache. This file is copied into model folders and loaded by
``transformers`` as remote code: it imports only torch, transformers and the
configuration module next to it (relative import).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llada import LLaDAConfig

# Keyword arguments of ``forward`` that are accepted and ignored. Anything else
# that is not ``None`` is refused, rather than silently dropped.
_IGNORED_FORWARD_KWARGS = frozenset({"cache_position", "token_type_ids", "num_items_in_batch"})


def _check_supported(config: LLaDAConfig) -> None:
    """Refuse configurations that this implementation would compute differently from the hub code."""
    if config.block_type != "llama":
        raise NotImplementedError(f"block_type={config.block_type!r} is not supported (only 'llama')")
    if config.activation_type != "silu":
        raise NotImplementedError(f"activation_type={config.activation_type!r} is not supported (only 'silu')")
    if config.layer_norm_type != "rms":
        raise NotImplementedError(f"layer_norm_type={config.layer_norm_type!r} is not supported (only 'rms')")
    if not config.rope:
        raise NotImplementedError("rope=False is not supported (LLaDA uses rotary position embeddings)")
    if getattr(config, "alibi", False):
        raise NotImplementedError("alibi=True is not supported")
    if config.d_model % config.n_heads != 0:
        raise ValueError(f"d_model ({config.d_model}) must be a multiple of n_heads ({config.n_heads})")
    if (config.d_model // config.n_heads) % 2 != 0:
        raise ValueError(f"head_dim ({config.d_model // config.n_heads}) must be even for rotary embeddings")
    if config.n_kv_heads < 1 or config.n_heads % config.n_kv_heads != 0:
        raise ValueError(f"n_heads ({config.n_heads}) must be a multiple of n_kv_heads ({config.n_kv_heads})")
    if config.embedding_size < config.vocab_size:
        raise ValueError(f"embedding_size ({config.embedding_size}) must be at least vocab_size ({config.vocab_size})")


class LLaDARMSNorm(nn.Module):
    """RMS normalisation with a learned scale; the statistics are computed in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _rotary_tables(
    seq_len: int, head_dim: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 cos and sin tables of shape (seq_len, head_dim) for positions 0..seq_len-1."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding of x (B, H, L, D), in float32, cast back to x's dtype."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class LLaDABlock(nn.Module):
    """One pre-norm transformer block of the ``llama`` type: bidirectional attention and a SwiGLU MLP."""

    def __init__(self, config: LLaDAConfig, layer_id: int) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.d_model // config.n_heads
        d_model = config.d_model
        kv_dim = self.n_kv_heads * self.head_dim
        bias = config.include_bias
        self.attn_norm = LLaDARMSNorm(d_model, config.rms_norm_eps)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, kv_dim, bias=bias)
        self.attn_out = nn.Linear(d_model, d_model, bias=bias)
        self.ff_norm = LLaDARMSNorm(d_model, config.rms_norm_eps)
        self.ff_proj = nn.Linear(d_model, config.mlp_hidden_size, bias=bias)
        self.up_proj = nn.Linear(d_model, config.mlp_hidden_size, bias=bias)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d_model, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        batch, seq_len, d_model = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(batch, seq_len, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = _apply_rotary(q, cos, sin)
        k = _apply_rotary(k, cos, sin)
        if self.n_kv_heads != self.n_heads:
            groups = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=0.0, is_causal=False)
        att = att.transpose(1, 2).reshape(batch, seq_len, d_model)
        x = x + self.attn_out(att)
        h = self.ff_norm(x)
        out: torch.Tensor = x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))
        return out


class LLaDAModel(nn.Module):
    """The network without the ``transformers`` wrapper; ``LLaDAModelLM.model`` is one of these."""

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__()
        self.config = config
        modules: dict[str, nn.Module] = {
            "wte": nn.Embedding(config.embedding_size, config.d_model),
            "blocks": nn.ModuleList(LLaDABlock(config, i) for i in range(config.n_layers)),
            "ln_f": LLaDARMSNorm(config.d_model, config.rms_norm_eps),
        }
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, config.embedding_size, bias=config.include_bias)
        self.transformer = nn.ModuleDict(modules)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Return the logits (B, L, embedding_size) and, if asked, the hidden states.

        The hidden states are the input of every block followed by the output of
        the final norm (n_layers + 1 tensors), as in the hub implementation.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        batch, seq_len = input_ids.shape
        wte = cast(nn.Embedding, self.transformer["wte"])
        x = wte(input_ids)
        key_mask = _key_mask(attention_mask, batch, seq_len, x.device)
        cos, sin = _rotary_tables(seq_len, self.config.d_model // self.config.n_heads, self.config.rope_theta, x.device)
        hidden: list[torch.Tensor] = []
        for block in cast(nn.ModuleList, self.transformer["blocks"]):
            if output_hidden_states:
                hidden.append(x)
            x = block(x, cos, sin, key_mask)
        x = self.transformer["ln_f"](x)
        if output_hidden_states:
            hidden.append(x)
        logits: torch.Tensor = F.linear(x, wte.weight) if self.config.weight_tying else self.transformer["ff_out"](x)
        return logits, (tuple(hidden) if output_hidden_states else None)


def _key_mask(
    attention_mask: torch.Tensor | None, batch: int, seq_len: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean SDPA mask (B, 1, 1, L), True = attend; None when every key is attended."""
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != (batch, seq_len):
        raise ValueError(
            f"attention_mask must have shape (batch, seq_len) = {(batch, seq_len)}, got {tuple(attention_mask.shape)}"
        )
    keep = attention_mask.to(device=device).bool()
    if bool(keep.all()):
        return None
    # A row without any attended key can give NaN on some SDPA backends; let such an all-padding row attend everywhere.
    keep = keep | ~keep.any(dim=-1, keepdim=True)
    return keep[:, None, None, :]


class LLaDAModelLM(PreTrainedModel):  # type: ignore[no-untyped-call]
    """LLaDA mask predictor with the ``transformers`` interface (``AutoModel`` / ``AutoModelForCausalLM``)."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["LLaDABlock"]  # noqa: RUF012 (the base class declares it as a plain attribute)
    _supports_sdpa = True
    # Nothing to tie: with weight_tying the LM head module is absent and forward uses wte's weight.
    _tied_weights_keys: dict[str, str] = {}  # noqa: RUF012

    def __init__(self, config: LLaDAConfig) -> None:
        _check_supported(config)
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()  # type: ignore[no-untyped-call]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            if module is self.get_output_embeddings():
                self._silence_mask_logit(module)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, LLaDARMSNorm):
            nn.init.ones_(module.weight)

    def _silence_mask_logit(self, head: nn.Linear) -> None:
        """A random model should not predict the mask token (the trained one never does):
        its logit is exactly 0, below the largest of the other random logits."""
        mask_id = self.config.mask_token_id
        if mask_id is not None and 0 <= mask_id < head.weight.shape[0]:
            with torch.no_grad():
                head.weight[mask_id].zero_()

    def get_input_embeddings(self) -> nn.Module:
        return cast(nn.Module, self.model.transformer["wte"])

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.transformer["wte"] = value

    def get_output_embeddings(self) -> nn.Module | None:
        if self.config.weight_tying:
            return None
        return cast(nn.Module, self.model.transformer["ff_out"])

    def set_output_embeddings(self, value: nn.Module) -> None:
        if self.config.weight_tying:
            raise ValueError("weight_tying=True: the LM head is the input embedding, set that instead")
        self.model.transformer["ff_out"] = value

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple[Any, ...]:
        """Logits of every position (B, L, embedding_size), with bidirectional attention.

        ``attention_mask`` is (B, L) with 1 for tokens to attend to and 0 for
        padding; padded keys are hidden from every query. Positions are 0..L-1
        in every row (rotary embeddings only see relative offsets).
        """
        if use_cache or past_key_values is not None:
            raise ValueError("LLaDA does not support a KV cache: pass use_cache=False and no past_key_values")
        if output_attentions:
            raise ValueError("output_attentions is not supported (attention runs in scaled_dot_product_attention)")
        if labels is not None:
            raise ValueError("labels are not supported: the masked-diffusion loss is computed by the caller")
        unexpected = sorted(k for k, v in kwargs.items() if v is not None and k not in _IGNORED_FORWARD_KWARGS)
        if unexpected:
            raise TypeError(f"LLaDAModelLM.forward got unsupported arguments: {', '.join(unexpected)}")
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        if return_dict is None:
            return_dict = bool(self.config.return_dict)
        logits, hidden_states = self.model(input_ids, attention_mask, output_hidden_states)
        if not return_dict:
            return (logits,) if hidden_states is None else (logits, hidden_states)
        return CausalLMOutputWithPast(logits=logits, hidden_states=hidden_states)
