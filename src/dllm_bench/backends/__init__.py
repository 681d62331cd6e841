"""One backend per model kind, behind `dllm_bench.backends.base.Backend`, in the order of the
kinds' specs (`dllm_bench.kinds.KIND_SPECS`); a spec without a backend, or a backend
without a spec, is an error at import."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from dllm_bench.backends.base import Backend
from dllm_bench.backends.baseline import BaselineBackend
from dllm_bench.backends.diffusion_gemma import DiffusionGemmaBackend
from dllm_bench.backends.dream import DreamBackend
from dllm_bench.backends.llada import LladaBackend
from dllm_bench.backends.llada2 import Llada2Backend
from dllm_bench.kinds import MODEL_KINDS, KindSpecError, Settings


def _registry(backends: tuple[Backend, ...]) -> Mapping[str, Backend]:
    by_kind = {b.kind: b for b in backends}
    if sorted(by_kind) != sorted(MODEL_KINDS) or len(by_kind) != len(backends):
        raise KindSpecError(
            f"the backends ({', '.join(b.kind for b in backends)}) must be one per kind spec ({', '.join(MODEL_KINDS)})"
        )
    return MappingProxyType({kind: by_kind[kind] for kind in MODEL_KINDS})


BACKENDS: Mapping[str, Backend] = _registry(
    (LladaBackend(), DiffusionGemmaBackend(), DreamBackend(), Llada2Backend(), BaselineBackend())
)


def backend(kind: str) -> Backend:
    """The backend of a model kind (kinds are checked when the config is read)."""
    return BACKENDS[kind]


__all__ = ["BACKENDS", "Backend", "Settings", "backend"]
