"""The suite's overhead per DiffusionGemma generate call over a direct call of the library's generate.

One random-init DiffusionGemma (a little bigger than the tests' tiny one) is built through the
suite's config and `ModelCache`, as a run builds it; one case of it gives the suite's call,
exactly the callable `build_call` returns (it registers the encoder-counting hook, sets the
canvas length, seeds, calls the library's `generate`, pads the output and records the
library's `tokens_per_forward`). Beside it, the direct call written out here::

    torch.manual_seed(seed)
    with torch.inference_mode():
        model.generate(input_ids=..., attention_mask=..., <the same keyword arguments>)

with the same prompts. Both are timed as the runner times a round (`time_rounds`: one call
between two `synchronized_timer` reads), interleaved: after ``--warmup`` untimed pairs,
``--pairs`` pairs of (suite, direct) (``--swap-order``: direct first in every other pair).
In every pair the two outputs must be token for token the same (and the suite's recorded
`tokens_per_forward` the library's); the script stops with an error otherwise. Logged, for
the wall time and for the process's CPU time of each call (less disturbed by other jobs on a
shared machine): the median direct and suite times, the median over pairs of
(suite - direct) / direct and of suite - direct in ms; and the load average before and after,
and torch's thread count. ``--components`` also times each piece the suite adds (hook
register/remove, the canvas context manager, the padding, the `.item()` of
`tokens_per_forward`, the recorder; and `manual_seed`, which the direct call makes too) on
its own, in microseconds per call.

Usage (from the repository root; check ``uptime`` first, the machine may be shared)::

    HF_HUB_OFFLINE=1 python benchmarks/perf/bench_dgemma_overhead.py [--pairs 30] [--steps 8] [--batch 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from dllm_bench.backends import backend
from dllm_bench.backends.diffusion_gemma import EncoderCount, _pad_to, canvas_set
from dllm_bench.cases import Case, expand_cases
from dllm_bench.config import parse_config
from dllm_bench.feed import PromptFeed
from dllm_bench.models.loader import LoadedModel, ModelCache
from dllm_bench.runner import CallRecorder, case_feed, case_task
from dllm_bench.timing import time_rounds

LOG = logging.getLogger("bench_dgemma_overhead")

PAD_ID = 0
EOS_ID = 1
#: Pieces of the suite's call the direct call makes as well (not overhead).
SHARED = ("torch.manual_seed",)


def arch(args: argparse.Namespace) -> dict[str, Any]:
    """A random-init DiffusionGemma: the tests' tiny one (tests/helpers.py) made wider and deeper."""
    heads = args.heads
    return {
        "vocab_size": args.vocab,
        "hidden_size": args.hidden,
        "intermediate_size": 2 * args.hidden,
        "num_hidden_layers": args.layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 1,
        "head_dim": args.hidden // heads,
        "global_head_dim": args.hidden // heads,
        "num_experts": 4,
        "top_k_experts": 2,
        "moe_intermediate_size": args.hidden,
        "sliding_window": 32,
        "max_position_embeddings": 512,
        "canvas_length": args.canvas,
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "bos_token_id": 2,
    }


def bench_case(args: argparse.Namespace) -> Case:
    """The one case of a suite config: the model above, one grid point, the canvas its checkpoint's."""
    raw = {
        "models": [
            {
                "name": "bench-dgemma",
                "kind": "diffusion_gemma",
                "source": "random-init",
                "device": "cpu",
                "arch": arch(args),
            },
        ],
        "grid": {"prompt_length": [args.prompt_length], "gen_length": [args.gen_length], "batch_size": [args.batch]},
        "diffusion_gemma": {"max_denoising_steps": args.steps},
        "seed": args.seed,
        "warmup_rounds": 1,
        "measured_rounds": 1,
    }
    cases = expand_cases(parse_config(raw, Path("bench_dgemma_overhead.yaml")))
    if len(cases) != 1:
        raise SystemExit(f"expected one case, the config gave {len(cases)}")
    return cases[0]


