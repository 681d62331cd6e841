"""Configuration of the LLaDA masked-diffusion language model (Hugging Face remote code).

This file is copied next to the weights of every LLaDA folder written by
``dllm_bench.models.random_init`` and is loaded by ``transformers`` with
``trust_remote_code=True``. It must therefore only import the standard library
and ``transformers``, and must not use absolute imports of ``dllm_bench``.

The keys and defaults follow the published ``GSAI-ML/LLaDA-8B-*`` ``config.json``
(the 8B shape). The keys that this implementation honours are explicit
arguments, and so are the keys of the published file that change the
computation but are not implemented here (``include_qkv_bias``,
``attention_layer_norm``, ...): they default to the published values, are
written into every ``config.json``, and the model refuses any other value (see
``modeling_llada._check_supported``). Any other key found in a checkpoint's
``config.json`` (dropouts, ``init_*``, ``precision``, ...) is kept as a plain
attribute by ``PretrainedConfig``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import PretrainedConfig

#: The ``auto_map`` written into ``config.json`` so that ``AutoConfig``,
#: ``AutoModel`` and ``AutoModelForCausalLM`` resolve to the files of the folder.
LLADA_AUTO_MAP: dict[str, str] = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
}

#: Names of the architecture arguments of :class:`LLaDAConfig` (the keys a
#: caller may set), in the order of the constructor.
LLADA_CONFIG_KEYS: tuple[str, ...] = (
    "d_model",
    "n_heads",
    "n_kv_heads",
    "n_layers",
    "mlp_hidden_size",
    "vocab_size",
    "embedding_size",
    "mask_token_id",
    "eos_token_id",
    "pad_token_id",
    "bos_token_id",
    "rope",
    "rope_theta",
    "max_sequence_length",
    "block_type",
    "activation_type",
    "layer_norm_type",
    "rms_norm_eps",
    "weight_tying",
    "include_bias",
    "init_std",
    "use_cache",
)

#: Keys of the published ``config.json`` that change the computation but that this
#: implementation does not implement, with the only value it accepts (the published
#: one). ``None`` for ``bias_for_layer_norm`` means "as ``include_bias``", as in the
#: hub code, and is resolved when the config is built.
LLADA_FIXED_KEYS: dict[str, object] = {
    "alibi": False,
    "attention_layer_norm": False,
    "bias_for_layer_norm": False,
    "block_group_size": 1,
    "include_qkv_bias": False,
    "input_emb_norm": False,
    "layer_norm_with_affine": True,
    "multi_query_attention": None,
    "rope_full_precision": True,
    "scale_logits": False,
}


class LLaDAConfig(PretrainedConfig):  # type: ignore[no-untyped-call]
    """Configuration of :class:`LLaDAModelLM`; the defaults give the LLaDA-8B shape."""

    model_type = "llada"
    # Standard transformers names, for tools that read them (device maps, memory estimates).
    attribute_map: ClassVar[dict[str, str]] = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "num_hidden_layers": "n_layers",
        "intermediate_size": "mlp_hidden_size",
        "max_position_embeddings": "max_sequence_length",
    }

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        n_layers: int = 32,
        mlp_hidden_size: int = 12288,
        vocab_size: int = 126464,
        embedding_size: int | None = 126464,
        mask_token_id: int = 126336,
        eos_token_id: int = 126081,
        pad_token_id: int = 126081,
        bos_token_id: int = 126080,
        rope: bool = True,
        rope_theta: float = 500000.0,
        max_sequence_length: int = 4096,
        block_type: str = "llama",
        activation_type: str = "silu",
        layer_norm_type: str = "rms",
        rms_norm_eps: float = 1e-5,
        weight_tying: bool = False,
        include_bias: bool = False,
        init_std: float = 0.02,
        use_cache: bool = False,
        alibi: bool = False,
        attention_layer_norm: bool = False,
        bias_for_layer_norm: bool | None = False,
        block_group_size: int = 1,
        include_qkv_bias: bool | None = False,
        input_emb_norm: bool = False,
        layer_norm_with_affine: bool = True,
        multi_query_attention: bool | None = None,
        rope_full_precision: bool = True,
        scale_logits: bool = False,
        **kwargs: Any,
    ) -> None:
        self.d_model = d_model
        self.n_heads = n_heads
        # None (the default, also allowed by the published config) means "same as n_heads":
        # 32 for the default 8B shape, and plain multi-head attention for any other n_heads.
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.vocab_size = vocab_size
        self.embedding_size = vocab_size if embedding_size is None else embedding_size
        self.mask_token_id = mask_token_id
        self.rope = rope
        self.rope_theta = rope_theta
        self.max_sequence_length = max_sequence_length
        self.block_type = block_type
        self.activation_type = activation_type
        self.layer_norm_type = layer_norm_type
        self.rms_norm_eps = rms_norm_eps
        self.weight_tying = weight_tying
        self.include_bias = include_bias
        self.init_std = init_std
        # Not implemented beyond their published values; written so that every config.json
        # states them, and checked by the model (modeling_llada._check_supported).
        self.alibi = alibi
        self.attention_layer_norm = attention_layer_norm
        # The hub code gives the norms a bias when this is None and include_bias is set.
        self.bias_for_layer_norm = include_bias if bias_for_layer_norm is None else bias_for_layer_norm
        self.block_group_size = block_group_size
        self.include_qkv_bias = include_qkv_bias
        self.input_emb_norm = input_emb_norm
        self.layer_norm_with_affine = layer_norm_with_affine
        self.multi_query_attention = multi_query_attention
        self.rope_full_precision = rope_full_precision
        self.scale_logits = scale_logits
        # The model ties nothing through transformers: with ``weight_tying`` the
        # LM head module is absent and the embedding matrix is used directly.
        kwargs["tie_word_embeddings"] = False
        kwargs.setdefault("auto_map", dict(LLADA_AUTO_MAP))
        super().__init__(**kwargs)
        # Set after the base initialiser: transformers 5 drops ``use_cache`` from ``kwargs`` (it is a
        # generation parameter there) and transformers 4 resets the token ids to its own defaults.
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.use_cache = use_cache
