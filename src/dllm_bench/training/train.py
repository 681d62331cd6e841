"""``dllm-bench-train``: train the small LLaDA and Llama models shipped with the suite.

Both models have the same shape and vocabulary and see the same task mixture
(``copy`` and ``permute`` with 8 items). The LLaDA model is trained with LLaDA's
masked-diffusion objective: per row a mask ratio t ~ U(0, 1) (floored at 1e-3), each
canvas position (answer and ``<eos>`` padding) masked with probability t, the prompt
kept, and the cross-entropy of the masked positions weighted by 1/t, summed and divided
by the canvas length. The Llama model is trained on next-token prediction of the answer
and its ``<eos>``. Everything is drawn from ``--seed``; with the same seed, torch build
and thread count the run is repeatable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from dllm_bench.environment import threads_warning, usable_cores
from dllm_bench.models.llada_hf.configuration_llada import LLaDAConfig
from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM
from dllm_bench.models.random_init import StagedFolder
from dllm_bench.tasks.synthetic import LIST_TASKS, ListTask
from dllm_bench.tasks.vocab import TASK_VOCAB, TaskVocab, write_tokenizer
from dllm_bench.training.data import DataSpec, TrainBatch, draw_train_batch
from dllm_bench.training.evaluate import Decode, evaluate
from dllm_bench.training.output import OutputError, interrupt_once, stage_target

__all__ = [
    "ARCHITECTURES",
    "ModelShape",
    "TrainResult",
    "TrainSpec",
    "build_model",
    "llada_loss",
    "main",
    "next_token_loss",
    "save_model",
    "train",
]

LOG = logging.getLogger("dllm_bench.training")

#: The architectures the trainer builds: ``llada`` (masked diffusion) and ``llama`` (autoregressive);
#: not the suite's model kinds (`dllm_bench.spec.MODEL_KINDS`).
ARCHITECTURES: tuple[str, ...] = ("llada", "llama")
#: The smallest mask ratio, as in LLaDA's pre-training code, so 1/t stays bounded.
MIN_MASK_RATIO = 1e-3
#: Name of the training record written beside the weights.
TRAINING_RECORD = "training.json"
#: Exit codes: bad options or an unusable --out (nothing trained), and Ctrl+C (as a shell reports SIGINT).
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class ModelShape:
    """The architecture both models share."""

    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    mlp_hidden_size: int = 128
    max_positions: int = 128
    rope_theta: float = 10000.0


@dataclass(frozen=True)
class TrainSpec:
    """Everything that decides the trained weights."""

    kind: str
    steps: int = 1200
    lr: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    seed: int = 0
    log_every: int = 100
    shape: ModelShape = field(default_factory=ModelShape)
    data: DataSpec = field(default_factory=DataSpec)

    def __post_init__(self) -> None:
        if self.kind not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.kind!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass
class TrainResult:
    model: PreTrainedModel
    losses: list[float]
    seconds: float


def build_model(kind: str, shape: ModelShape, vocab: TaskVocab = TASK_VOCAB) -> PreTrainedModel:
    """A freshly initialised model (from the current torch seed) of ``kind`` and ``shape``."""
    if kind == "llada":
        config = LLaDAConfig(
            d_model=shape.d_model,
            n_heads=shape.n_heads,
            n_kv_heads=shape.n_heads,
            n_layers=shape.n_layers,
            mlp_hidden_size=shape.mlp_hidden_size,
            vocab_size=vocab.size,
            embedding_size=vocab.size,
            mask_token_id=vocab.mask_id,
            eos_token_id=vocab.eos_id,
            pad_token_id=vocab.pad_id,
            bos_token_id=vocab.bos_id,
            max_sequence_length=shape.max_positions,
            rope_theta=shape.rope_theta,
        )
        return LLaDAModelLM(config)
    # rope_theta is a key every supported transformers version reads (5.x moves it into rope_parameters).
    legacy: dict[str, Any] = {"rope_theta": shape.rope_theta}
    llama = LlamaConfig(
        hidden_size=shape.d_model,
        num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_heads,
        num_hidden_layers=shape.n_layers,
        intermediate_size=shape.mlp_hidden_size,
        vocab_size=vocab.size,
        max_position_embeddings=shape.max_positions,
        bos_token_id=vocab.bos_id,
        eos_token_id=vocab.eos_id,
        pad_token_id=vocab.pad_id,
        tie_word_embeddings=False,
        **legacy,
    )
    return LlamaForCausalLM(llama)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits: torch.Tensor = model(ids).logits
    return logits


def llada_loss(model: torch.nn.Module, batch: TrainBatch, generator: torch.Generator, *, mask_id: int) -> torch.Tensor:
    """LLaDA's masked-diffusion loss on the canvas part of ``batch`` (the prompt is kept)."""
    rows, canvas = batch.ids.shape[0], batch.answer_length
    t = torch.rand(rows, 1, generator=generator)
    p_mask = (1.0 - MIN_MASK_RATIO) * t + MIN_MASK_RATIO
    masked = torch.rand(rows, canvas, generator=generator) < p_mask
    target = batch.ids[:, batch.prompt_length :]
    noisy = batch.ids.clone()
    noisy[:, batch.prompt_length :] = torch.where(masked, mask_id, target)
    logits = _logits(model, noisy)[:, batch.prompt_length :]
    token_loss = F.cross_entropy(logits[masked], target[masked], reduction="none")
    weights = p_mask.expand(rows, canvas)[masked]
    return (token_loss / weights).sum() / (rows * canvas)


