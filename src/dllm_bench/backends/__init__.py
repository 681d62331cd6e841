"""One backend per model kind (`llada`, `baseline`), behind `dllm_bench.backends.base.Backend`."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from dllm_bench.backends.base import Backend, Settings
from dllm_bench.backends.baseline import BaselineBackend
from dllm_bench.backends.llada import LladaBackend

BACKENDS: Mapping[str, Backend] = MappingProxyType({b.kind: b for b in (LladaBackend(), BaselineBackend())})


def backend(kind: str) -> Backend:
    """The backend of a model kind (kinds are checked when the config is read)."""
    return BACKENDS[kind]


__all__ = ["BACKENDS", "Backend", "Settings", "backend"]
