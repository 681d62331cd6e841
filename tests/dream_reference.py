"""The published Dream code (Fast-dLLM's `dream/model/` copy) for tests that compare with it.

It is not part of the repository: set DLLM_BENCH_DREAM_REFERENCE to a folder holding
`modeling_dream.py`, `configuration_dream.py`, `generation_utils.py` and
`generation_utils_block.py` (with the transformers-5 shims; see the README's "Dream"
section). Tests that need it skip, with that reason, where it is absent.
"""

from __future__ import annotations

import torch

from tests.reference_code import ReferenceCode

FILES = ("modeling_dream.py", "configuration_dream.py", "generation_utils.py", "generation_utils_block.py")
REFERENCE = ReferenceCode(
    family="Dream",
    env="DLLM_BENCH_DREAM_REFERENCE",
    package="dllm_bench_dream_reference",
    files=FILES,
    source="NVlabs/Fast-dLLM dream/model/, with the transformers-5 shims",
)
reference_folder = REFERENCE.folder
module = REFERENCE.module
needs_reference = REFERENCE.marker()


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
