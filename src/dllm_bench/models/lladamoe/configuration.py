"""The configuration of the suite's LLaDA-MoE model: the keys of the published `config.json`.

LLaDA-MoE (inclusionAI, 2025) is an OLMoE-style decoder (query/key norms, a routed
mixture of SwiGLU experts in every MoE layer) trained as a masked-diffusion model and run
with bidirectional attention. Its hub `config.json` says `model_type: llada` (the dense
LLaDA's) and `architectures: [LLaDAMoEModelLM]`; the published code registers
`lladamoe`. Both are recognised (`is_lladamoe_config`).

The published configuration class defaults almost every key to -1: a checkpoint's
`config.json` must set them all (`REQUIRED_KEYS`, checked by name at load). The defaults
here are the 7B-A1B shape, so that a random-init entry may leave keys out; they are from
memory of the published file (not downloaded here). A checkpoint's own values are always
read from its `config.json`.

Keys the published forward reads but that the suite's model does not implement are refused
unless they hold the value that computes as implemented (`unsupported_keys`). Keys the
published configuration stores but its forward never reads (`norm_topk_prob`,
`moe_router_score_function`, `routed_scaling_factor`, `router_num_group`,
`router_topk_group`, the auxiliary-loss keys) change nothing in either model and are kept
as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import PretrainedConfig

#: The model type of the published code (`AutoConfig.register("lladamoe", ...)`).
MODEL_TYPE = "lladamoe"
#: The `architectures` entry of the published checkpoints' `config.json`.
ARCHITECTURE = "LLaDAMoEModelLM"
#: The mask token of the published tokenizer (the model card's `generate(mask_id=156895)`); it is
#: not in the published `config.json`.
MASK_TOKEN_ID = 156895

#: The architecture keys a caller may set, with the 7B-A1B values (see the module docstring).
LLADAMOE_DEFAULTS: dict[str, Any] = {
    "vocab_size": 157184,
    "hidden_size": 2048,
    "dense_intermediate_size": 8192,
    "expert_intermediate_size": 1024,
    "shared_expert_intermediate_size": None,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "rope_theta": 50000.0,
    "partial_rotary_factor": 1.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "clip_qkv": None,
    "num_experts_per_tok": 8,
    "num_experts": 64,
    "norm_topk_prob": True,
    "qk_layernorm": True,
    "moe_layer_freq": None,  # None: every layer is a MoE layer (a list in config.json: 0 dense, 1 MoE)
    "moe_router_enable_expert_bias": False,
    "moe_router_score_function": "softmax",
    "routed_scaling_factor": 1.0,
    "router_num_group": 1,
    "router_topk_group": 1,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.01,
    "mask_token_id": MASK_TOKEN_ID,
    "pad_token_id": 156892,
    "bos_token_id": None,
    "eos_token_id": 156892,
}
LLADAMOE_CONFIG_KEYS: tuple[str, ...] = tuple(LLADAMOE_DEFAULTS)

#: Keys a checkpoint's `config.json` must set: the published class defaults them to -1 (or to an
#: empty `moe_layer_freq`, or to -1 for the shared expert) and would build a broken model.
REQUIRED_KEYS: tuple[str, ...] = (
    "vocab_size",
    "hidden_size",
    "dense_intermediate_size",
    "expert_intermediate_size",
    "shared_expert_intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "rope_theta",
    "partial_rotary_factor",
    "num_experts_per_tok",
    "num_experts",
    "moe_layer_freq",
)


def is_lladamoe_config(values: Mapping[str, Any]) -> bool:
    """Whether a `config.json` (as a dict) is a LLaDA-MoE one: `model_type: lladamoe`, or the
    published `architectures: [LLaDAMoEModelLM]` (whose `model_type` is `llada`)."""
    architectures = values.get("architectures") or ()
    return values.get("model_type") == MODEL_TYPE or (
        isinstance(architectures, list | tuple) and ARCHITECTURE in architectures
    )


class LLaDAMoEConfig(PretrainedConfig):  # type: ignore[no-untyped-call]
    """LLaDA-MoE's configuration; the defaults give the 7B-A1B shape."""

    model_type = MODEL_TYPE

    def __init__(self, **kwargs: Any) -> None:
        values = {key: kwargs.pop(key, default) for key, default in LLADAMOE_DEFAULTS.items()}
        tie = bool(values.pop("tie_word_embeddings"))
        if values["num_key_value_heads"] is None:
            values["num_key_value_heads"] = values["num_attention_heads"]
        if values["moe_layer_freq"] is None and isinstance(values["num_hidden_layers"], int):
            values["moe_layer_freq"] = [1] * values["num_hidden_layers"]
        for key, value in values.items():
            if key != "rope_scaling" or value is not None:  # transformers 5 warns on a rope_scaling attribute
                setattr(self, key, value)
        kwargs.pop("use_cache", None)  # a diffusion model keeps no cache between calls
        kwargs["tie_word_embeddings"] = tie
        super().__init__(**kwargs)
        # PretrainedConfig sets its own token ids; the published file's win.
        for key in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
            setattr(self, key, values[key])

    @property
    def head_dim(self) -> int:
        return int(self.hidden_size) // int(self.num_attention_heads)

    @property
    def rotary_dim(self) -> int:
        """The rotated part of each head (the published `int(head_dim * partial_rotary_factor)`)."""
        return int(self.head_dim * float(self.partial_rotary_factor))