def direct_call(case: Case, loaded: LoadedModel, feed: PromptFeed, steps: int) -> Callable[[], Any]:
    """The library's generate called directly with the case's settings, written out here (not the backend's)."""
    model: Any = loaded.model
    kwargs: dict[str, Any] = {
        "max_new_tokens": case.gen_length,
        "max_denoising_steps": steps,
        "return_dict_in_generate": True,
        "eos_token_id": [EOS_ID],
        "pad_token_id": PAD_ID,
        "disable_compile": True,
    }

    def call() -> Any:
        torch.manual_seed(case.seed)
        with torch.inference_mode():
            return model.generate(input_ids=feed.input_ids, attention_mask=feed.full_mask(), **kwargs)

    return call


def timed(call: Callable[[], object]) -> float:
    """One call timed as the runner times a measured round."""
    return time_rounds(call, warmup_rounds=0, measured_rounds=1)[0]


def check_pair(pair: int, suite: torch.Tensor, direct: Any, recorder: CallRecorder) -> None:
    """The suite's output must be the library's, token for token (its padding the pad id), and its
    recorded tokens_per_forward the library's figure."""
    expected = direct.sequences
    width = expected.shape[1]
    same = suite.shape[1] >= width and torch.equal(suite[:, :width], expected)
    same = same and bool((suite[:, width:] == PAD_ID).all())
    if not same:
        raise SystemExit(
            f"pair {pair}: the suite's output differs from the direct call's "
            f"(shapes {tuple(suite.shape)} and {tuple(expected.shape)})"
        )
    ours = recorder.figures[-1]["tokens_per_forward"]
    theirs = float(direct.tokens_per_forward.float().mean())
    if ours != theirs:
        raise SystemExit(f"pair {pair}: tokens_per_forward {ours} in the suite, {theirs} from the library")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_pairs(args: argparse.Namespace, case: Case, loaded: LoadedModel) -> None:
    feed = case_feed(case, loaded, case_task(case, loaded))
    feed.select(0)
    recorder = CallRecorder()
    suite = backend(case.kind).build_call(case, loaded, feed, recorder)
    direct = direct_call(case, loaded, feed, args.steps)
    LOG.info(
        "shape: hidden %d, %d layers, %d heads, vocab %d, canvas %d; P%d G%d B%d, max_denoising_steps %d, "
        "%d pair(s) after %d warm-up pair(s); load %s",
        args.hidden,
        args.layers,
        args.heads,
        args.vocab,
        args.canvas,
        case.prompt_length,
        case.gen_length,
        case.batch_size,
        args.steps,
        args.pairs,
        args.warmup,
        load_average(),
    )
    for pair in range(args.warmup):
        check_pair(-1 - pair, suite(), direct(), recorder)
    wall: dict[str, list[float]] = {"suite": [], "direct": []}
    cpu: dict[str, list[float]] = {"suite": [], "direct": []}
    direct_out: list[Any] = []  # the direct call's result, kept as the recorder keeps the suite's

    def direct_kept() -> None:
        direct_out.append(direct())

    calls: dict[str, Callable[[], object]] = {"suite": suite, "direct": direct_kept}
    for pair in range(args.pairs):
        recorder.reset()
        direct_out.clear()
        order = ("direct", "suite") if args.swap_order and pair % 2 else ("suite", "direct")
        for name in order:
            cpu_start = time.process_time()
            wall[name].append(timed(calls[name]))
            cpu[name].append(time.process_time() - cpu_start)
        check_pair(pair, recorder.outputs[-1], direct_out[-1], recorder)
    LOG.info(
        "  pairs: %d (%s), every pair token-identical (and tokens_per_forward equal)",
        args.pairs,
        "order swapped every other pair" if args.swap_order else "suite first",
    )
    summarize("wall", wall["suite"], wall["direct"])
    summarize("CPU", cpu["suite"], cpu["direct"])
    LOG.info("  load after: %s", load_average())


