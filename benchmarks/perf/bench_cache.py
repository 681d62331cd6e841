"""Benchmark the LLaDA KV cache (none, prefix, dual) and, optionally, Fast-dLLM's own functions beside ours.

Shapes (one token committed per step, steps = gen_length):

* ``tiny``: the default grid's tiny-llada (d128, 4 heads, 2 layers, MLP 256, vocab 2048),
  prompt 32, gen 64, block 32, batch 1 and 4;
* ``d256``: d256, 4 heads, 4 layers, MLP 768, vocab 32000, prompt 64, gen 256, block 32,
  batch 1 and 4.

For each shape the three cache modes run interleaved (``--runs`` rounds after ``--warmup``
untimed calls of each), all float32 on the CPU. Logged per mode: the median wall time of a generate call,
generated tokens per second, NFE, the median share of the call spent outside the model's
forward passes (timed with forward hooks on the top-level module, as the suite's runner
does), and the share of generated positions equal to ``cache="none"``'s.

``--fastdllm DIR`` (a checkout of NVlabs/Fast-dLLM, kept outside this repository) also
loads the same weights into Fast-dLLM's v1 LLaDA model code and times its
``generate_with_prefix_cache`` / ``generate_with_dual_cache`` against ours at batch 1,
temperature 0, for gen 256 and 128 (256 and 128 steps), interleaved, and compares tokens.

Usage (from the repository root; check ``uptime`` first, the machine is shared)::

    OMP_NUM_THREADS=1 python benchmarks/perf/bench_cache.py --runs 5 [--fastdllm /work/ext/Fast-dLLM]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dllm_bench.models.llada_hf.configuration_llada import LLaDAConfig
from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM
from dllm_bench.sampling.llada import generate_keywords as generate

LOG = logging.getLogger("bench_cache")

MODES = ("none", "prefix", "dual")

ARCHS: dict[str, dict[str, Any]] = {
    "tiny": {"d_model": 128, "n_heads": 4, "n_layers": 2, "mlp_hidden_size": 256, "vocab_size": 2048},
    "d256": {"d_model": 256, "n_heads": 4, "n_layers": 4, "mlp_hidden_size": 768, "vocab_size": 32000},
}
# (arch, prompt_length, gen_length, block_length, batch sizes)
SHAPES: dict[str, tuple[str, int, int, int, tuple[int, ...]]] = {
    "tiny": ("tiny", 32, 64, 32, (1, 4)),
    "d256": ("d256", 64, 256, 32, (1, 4)),
}


def llada_config(arch: dict[str, Any]) -> LLaDAConfig:
    vocab = arch["vocab_size"]
    return LLaDAConfig(
        **arch,
        n_kv_heads=arch["n_heads"],
        embedding_size=vocab,
        mask_token_id=vocab - 1,
        eos_token_id=vocab - 2,
        pad_token_id=vocab - 2,
        bos_token_id=vocab - 3,
    )


def random_model(arch: dict[str, Any], seed: int) -> LLaDAModelLM:
    torch.manual_seed(seed)
    return LLaDAModelLM(llada_config(arch)).eval()


@dataclass
class ForwardClock:
    """Forward-pass time of the top-level module, from pre/post forward hooks (as the runner)."""

    inside: float = 0.0
    calls: int = 0
    _start: float = field(default=0.0, repr=False)

    def before(self, *_: object) -> None:
        self._start = time.perf_counter()

    def after(self, *_: object) -> None:
        self.inside += time.perf_counter() - self._start
        self.calls += 1


@contextmanager
def clocked(model: torch.nn.Module) -> Iterator[ForwardClock]:
    clock = ForwardClock()
    handles = [model.register_forward_pre_hook(clock.before), model.register_forward_hook(clock.after)]
    try:
        yield clock
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Samples:
    total: list[float] = field(default_factory=list)
    outside_share: list[float] = field(default_factory=list)
    nfe: int = 0
    output: torch.Tensor | None = None


def timed_call(fn: Callable[[], torch.Tensor], model: torch.nn.Module, samples: Samples) -> None:
    with clocked(model) as clock:
        start = time.perf_counter()
        out = fn()
        total = time.perf_counter() - start
    samples.total.append(total)
    samples.outside_share.append(max(0.0, 1.0 - clock.inside / total))
    samples.nfe = clock.calls
    samples.output = out


def interleave(
    calls: dict[str, tuple[Callable[[], torch.Tensor], torch.nn.Module]], runs: int, warmup: int
) -> dict[str, Samples]:
    """``warmup`` untimed calls of each, then ``runs`` rounds running each once, in turn."""
    for _ in range(warmup):
        for fn, _model in calls.values():
            fn()
    samples = {name: Samples() for name in calls}
    for _ in range(runs):
        for name, (fn, model) in calls.items():
            timed_call(fn, model, samples[name])
    return samples


def agreement(a: torch.Tensor, b: torch.Tensor, prompt_length: int) -> float:
    return float((a[:, prompt_length:] == b[:, prompt_length:]).float().mean())


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_modes(shape: str, runs: int, warmup: int, seed: int) -> None:
    arch_name, prompt_length, gen_length, block_length, batches = SHAPES[shape]
    arch = ARCHS[arch_name]
    model = random_model(arch, seed)
    mask_id = arch["vocab_size"] - 1
    for batch in batches:
        prompt = torch.randint(0, mask_id - 3, (batch, prompt_length), generator=torch.Generator().manual_seed(seed))
        settings = {"steps": gen_length, "gen_length": gen_length, "block_length": block_length, "mask_id": mask_id}

        def call(mode: str, prompt: torch.Tensor = prompt, settings: dict[str, int] = settings) -> torch.Tensor:
            return generate(model, prompt, cache=mode, **settings)

        LOG.info(
            "%s: %s, P%d G%d B%d block %d, steps %d, %d runs, load %s",
            shape, arch, prompt_length, gen_length, batch, block_length, gen_length, runs, load_average(),
        )
        samples = interleave({m: (lambda m=m: call(m), model) for m in MODES}, runs, warmup)
        report(samples, batch * gen_length, prompt_length, reference="none")
        LOG.info("  load after: %s", load_average())


def report(samples: dict[str, Samples], generated: int, prompt_length: int, reference: str) -> None:
    med = statistics.median
    base = med(samples[reference].total)
    for name, s in samples.items():
        assert s.output is not None and samples[reference].output is not None
        LOG.info(
            "  %-16s median %8.3f s  (min %.3f max %.3f)  %8.1f tok/s  nfe %4d  outside forward %5.1f%%  "
            "speed-up vs %s %5.2fx  tokens equal to %s %.3f",
            name, med(s.total), min(s.total), max(s.total), generated / med(s.total), s.nfe,
            100 * med(s.outside_share), reference, base / med(s.total), reference,
            agreement(s.output, samples[reference].output, prompt_length),
        )


# --------------------------------------------------------------------------- Fast-dLLM


def import_fastdllm(checkout: Path) -> tuple[Any, Any]:
    """Fast-dLLM's ``llada/generate.py`` module and its model module, imported from the checkout."""
    llada_dir = checkout / "llada"
    if not (llada_dir / "generate.py").is_file():
        raise SystemExit(f"{checkout} is not a Fast-dLLM checkout (no llada/generate.py)")
    sys.path.insert(0, str(llada_dir))
    model_module = importlib.import_module("model.modeling_llada")
    generate_module = importlib.import_module("generate")
    return generate_module, model_module


