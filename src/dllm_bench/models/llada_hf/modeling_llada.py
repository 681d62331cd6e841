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

Attention is bidirectional (a mask predictor, not an autoregressive decoder). A
KV cache with Fast-dLLM v1 semantics (prefix and dual cache, see
``LLaDAModelLM.forward``) serves accelerated decoding. This file is copied into model folders and loaded by
``transformers`` as remote code: it imports only torch, transformers and the
configuration module next to it (relative import).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .configuration_llada import LLADA_FIXED_KEYS, LLaDAConfig

# Keyword arguments of ``forward`` that are accepted and ignored. Anything else
# that is not ``None`` is refused, rather than silently dropped.
_IGNORED_FORWARD_KWARGS = frozenset({"cache_position", "token_type_ids", "num_items_in_batch"})


class UnsupportedConfigError(ValueError, NotImplementedError):
    """A configuration this implementation would compute differently from the hub code.

    A ``ValueError`` (a bad value for this model) and a ``NotImplementedError``
    (the hub code implements it, this one does not), so callers may catch either.
    """


def _problems(config: LLaDAConfig) -> list[str]:
    """What in ``config`` this implementation does not compute as the hub code does, one line each."""
    problems: list[str] = []
    for key, expected in (("block_type", "llama"), ("activation_type", "silu"), ("layer_norm_type", "rms")):
        value = getattr(config, key)
        if value != expected:
            problems.append(f"{key}={value!r} is not supported (only {expected!r})")
    if not config.rope:
        problems.append("rope=False is not supported (LLaDA uses rotary position embeddings)")
    problems.extend(_fixed_key_problems(config))
    if config.mlp_hidden_size is None:
        problems.append("mlp_hidden_size=None is not supported: give mlp_hidden_size (mlp_ratio is not read)")
    if config.d_model % config.n_heads != 0:
        problems.append(f"d_model ({config.d_model}) must be a multiple of n_heads ({config.n_heads})")
    elif (config.d_model // config.n_heads) % 2 != 0:
        problems.append(f"head_dim ({config.d_model // config.n_heads}) must be even for rotary embeddings")
    if config.n_kv_heads < 1 or config.n_heads % config.n_kv_heads != 0:
        problems.append(f"n_heads ({config.n_heads}) must be a multiple of n_kv_heads ({config.n_kv_heads})")
    if config.embedding_size < config.vocab_size:
        problems.append(
            f"embedding_size ({config.embedding_size}) must be at least vocab_size ({config.vocab_size})"
        )
    return problems


# Why each key of LLADA_FIXED_KEYS matters, for the refusal message.
_FIXED_KEY_EFFECT = {
    "alibi": "ALiBi attention biases",
    "attention_layer_norm": "a norm on the queries and keys",
    "bias_for_layer_norm": "a bias in every norm",
    "block_group_size": "blocks stored in groups (other weight names)",
    "include_qkv_bias": "a bias in q_proj, k_proj and v_proj",
    "input_emb_norm": "embeddings scaled by sqrt(d_model)",
    "layer_norm_with_affine": "norms without a learned scale when false",
    "multi_query_attention": "one key/value head; set n_kv_heads: 1 instead and leave it null",
    "rope_full_precision": "rotary embeddings in the model dtype when false",
    "scale_logits": "logits scaled by 1/sqrt(d_model)",
}


def _fixed_key_problems(config: LLaDAConfig) -> list[str]:
    problems = []
    for key, expected in LLADA_FIXED_KEYS.items():
        value = getattr(config, key, expected)
        if key == "include_qkv_bias" and value is None:
            value = False  # the hub code treats a missing value as no bias
        if value != expected or type(value) is not type(expected):
            problems.append(
                f"{key}={json.dumps(value)} is not supported (only {json.dumps(expected)}: the hub code "
                f"would compute {_FIXED_KEY_EFFECT[key]})"
            )
    return problems


def _check_supported(config: LLaDAConfig) -> None:
    """Refuse configurations that this implementation would compute differently from the hub code.

    Raises :class:`UnsupportedConfigError` naming every offending key.
    """
    problems = _problems(config)
    if problems:
        raise UnsupportedConfigError("unsupported LLaDA config: " + "; ".join(problems))


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
    seq_len: int, head_dim: int, theta: float, device: torch.device, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 cos and sin tables of shape (seq_len, head_dim) for positions start..start+seq_len-1."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    positions = torch.arange(start, start + seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding of x (B, H, L, D), in float32, cast back to x's dtype."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class LLaDAKVCache:
    """Keys and values of every layer for every position of a canvas, from one full forward.

    ``keys[i]`` and ``values[i]`` are layer ``i``'s tensors of shape
    (batch, n_kv_heads, length, head_dim); keys are stored after the rotary
    embedding of their absolute position. A forward given this cache writes the
    keys and values of its input into it **in place** (see
    :meth:`LLaDAModelLM.forward`), so one cache serves a whole block.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        if len(keys) != len(values) or not keys:
            raise ValueError(f"a cache needs as many key as value tensors, at least one: {len(keys)}, {len(values)}")
        self.keys = keys
        self.values = values

    @property
    def length(self) -> int:
        """Positions held (the length of the canvas of the full forward)."""
        return int(self.keys[0].shape[2])

    @property
    def batch_size(self) -> int:
        return int(self.keys[0].shape[0])

    def __len__(self) -> int:
        return len(self.keys)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[index], self.values[index]


@dataclass
class LLaDAOutput:
    """What :meth:`LLaDAModelLM.forward` returns.

    A plain dataclass rather than a ``transformers`` ``ModelOutput``: transformers 5
    renames a ``ModelOutput``'s ``past_key_values`` to ``cache``, 4.x does not, and
    this class keeps one name in both.
    """

    logits: torch.Tensor
    past_key_values: LLaDAKVCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields that are set, in order (what ``return_dict=False`` returns)."""
        fields = (self.logits, self.past_key_values, self.hidden_states)
        return tuple(f for f in fields if f is not None)


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
        layer_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        position: int = 0,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Return the block's output and the keys/values its queries attended to.

        Without ``layer_cache`` the input attends to itself. With it, the
        input's keys and values overwrite the cache entries of positions
        ``[position, position + seq_len)`` in place and the input attends to
        every cached position. ``cos``/``sin`` are the rotary tables of the
        input's positions.
        """
        batch, seq_len, d_model = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(batch, seq_len, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(batch, seq_len, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q = _apply_rotary(q, cos, sin)
        k = _apply_rotary(k, cos, sin)
        if layer_cache is not None:
            cached_k, cached_v = layer_cache
            cached_k[:, :, position : position + seq_len].copy_(k)
            cached_v[:, :, position : position + seq_len].copy_(v)
            k, v = cached_k, cached_v
        present = (k, v)
        if self.n_kv_heads != self.n_heads:
            groups = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=0.0, is_causal=False)
        att = att.transpose(1, 2).reshape(batch, seq_len, d_model)
        x = x + self.attn_out(att)
        h = self.ff_norm(x)
        out: torch.Tensor = x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))
        return out, present


LogitsToKeep = int | slice | torch.Tensor | None


def _keep_positions(x: torch.Tensor, logits_to_keep: LogitsToKeep) -> torch.Tensor:
    """The positions of x (B, L, D) whose logits are asked for: all (None or 0), the last N (int N),
    a slice, or a 1-D integer tensor of positions (the same for every row)."""
    if logits_to_keep is None:
        return x
    if isinstance(logits_to_keep, slice):
        return x[:, logits_to_keep]
    if isinstance(logits_to_keep, torch.Tensor):
        if logits_to_keep.dim() != 1 or logits_to_keep.dtype.is_floating_point or logits_to_keep.dtype == torch.bool:
            raise ValueError(f"a logits_to_keep tensor must be 1-D integer positions, got {logits_to_keep.dtype} "
                             f"of shape {tuple(logits_to_keep.shape)}")
        return x.index_select(1, logits_to_keep.to(device=x.device))
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(
            f"logits_to_keep must be None, an int >= 0, a slice or a 1-D tensor of positions, got {logits_to_keep!r}"
        )
    return x if logits_to_keep == 0 else x[:, -logits_to_keep:]


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
        *,
        past_key_values: LLaDAKVCache | None = None,
        position: int = 0,
        use_cache: bool = False,
        logits_to_keep: LogitsToKeep = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None, LLaDAKVCache | None]:
        """Return the logits, the hidden states if asked, and the cache if asked.

        The hidden states are the input of every block followed by the output of
        the final norm (n_layers + 1 tensors), as in the hub implementation.
        With ``past_key_values`` the input holds the positions
        ``[position, position + seq_len)`` of the cached canvas (see
        :meth:`LLaDAModelLM.forward`); the logits are (B, kept positions,
        embedding_size).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        batch, seq_len = input_ids.shape
        total = seq_len if past_key_values is None else past_key_values.length
        wte = cast(nn.Embedding, self.transformer["wte"])
        x = wte(input_ids)
        key_mask = _key_mask(attention_mask, batch, total, x.device)
        head_dim = self.config.d_model // self.config.n_heads
        cos, sin = _rotary_tables(seq_len, head_dim, self.config.rope_theta, x.device, start=position)
        hidden: list[torch.Tensor] = []
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for i, block in enumerate(cast(nn.ModuleList, self.transformer["blocks"])):
            if output_hidden_states:
                hidden.append(x)
            layer_cache = None if past_key_values is None else past_key_values.layer(i)
            x, (k, v) = block(x, cos, sin, key_mask, layer_cache, position)
            if use_cache:
                keys.append(k)
                values.append(v)
        x = self.transformer["ln_f"](x)
        if output_hidden_states:
            hidden.append(x)
        kept = _keep_positions(x, logits_to_keep)
        logits: torch.Tensor = (
            F.linear(kept, wte.weight) if self.config.weight_tying else self.transformer["ff_out"](kept)
        )
        cache = None
        if use_cache:
            cache = past_key_values if past_key_values is not None else LLaDAKVCache(keys, values)
        return logits, (tuple(hidden) if output_hidden_states else None), cache


def _key_mask(
    attention_mask: torch.Tensor | None, batch: int, seq_len: int, device: torch.device
) -> torch.Tensor | None:
    """Boolean SDPA mask (B, 1, 1, L), True = attend; None when every key is attended."""
    if attention_mask is None:
        return None
    if tuple(attention_mask.shape) != (batch, seq_len):
        raise ValueError(
            f"attention_mask must have shape (batch, key positions) = {(batch, seq_len)}, "
            f"got {tuple(attention_mask.shape)}"
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
        past_key_values: LLaDAKVCache | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        labels: torch.Tensor | None = None,
        replace_position: int | None = None,
        logits_to_keep: LogitsToKeep = None,
        **kwargs: Any,
    ) -> LLaDAOutput | tuple[Any, ...]:
        """Logits (B, L, embedding_size) with bidirectional attention, optionally with a KV cache.

        Without a cache, ``input_ids`` (B, L) is the whole canvas;
        ``attention_mask`` is (B, L) with 1 for tokens to attend to and 0 for
        padding, and padded keys are hidden from every query. Positions are
        0..L-1 in every row (rotary embeddings only see relative offsets).

        KV cache (Fast-dLLM v1 semantics):

        * ``use_cache=True`` on a full forward returns, as ``past_key_values``,
          a :class:`LLaDAKVCache` with every layer's keys and values for all L
          positions.
        * Given that cache, ``input_ids`` (B, S) holds the positions
          ``[replace_position, replace_position + S)`` of the canvas (required,
          absolute, so rotary positions stay those of the full canvas). Their
          keys and values are computed and **replace** the cache entries of
          those positions in place; the queries attend to all L cached
          positions. ``attention_mask`` then covers all L positions. Feeding
          ``x[:, block_start:]`` with ``replace_position=block_start`` is the
          prefix cache (the positions before the block come from the cache);
          feeding only the block is the dual cache (the positions after it come
          from the cache too).
        * ``use_cache`` defaults to False; with a cache it returns the same
          (updated) cache object.

        ``logits_to_keep`` restricts the LM head to some input positions: None
        or 0 for all, an int N for the last N, a slice, or a 1-D integer tensor
        of positions (the same for every row); the logits are then (B, kept,
        embedding_size), in that order (hidden states stay complete).
        """
        if output_attentions:
            raise ValueError("output_attentions is not supported (attention runs in scaled_dot_product_attention)")
        if labels is not None:
            raise ValueError("labels are not supported: the masked-diffusion loss is computed by the caller")
        unexpected = sorted(k for k, v in kwargs.items() if v is not None and k not in _IGNORED_FORWARD_KWARGS)
        if unexpected:
            raise TypeError(f"LLaDAModelLM.forward got unsupported arguments: {', '.join(unexpected)}")
        position = _check_cache_arguments(input_ids, past_key_values, replace_position, self.config.n_layers)
        if output_hidden_states is None:
            output_hidden_states = bool(self.config.output_hidden_states)
        if return_dict is None:
            return_dict = bool(self.config.return_dict)
        logits, hidden_states, cache = self.model(
            input_ids,
            attention_mask,
            output_hidden_states,
            past_key_values=past_key_values,
            position=position,
            use_cache=bool(use_cache),
            logits_to_keep=logits_to_keep,
        )
        output = LLaDAOutput(logits=logits, past_key_values=cache, hidden_states=hidden_states)
        return output if return_dict else output.to_tuple()


def _check_cache_arguments(
    input_ids: torch.Tensor, cache: LLaDAKVCache | None, replace_position: int | None, n_layers: int
) -> int:
    """The absolute position of the first input token; refuses inconsistent cache arguments."""
    if cache is None:
        if replace_position is not None:
            raise ValueError("replace_position needs past_key_values (the cache returned with use_cache=True)")
        return 0
    if not isinstance(cache, LLaDAKVCache):
        raise TypeError(
            "past_key_values must be the LLaDAKVCache that a forward with use_cache=True returned, "
            f"got {type(cache).__name__}"
        )
    if len(cache) != n_layers:
        raise ValueError(f"past_key_values holds {len(cache)} layers, the model has {n_layers}")
    if isinstance(replace_position, bool) or not isinstance(replace_position, int):
        raise ValueError(
            "with past_key_values, replace_position (the canvas position of the first input token) "
            f"must be an int, got {replace_position!r}"
        )
    batch, seq_len = input_ids.shape[0], input_ids.shape[-1]
    if batch != cache.batch_size:
        raise ValueError(f"input batch {batch} differs from the cache's batch {cache.batch_size}")
    if replace_position < 0 or replace_position + seq_len > cache.length:
        raise ValueError(
            f"positions [{replace_position}, {replace_position + seq_len}) of the input lie outside "
            f"the cache's {cache.length} positions"
        )
    return replace_position
