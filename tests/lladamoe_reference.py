"""The published LLaDA-MoE code (ZHZisZZ/dllm `dllm/pipelines/llada/models/`) for tests that compare with it.

It is not part of the repository: set DLLM_BENCH_LLADAMOE_REFERENCE to a folder holding
`modeling_lladamoe.py` and `configuration_lladamoe.py` (with the transformers-5 shim of the
removed `'default'` rope initialiser; see the README's "LLaDA-MoE" section). Tests that need
it skip, with that reason, where it is absent.
"""

from __future__ import annotations

from typing import Any

import torch

from tests.reference_code import ReferenceCode

FILES = ("modeling_lladamoe.py", "configuration_lladamoe.py")
REFERENCE = ReferenceCode(
    family="LLaDA-MoE",
    env="DLLM_BENCH_LLADAMOE_REFERENCE",
    package="dllm_bench_lladamoe_reference",
    files=FILES,
    source="ZHZisZZ/dllm dllm/pipelines/llada/models/, with the transformers-5 rope shim",
)
reference_folder = REFERENCE.folder
module = REFERENCE.module
needs_reference = REFERENCE.marker()


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
