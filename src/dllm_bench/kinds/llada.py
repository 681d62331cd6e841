"""The `llada` kind: LLaDA masked diffusion with the suite's own model and sampler."""

from __future__ import annotations

from dllm_bench.kinds.base import DIFFUSION, KindSpec
from dllm_bench.sampling.rules import CONFIDENCE_RULES
from dllm_bench.sampling.schedule import LladaSettings

COLUMNS: tuple[tuple[str, str], ...] = (
    ("steps", "LLaDA diffusion steps (llada.steps); empty for other kinds"),
    ("block_length", "LLaDA block length (llada.block_length); empty for other kinds"),
    ("remasking", "LLaDA remasking strategy (llada.remasking); empty for other kinds"),
    ("temperature", "LLaDA Gumbel temperature (llada.temperature); empty for other kinds"),
    ("cfg_scale", "LLaDA classifier-free guidance scale (llada.cfg_scale); empty for other kinds"),
    ("cache", "LLaDA KV cache: none, prefix or dual (llada.cache); empty for other kinds"),
    *((rule.key, rule.doc) for rule in CONFIDENCE_RULES),
)

SPEC = KindSpec(
    kind="llada",
    label="LLaDA",
    family=DIFFUSION,
    settings_type=LladaSettings,
    description="LLaDA masked diffusion (the suite's own model and sampler, Fast-dLLM caches and commit rules)",
    columns=COLUMNS,
    section="llada",
    section_keys=tuple(name for name, _ in COLUMNS),
    id_parts="`s<steps>-k<block_length>`, then what differs from the defaults: `random`, `t<temperature>`, "
    "`cfg<cfg_scale>`, `c<cache>`, `th<threshold>`, `f<factor>` (no `s` part with a threshold or factor)",
)
