"""The published Dream code (Fast-dLLM's `dream/model/` copy) for tests that compare with it.

It is not part of the repository: set DLLM_BENCH_DREAM_REFERENCE to a folder holding
`modeling_dream.py`, `configuration_dream.py`, `generation_utils.py` and
`generation_utils_block.py` (with the transformers-5 shims; see the README's "Dream"
section). Tests that need it skip, with that reason, where it is absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ENV = "DLLM_BENCH_DREAM_REFERENCE"
PACKAGE = "dllm_bench_dream_reference"
FILES = ("modeling_dream.py", "configuration_dream.py", "generation_utils.py", "generation_utils_block.py")


def reference_folder() -> Path | None:
    value = os.environ.get(ENV)
    if not value:
        return None
    folder = Path(value)
    return folder if all((folder / name).is_file() for name in FILES) else None


def skip_reason() -> str:
    return (
        f"the published Dream code is absent: set {ENV} to a folder with {', '.join(FILES)} "
        "(NVlabs/Fast-dLLM dream/model/, with the transformers-5 shims)"
    )


needs_reference = pytest.mark.skipif(reference_folder() is None, reason=skip_reason())


def module(name: str) -> ModuleType:
    """A module of the reference folder, imported as part of one package (its relative imports work)."""
    folder = reference_folder()
    if folder is None:
        pytest.skip(skip_reason())
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        if (folder / "__init__.py").is_file():
            spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.{name}")


def reference_model(state: dict[str, torch.Tensor], config_kwargs: dict[str, object]) -> torch.nn.Module:
    """The published DreamModel with the given weights (fp32, eval mode, SDPA)."""
    configuration = module("configuration_dream")
    modeling = module("modeling_dream")
    config = configuration.DreamConfig(**config_kwargs)
    config._attn_implementation = "sdpa"
    model = modeling.DreamModel(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in name for name in missing), (missing, unexpected)
    return model


def generation_config(module_name: str, **kwargs: object) -> object:
    """An explicit DreamGenerationConfig (from_model_config fails on `eps` with transformers 5)."""
    return module(module_name).DreamGenerationConfig(**kwargs)