def summarize(clock: str, suite: list[float], direct: list[float]) -> None:
    """Medians of both calls, and the overhead: the median over pairs of (suite - direct) / direct and in ms."""
    med = statistics.median
    rel = [(s - d) / d for s, d in zip(suite, direct, strict=True)]
    diff = [s - d for s, d in zip(suite, direct, strict=True)]
    LOG.info(
        "  %-4s direct median %7.2f ms (min %.2f, max %.2f), suite median %7.2f ms (min %.2f, max %.2f)",
        clock,
        1e3 * med(direct),
        1e3 * min(direct),
        1e3 * max(direct),
        1e3 * med(suite),
        1e3 * min(suite),
        1e3 * max(suite),
    )
    LOG.info(
        "  %-4s overhead: median per pair %+.2f%% (%+.3f ms); difference of medians %+.3f ms; suite slower in "
        "%d of %d pairs",
        clock,
        100 * med(rel),
        1e3 * med(diff),
        1e3 * (med(suite) - med(direct)),
        sum(d > 0 for d in diff),
        len(diff),
    )


def per_call_us(fn: Callable[[], object], repeats: int) -> float:
    """Median over 5 batches of `repeats` calls, in microseconds per call."""
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        batches.append((time.perf_counter() - start) / repeats)
    return 1e6 * statistics.median(batches)


def time_components(case: Case, loaded: LoadedModel, steps: int, repeats: int) -> None:
    """Each piece the suite's call adds around the library's generate, timed on its own."""
    model: Any = loaded.model
    encoder = model.model.encoder
    feed = case_feed(case, loaded, case_task(case, loaded))
    output = direct_call(case, loaded, feed, steps)()
    length = case.prompt_length + case.gen_length
    sequences = output.sequences
    canvas_length = int(model.config.canvas_length)
    recorder = CallRecorder()

    def hook() -> None:
        handle = encoder.register_forward_hook(EncoderCount())
        handle.remove()

    def record() -> None:
        # reset after each: the runner's recorder holds a few calls, not thousands (record sums its list)
        recorder.record(sequences, tokens_per_forward=1.0, encoder_nfe=2.0)
        recorder.reset()

    def canvas() -> None:
        with canvas_set(model, canvas_length):
            pass

    pieces: dict[str, Callable[[], object]] = {
        "register + remove the encoder hook": hook,
        "torch.manual_seed": lambda: torch.manual_seed(case.seed),
        "the canvas context manager (canvas_set)": canvas,
        "pad the output (_pad_to)": lambda: _pad_to(sequences, length, PAD_ID),
        "tokens_per_forward .float().mean().item()": lambda: float(output.tokens_per_forward.float().mean().item()),
        "recorder.record (and a reset)": record,
    }
    LOG.info("components (%d calls x 5, median per call), load %s", repeats, load_average())
    total = 0.0
    for name, fn in pieces.items():
        cost = per_call_us(fn, repeats)
        LOG.info("  %-44s %8.2f us", name, cost)
        if name not in SHARED:
            total += cost
    LOG.info(
        "  %-44s %8.2f us (without %s: the direct call makes it too)",
        "the suite's own, together",
        total,
        " and ".join(SHARED),
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40, help="timed (suite, direct) pairs")
    parser.add_argument("--warmup", type=int, default=3, help="untimed pairs before them")
    parser.add_argument("--steps", type=int, default=4, help="max_denoising_steps (random weights use them all)")
    parser.add_argument("--batch", type=int, default=2, help="prompts per call")
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--gen-length", type=int, default=32, help="new tokens (a multiple of --canvas)")
    parser.add_argument("--canvas", type=int, default=16, help="the checkpoint's canvas_length")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--swap-order", action="store_true", help="direct first in every other pair (A B B A ...)")
    parser.add_argument("--components", action="store_true", help="also time each piece the suite adds")
    parser.add_argument("--component-calls", type=int, default=2000, help="calls per batch with --components")
    parser.add_argument("--cache-dir", type=Path, default=None, help="model folder cache (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    LOG.info("torch %s, %d thread(s), load %s", torch.__version__, torch.get_num_threads(), load_average())
    case = bench_case(args)
    with tempfile.TemporaryDirectory(prefix="bench-dgemma-") as tmp:
        loaded = ModelCache(args.cache_dir or Path(tmp)).get(case.model)
        run_pairs(args, case, loaded)
        if args.components:
            time_components(case, loaded, args.steps, args.component_calls)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
