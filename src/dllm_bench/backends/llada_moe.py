"""LLaDA-MoE, an architecture of the `llada` kind: its random-init entries (`arch.model_type:
lladamoe`), their checks and folders, and how a checkpoint folder or hub id is told apart
from a dense LLaDA one (by its `config.json`) and loaded."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, PretrainedConfig

from dllm_bench.backends.base import check_arch_types, check_positive
from dllm_bench.models.lladamoe.checkpoint import load_lladamoe_checkpoint
from dllm_bench.models.lladamoe.configuration import (
    LLADAMOE_CONFIG_KEYS,
    LLADAMOE_DEFAULTS,
    MASK_TOKEN_ID,
    MODEL_TYPE,
    LLaDAMoEConfig,
    is_lladamoe_config,
    unsupported_keys,
)
from dllm_bench.models.lladamoe.modeling import LLaDAMoEModelLM
from dllm_bench.models.random_init import write_model_folder

LOG = logging.getLogger("dllm_bench.backends.llada_moe")

#: The arch key that names the architecture of a random-init `llada` entry.
MODEL_TYPE_KEY = "model_type"
#: Its values: the dense LLaDA (the default) and LLaDA-MoE.
DENSE_MODEL_TYPE = "llada"
ARCH_MODEL_TYPES = (DENSE_MODEL_TYPE, MODEL_TYPE)
SIZE_KEYS = (
    "vocab_size",
    "hidden_size",
    "dense_intermediate_size",
    "expert_intermediate_size",
    "shared_expert_intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "num_experts",
    "num_experts_per_tok",
    "max_position_embeddings",
)
TOKEN_KEYS = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")


def is_moe_arch(arch: Mapping[str, Any]) -> bool:
    return arch.get(MODEL_TYPE_KEY) == MODEL_TYPE


def config_arguments(arch: Mapping[str, Any]) -> dict[str, Any]:
    """The arch keys the config class gets: all but `model_type`."""
    return {key: value for key, value in arch.items() if key != MODEL_TYPE_KEY}


def arch_keys() -> frozenset[str]:
    return frozenset({MODEL_TYPE_KEY, *LLADAMOE_CONFIG_KEYS})


def _types() -> dict[str, tuple[type, ...]]:
    """Expected types of the arch keys, from the defaults (null allowed where the default is null)."""
    expected: dict[str, tuple[type, ...]] = {}
    for key, default in LLADAMOE_DEFAULTS.items():
        if key == "moe_layer_freq":
            continue  # a list: not expressible as an arch scalar, refused by the config parser
        if key == "clip_qkv":
            expected[key] = (float, type(None))
        elif default is None:
            expected[key] = (int, type(None)) if key != "rope_scaling" else (type(None),)
        else:
            expected[key] = (type(default),)
    return expected


def check_arch(arch: Mapping[str, Any]) -> list[str]:
    """Problems of a random-init LLaDA-MoE architecture, each naming its key."""
    keys = config_arguments(arch)
    problems = check_arch_types(keys, _types()) + check_positive(keys, SIZE_KEYS)
    if problems:
        return problems
    try:
        config = LLaDAMoEConfig(**keys)
    except (ValueError, TypeError) as exc:  # whatever the config class itself refuses, in its words
        return [f"arch: LLaDAMoEConfig refuses it: {exc}"]
    problems = [f"arch: {problem}" for problem in unsupported_keys(config)]
    return problems + [
        f"arch.{key}: expected a token id below vocab_size {config.vocab_size}, got {value}"
        for key in TOKEN_KEYS
        if isinstance(value := getattr(config, key, None), int) and not 0 <= value < config.vocab_size
    ]


def max_length(arch: Mapping[str, Any]) -> int:
    return int(arch.get("max_position_embeddings", LLADAMOE_DEFAULTS["max_position_embeddings"]))


def write_lladamoe_folder(folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> Path:
    """Write a random-init LLaDA-MoE folder (config.json and the weights, no code files) that the
    suite's loader reads as it reads a hub checkpoint. `arch` holds `LLaDAMoEConfig` keys (and
    `model_type`); missing keys take the 7B-A1B defaults."""
    keys = config_arguments(arch)

    def build() -> LLaDAMoEModelLM:
        return LLaDAMoEModelLM(LLaDAMoEConfig(**keys))

    return write_model_folder(
        folder, build, name="LLaDA-MoE", arch=keys, known_keys=frozenset(LLADAMOE_CONFIG_KEYS), seed=seed, dtype=dtype
    )


def read_config(location: str, revision: str | None) -> dict[str, Any]:
    """The `config.json` of a folder or (downloaded) hub id as a dict; {} when it cannot be read
    (the loader then reports what is missing)."""
    try:
        values, _ = PretrainedConfig.get_config_dict(location, revision=revision)
    except OSError:
        return {}
    return dict(values)


def folder_problem(folder: Path) -> str | None:
    """A local folder that is neither a LLaDA nor a LLaDA-MoE checkpoint, told at config load."""
    try:
        values = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no readable config.json: the loader says what is missing
    if not isinstance(values, dict) or is_lladamoe_config(values) or values.get("model_type") == DENSE_MODEL_TYPE:
        return None
    return (
        f"a LLaDA or LLaDA-MoE checkpoint folder (its config.json has model_type {values.get('model_type')!r} "
        f"and architectures {values.get('architectures')}); give one, or change the entry's kind"
    )


def load_checkpoint(
    location: str, dtype: torch.dtype, revision: str | None, trust_remote_code: bool
) -> torch.nn.Module:
    """A LLaDA-MoE checkpoint: the suite's model, or with `trust_remote_code` the checkpoint's
    own, whose config gets the published mask token id it lacks and whose rotary buffers are
    computed again (see `reset_rotary_buffers`)."""
    if not trust_remote_code:
        return load_lladamoe_checkpoint(location, dtype=dtype, revision=revision)
    model: torch.nn.Module = AutoModel.from_pretrained(
        location, trust_remote_code=True, dtype=dtype, revision=revision
    )
    config: Any = getattr(model, "config", None)
    if config is not None and getattr(config, "mask_token_id", None) is None:
        config.mask_token_id = MASK_TOKEN_ID
    if not reset_rotary_buffers(model):
        LOG.warning("the checkpoint's own code has no rotary module with rope_init_fn; its buffers are as loaded")
    return model


def reset_rotary_buffers(model: torch.nn.Module) -> int:
    """Compute the rotary inverse frequencies of the checkpoint's own code again, with each rotary
    module's own initialiser; returns how many modules were reset.

    transformers 5's `from_pretrained` leaves a remote-code model's non-persistent buffers
    uninitialised (they are not in the weights): the published LLaDA-MoE code then rotates with
    whatever memory held and silently computes other logits (checked: 0 and 6.7e-44 as the
    frequencies of a tiny model)."""
    reset = 0
    for module in model.modules():
        init: Any = getattr(module, "rope_init_fn", None)
        inv_freq = getattr(module, "inv_freq", None)
        if callable(init) and isinstance(inv_freq, torch.Tensor):
            fresh, scaling = init(module.config, inv_freq.device, **getattr(module, "rope_kwargs", {}))
            with torch.no_grad():
                inv_freq.copy_(fresh)
            module.attention_scaling = scaling
            module.original_inv_freq = inv_freq
            reset += 1
    if reset:
        LOG.info("recomputed the rotary buffers of the checkpoint's own code (%d module(s))", reset)
    return reset