def fastdllm_model(model_module: Any, ours: LLaDAModelLM) -> Any:
    """Fast-dLLM's LLaDAModelLM holding exactly our weights, float32, eval mode."""
    published = {
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "embedding_dropout": 0.0,
        "init_device": "cpu",
        "flash_attention": False,
        "block_type": "llama",
        "activation_type": "silu",
        "layer_norm_type": "rms",
        "weight_tying": False,
    }
    config = model_module.LLaDAConfig(**{**ours.config.to_dict(), **published})
    theirs = model_module.LLaDAModelLM(config, init_params=False).float().eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    if missing or unexpected:
        raise SystemExit(f"weights do not match Fast-dLLM's model: missing {missing}, unexpected {unexpected}")
    return theirs


def bench_fastdllm(checkout: Path, runs: int, warmup: int, seed: int) -> None:
    generate_module, model_module = import_fastdllm(checkout)
    _, prompt_length, _, block_length, _ = SHAPES["d256"]
    arch = ARCHS["d256"]
    ours = random_model(arch, seed)
    theirs = fastdllm_model(model_module, ours)
    mask_id = arch["vocab_size"] - 1
    prompt = torch.randint(0, mask_id - 3, (1, prompt_length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits_ours = ours(prompt).logits
        logits_theirs = theirs(prompt).logits
    LOG.info("Fast-dLLM model vs ours, same weights: max |logit difference| %.3g",
             float((logits_ours - logits_theirs).abs().max()))
    functions = {
        "prefix": generate_module.generate_with_prefix_cache,
        "dual": generate_module.generate_with_dual_cache,
    }
    for gen_length in (256, 128):
        settings = {"steps": gen_length, "gen_length": gen_length, "block_length": block_length}

        def ours_call(mode: str, settings: dict[str, int] = settings) -> torch.Tensor:
            return generate(ours, prompt, cache=mode, mask_id=mask_id, **settings)

        def theirs_call(mode: str, settings: dict[str, int] = settings) -> torch.Tensor:
            out = functions[mode](theirs, prompt, temperature=0.0, mask_id=mask_id, **settings)
            return out[0] if isinstance(out, tuple) else out

        calls: dict[str, tuple[Callable[[], torch.Tensor], torch.nn.Module]] = {"ours none": (
            lambda: ours_call("none"), ours)}
        for mode in ("prefix", "dual"):
            calls[f"ours {mode}"] = (lambda m=mode: ours_call(m), ours)
            calls[f"fast-dllm {mode}"] = (lambda m=mode: theirs_call(m), theirs)
        LOG.info("Fast-dLLM comparison: P%d G%d B1 block %d steps %d, %d runs, load %s",
                 prompt_length, gen_length, block_length, gen_length, runs, load_average())
        samples = interleave(calls, runs, warmup)
        report(samples, gen_length, prompt_length, reference="ours none")
        for mode in ("prefix", "dual"):
            a, b = samples[f"ours {mode}"], samples[f"fast-dllm {mode}"]
            assert a.output is not None and b.output is not None
            LOG.info("  %s: ours / Fast-dLLM time %.2f, tokens equal %.4f (%d of %d positions differ)",
                     mode, statistics.median(a.total) / statistics.median(b.total),
                     agreement(a.output, b.output, prompt_length),
                     int((a.output != b.output).sum()), gen_length)
        LOG.info("  load after: %s", load_average())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed rounds per mode (interleaved)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each before the timed rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--fastdllm", type=Path, default=None, help="a Fast-dLLM checkout to compare with")
    parser.add_argument("--only-fastdllm", action="store_true", help="skip the mode benchmark")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    LOG.info("torch %s, %d thread(s), load %s", torch.__version__, torch.get_num_threads(), load_average())
    if not args.only_fastdllm:
        for shape in args.shapes:
            bench_modes(shape, args.runs, args.warmup, args.seed)
    if args.fastdllm is not None:
        bench_fastdllm(args.fastdllm, args.runs, args.warmup, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