def next_token_loss(model: torch.nn.Module, batch: TrainBatch) -> torch.Tensor:
    """Cross-entropy of predicting each answer token (and the final ``<eos>``) from what precedes it."""
    logits = _logits(model, batch.ids[:, :-1])[:, batch.prompt_length - 1 :]
    target = batch.ids[:, batch.prompt_length :]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


def learning_rate(step: int, spec: TrainSpec) -> float:
    """Linear warm-up, then cosine decay to a tenth of ``spec.lr`` at the last step."""
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def train(spec: TrainSpec, vocab: TaskVocab = TASK_VOCAB) -> TrainResult:
    """Train one model; the loss of every step is returned (and logged every ``log_every`` steps)."""
    torch.manual_seed(spec.seed)
    model = build_model(spec.kind, spec.shape, vocab)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)
    rng = random.Random(f"train|{spec.kind}|seed={spec.seed}")
    generator = torch.Generator().manual_seed(spec.seed)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(spec.steps):
        batch = draw_train_batch(spec.data, rng, canvas=spec.kind == "llada", vocab=vocab)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, spec)
        if spec.kind == "llada":
            loss = llada_loss(model, batch, generator, mask_id=vocab.mask_id)
        else:
            loss = next_token_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % spec.log_every == 0 or step + 1 == spec.steps:
            recent = losses[-spec.log_every :]
            LOG.info(
                "%s step %d/%d loss %.4f (mean of last %d) %.0f s",
                spec.kind,
                step + 1,
                spec.steps,
                sum(recent) / len(recent),
                len(recent),
                time.perf_counter() - start,
            )
    model.eval()  # type: ignore[no-untyped-call]
    return TrainResult(model=model, losses=losses, seconds=time.perf_counter() - start)


def save_model(model: PreTrainedModel, folder: Path, record: dict[str, Any]) -> None:
    """Write the weights (safetensors), config, tokenizer and training record into ``folder``.

    A LLaDA config is written without ``auto_map``: the folder holds no remote code and
    is loaded into the suite's own class.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    if config.pop("auto_map", None) is not None:
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_tokenizer(folder)
    (folder / TRAINING_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def accuracy_decodes(kind: str, gen_length: int) -> dict[str, Decode]:
    """The decodes whose accuracy is recorded: LLaDA with steps = gen_length (exact),
    gen_length / 2 and gen_length / 4 (one block); the AR model greedy."""
    if kind == "llama":
        return {"greedy": Decode(kind="ar", gen_length=gen_length)}
    counts = sorted({gen_length, max(1, gen_length // 2), max(1, gen_length // 4)}, reverse=True)
    return {f"steps={steps}": Decode(kind="llada", gen_length=gen_length, steps=steps) for steps in counts}


def measure_accuracy(
    model: PreTrainedModel, kind: str, *, n_items: int, gen_length: int, n_prompts: int, seed: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """Accuracy on each list task for each of :func:`accuracy_decodes`: {task: {decode: stats}}."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for name in LIST_TASKS:
        task = ListTask(name, n_items)
        found[name] = {}
        for label, decode in accuracy_decodes(kind, gen_length).items():
            stats = evaluate(model, task, decode, n_prompts=n_prompts, batch_size=min(64, n_prompts), seed=seed)
            found[name][label] = asdict(stats)
            LOG.info("%s %s %s: accuracy %s over %d prompts", kind, name, label, stats.accuracy, stats.n_scored)
    return found


