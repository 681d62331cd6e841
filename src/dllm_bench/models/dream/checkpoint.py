"""Load Dream checkpoints (`Dream-org/Dream-v0-*` and folders in their layout) into the suite's
`DreamLM`, by weight name, without the checkpoint's own code.

The `config.json` is checked first: its `model_type` must be `Dream`, and a key whose value
the suite's model would compute differently (sliding-window attention, a rope scaling,
another activation) is refused by name. Every weight of the model must come from the
checkpoint and every weight of the checkpoint must be used, with its shape.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dllm_bench.models.dream.configuration import MODEL_TYPE, DreamConfig, unsupported_keys
from dllm_bench.models.dream.modeling import DreamLM
from dllm_bench.spec import one_line

LOG = logging.getLogger("dllm_bench.models.dream.checkpoint")

_FIX = (
    "For a hub id, download it first (HF_HUB_OFFLINE=0 huggingface-cli download ID) or give a local folder "
    "that holds config.json and the safetensors weights"
)


class DreamCheckpointError(ValueError):
    """A Dream checkpoint whose config or weights do not fit the suite's Dream model."""


class DreamCheckpointNotFoundError(OSError):
    """A Dream checkpoint, or one of its files, that could not be found or read."""


def _describe(source: str | Path, revision: str | None) -> str:
    return f"Dream checkpoint '{source}'" + (f" (revision {revision})" if revision else "")


def load_dream_config(source: str | Path, *, revision: str | None = None) -> DreamConfig:
    """The checked `DreamConfig` of a hub id or local folder."""
    what = _describe(source, revision)
    try:
        values, _ = DreamConfig.get_config_dict(str(source), revision=revision)
    except OSError as exc:
        reason = one_line(str(exc))[:300]
        raise DreamCheckpointNotFoundError(f"{what}: no readable config.json: {reason}. {_FIX}") from exc
    if values.get("model_type") != MODEL_TYPE:
        raise DreamCheckpointError(
            f"{what}: config.json has model_type {values.get('model_type')!r}, expected {MODEL_TYPE!r}; "
            "give a Dream checkpoint or change the entry's kind"
        )
    try:
        config = DreamConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise DreamCheckpointError(f"{what}: invalid config.json: {one_line(str(exc))[:300]}") from exc
    problems = unsupported_keys(config)
    if problems:
        raise DreamCheckpointError(
            f"{what}: not supported by dllm_bench's Dream model: {'; '.join(problems)}. "
            "Use the checkpoint's own code (trust_remote_code: true) instead"
        )
    return config


def load_dream_checkpoint(source: str | Path, *, dtype: torch.dtype, revision: str | None = None) -> DreamLM:
    """Load a Dream hub id or local folder into `DreamLM` (eval mode); see the module docstring."""
    what = _describe(source, revision)
    config = load_dream_config(source, revision=revision)
    try:
        from_pretrained: Any = DreamLM.from_pretrained
        model, info = from_pretrained(
            str(source),
            config=config,
            revision=revision,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            dtype=dtype,
        )
    except OSError as exc:
        reason = one_line(str(exc))[:300]
        raise DreamCheckpointNotFoundError(f"{what}: could not read the weights: {reason}. {_FIX}") from exc
    except (RuntimeError, ValueError) as exc:
        raise DreamCheckpointError(f"{what}: the weights do not load into DreamLM: {one_line(str(exc))[:300]}") from exc
    _check_loading_info(what, info)
    model.eval()
    LOG.info("loaded %s into dllm_bench's DreamLM (%s)", what, dtype)
    return model  # type: ignore[no-any-return]


def _check_loading_info(what: str, info: dict[str, Any]) -> None:
    problems = []
    for key, meaning in (
        ("missing_keys", "weights the model needs but the checkpoint lacks"),
        ("unexpected_keys", "weights of the checkpoint the model does not have"),
        ("mismatched_keys", "weights of the wrong shape"),
        ("error_msgs", "loading errors"),
    ):
        found = sorted(str(item) for item in info.get(key) or ())
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            problems.append(f"{meaning}: {shown}")
    if problems:
        raise DreamCheckpointError(f"{what}: not the Dream weight layout: " + "; ".join(problems))