def unsupported_keys(config: PretrainedConfig) -> list[str]:
    """What in `config` the suite's model would compute differently from the published code, or
    cannot build, one line per key."""
    get = config.__dict__.get
    problems = [
        f"{key}={get(key)!r} (unset: the published class defaults it to -1; the checkpoint must set it)"
        for key in REQUIRED_KEYS
        if get(key) == -1
    ]
    if get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={get('hidden_act')!r} (only silu is implemented)")
    # transformers 5 moves a rope_scaling into rope_parameters (rope_type "default" when there is none).
    scaling = get("rope_scaling") or {}
    parameters = get("rope_parameters") or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) or parameters.get("rope_type", "default")
    if rope_type != "default":
        shown = scaling or {k: v for k, v in parameters.items() if k not in ("rope_theta", "partial_rotary_factor")}
        problems.append(f"rope_scaling={shown!r} (only plain rotary embeddings are implemented; 7B-A1B has null)")
    if getattr(config, "tie_word_embeddings", False):
        problems.append("tie_word_embeddings=true (not implemented; 7B-A1B has false)")
    return problems or _shape_problems(config)


def _shape_problems(config: PretrainedConfig) -> list[str]:
    get = config.__dict__.get
    problems = []
    hidden, heads, kv = get("hidden_size"), get("num_attention_heads"), get("num_key_value_heads")
    if not isinstance(heads, int) or heads < 1 or not isinstance(hidden, int) or hidden % heads:
        problems.append(f"hidden_size={hidden} is not a multiple of num_attention_heads={heads}")
    elif not isinstance(kv, int) or kv < 1 or heads % kv:
        problems.append(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    else:
        rotary = int(hidden // heads * float(get("partial_rotary_factor") or 0))
        if rotary < 2 or rotary % 2:
            problems.append(f"partial_rotary_factor={get('partial_rotary_factor')} gives an odd or empty rotary part")
    layers, freq = get("num_hidden_layers"), get("moe_layer_freq")
    if not isinstance(freq, list) or len(freq) != layers or any(f not in (0, 1) for f in freq):
        problems.append(f"moe_layer_freq={freq!r}: expected one 0 (dense) or 1 (MoE) per layer ({layers} layers)")
    experts, top_k = get("num_experts"), get("num_experts_per_tok")
    if not isinstance(experts, int) or not isinstance(top_k, int) or not 1 <= top_k <= experts:
        problems.append(f"num_experts_per_tok={top_k}: expected 1 to num_experts ({experts})")
    shared = get("shared_expert_intermediate_size")
    if shared is not None and (not isinstance(shared, int) or shared < 1):
        problems.append(f"shared_expert_intermediate_size={shared!r}: expected null (no shared expert) or a size")
    return problems
