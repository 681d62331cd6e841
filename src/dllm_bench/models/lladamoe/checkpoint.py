"""Load LLaDA-MoE checkpoints (`inclusionAI/LLaDA-MoE-*` and folders in their layout) into the
suite's `LLaDAMoEModelLM`, by weight name, without the checkpoint's own code.

A checkpoint is recognised by its `config.json`: `architectures: [LLaDAMoEModelLM]` (the hub
files say `model_type: llada`, the dense LLaDA's) or `model_type: lladamoe`. The keys the
published configuration defaults to -1 must be set, and a key whose value the suite's model
would compute differently is refused by name (`configuration.unsupported_keys`). Every
weight of the model must come from the checkpoint and every weight of the checkpoint must be
used, with its shape. The loading itself is the shared one of `dllm_bench.models.checkpoint`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dllm_bench.models.checkpoint import CheckpointFormat, load_checkpoint, load_config
from dllm_bench.models.lladamoe.configuration import (
    ARCHITECTURE,
    MODEL_TYPE,
    REQUIRED_KEYS,
    LLaDAMoEConfig,
    is_lladamoe_config,
    unsupported_keys,
)
from dllm_bench.models.lladamoe.modeling import LLaDAMoEModelLM

LLADAMOE_FORMAT = CheckpointFormat(
    name="LLaDA-MoE",
    model_type=MODEL_TYPE,
    config_class=LLaDAMoEConfig,
    model_class=LLaDAMoEModelLM,
    unsupported=unsupported_keys,
    recognise=is_lladamoe_config,
    expected=f"{MODEL_TYPE!r} or architectures [{ARCHITECTURE}]",
    required_keys=REQUIRED_KEYS,
)


def load_lladamoe_config(source: str | Path, *, revision: str | None = None) -> LLaDAMoEConfig:
    """The checked `LLaDAMoEConfig` of a hub id or local folder."""
    config: LLaDAMoEConfig = load_config(LLADAMOE_FORMAT, source, revision=revision)
    return config


def load_lladamoe_checkpoint(
    source: str | Path, *, dtype: torch.dtype, revision: str | None = None
) -> LLaDAMoEModelLM:
    """Load a LLaDA-MoE hub id or local folder into `LLaDAMoEModelLM` (eval mode); see the module docstring."""
    model: LLaDAMoEModelLM = load_checkpoint(LLADAMOE_FORMAT, source, dtype=dtype, revision=revision)
    return model
