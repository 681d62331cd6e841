"""The published LLaDA2.0 / LLaDA2.1 code (ZHZisZZ/dllm `dllm/pipelines/llada2{,1}/models/`) for
tests that compare with it.

It is not part of the repository: set DLLM_BENCH_LLADA2_REFERENCE to a folder holding
`modeling_llada2_moe.py`, `configuration_llada2_moe.py`, `modeling_llada21_moe.py` and
`configuration_llada21_moe.py` with the transformers-5 shims (see the README's "LLaDA2"
section). Tests that need it skip, with that reason, where it is absent; the recorded
fixture (`tests/fixtures/llada2_reference.json`) keeps the token checks running without it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tests.reference_code import ReferenceCode

VERSIONS = {"2.0": "llada2_moe", "2.1": "llada21_moe"}
FILES = tuple(f"{part}_{name}.py" for name in VERSIONS.values() for part in ("modeling", "configuration"))


REFERENCE = ReferenceCode(
    family="LLaDA2",
    env="DLLM_BENCH_LLADA2_REFERENCE",
    package="dllm_bench_llada2_reference",
    files=FILES,
    source="ZHZisZZ/dllm dllm/pipelines/llada2{,1}/models/, with the transformers-5 shims",
)
reference_folder = REFERENCE.folder
module = REFERENCE.module
needs_reference = REFERENCE.marker()


def reference_model(version: str, state: dict[str, torch.Tensor], config_kwargs: dict[str, object]) -> Any:
    """The published LLaDA2MoeModelLM of `version` with the given weights (eval mode, SDPA)."""
    name = VERSIONS[version]
    config = module(f"configuration_{name}").LLaDA2MoeConfig(**config_kwargs)
    config._attn_implementation = "sdpa"
    model = module(f"modeling_{name}").LLaDA2MoeModelLM(config).eval()
    model.load_state_dict(state, strict=True)
    return model.to(next(iter(state.values())).dtype)


def counted(model: Any) -> Callable[[], int]:
    """Count the reference's forwards: its generate calls `self.forward` directly (hooks see nothing)."""
    calls = [0]
    forward = model.forward

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return forward(*args, **kwargs)

    model.forward = wrapped
    return lambda: calls[0]


#: The decodes recorded in the fixture: (version, settings keywords) at block_length 8, gen_length 20.
RECORDED: tuple[tuple[str, dict[str, Any]], ...] = (
    ("2.0", {"steps": 8, "threshold": None}),
    ("2.0", {"steps": 4, "threshold": 0.5}),
    ("2.0", {"steps": 8, "threshold": 0.9, "eos_early_stop": True}),
    ("2.1", {"steps": 8, "threshold": None}),
    ("2.1", {"steps": 8, "threshold": 0.5, "editing_threshold": 0.5, "max_post_steps": 4}),
    ("2.1", {"steps": 8, "threshold": 0.7, "editing_threshold": 0.0}),
)


def reference_generate(
    model: Any, prompt: torch.Tensor, keywords: dict[str, Any], *, version: str, gen_length: int, block_length: int,
    mask_id: int, eos_id: int,
) -> tuple[list[int], int]:
    """The published generate's tokens (cut after the first EOS) and its forwards, for the suite's settings
    keywords: no threshold is a threshold no probability exceeds; no editing is an editing threshold no
    probability exceeds and no extra pass."""
    threshold = keywords.get("threshold")
    extra: dict[str, Any] = {}
    if version == "2.1":
        editing = keywords.get("editing_threshold")
        extra["editing_threshold"] = 2.0 if editing is None else editing
        extra["max_post_steps"] = 0 if editing is None else keywords.get("max_post_steps", 16)
    forwards = counted(model)
    tokens = model.generate(
        prompt, block_length=block_length, steps=keywords["steps"], gen_length=gen_length,
        threshold=2.0 if threshold is None else threshold, eos_early_stop=keywords.get("eos_early_stop", False),
        minimal_topk=keywords.get("minimal_topk", 1), eos_id=eos_id, mask_id=mask_id, **extra,
    )
    return [int(t) for t in tokens[0]], forwards()


def record_fixture(path: Path) -> None:
    """Write the published generate's decodes of `RECORDED` for three prompts (the tests' tiny models):
    one EOS no prompt produces, one the decode places early (its early stop)."""
    from tests.test_llada2_model import BLOCK, GEN_LENGTH, MASK, PROMPT_LENGTH, build, prompt_of

    records = []
    for version, keywords in RECORDED:
        ours = build(version)
        reference = reference_model(version, ours.state_dict(), _arch())
        for seed in range(3):
            prompt = prompt_of(seed)
            plain, _ = reference_generate(reference, prompt, {"steps": BLOCK}, version=version,
                                          gen_length=GEN_LENGTH, block_length=BLOCK, mask_id=MASK, eos_id=-1)
            eos = 121 if seed == 0 else plain[seed + 2]  # seed 0: the EOS the prompts never produce
            tokens, nfe = reference_generate(reference, prompt, keywords, version=version, gen_length=GEN_LENGTH,
                                             block_length=BLOCK, mask_id=MASK, eos_id=eos)
            records.append({"version": version, "settings": keywords, "prompt": prompt[0].tolist(), "eos": eos,
                            "tokens": tokens, "nfe": nfe, "prompt_length": PROMPT_LENGTH})
    path.write_text("[\n" + ",\n".join(json.dumps(record) for record in records) + "\n]\n")


def _arch() -> dict[str, object]:
    from tests.test_llada2_model import ARCH

    return ARCH


if __name__ == "__main__":
    record_fixture(Path(__file__).parent / "fixtures" / "llada2_reference.json")
