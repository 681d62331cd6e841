"""Load real LLaDA checkpoints into the suite's own ``LLaDAModelLM``, without remote code.

A checkpoint in the ``GSAI-ML/LLaDA-8B-*`` layout (``config.json`` with
``model_type: llada`` and the OLMo-style keys, safetensors weights named
``model.transformer.*``) loads into
:class:`dllm_bench.models.llada_hf.modeling_llada.LLaDAModelLM`: the weight
names are identical, and the checkpoint's own ``modeling_llada.py`` is never
imported. The config is checked first: a key whose value this implementation
would compute differently from the hub code (``include_qkv_bias``,
``attention_layer_norm``, ...) is refused by name; the published 8B values
load. Every weight of the model must come from the checkpoint and every
weight of the checkpoint must be used.

The loading itself is the shared one of ``dllm_bench.models.checkpoint`` (errors
:class:`CheckpointError` and :class:`CheckpointNotFoundError`, with the source in the
message); this module is LLaDA's format.

:func:`register_llada_auto_classes` makes ``transformers.AutoConfig`` /
``AutoModel`` / ``AutoModelForCausalLM`` resolve ``model_type: llada`` to the
suite's classes, so that ``AutoModel.from_pretrained(folder)`` works without
``trust_remote_code``; it is a function to call, not an import side effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from dllm_bench.models.checkpoint import (
    CheckpointError,
    CheckpointFormat,
    CheckpointNotFoundError,
    load_checkpoint,
    load_config,
)
from dllm_bench.models.llada_hf.configuration_llada import LLaDAConfig
from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM, _problems
from dllm_bench.models.lladamoe.configuration import is_lladamoe_config

__all__ = [
    "LLADA_FORMAT",
    "CheckpointError",
    "CheckpointNotFoundError",
    "load_llada_checkpoint",
    "load_llada_config",
    "register_llada_auto_classes",
]



def is_llada_config(values: Mapping[str, Any]) -> bool:
    """``model_type: llada`` and not LLaDA-MoE (whose hub ``config.json`` has the same model type)."""
    return values.get("model_type") == "llada" and not is_lladamoe_config(values)


#: LLaDA checkpoints: ``model_type: llada``, the suite's ``LLaDAModelLM``, the keys it does not implement.
LLADA_FORMAT = CheckpointFormat(
    name="LLaDA",
    model_type="llada",
    config_class=LLaDAConfig,
    model_class=LLaDAModelLM,
    unsupported=_problems,
    recognise=is_llada_config,
    expected="'llada' with architectures [LLaDAModelLM]",
)


def load_llada_config(source: str | Path, *, revision: str | None = None) -> LLaDAConfig:
    """The checked :class:`LLaDAConfig` of a hub id or local folder (its ``config.json``)."""
    config: LLaDAConfig = load_config(LLADA_FORMAT, source, revision=revision)
    return config


def load_llada_checkpoint(source: str | Path, *, dtype: torch.dtype, revision: str | None = None) -> LLaDAModelLM:
    """Load a LLaDA hub id or local folder into the suite's ``LLaDAModelLM`` (on the CPU, eval mode).

    Raises :class:`CheckpointError` or :class:`CheckpointNotFoundError`; see the module docstring.
    """
    model: LLaDAModelLM = load_checkpoint(LLADA_FORMAT, source, dtype=dtype, revision=revision)
    return model


def register_llada_auto_classes() -> None:
    """Make ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` resolve ``model_type: llada`` to
    the suite's ``LLaDAConfig`` / ``LLaDAModelLM`` (no remote code). Calling it again does nothing."""
    AutoConfig.register("llada", LLaDAConfig, exist_ok=True)
    AutoModel.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
    AutoModelForCausalLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
