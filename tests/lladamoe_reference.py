"""The published LLaDA-MoE code (ZHZisZZ/dllm `dllm/pipelines/llada/models/`) for tests that compare with it.

It is not part of the repository: set DLLM_BENCH_LLADAMOE_REFERENCE to a folder holding
`modeling_lladamoe.py` and `configuration_lladamoe.py` (with the transformers-5 shim of the
removed `'default'` rope initialiser; see the README's "LLaDA-MoE" section). Tests that need
it skip, with that reason, where it is absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ENV = "DLLM_BENCH_LLADAMOE_REFERENCE"
PACKAGE = "dllm_bench_lladamoe_reference"
FILES = ("modeling_lladamoe.py", "configuration_lladamoe.py")


def reference_folder() -> Path | None:
    value = os.environ.get(ENV)
    if not value:
        return None
    folder = Path(value)
    return folder if all((folder / name).is_file() for name in FILES) else None


def skip_reason() -> str:
    return (
        f"the published LLaDA-MoE code is absent: set {ENV} to a folder with {', '.join(FILES)} "
        "(ZHZisZZ/dllm dllm/pipelines/llada/models/, with the transformers-5 rope shim)"
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


def reference_model(state: dict[str, torch.Tensor], config_kwargs: dict[str, Any]) -> torch.nn.Module:
    """The published LLaDAMoEModelLM with the given weights (eval mode, SDPA attention). Every
    config key is passed: the published class defaults most of them to -1."""
    configuration = module("configuration_lladamoe")
    modeling = module("modeling_lladamoe")
    kwargs = {key: value for key, value in config_kwargs.items() if key != "mask_token_id"}
    config = configuration.LLaDAMoEConfig(**kwargs)
    config._attn_implementation = "sdpa"
    model = modeling.LLaDAMoEModelLM(config).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model
