"""Load a hub checkpoint or local folder into one of the suite's own model classes, by weight
name, without the checkpoint's code: the one loader of every kind that brings its own model
(LLaDA, Dream).

A `CheckpointFormat` says what a kind's checkpoints are: its `model_type` (or how its
`config.json` is recognised, where the model type is shared with another architecture), its
config and model classes, the keys its `config.json` must set and the config values its
model does not implement. The config is checked first (model type, then those keys and
values, each refused by name); then every weight of the model must come from the
checkpoint, every weight of the checkpoint must be used, with its shape.

Errors are `CheckpointError` (a `ValueError`: the checkpoint does not fit the model) or
`CheckpointNotFoundError` (an `OSError`: it, or one of its files, could not be found or
read), with the source in the message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from dllm_bench.spec import one_line

LOG = logging.getLogger("dllm_bench.models.checkpoint")

FIX = (
    "For a hub id, download it first (HF_HUB_OFFLINE=0 huggingface-cli download ID) or give a local folder "
    "that holds config.json and the safetensors weights"
)


class CheckpointError(ValueError):
    """A checkpoint whose config or weights do not fit the suite's model of its kind."""


class CheckpointNotFoundError(OSError):
    """A checkpoint, or one of its files, that could not be found or read."""


@dataclass(frozen=True)
class CheckpointFormat:
    """The checkpoints of one kind with the suite's own model class."""

    name: str  # the family as messages name it: "LLaDA", "Dream"
    model_type: str
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    # The problems of a config the model does not implement ([] when it does), each naming its key.
    unsupported: Callable[[Any], list[str]]
    # Whether a config.json (as a dict) is one of this format; None: its model_type is `model_type`.
    recognise: Callable[[Mapping[str, Any]], bool] | None = None
    # What `recognise` accepts, as the refusal says it (default: the model type).
    expected: str = ""
    # Keys config.json must set (the published class's defaults would build a broken model).
    required_keys: tuple[str, ...] = ()

    def recognises(self, values: Mapping[str, Any]) -> bool:
        if self.recognise is not None:
            return self.recognise(values)
        return values.get("model_type") == self.model_type

    def describe(self, source: str | Path, revision: str | None) -> str:
        return f"{self.name} checkpoint '{source}'" + (f" (revision {revision})" if revision else "")


def _short(exc: BaseException) -> str:
    return one_line(str(exc))[:400]


def load_config(fmt: CheckpointFormat, source: str | Path, *, revision: str | None = None) -> Any:
    """The checked config of a hub id or local folder (its `config.json`)."""
    what = fmt.describe(source, revision)
    try:
        values, _ = fmt.config_class.get_config_dict(str(source), revision=revision)
    except OSError as exc:
        raise CheckpointNotFoundError(f"{what}: no readable config.json: {_short(exc)}. {FIX}") from exc
    if not fmt.recognises(values):
        architectures = values.get("architectures")
        named = f" (architectures {architectures})" if architectures else ""
        raise CheckpointError(
            f"{what}: config.json has model_type {values.get('model_type')!r}, "
            f"expected {fmt.expected or repr(fmt.model_type)}{named}; "
            f"give a {fmt.name} checkpoint or change the entry's kind"
        )
    unset = [key for key in fmt.required_keys if key not in values]
    if unset:
        raise CheckpointError(
            f"{what}: config.json does not set {', '.join(unset)} (the published {fmt.name} code has no usable "
            "default for them)"
        )
    try:
        config = fmt.config_class.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{what}: invalid config.json: {_short(exc)}") from exc
    problems = fmt.unsupported(config)
    if problems:
        raise CheckpointError(
            f"{what}: not supported by dllm_bench's {fmt.name} model: {'; '.join(problems)}. "
            "Use the checkpoint's own code (trust_remote_code: true) instead"
        )
    return config


def load_checkpoint(
    fmt: CheckpointFormat, source: str | Path, *, dtype: torch.dtype, revision: str | None = None
) -> Any:
    """Load a hub id or local folder into `fmt.model_class` (on the CPU, eval mode)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    what = fmt.describe(source, revision)
    config = load_config(fmt, source, revision=revision)
    model_name = fmt.model_class.__name__
    try:
        # Mismatched shapes are reported in the loading info (and refused below) rather than raised
        # as an error whose details only go to the log.
        from_pretrained: Any = fmt.model_class.from_pretrained  # typed as returning the model alone
        model, info = from_pretrained(
            str(source),
            config=config,
            revision=revision,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
            dtype=dtype,
        )
    except OSError as exc:
        raise CheckpointNotFoundError(f"{what}: could not read the weights: {_short(exc)}. {FIX}") from exc
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{what}: the weights do not load into {model_name}: {_short(exc)}") from exc
    _check_loading_info(fmt, what, info)
    if not isinstance(model, fmt.model_class):
        raise CheckpointError(f"{what}: from_pretrained returned a {type(model).__name__}, not {model_name}")
    model.eval()  # type: ignore[no-untyped-call]
    LOG.info("loaded %s into dllm_bench's %s (%s)", what, model_name, dtype)
    return model


def _check_loading_info(fmt: CheckpointFormat, what: str, info: dict[str, Any]) -> None:
    """Refuse a checkpoint that leaves weights of the model uninitialised or holds weights it does not use."""
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
        raise CheckpointError(f"{what}: not the {fmt.name} weight layout: " + "; ".join(problems))
