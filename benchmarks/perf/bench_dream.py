"""Benchmark the suite's Dream sampler against the published code on the same weights.

The published code is Fast-dLLM's `dream/model/` (with the transformers-5 shims; see the
README's "Dream" section), read from `--reference DIR` or DLLM_BENCH_DREAM_REFERENCE. A
random-init Dream of the `--shape` is built once; its weights load into the published
`DreamModel` too. For each mode (`none`: `diffusion_generate` with `alg: entropy`;
`prefix`, `dual`: the block sampler) the two calls run interleaved (`--runs` rounds after
one untimed call of each), batch 1, temperature 0, float32, on the CPU; every pair is
checked token for token. Logged per mode: the median wall time of each and the ratio
suite / published (below 1: the suite is faster).

Usage (from the repository root; check `uptime` first, the machine is shared)::

    OMP_NUM_THREADS=1 python benchmarks/perf/bench_dream.py --reference /work/refs/dream [--shape d256] [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dllm_bench.kinds.dream import DreamSettings
from dllm_bench.models.dream.configuration import DreamConfig
from dllm_bench.models.dream.modeling import DreamLM
from dllm_bench.sampling.dream import generate

LOG = logging.getLogger("bench_dream")
MASK = 250
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 2048, "prompt": 32, "gen": 64},
    "d256": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 32000, "prompt": 64, "gen": 128},
}
BLOCK = 32


def load_reference(folder: Path) -> Any:
    """The published code as a package (its relative imports), from the repository's tests helper."""
    os.environ["DLLM_BENCH_DREAM_REFERENCE"] = str(folder)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import dream_reference

    return dream_reference


def build(shape: dict[str, Any]) -> tuple[DreamLM, dict[str, Any]]:
    arch = {key: value for key, value in shape.items() if key not in ("prompt", "gen")}
    arch.update(max_position_embeddings=1024, rope_theta=10000.0, mask_token_id=MASK, pad_token_id=251,
                bos_token_id=252, eos_token_id=253, initializer_range=0.3)
    torch.manual_seed(0)
    return DreamLM(DreamConfig(**arch)).eval(), arch


def calls(reference: Any, ours: DreamLM, theirs: Any, prompt: torch.Tensor, gen: int, mode: str) -> tuple[
    Callable[[], torch.Tensor], Callable[[], torch.Tensor]
]:
    if mode == "none":
        settings = DreamSettings(steps=gen, alg="entropy")
        config = reference.generation_config("generation_utils", steps=gen, alg="entropy", max_new_tokens=gen,
                                             mask_token_id=MASK)

        def published() -> torch.Tensor:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints on every call
                return theirs.diffusion_generate(prompt, generation_config=config)  # type: ignore[no-any-return]
    else:
        settings = DreamSettings(steps=gen, alg="entropy", cache=mode, block_length=BLOCK)
        config = reference.generation_config("generation_utils_block", steps=gen, alg="entropy", max_new_tokens=gen,
                                             mask_token_id=MASK)
        mixin = reference.module("generation_utils_block").DreamGenerationMixin
        block = types.SimpleNamespace(
            generate=types.MethodType(mixin.diffusion_generate, theirs),
            sample=types.MethodType(mixin._sample, theirs),
        )

        def published() -> torch.Tensor:
            theirs._sample = block.sample
            return block.generate(  # type: ignore[no-any-return]
                prompt, generation_config=config, block_length=BLOCK, dual_cache=mode == "dual", threshold=None
            )

    def suite() -> torch.Tensor:
        return generate(ours, prompt, settings, gen_length=gen, mask_id=MASK)

    return suite, published


def timed(call: Callable[[], torch.Tensor]) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = call()
    return time.perf_counter() - start, out


def run_mode(reference: Any, ours: DreamLM, theirs: Any, shape: dict[str, Any], mode: str, runs: int) -> None:
    prompt = torch.randint(0, MASK, (1, shape["prompt"]), generator=torch.Generator().manual_seed(1))
    suite, published = calls(reference, ours, theirs, prompt, shape["gen"], mode)
    timed(suite), timed(published)
    mine: list[float] = []
    theirs_times: list[float] = []
    equal = True
    for _ in range(runs):
        seconds, a = timed(suite)
        mine.append(seconds)
        seconds, b = timed(published)
        theirs_times.append(seconds)
        equal = equal and torch.equal(a, b)
    ours_median, theirs_median = statistics.median(mine), statistics.median(theirs_times)
    LOG.info(
        "%-6s suite %.3f s  published %.3f s  ratio %.2f  tokens identical: %s",
        mode, ours_median, theirs_median, ours_median / theirs_median, equal,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=os.environ.get("DLLM_BENCH_DREAM_REFERENCE"))
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="*", default=["none", "prefix", "dual"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.reference is None:
        parser.error("--reference DIR (or DLLM_BENCH_DREAM_REFERENCE): the published Dream code")
    torch.set_num_threads(args.threads)
    reference = load_reference(args.reference)
    shape = SHAPES[args.shape]
    ours, arch = build(shape)
    theirs = reference.reference_model(ours.state_dict(), arch)
    LOG.info("shape %s (prompt %d, gen %d, block %d), %d runs, %d thread(s), load %s",
             args.shape, shape["prompt"], shape["gen"], BLOCK, args.runs, args.threads, os.getloadavg())
    for mode in args.modes:
        run_mode(reference, ours, theirs, shape, mode, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
