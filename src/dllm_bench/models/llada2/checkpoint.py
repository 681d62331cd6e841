"""Load LLaDA2.0 and LLaDA2.1 checkpoints (`inclusionAI/LLaDA2.0-*`, `inclusionAI/LLaDA2.1-*` and
folders in their layout) into the suite's `LLaDA2MoeLM`, by weight name, without the
checkpoint's own code.

The `config.json` names the version (`model_type` `llada2_moe` or `llada21_moe`); a key whose
value the suite's model would compute differently is refused by name, then every weight of
the model must come from the checkpoint and every weight of the checkpoint must be used, with
its shape. The loading itself is the shared one of `dllm_bench.models.checkpoint`; this module
holds the two versions' formats.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dllm_bench.models.checkpoint import (
    CheckpointError,
    CheckpointFormat,
    CheckpointNotFoundError,
    load_checkpoint,
    load_config,
)
from dllm_bench.models.llada2.configuration import (
    MODEL_TYPE_20,
    MODEL_TYPE_21,
    LLaDA2Config,
    LLaDA21Config,
    unsupported_keys,
)
from dllm_bench.models.llada2.modeling import LLaDA2MoeLM, LLaDA21MoeLM

LLADA2_FORMAT = CheckpointFormat(
    name="LLaDA2.0", model_type=MODEL_TYPE_20, config_class=LLaDA2Config, model_class=LLaDA2MoeLM,
    unsupported=unsupported_keys,
)
LLADA21_FORMAT = CheckpointFormat(
    name="LLaDA2.1", model_type=MODEL_TYPE_21, config_class=LLaDA21Config, model_class=LLaDA21MoeLM,
    unsupported=unsupported_keys,
)
FORMATS: dict[str, CheckpointFormat] = {MODEL_TYPE_20: LLADA2_FORMAT, MODEL_TYPE_21: LLADA21_FORMAT}


def format_of(source: str | Path, *, revision: str | None = None) -> CheckpointFormat:
    """The format of a hub id or local folder, by its `config.json`'s `model_type`."""
    what = f"LLaDA2 checkpoint '{source}'" + (f" (revision {revision})" if revision else "")
    try:
        values, _ = LLaDA2Config.get_config_dict(str(source), revision=revision)
    except OSError as exc:
        raise CheckpointNotFoundError(f"{what}: no readable config.json: {str(exc).splitlines()[0][:300]}") from exc
    model_type = values.get("model_type")
    if model_type not in FORMATS:
        raise CheckpointError(
            f"{what}: config.json has model_type {model_type!r}, expected {MODEL_TYPE_20!r} (LLaDA2.0) or "
            f"{MODEL_TYPE_21!r} (LLaDA2.1); give a LLaDA2 checkpoint or change the entry's kind"
        )
    return FORMATS[str(model_type)]


def load_llada2_config(source: str | Path, *, revision: str | None = None) -> LLaDA2Config:
    """The checked config of a hub id or local folder (either version)."""
    config: LLaDA2Config = load_config(format_of(source, revision=revision), source, revision=revision)
    return config


def load_llada2_checkpoint(source: str | Path, *, dtype: torch.dtype, revision: str | None = None) -> LLaDA2MoeLM:
    """Load a LLaDA2.0 or LLaDA2.1 hub id or local folder into the suite's model (eval mode)."""
    fmt = format_of(source, revision=revision)
    model: LLaDA2MoeLM = load_checkpoint(fmt, source, dtype=dtype, revision=revision)
    return model