def _parser() -> argparse.ArgumentParser:
    defaults = TrainSpec(kind="llada")
    parser = argparse.ArgumentParser(
        prog="dllm-bench-train",
        description="Train the small LLaDA and Llama models of the built-in tasks (copy, permute).",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder that receives one sub-folder per model")
    parser.add_argument(
        "--force", action="store_true", help="replace a model folder already in --out (default: refuse it)"
    )
    parser.add_argument("--model", choices=[*ARCHITECTURES, "both"], default="both")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.data.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared 2-core machine more threads can be slower)",
    )
    parser.add_argument("--eval-prompts", type=int, default=128, help="prompts per task for the final accuracy")
    parser.add_argument("--eval-items", type=int, default=8, help="items per prompt for the final accuracy")
    parser.add_argument(
        "--eval-gen-length",
        type=int,
        default=defaults.data.max_gen_length,
        help="generated positions for the final accuracy (default: the longest training canvas)",
    )
    parser.add_argument("--eval-seed", type=int, default=1234)
    parser.add_argument("--log-every", type=int, default=defaults.log_every)
    parser.add_argument("--d-model", type=int, default=defaults.shape.d_model)
    parser.add_argument("--heads", type=int, default=defaults.shape.n_heads)
    parser.add_argument("--layers", type=int, default=defaults.shape.n_layers)
    parser.add_argument("--mlp", type=int, default=defaults.shape.mlp_hidden_size)
    return parser


def _spec(kind: str, args: argparse.Namespace) -> TrainSpec:
    defaults = TrainSpec(kind=kind)
    return TrainSpec(
        kind=kind,
        steps=args.steps,
        lr=args.lr,
        warmup_steps=min(defaults.warmup_steps, max(1, args.steps // 10)),
        seed=args.seed,
        log_every=args.log_every,
        shape=ModelShape(d_model=args.d_model, n_heads=args.heads, n_layers=args.layers, mlp_hidden_size=args.mlp),
        data=DataSpec(batch_size=args.batch_size),
    )


def folder_name(kind: str) -> str:
    """The sub-folder name of a trained model of ``kind``."""
    return f"tasks-{kind}"


def run(kind: str, args: argparse.Namespace, staged: StagedFolder) -> Path:
    """Train, measure and save one model into ``staged``, then rename it into place; returns its folder."""
    spec = _spec(kind, args)
    LOG.info("training %s: %s", kind, spec)
    load_before = os.getloadavg()
    result = train(spec)
    load_after = os.getloadavg()
    accuracy = measure_accuracy(
        result.model,
        kind,
        n_items=args.eval_items,
        gen_length=args.eval_gen_length,
        n_prompts=args.eval_prompts,
        seed=args.eval_seed,
    )
    record = {
        "spec": asdict(spec),
        "threads": args.threads,
        "torch": torch.__version__,
        "train_seconds": round(result.seconds, 1),
        "load_average_1min": {"start": round(load_before[0], 2), "end": round(load_after[0], 2)},
        "first_loss": result.losses[0],
        "final_loss": sum(result.losses[-50:]) / len(result.losses[-50:]),
        "accuracy": accuracy,
        "eval": {"items": args.eval_items, "gen_length": args.eval_gen_length, "seed": args.eval_seed},
        "parameters": sum(p.numel() for p in result.model.parameters()),
    }
    save_model(result.model, staged.path, record)
    staged.commit(replace=args.force)
    LOG.info("wrote %s in %.0f s of training", staged.target, result.seconds)
    return staged.target


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when every model was written, 2 for bad options or an unusable ``--out`` (checked
    before training), 1 when a model could not be saved, 130 on Ctrl+C."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    if warning := threads_warning(args.threads, usable_cores()):
        LOG.warning("%s", warning)
    architectures = ARCHITECTURES if args.model == "both" else (args.model,)
    written: list[Path] = []
    try:
        with interrupt_once(), contextlib.ExitStack() as stack:  # a folder not renamed into place is removed
            targets = [args.out / folder_name(architecture) for architecture in architectures]
            staged = [stack.enter_context(stage_target(args.out, target, force=args.force)) for target in targets]
            for architecture, folder in zip(architectures, staged, strict=True):
                written.append(run(architecture, args, folder))
                sys.stdout.write(f"{written[-1]}\n")
    except OutputError as exc:
        LOG.error("%s; nothing was trained", exc)
        return EXIT_USAGE
    except OSError as exc:
        LOG.error("cannot save the model in %s: %s; it was not written", args.out, exc.strerror or exc)
        return 1
    except KeyboardInterrupt:
        LOG.error("interrupted; %s", _what_was_written(written, args.out))
        return EXIT_INTERRUPTED
    return 0


def _what_was_written(written: Sequence[Path], out: Path) -> str:
    done = f"written: {', '.join(map(str, written))}" if written else f"no model was written in {out}"
    return f"{done} (no half-written model folder is left)"


if __name__ == "__main__":
    raise SystemExit(main())
