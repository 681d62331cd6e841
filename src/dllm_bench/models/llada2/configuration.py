"""The configuration of the suite's LLaDA2 model: the keys of the published LLaDA2.0 and
LLaDA2.1 `config.json` (inclusionAI's `LLaDA2MoeConfig`, model types `llada2_moe` and
`llada21_moe`).

Both versions share one architecture (a mixture-of-experts decoder with a sigmoid router,
group-limited top-k, shared experts, dense first layers and partial rotary embeddings);
LLaDA2.1 differs only in its sampler (an editing phase) and in reading
`num_key_value_heads: 0` as "as many as the attention heads". The defaults are those of the
published configuration class. Keys that would change the computation but that the suite's
model does not implement (another `hidden_act`, a `rope_scaling`, tied embeddings) are refused
by `unsupported_keys`; keys the published modeling code reads but never uses (dropouts,
`use_sliding_window`, `norm_head`) are kept and have no effect in either.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

#: The model type of each version's `config.json`.
MODEL_TYPE_20 = "llada2_moe"
MODEL_TYPE_21 = "llada21_moe"
MODEL_TYPES: tuple[str, ...] = (MODEL_TYPE_20, MODEL_TYPE_21)
#: The token ids the published `generate` uses when the config names none (LLaDA2's tokenizer).
PUBLISHED_MASK_ID = 156895
PUBLISHED_EOS_ID = 156892

#: The architecture keys a caller may set, with the published configuration class's defaults.
LLADA2_DEFAULTS: dict[str, Any] = {
    "vocab_size": 30592,
    "hidden_size": 1024,
    "intermediate_size": None,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 0,
    "hidden_act": "silu",
    "use_qkv_bias": False,
    "use_qk_norm": True,
    "use_bias": True,
    "rms_norm_eps": 1e-05,
    "norm_head": False,
    "tie_word_embeddings": False,
    "embedding_dropout": 0.1,
    "attention_dropout": 0.1,
    "output_dropout": 0.1,
    "initializer_range": 0.02,
    "max_position_embeddings": 16384,
    "rope_theta": 10000.0,
    "use_sliding_window": False,
    "sliding_window": 4096,
    "max_window_layers": 28,
    "rope_scaling": None,
    "pad_token_id": 126081,
    "num_experts": 16,
    "num_shared_experts": 0,
    "num_experts_per_tok": 2,
    "n_group": 8,
    "topk_group": 4,
    "routed_scaling_factor": 2.5,
    "moe_intermediate_size": None,
    "first_k_dense_replace": 0,
    "head_dim": None,
    "output_router_logits": False,
    "partial_rotary_factor": 0.5,
    "mask_token_id": PUBLISHED_MASK_ID,
    "eos_token_id": PUBLISHED_EOS_ID,
    "bos_token_id": None,
}
LLADA2_CONFIG_KEYS: tuple[str, ...] = (*LLADA2_DEFAULTS, "model_type")


class LLaDA2Config(PretrainedConfig):  # type: ignore[no-untyped-call]
    """LLaDA2.0's configuration (`model_type: llada2_moe`)."""

    model_type = MODEL_TYPE_20

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("model_type", None)
        values = {key: kwargs.pop(key, default) for key, default in LLADA2_DEFAULTS.items()}
        tie = bool(values.pop("tie_word_embeddings"))
        for key, value in values.items():
            if key != "rope_scaling" or value is not None:  # transformers 5 warns on a rope_scaling attribute
                setattr(self, key, value)
        if values["head_dim"] is None:
            self.head_dim = int(values["hidden_size"]) // int(values["num_attention_heads"])
        if self.model_type == MODEL_TYPE_21 and not values["num_key_value_heads"]:
            self.num_key_value_heads = values["num_attention_heads"]
        kwargs.pop("use_cache", None)  # a diffusion model keeps no cache between calls
        kwargs["tie_word_embeddings"] = tie
        super().__init__(**kwargs)
        for key in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
            setattr(self, key, values[key])

    @property
    def version(self) -> str:
        """2.0 or 2.1."""
        return "2.1" if self.model_type == MODEL_TYPE_21 else "2.0"

    @property
    def rope_dim(self) -> int:
        """The rotated part of each head (`partial_rotary_factor` of it)."""
        return int(int(self.head_dim) * float(self.partial_rotary_factor))


class LLaDA21Config(LLaDA2Config):  # type: ignore[no-untyped-call]
    """LLaDA2.1's configuration (`model_type: llada21_moe`): the same keys as LLaDA2.0."""

    model_type = MODEL_TYPE_21

    def __init__(self, **kwargs: Any) -> None:  # transformers wraps a subclass without its own __init__
        super().__init__(**kwargs)


CONFIG_CLASSES: dict[str, type[LLaDA2Config]] = {MODEL_TYPE_20: LLaDA2Config, MODEL_TYPE_21: LLaDA21Config}


def unsupported_keys(config: PretrainedConfig) -> list[str]:
    """Keys whose value the suite's LLaDA2 model would compute differently from the published code."""
    problems = []
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config.hidden_act!r} (only silu is implemented; LLaDA2 has silu)")
    scaling = getattr(config, "rope_scaling", None)
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if scaling and rope_type != "default":
        problems.append(f"rope_scaling {scaling!r} (only plain rotary embeddings are implemented; LLaDA2 has null)")
    if getattr(config, "tie_word_embeddings", False):
        problems.append("tie_word_embeddings: true (a separate lm_head is implemented; LLaDA2 has false)")
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    kv = int(getattr(config, "num_key_value_heads", 0) or 0)
    if not kv or heads % kv:
        problems.append(f"num_key_value_heads {kv}: not a divisor of num_attention_heads {heads}")
    problems.extend(_moe_problems(config) + _dense_problems(config))
    return problems


def _moe_problems(config: PretrainedConfig) -> list[str]:
    experts = getattr(config, "num_experts", None)
    if experts is None:
        return []
    problems = []
    groups, top_groups, top_k = config.n_group, config.topk_group, config.num_experts_per_tok
    if not groups or experts % groups:
        problems.append(f"n_group {groups}: not a divisor of num_experts {experts}")
    elif experts // groups < 2:
        problems.append(f"n_group {groups}: each group needs at least 2 experts (the group score is its top 2)")
    if not 0 < top_groups <= groups:
        problems.append(f"topk_group {top_groups}: not in 1..n_group {groups}")
    elif not 0 < top_k <= top_groups * (experts // groups):
        problems.append(f"num_experts_per_tok {top_k}: more than the experts of topk_group {top_groups} groups")
    if getattr(config, "moe_intermediate_size", None) is None:
        problems.append("moe_intermediate_size: null (the experts' width must be set)")
    return problems


def _dense_problems(config: PretrainedConfig) -> list[str]:
    dense = getattr(config, "num_experts", None) is None or int(config.first_k_dense_replace) > 0
    if dense and getattr(config, "intermediate_size", None) is None:
        return ["intermediate_size: null (the dense layers' width must be set)"]
    return []
