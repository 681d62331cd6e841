"""Benchmark the suite's LLaDA-MoE model against the published code on the same weights.

The published code is ZHZisZZ/dllm's `dllm/pipelines/llada/models/modeling_lladamoe.py`
(with the transformers-5 rope shim; see the README's "LLaDA-MoE" section), read from
`--reference DIR` or DLLM_BENCH_LLADAMOE_REFERENCE. A LLaDA-MoE of the `--shape` is built
once with seeded weights, which load into the published `LLaDAMoEModelLM` too. The suite's
LLaDA sampler (fixed steps, no cache, temperature 0) decodes the same prompt on each model,
interleaved (`--runs` rounds after one untimed call of each), batch 1, float32, on the CPU;
every pair is checked token for token. Logged: the median wall time of each and the ratio
suite / published (below 1: the suite is faster).

Usage (from the repository root; check `uptime` first, the machine is shared)::

    OMP_NUM_THREADS=1 python benchmarks/perf/bench_lladamoe.py --reference /work/refs/lladamoe [--shape e64] [--runs 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dllm_bench.models.lladamoe.configuration import LLaDAMoEConfig
from dllm_bench.models.lladamoe.modeling import LLaDAMoEModelLM
from dllm_bench.sampling.llada import generate
from dllm_bench.sampling.reference import generate_reference
from dllm_bench.sampling.schedule import LladaSettings

LOG = logging.getLogger("bench_lladamoe")
BLOCK = 32
BASE: dict[str, Any] = {
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "rope_theta": 50000.0,
    "partial_rotary_factor": 1.0,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "clip_qkv": None,
    "norm_topk_prob": True,
    "qk_layernorm": True,
    "moe_router_enable_expert_bias": False,
    "moe_router_score_function": "softmax",
    "routed_scaling_factor": 1.0,
    "router_num_group": 1,
    "router_topk_group": 1,
    "shared_expert_intermediate_size": None,
    "max_position_embeddings": 1024,
    "bos_token_id": None,
}
SHAPES: dict[str, dict[str, Any]] = {
    # The families-tiny entry's shape.
    "tiny": {"vocab_size": 512, "hidden_size": 32, "dense_intermediate_size": 64, "expert_intermediate_size": 16,
             "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2, "num_experts": 4,
             "num_experts_per_tok": 2, "prompt": 16, "gen": 32},
    # 7B-A1B's routing (64 experts, top 8, 16 heads, query/key norms) at a small width.
    "e64": {"vocab_size": 8192, "hidden_size": 256, "dense_intermediate_size": 1024, "expert_intermediate_size": 128,
            "num_hidden_layers": 4, "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 64,
            "num_experts_per_tok": 8, "prompt": 32, "gen": 64},
}


def load_reference(folder: Path) -> Any:
    """The published code as a package (its relative imports), from the repository's tests helper."""
    os.environ["DLLM_BENCH_LLADAMOE_REFERENCE"] = str(folder)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import lladamoe_reference

    return lladamoe_reference


def build(shape: dict[str, Any]) -> tuple[LLaDAMoEModelLM, dict[str, Any]]:
    arch = {**BASE, **{key: value for key, value in shape.items() if key not in ("prompt", "gen")}}
    vocab = arch["vocab_size"]
    arch.update(moe_layer_freq=[1] * arch["num_hidden_layers"], mask_token_id=vocab - 1, eos_token_id=vocab - 2,
                pad_token_id=vocab - 2)
    model = LLaDAMoEModelLM(LLaDAMoEConfig(**arch)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            noise = torch.randn(tensor.shape, generator=generator)
            tensor.copy_(1.0 + 0.1 * noise if "norm" in name else 0.3 * noise)
    return model, arch


def timed(call: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = call()
    return time.perf_counter() - start, out


def run(ours: LLaDAMoEModelLM, theirs: torch.nn.Module, shape: dict[str, Any], mask_id: int, runs: int) -> None:
    prompt = torch.randint(0, mask_id - 2, (1, shape["prompt"]), generator=torch.Generator().manual_seed(1))
    settings = LladaSettings(steps=shape["gen"], block_length=BLOCK)

    def decode(model: torch.nn.Module) -> Callable[[], torch.Tensor]:
        return lambda: generate(model, prompt, settings, gen_length=shape["gen"], mask_id=mask_id)

    def plain(model: torch.nn.Module) -> Callable[[], torch.Tensor]:
        return lambda: generate_reference(
            model, prompt, steps=shape["gen"], gen_length=shape["gen"], block_length=BLOCK, mask_id=mask_id
        )

    # The models alone (the suite's sampler on both), then whole decodes: the suite's sampler on
    # the suite's model against the plain LLaDA algorithm (sampling/reference.py) on the published model.
    calls = {"suite": decode(ours), "published": decode(theirs), "published, plain sampler": plain(theirs)}
    for call in calls.values():
        timed(call)
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    outputs: dict[str, torch.Tensor] = {}
    equal = True
    for _ in range(runs):
        for name, call in calls.items():
            took, outputs[name] = timed(call)
            seconds[name].append(took)
        equal = equal and all(torch.equal(outputs["suite"], out) for out in outputs.values())
    median = {name: statistics.median(values) for name, values in seconds.items()}
    for name in ("published", "published, plain sampler"):
        LOG.info(
            "suite %.3f s  %s %.3f s  ratio %.2f  (%d forwards each)",
            median["suite"], name, median[name], median["suite"] / median[name], shape["gen"],
        )
    LOG.info("tokens identical in every round: %s", equal)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=os.environ.get("DLLM_BENCH_LLADAMOE_REFERENCE"))
    parser.add_argument("--shape", choices=list(SHAPES), default="e64")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.reference is None:
        parser.error("--reference DIR (or DLLM_BENCH_LLADAMOE_REFERENCE): the published LLaDA-MoE code")
    torch.set_num_threads(args.threads)
    reference = load_reference(args.reference)
    shape = SHAPES[args.shape]
    ours, arch = build(shape)
    theirs = reference.reference_model(ours.state_dict(), arch)
    LOG.info("shape %s (prompt %d, gen %d, block %d), %d runs, %d thread(s), load %s",
             args.shape, shape["prompt"], shape["gen"], BLOCK, args.runs, args.threads, os.getloadavg())
    run(ours, theirs, shape, arch["mask_token_id"], args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
