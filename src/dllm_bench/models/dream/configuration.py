"""The configuration of the suite's Dream model: the keys of the published Dream-v0 `config.json`.

Dream-v0 (HKU and Huawei, 2025) is a Qwen2.5 decoder trained as a masked-diffusion model:
the same weights and shapes, attention run bidirectionally. The defaults are those of
`Dream-org/Dream-v0-Instruct-7B`. Keys of the published file that would change the
computation but that the suite's model does not implement (`use_sliding_window: true`, a
`rope_scaling`, another `hidden_act`) are refused by `unsupported_keys`.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

#: The model type of the published `config.json` (the checkpoint's own code registers it).
MODEL_TYPE = "Dream"

#: The architecture keys a caller may set, with the defaults of Dream-v0-Instruct-7B.
DREAM_DEFAULTS: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 28,
    "attention_dropout": 0.0,
    "mask_token_id": 151666,
    "pad_token_id": 151643,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
}
DREAM_CONFIG_KEYS: tuple[str, ...] = tuple(DREAM_DEFAULTS)


class DreamConfig(PretrainedConfig):  # type: ignore[no-untyped-call]
    """Dream-v0's configuration (a Qwen2 configuration plus the mask token id)."""

    model_type = MODEL_TYPE

    def __init__(self, **kwargs: Any) -> None:
        values = {key: kwargs.pop(key, default) for key, default in DREAM_DEFAULTS.items()}
        tie = bool(values.pop("tie_word_embeddings"))
        for key, value in values.items():
            if key != "rope_scaling" or value is not None:  # transformers 5 warns on a rope_scaling attribute
                setattr(self, key, value)
        if values["num_key_value_heads"] is None:
            self.num_key_value_heads = values["num_attention_heads"]
        kwargs.pop("use_cache", None)  # a diffusion model keeps no cache between calls
        kwargs["tie_word_embeddings"] = tie
        super().__init__(**kwargs)
        # PretrainedConfig sets its own token ids; the published file's win.
        for key in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id"):
            setattr(self, key, values[key])

    @property
    def head_dim(self) -> int:
        return int(self.hidden_size) // int(self.num_attention_heads)


def unsupported_keys(config: PretrainedConfig) -> list[str]:
    """Keys whose value the suite's Dream model would compute differently from the published code."""
    problems = []
    if getattr(config, "use_sliding_window", False):
        problems.append("use_sliding_window: true (sliding-window attention is not implemented; Dream-v0 has false)")
    scaling = getattr(config, "rope_scaling", None)
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if scaling and rope_type != "default":
        problems.append(f"rope_scaling {scaling!r} (only plain rotary embeddings are implemented; Dream-v0 has null)")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config.hidden_act!r} (only silu is implemented)")
    hidden, heads = getattr(config, "hidden_size", 0), getattr(config, "num_attention_heads", 0)
    if not heads or hidden % heads:
        problems.append(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
    kv = getattr(config, "num_key_value_heads", 0) or heads
    if not kv or heads % kv:
        problems.append(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    return problems
