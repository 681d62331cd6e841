"""Load the models of a config once per process.

A `random-init` entry is first written to a local model folder (config, weights and, for
LLaDA, the remote-code files) and then loaded through the same `from_pretrained` call a
hub checkpoint or a local path takes, so the path real checkpoints use is the one tested.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from transformers import AutoModel, AutoModelForCausalLM

from dllm_bench.config import ModelSpec
from dllm_bench.models.random_init import folder_key, known_arch_keys, write_llada_folder, write_llama_folder

LOG = logging.getLogger("dllm_bench.models")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model entry that could not be loaded; the message says which and what to do."""


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    vocab_size: int
    mask_id: int | None
    eos_ids: tuple[int, ...]
    pad_id: int | None
    special_ids: tuple[int, ...]
    load_seconds: float


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda when a GPU is visible, else cpu; asking for an absent GPU fails."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device '{name}' was asked for but torch sees no CUDA GPU "
                f"(torch {torch.__version__}); install a CUDA build of torch or use device: cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelLoadError(f"device '{name}' does not exist: {torch.cuda.device_count()} GPU(s) visible")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA and float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def unknown_arch_keys(spec: ModelSpec) -> list[str]:
    """Architecture keys of a random-init entry that its config class does not know."""
    known = known_arch_keys(spec.kind)
    return sorted(key for key, _ in spec.arch if key not in known)


def model_folder(spec: ModelSpec, cache_dir: Path, dtype: torch.dtype) -> Path:
    """The folder or hub id to load from; random-init folders are written once and reused.

    A file lock keeps two processes (xdist workers) from writing the same folder.
    """
    if not spec.is_random_init:
        return Path(spec.source)
    dtype_name = str(dtype).removeprefix("torch.")
    folder = cache_dir / f"{spec.kind}-{folder_key(spec.kind, spec.arch_dict(), spec.seed, dtype_name)}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    writer = write_llada_folder if spec.kind == "llada" else write_llama_folder
    with FileLock(str(folder) + ".lock"):
        if not (folder / "config.json").exists():
            LOG.info("writing random-init weights of %s to %s", spec.name, folder)
            writer(folder, spec.arch_dict(), seed=spec.seed, dtype=dtype)
    return folder


def load_model(spec: ModelSpec, cache_dir: Path) -> LoadedModel:
    """Load one model entry onto its device, in eval mode."""
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    start = time.perf_counter()
    source = model_folder(spec, cache_dir, dtype)
    model = _from_pretrained(spec, source, dtype).to(device).eval()
    seconds = time.perf_counter() - start
    loaded = _describe(spec, model, device, dtype, seconds)
    LOG.info("loaded model %s (%s) on %s in %s in %.2f s", spec.name, spec.source, device, dtype, seconds)
    return loaded


def _from_pretrained(spec: ModelSpec, source: Path, dtype: torch.dtype) -> torch.nn.Module:
    # A local folder is used as it is; anything else is taken as a hub id.
    name = str(source)
    try:
        if spec.kind == "llada":
            model: torch.nn.Module = AutoModel.from_pretrained(name, trust_remote_code=True, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"model '{spec.name}': could not load '{spec.source}': {_one_line(exc)}. "
            "For a hub id, download it first (HF_HUB_OFFLINE=0 huggingface-cli download ID) "
            "or give a local path."
        ) from exc
    return model


def _describe(
    spec: ModelSpec, model: torch.nn.Module, device: torch.device, dtype: torch.dtype, seconds: float
) -> LoadedModel:
    cfg: Any = getattr(model, "config", None)
    vocab_size = int(getattr(cfg, "embedding_size", None) or cfg.vocab_size)
    mask_id = getattr(cfg, "mask_token_id", None)
    generation: Any = getattr(model, "generation_config", None)
    eos_ids = tuple(
        sorted({*_as_ids(getattr(cfg, "eos_token_id", None)), *_as_ids(getattr(generation, "eos_token_id", None))})
    )
    pad_id = getattr(cfg, "pad_token_id", None)
    bos_ids = _as_ids(getattr(cfg, "bos_token_id", None))
    if spec.kind == "llada" and mask_id is None:
        raise ModelLoadError(f"model '{spec.name}': its config has no mask_token_id; is it a LLaDA checkpoint?")
    special = {*eos_ids, *bos_ids}
    special.update(i for i in (mask_id, pad_id) if i is not None)
    return LoadedModel(
        spec=spec,
        model=model,
        device=device,
        dtype=dtype,
        vocab_size=vocab_size,
        mask_id=mask_id,
        eos_ids=eos_ids,
        pad_id=pad_id,
        special_ids=tuple(sorted(special)),
        load_seconds=seconds,
    )


def _as_ids(value: object) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    raise ModelLoadError(f"unexpected token id value {value!r} in the model config")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300]


class ModelCache:
    """Models of the session, loaded on first use and kept until the process ends."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._models: dict[ModelSpec, LoadedModel] = {}
        self._failures: dict[ModelSpec, ModelLoadError] = {}

    def get(self, spec: ModelSpec) -> LoadedModel:
        """The loaded model; a model that failed to load fails again at once, not reloaded."""
        if spec in self._failures:
            raise self._failures[spec]
        if spec not in self._models:
            try:
                self._models[spec] = load_model(spec, self.cache_dir)
            except ModelLoadError as exc:
                self._failures[spec] = exc
                raise
        return self._models[spec]

    def is_loaded(self, spec: ModelSpec) -> bool:
        return spec in self._models

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())
