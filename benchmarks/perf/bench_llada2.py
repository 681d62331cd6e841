"""Benchmark the suite's LLaDA2 sampler against the published generate on the same weights.

The published code is ZHZisZZ/dllm's `dllm/pipelines/llada2{,1}/models/` (with the
transformers-5 shims; see the README's "LLaDA2" section), read from `--reference DIR` or
DLLM_BENCH_LLADA2_REFERENCE. A random-init LLaDA2 of the `--shape` is built once per
version; its weights load into the published `LLaDA2MoeModelLM` too. For each setting
(the suite's `cache: none` and `cache: prefix` against the published generate, which has no
cache) the two calls run interleaved (`--runs` rounds after one untimed call of each), batch
1, greedy, float32, on the CPU; every pair is checked token for token (the published output
is cut at its first EOS). Logged per setting: the median wall time of each and the ratio
suite / published (below 1: the suite is faster).

Usage (from the repository root; check `uptime` first, the machine is shared)::

    OMP_NUM_THREADS=1 python benchmarks/perf/bench_llada2.py --reference /work/refs/llada2 [--shape mini] [--runs 7]
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

from dllm_bench.kinds.llada2 import Llada2Settings
from dllm_bench.models.llada2.configuration import CONFIG_CLASSES, MODEL_TYPE_20, MODEL_TYPE_21
from dllm_bench.models.llada2.modeling import LLaDA2MoeLM
from dllm_bench.sampling.llada2 import generate

LOG = logging.getLogger("bench_llada2")
MASK, EOS = 2047, 2046
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "num_experts": 16, "num_experts_per_tok": 4,
             "n_group": 4, "topk_group": 2, "vocab_size": 2048, "prompt": 32, "gen": 64},
    "mini": {"hidden_size": 256, "intermediate_size": 768, "moe_intermediate_size": 128, "num_hidden_layers": 4,
             "num_attention_heads": 8, "num_key_value_heads": 2, "num_experts": 32, "num_experts_per_tok": 8,
             "n_group": 8, "topk_group": 4, "vocab_size": 32000, "prompt": 64, "gen": 128},
}
BLOCK = 32
#: (version, label, settings keywords): the published defaults with a threshold, and LLaDA2.1's editing.
SETTINGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("2.0", "2.0 th0.95", {"steps": BLOCK, "threshold": 0.95}),
    ("2.0", "2.0 exact", {"steps": BLOCK, "threshold": None}),
    ("2.1", "2.1 th0.7 et0.5", {"steps": BLOCK, "threshold": 0.7, "editing_threshold": 0.5}),
)


def load_reference(folder: Path) -> Any:
    """The published code as a package (its relative imports), from the repository's tests helper."""
    os.environ["DLLM_BENCH_LLADA2_REFERENCE"] = str(folder)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import llada2_reference

    return llada2_reference


def build(shape: dict[str, Any], version: str) -> tuple[LLaDA2MoeLM, dict[str, Any]]:
    arch = {key: value for key, value in shape.items() if key not in ("prompt", "gen")}
    arch.update(max_position_embeddings=1024, num_shared_experts=1, first_k_dense_replace=1, mask_token_id=MASK,
                eos_token_id=EOS, pad_token_id=EOS, initializer_range=0.3)
    model_type = MODEL_TYPE_21 if version == "2.1" else MODEL_TYPE_20
    torch.manual_seed(0)
    return LLaDA2MoeLM(CONFIG_CLASSES[model_type](**arch)).eval(), arch


def timed(call: Callable[[], list[int]]) -> tuple[float, list[int]]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = call()
    return time.perf_counter() - start, out


def run_setting(reference: Any, shape: dict[str, Any], version: str, label: str, keywords: dict[str, Any],
                runs: int) -> None:
    ours, arch = build(shape, version)
    theirs = reference.reference_model(version, ours.state_dict(), arch)
    prompt = torch.randint(0, EOS, (1, shape["prompt"]), generator=torch.Generator().manual_seed(1))
    gen = shape["gen"]

    def published() -> list[int]:
        tokens, _ = reference.reference_generate(theirs, prompt, keywords, version=version, gen_length=gen,
                                                 block_length=BLOCK, mask_id=MASK, eos_id=EOS)
        return list(tokens)

    def suite(cache: str) -> Callable[[], list[int]]:
        settings = Llada2Settings(block_length=BLOCK, cache=cache, **keywords)

        def call() -> list[int]:
            tokens = generate(ours, prompt, settings, gen_length=gen, mask_id=MASK, eos_id=EOS, version=version)
            generated: list[int] = tokens.tokens[0, prompt.shape[1] :].tolist()
            return generated[: generated.index(EOS) + 1] if EOS in generated else generated

        return call

    calls = {"published": published, "none": suite("none"), "prefix": suite("prefix")}
    for call in calls.values():
        timed(call)
    times: dict[str, list[float]] = {name: [] for name in calls}
    equal = {name: True for name in calls}
    for _ in range(runs):
        outputs = {}
        for name, call in calls.items():
            seconds, outputs[name] = timed(call)
            times[name].append(seconds)
        for name in ("none", "prefix"):
            equal[name] = equal[name] and outputs[name] == outputs["published"]
    base = statistics.median(times["published"])
    for name in ("none", "prefix"):
        mine = statistics.median(times[name])
        LOG.info("%-16s cache %-6s suite %.3f s  published %.3f s  ratio %.2f  tokens identical: %s",
                 label, name, mine, base, mine / base, equal[name])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=os.environ.get("DLLM_BENCH_LLADA2_REFERENCE"))
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.reference is None:
        parser.error("--reference DIR (or DLLM_BENCH_LLADA2_REFERENCE): the published LLaDA2 code")
    torch.set_num_threads(args.threads)
    reference = load_reference(args.reference)
    shape = SHAPES[args.shape]
    LOG.info("shape %s (prompt %d, gen %d, block %d), %d runs, %d thread(s), load %s",
             args.shape, shape["prompt"], shape["gen"], BLOCK, args.runs, args.threads, os.getloadavg())
    for version, label, keywords in SETTINGS:
        run_setting(reference, shape, version, label, keywords, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
