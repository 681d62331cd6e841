"""Load the models of a config once per process.

A `random-init` entry is first written to a folder in the model cache (config, weights
and any code files its kind carries) and then loaded through the same call a hub
checkpoint or a local folder takes, so the path real checkpoints use is the one tested.
A cache folder is used only after `verify_folder` accepted it. Every failure to load,
whatever raised it, becomes one `ModelLoadError` naming the model, its source, the
library versions and what to do; a model that failed is not tried again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import transformers
from filelock import FileLock
from transformers import AutoTokenizer

from dllm_bench.backends import backend
from dllm_bench.models.random_init import (
    CacheFolderError,
    folder_key,
    remove_stale_temporaries,
    verify_folder,
)
from dllm_bench.spec import HUB_ID_PATTERN, ModelSpec, one_line

if TYPE_CHECKING:
    from dllm_bench.tasks import Task

LOG = logging.getLogger("dllm_bench.models")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


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
    max_length: int | None
    load_seconds: float
    location: str = ""
    # Outputs this process computed once and reuses (e.g. exact decodes), by a kind's key.
    memo: dict[tuple[object, ...], torch.Tensor] = field(default_factory=dict, repr=False)
    # Task objects by (task, task options): a JSONL file is read once, not once per case.
    tasks: dict[tuple[object, ...], Task] = field(default_factory=dict, repr=False)
    _tokenizer: Any = field(default=None, repr=False)

    def tokenizer(self) -> Any:
        """The model's tokenizer (loaded on first use, from the same folder or hub id)."""
        if self._tokenizer is None:
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.location, revision=self.spec.revision)
            except Exception as exc:
                raise ModelLoadError(
                    f"model '{self.spec.name}': no tokenizer could be loaded from {self.location}: "
                    f"{type(exc).__name__}: {one_line(str(exc))[:200]}"
                ) from exc
        return self._tokenizer


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


def random_init_folder(spec: ModelSpec, cache_dir: Path, dtype: torch.dtype) -> Path:
    """The cache folder of a random-init entry, written once (under a lock, so xdist workers
    do not write it twice) and verified before every use."""
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ModelLoadError(f"the model cache {cache_dir} is not a folder; pass --model-cache-dir with a folder")
    dtype_name = str(dtype).removeprefix("torch.")
    kind = backend(spec.kind)
    key = folder_key(spec.kind, kind.folder_arch(spec.arch_dict()), spec.seed, dtype_name)
    folder = cache_dir / f"{spec.kind}-{key}"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            remove_stale_temporaries(folder)
            kind.write_random_init(folder, spec.arch_dict(), seed=spec.seed, dtype=dtype)
            verify_folder(folder, kind.code_files(spec.arch_dict()))
    except CacheFolderError as exc:
        raise ModelLoadError(f"model '{spec.name}': {exc}") from exc
    except OSError as exc:
        raise ModelLoadError(f"model '{spec.name}': cannot write the model cache {cache_dir}: {exc}") from exc
    return folder


def load_model(spec: ModelSpec, cache_dir: Path) -> LoadedModel:
    """Load one model entry onto its device, in eval mode; raises ModelLoadError only."""
    try:
        return _load(spec, cache_dir)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(_describe_failure(spec, exc)) from exc


def _load(spec: ModelSpec, cache_dir: Path) -> LoadedModel:
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    start = time.perf_counter()
    location = str(random_init_folder(spec, cache_dir, dtype)) if spec.is_random_init else spec.location()
    _check_local_folder(spec, location)
    model = backend(spec.kind).load(spec, location, dtype).to(device).eval()
    seconds = time.perf_counter() - start
    loaded = _describe(spec, model, device, dtype, seconds)
    loaded.location = location
    LOG.info("loaded model %s (%s) on %s in %s in %.2f s", spec.name, spec.source, device, dtype, seconds)
    return loaded


def _check_local_folder(spec: ModelSpec, location: str) -> None:
    folder = Path(location)
    if not (spec.is_local or spec.is_random_init):
        return
    if not folder.is_dir():
        raise ModelLoadError(f"model '{spec.name}': the folder {folder} does not exist")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(
            f"model '{spec.name}': {folder} has no weights file ({', '.join(WEIGHT_FILES)}); "
            "download the checkpoint completely (e.g. huggingface-cli download ID --local-dir FOLDER)"
        )


def _describe_failure(spec: ModelSpec, exc: BaseException) -> str:
    versions = f"transformers {transformers.__version__}, torch {torch.__version__}"
    advice = "check the folder and the versions above"
    if HUB_ID_PATTERN.match(spec.source):
        advice = (
            "download it first (HF_HUB_OFFLINE=0 huggingface-cli download "
            f"{spec.source}{' --revision ' + spec.revision if spec.revision else ''}) or give a local folder"
        )
    return (
        f"model '{spec.name}' ({spec.source}) could not be loaded with {backend(spec.kind).loader_name} "
        f"({versions}): {type(exc).__name__}: {one_line(str(exc))[:300]}; {advice}"
    )


def _describe(
    spec: ModelSpec, model: torch.nn.Module, device: torch.device, dtype: torch.dtype, seconds: float
) -> LoadedModel:
    cfg: Any = getattr(model, "config", None)
    vocab_size = int(_config_value(cfg, "embedding_size") or _config_value(cfg, "vocab_size"))
    mask_id = _config_value(cfg, "mask_token_id")
    generation: Any = getattr(model, "generation_config", None)
    eos_ids = tuple(
        sorted({*_as_ids(_config_value(cfg, "eos_token_id")), *_as_ids(getattr(generation, "eos_token_id", None))})
    )
    pad_id = _config_value(cfg, "pad_token_id")
    bos_ids = _as_ids(_config_value(cfg, "bos_token_id"))
    special = {*eos_ids, *bos_ids}
    special.update(i for i in (mask_id, pad_id) if i is not None)
    max_length = _config_value(cfg, "max_sequence_length") or _config_value(cfg, "max_position_embeddings")
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
        max_length=int(max_length) if max_length else None,
        load_seconds=seconds,
    )


def _config_value(config: Any, name: str) -> Any:
    """A config value, from the text config where the model's own config has none (a
    multimodal or encoder-decoder model keeps its vocabulary and token ids there)."""
    value = getattr(config, name, None)
    if value is None and hasattr(config, "get_text_config"):
        value = getattr(config.get_text_config(), name, None)
    return value


def _as_ids(value: object) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    raise ModelLoadError(f"unexpected token id value {value!r} in the model config")


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
