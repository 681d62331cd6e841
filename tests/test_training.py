"""dllm-bench-train: batches, the two losses, a short run whose loss falls, the written folders."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM
from dllm_bench.tasks import TASK_VOCAB
from dllm_bench.training.data import DataSpec, draw_train_batch
from dllm_bench.training.train import (
    TRAINING_RECORD,
    ModelShape,
    TrainSpec,
    build_model,
    learning_rate,
    llada_loss,
    main,
    next_token_loss,
    train,
)

V = TASK_VOCAB
TINY = ModelShape(d_model=32, n_heads=2, n_layers=1, mlp_hidden_size=64, max_positions=64)


def test_llada_batches_pad_the_canvas_with_eos() -> None:
    spec = DataSpec(min_items=3, max_items=3, max_gen_length=10, batch_size=16)
    batch = draw_train_batch(spec, random.Random(0), canvas=True)
    assert batch.prompt_length == 6 and 4 <= batch.answer_length <= 10
    for row in batch.ids.tolist():
        prompt, answer = row[:6], row[6:]
        items = prompt[2:5]
        assert answer[3:] == [V.eos_id] * (batch.answer_length - 3)
        if prompt[1] == V.id_of("copy"):
            assert answer[:3] == items
        else:
            assert sorted(answer[:3]) == sorted(V.capital_of(item) for item in items)


def test_ar_batches_end_with_one_eos() -> None:
    spec = DataSpec(min_items=4, max_items=4, batch_size=4)
    batch = draw_train_batch(spec, random.Random(1), canvas=False)
    assert batch.answer_length == 5
    assert (batch.ids[:, -1] == V.eos_id).all()


def test_llada_loss_masks_only_the_canvas() -> None:
    torch.manual_seed(0)
    model = build_model("llada", TINY)
    batch = draw_train_batch(DataSpec(batch_size=8), random.Random(2), canvas=True)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _module, args: seen.append(args[0].clone()))
    loss = llada_loss(model, batch, torch.Generator().manual_seed(0), mask_id=V.mask_id)
    noisy = seen[0]
    assert torch.equal(noisy[:, : batch.prompt_length], batch.ids[:, : batch.prompt_length])
    masked = noisy[:, batch.prompt_length :] == V.mask_id
    assert masked.any()
    kept = ~masked
    assert torch.equal(noisy[:, batch.prompt_length :][kept], batch.ids[:, batch.prompt_length :][kept])
    assert loss.item() > 0


def test_llada_loss_is_the_weighted_cross_entropy() -> None:
    torch.manual_seed(0)
    model = build_model("llada", TINY).eval()
    batch = draw_train_batch(DataSpec(batch_size=4), random.Random(3), canvas=True)
    loss = llada_loss(model, batch, torch.Generator().manual_seed(5), mask_id=V.mask_id)
    # The same draws, by hand.
    generator = torch.Generator().manual_seed(5)
    rows, canvas = batch.ids.shape[0], batch.answer_length
    t = torch.rand(rows, 1, generator=generator)
    p_mask = 0.999 * t + 0.001
    masked = torch.rand(rows, canvas, generator=generator) < p_mask
    noisy = batch.ids.clone()
    noisy[:, batch.prompt_length :][masked] = V.mask_id
    logits = model(noisy).logits[:, batch.prompt_length :]
    log_probs = torch.log_softmax(logits, dim=-1)
    target = batch.ids[:, batch.prompt_length :]
    total = 0.0
    for r in range(rows):
        for c in range(canvas):
            if masked[r, c]:
                total += -log_probs[r, c, target[r, c]].item() / p_mask[r, 0].item()
    assert loss.item() == pytest.approx(total / (rows * canvas), rel=1e-5)


def test_next_token_loss_scores_only_the_answer() -> None:
    torch.manual_seed(0)
    model = build_model("llama", TINY).eval()
    batch = draw_train_batch(DataSpec(batch_size=4, min_items=3, max_items=3), random.Random(4), canvas=False)
    loss = next_token_loss(model, batch)
    # Changing a prompt token's *prediction target* cannot matter: only answer tokens are targets.
    logits = model(batch.ids).logits
    log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = batch.ids[:, 1:]
    answer = slice(batch.prompt_length - 1, None)
    expected = -log_probs[:, answer].gather(-1, targets[:, answer].unsqueeze(-1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_learning_rate_warms_up_and_decays() -> None:
    spec = TrainSpec(kind="llada", steps=100, lr=1e-3, warmup_steps=10)
    rates = [learning_rate(step, spec) for step in range(100)]
    assert rates[0] == pytest.approx(1e-4)
    assert rates[9] == pytest.approx(1e-3)
    assert rates[-1] == pytest.approx(1e-4, rel=0.01)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llada", "llama"])
def test_a_short_run_lowers_the_loss(kind: str) -> None:
    """60 steps of a tiny model: the mean loss of the last 10 steps is well below the first 10's
    (about 0.57x for LLaDA and 0.74x for Llama on the development machine)."""
    spec = TrainSpec(
        kind=kind,
        steps=60,
        lr=1e-2,
        warmup_steps=5,
        shape=TINY,
        data=DataSpec(batch_size=16, min_items=2, max_items=4, max_gen_length=8),
        log_every=1000,
    )
    result = train(spec)
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.85 * first, (first, last)


def test_training_is_deterministic() -> None:
    spec = TrainSpec(kind="llada", steps=5, shape=TINY, data=DataSpec(batch_size=4), log_every=1000)
    assert train(spec).losses == train(spec).losses


@pytest.mark.slow
def test_the_command_writes_loadable_folders(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), "--steps", "3", "--batch-size", "4", "--d-model", "32", "--heads", "2"]
    args += ["--layers", "1", "--mlp", "64", "--eval-prompts", "4", "--threads", "1"]
    assert main(args) == 0
    llada_dir, llama_dir = tmp_path / "tasks-llada", tmp_path / "tasks-llama"
    assert not list(llada_dir.glob("*.py"))
    assert "auto_map" not in json.loads((llada_dir / "config.json").read_text())
    llada = LLaDAModelLM.from_pretrained(str(llada_dir))
    assert llada.config.mask_token_id == V.mask_id and llada.config.d_model == 32
    llama = AutoModelForCausalLM.from_pretrained(str(llama_dir))
    assert llama.config.hidden_size == 32 and llama.config.eos_token_id == V.eos_id
    for folder in (llada_dir, llama_dir):
        assert (folder / "model.safetensors").is_file()
        assert AutoTokenizer.from_pretrained(str(folder)).mask_token_id == V.mask_id
        record = json.loads((folder / TRAINING_RECORD).read_text())
        assert record["spec"]["steps"] == 3
        assert set(record["accuracy"]) == {"copy", "permute"}
    llada_record = json.loads((llada_dir / TRAINING_RECORD).read_text())
    assert set(llada_record["accuracy"]["copy"]) == {"steps=12", "steps=6", "steps=3"}
