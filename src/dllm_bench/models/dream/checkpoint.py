"""Load Dream checkpoints (`Dream-org/Dream-v0-*` and folders in their layout) into the suite's
`DreamLM`, by weight name, without the checkpoint's own code.

The `config.json` is checked first: its `model_type` must be `Dream`, and a key whose value
the suite's model would compute differently (sliding-window attention, a rope scaling,
another activation) is refused by name. Every weight of the model must come from the
checkpoint and every weight of the checkpoint must be used, with its shape.

The loading itself is the shared one of `dllm_bench.models.checkpoint`; this module is
Dream's format.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dllm_bench.models.checkpoint import CheckpointFormat, load_checkpoint, load_config
from dllm_bench.models.dream.configuration import MODEL_TYPE, DreamConfig, unsupported_keys
from dllm_bench.models.dream.modeling import DreamLM

DREAM_FORMAT = CheckpointFormat(
    name="Dream", model_type=MODEL_TYPE, config_class=DreamConfig, model_class=DreamLM, unsupported=unsupported_keys
)


def load_dream_config(source: str | Path, *, revision: str | None = None) -> DreamConfig:
    """The checked `DreamConfig` of a hub id or local folder."""
    config: DreamConfig = load_config(DREAM_FORMAT, source, revision=revision)
    return config


def load_dream_checkpoint(source: str | Path, *, dtype: torch.dtype, revision: str | None = None) -> DreamLM:
    """Load a Dream hub id or local folder into `DreamLM` (eval mode); see the module docstring."""
    model: DreamLM = load_checkpoint(DREAM_FORMAT, source, dtype=dtype, revision=revision)
    return model
