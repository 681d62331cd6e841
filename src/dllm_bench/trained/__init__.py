"""The small trained models shipped with the suite (written by ``dllm-bench-train``).

``tasks-llada`` (LLaDA architecture, masked diffusion) and ``tasks-llama`` (Llama,
next-token prediction) share one shape and the built-in tasks' tokenizer. Each folder
holds ``config.json``, ``model.safetensors``, the tokenizer files and ``training.json``
(the training spec, time and the accuracies measured right after training).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

__all__ = ["TRAINED_DIR", "TRAINED_MODELS", "trained_model_dir"]

#: The folder holding the shipped models.
TRAINED_DIR = Path(__file__).resolve().parent
#: Names of the shipped models and their kind (the ``kind`` of a config entry).
TRAINED_MODELS: Mapping[str, str] = MappingProxyType({"tasks-llada": "llada", "tasks-llama": "baseline"})


def trained_model_dir(name: str) -> Path:
    """The folder of shipped model ``name``; a ``ValueError`` lists the names if it is unknown."""
    if name not in TRAINED_MODELS:
        raise ValueError(f"no shipped model {name!r}; the shipped models are {', '.join(TRAINED_MODELS)}")
    return TRAINED_DIR / name
