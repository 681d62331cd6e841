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

Errors are :class:`CheckpointError` (a ``ValueError``: the checkpoint does not
fit the model) or :class:`CheckpointNotFoundError` (an ``OSError``: it, or one of
its files, could not be found or read), with the source in the message.

:func:`register_llada_auto_classes` makes ``transformers.AutoConfig`` /
``AutoModel`` / ``AutoModelForCausalLM`` resolve ``model_type: llada`` to the
suite's classes, so that ``AutoModel.from_pretrained(folder)`` works without
``trust_remote_code``; it is a function to call, not an import side effect.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from dllm_bench.models.llada_hf.configuration_llada import LLaDAConfig
from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM, UnsupportedConfigError, _check_supported
from dllm_bench.spec import one_line

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "load_llada_checkpoint",
    "load_llada_config",
    "register_llada_auto_classes",
]

LOG = logging.getLogger("dllm_bench.models.llada_checkpoint")

_FIX = (
    "For a hub id, download it first (HF_HUB_OFFLINE=0 huggingface-cli download ID) or give a local folder "
    "that holds config.json and the safetensors weights"
)


class CheckpointError(ValueError):
    """A LLaDA checkpoint whose config or weights do not fit the suite's LLaDA model."""


class CheckpointNotFoundError(OSError):
    """A LLaDA checkpoint, or one of its files, that could not be found or read."""


def _describe(source: str | Path, revision: str | None) -> str:
    return f"LLaDA checkpoint '{source}'" + (f" (revision {revision})" if revision else "")


def _one_line(exc: BaseException) -> str:
    return one_line(str(exc))[:400]


def load_llada_config(source: str | Path, *, revision: str | None = None) -> LLaDAConfig:
    """The checked :class:`LLaDAConfig` of a hub id or local folder (its ``config.json``)."""
    what = _describe(source, revision)
    try:
        config_dict, _ = LLaDAConfig.get_config_dict(str(source), revision=revision)
    except OSError as exc:
        raise CheckpointNotFoundError(f"{what}: no readable config.json: {_one_line(exc)}. {_FIX}") from exc
    model_type = config_dict.get("model_type")
    if model_type != "llada":
        raise CheckpointError(f"{what}: config.json has model_type {model_type!r}, expected 'llada'")
    try:
        config = LLaDAConfig.from_dict(config_dict)
        _check_supported(config)
    except UnsupportedConfigError as exc:
        raise CheckpointError(f"{what}: {exc}. Use the checkpoint's own code (trust_remote_code) instead") from exc
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{what}: invalid config.json: {_one_line(exc)}") from exc
    return config


def load_llada_checkpoint(
    source: str | Path, *, dtype: torch.dtype, revision: str | None = None
) -> LLaDAModelLM:
    """Load a LLaDA hub id or local folder into the suite's ``LLaDAModelLM`` (on the CPU, eval mode).

    Raises :class:`CheckpointError` or :class:`CheckpointNotFoundError`; see the module docstring.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    what = _describe(source, revision)
    config = load_llada_config(source, revision=revision)
    try:
        # Mismatched shapes are reported in the loading info (and refused below) rather than raised
        # as an error whose details only go to the log.
        from_pretrained: Any = LLaDAModelLM.from_pretrained  # typed as returning the model alone
        model, info = from_pretrained(
            str(source),
            config=config,
            revision=revision,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            dtype=dtype,
        )
    except OSError as exc:
        raise CheckpointNotFoundError(f"{what}: could not read the weights: {_one_line(exc)}. {_FIX}") from exc
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{what}: the weights do not load into LLaDAModelLM: {_one_line(exc)}") from exc
    _check_loading_info(what, info)
    if not isinstance(model, LLaDAModelLM):
        raise CheckpointError(f"{what}: from_pretrained returned a {type(model).__name__}, not LLaDAModelLM")
    model.eval()  # type: ignore[no-untyped-call]
    LOG.info("loaded %s into dllm_bench's LLaDAModelLM (%s)", what, dtype)
    return model


def _check_loading_info(what: str, info: dict[str, Any]) -> None:
    """Refuse a checkpoint that leaves weights of the model uninitialised or holds weights it does not use."""
    problems = []
    for key, meaning in (
        ("missing_keys", "weights the model needs but the checkpoint lacks"),
        ("unexpected_keys", "weights of the checkpoint the model does not have"),
        ("mismatched_keys", "weights of the wrong shape"),
        ("error_msgs", "loading errors"),
    ):
        found = [str(item) for item in info.get(key) or ()]
        if found:
            shown = ", ".join(sorted(found)[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            problems.append(f"{meaning}: {shown}")
    if problems:
        raise CheckpointError(f"{what}: not the LLaDA weight layout: " + "; ".join(problems))


def register_llada_auto_classes() -> None:
    """Make ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` resolve ``model_type: llada`` to
    the suite's ``LLaDAConfig`` / ``LLaDAModelLM`` (no remote code). Calling it again does nothing."""
    AutoConfig.register("llada", LLaDAConfig, exist_ok=True)
    AutoModel.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
    AutoModelForCausalLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
