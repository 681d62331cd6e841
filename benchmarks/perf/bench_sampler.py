"""Benchmark the LLaDA sampler against the plain reference implementation.

Runs ``dllm_bench.sampling.llada.generate`` and the slow oracle
``dllm_bench.sampling.reference.generate_reference`` at temperature 0 on a
small randomly initialised bidirectional toy model, interleaving the runs,
checks that both produce the same tokens, and logs the median wall times, the
speed ratio, and for each the share of its time spent outside the model's
forward passes (the sampler's own overhead).

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/perf/bench_sampler.py --runs 10
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import types
from collections.abc import Callable, Sequence

import torch
from torch import nn

from dllm_bench.sampling.llada import generate_keywords as generate
from dllm_bench.sampling.reference import generate_reference

logger = logging.getLogger("bench_sampler")


class ToyLM(nn.Module):
    """Token + position embedding, a small transformer encoder and an LM head."""

    def __init__(self, vocab: int, d_model: int, n_layers: int, max_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model,
            nhead=4,
            dim_feedforward=4 * d_model,
            dropout=0.0,
            batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> types.SimpleNamespace:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.embed(input_ids) + self.pos(positions)
        padding = None if attention_mask is None else attention_mask == 0
        h = self.encoder(h, src_key_padding_mask=padding)
        return types.SimpleNamespace(logits=self.head(h))


class TimedModel(nn.Module):
    """Wraps a model and accumulates the wall time of its forward passes."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.forward_seconds = 0.0
        self.forward_calls = 0

    def reset(self) -> None:
        self.forward_seconds = 0.0
        self.forward_calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> types.SimpleNamespace:
        _sync(input_ids.device)
        start = time.perf_counter()
        out: types.SimpleNamespace = self.inner(input_ids, attention_mask=attention_mask)
        _sync(input_ids.device)
        self.forward_seconds += time.perf_counter() - start
        self.forward_calls += 1
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(
    fn: Callable[[], torch.Tensor], model: TimedModel, device: torch.device
) -> tuple[torch.Tensor, float, float]:
    """Run ``fn``; return (output, total seconds, seconds inside forward passes)."""
    model.reset()
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start, model.forward_seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each (interleaved)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    mask_id = args.vocab - 1
    seq_len = args.prompt_length + args.gen_length
    model = TimedModel(ToyLM(args.vocab, args.d_model, args.layers, seq_len)).to(device).eval()
    prompt = torch.randint(0, mask_id, (args.batch, args.prompt_length), device=device)
    steps, gen_length, block_length = args.steps, args.gen_length, args.block_length

    settings = {
        "steps": steps,
        "gen_length": gen_length,
        "block_length": block_length,
        "temperature": 0.0,
        "mask_id": mask_id,
    }

    def run_fast() -> torch.Tensor:
        return generate(model, prompt, **settings)

    def run_reference() -> torch.Tensor:
        return generate_reference(model, prompt, **settings)

    logger.info(
        "device=%s threads=%d vocab=%d d_model=%d layers=%d batch=%d prompt=%d gen=%d steps=%d block=%d runs=%d",
        device,
        torch.get_num_threads(),
        args.vocab,
        args.d_model,
        args.layers,
        args.batch,
        args.prompt_length,
        args.gen_length,
        args.steps,
        args.block_length,
        args.runs,
    )
    # Warm-up (not timed).
    if not torch.equal(run_fast(), run_reference()):
        raise SystemExit("generate and the reference disagree (warm-up)")

    fast_total: list[float] = []
    fast_outside: list[float] = []
    ref_total: list[float] = []
    ref_outside: list[float] = []
    forward_per_pass: list[float] = []
    for i in range(args.runs):
        fast_out, total, inside = _timed(run_fast, model, device)
        calls = model.forward_calls
        fast_total.append(total)
        fast_outside.append(total - inside)
        forward_per_pass.append(inside / max(calls, 1))
        ref_out, total, inside = _timed(run_reference, model, device)
        ref_total.append(total)
        ref_outside.append(total - inside)
        if not torch.equal(fast_out, ref_out):
            raise SystemExit(f"generate and the reference disagree (run {i})")

    med = statistics.median
    logger.info("outputs identical in all %d runs", args.runs)
    logger.info("model forward pass: median %.2f ms", 1e3 * med(forward_per_pass))
    logger.info(
        "generate : median %.1f ms, outside forward passes %.1f ms (%.1f%%)",
        1e3 * med(fast_total),
        1e3 * med(fast_outside),
        100 * med(o / t for o, t in zip(fast_outside, fast_total, strict=True)),
    )
    logger.info(
        "reference: median %.1f ms, outside forward passes %.1f ms (%.1f%%)",
        1e3 * med(ref_total),
        1e3 * med(ref_outside),
        100 * med(o / t for o, t in zip(ref_outside, ref_total, strict=True)),
    )
    logger.info(
        "speed-up reference/generate: %.2fx total, %.1fx outside forward passes",
        med(ref_total) / med(fast_total),
        med(ref_outside) / med(fast_outside),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
