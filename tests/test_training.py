"""dllm-bench-train: batches, the two losses, a short run whose loss falls, the written folders."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM
from dllm_bench.tasks import TASK_VOCAB
from dllm_bench.training.data import DataSpec, draw_train_batch
from dllm_bench.training.train import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
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


# --- --out: checked before training, never overwritten, written atomically ----------------------

TINY_ARGS = ["--steps", "2", "--batch-size", "4", "--d-model", "32", "--heads", "2", "--layers", "1", "--mlp", "64"]
TINY_ARGS += ["--eval-prompts", "2", "--eval-gen-length", "4", "--threads", "1", "--model", "llada"]


def _training_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if " step " in r.getMessage()]


@contextlib.contextmanager
def _read_only_folder(path: Path) -> Iterator[Path]:
    """A read-only tmpfs where the test runs as root (CI does: root ignores mode bits),
    else a folder without write permission."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("where", ["a file", "below a file", "read-only"])
def test_an_unusable_out_is_refused_before_training(
    where: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One error line and exit 2 before any training step (the old command trained first, then
    raised NotADirectoryError or OSError and lost the model)."""
    caplog.set_level(logging.INFO)
    with contextlib.ExitStack() as stack:
        if where == "read-only":
            out = stack.enter_context(_read_only_folder(tmp_path / "ro")) / "models"
        else:
            (tmp_path / "file").write_text("not a folder\n")
            out = tmp_path / "file" if where == "a file" else tmp_path / "file" / "models"
        assert main(["--out", str(out), *TINY_ARGS]) == EXIT_USAGE
        assert not out.exists() or out.is_file()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(out) in errors[0] and "nothing was trained" in errors[0]
    assert _training_records(caplog) == []
    if where != "read-only":
        assert (tmp_path / "file").read_text() == "not a folder\n"


def test_an_earlier_model_is_not_replaced_without_force(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    earlier = tmp_path / "tasks-llada"
    earlier.mkdir()
    (earlier / "model.safetensors").write_bytes(b"earlier weights")
    (earlier / "notes.txt").write_text("mine\n")
    assert main(["--out", str(tmp_path), *TINY_ARGS]) == EXIT_USAGE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks-llada"]
    assert (earlier / "model.safetensors").read_bytes() == b"earlier weights"
    assert sorted(p.name for p in earlier.iterdir()) == ["model.safetensors", "notes.txt"]
    assert any("--force" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert _training_records(caplog) == []


def test_force_replaces_the_whole_folder(tmp_path: Path) -> None:
    earlier = tmp_path / "tasks-llada"
    earlier.mkdir()
    (earlier / "model.safetensors").write_bytes(b"earlier weights")
    (earlier / "stray.txt").write_text("left over\n")
    assert main(["--out", str(tmp_path), *TINY_ARGS, "--force"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks-llada"]  # no temporary folder left
    names = {p.name for p in earlier.iterdir()}
    assert "stray.txt" not in names and {"config.json", "model.safetensors", TRAINING_RECORD} <= names
    assert LLaDAModelLM.from_pretrained(str(earlier)).config.d_model == 32


class _SigintAt(logging.Handler):
    """Sends this process a real SIGINT when a log record containing `text` is emitted."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.sent = 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage() and not self.sent:
            self.sent += 1
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_during_training_exits_130_and_leaves_no_model(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # an xdist worker ignores SIGINT
    trigger = _SigintAt("step 3/")
    logging.getLogger("dllm_bench.training").addHandler(trigger)
    args = ["--out", str(tmp_path / "models"), *TINY_ARGS, "--steps", "100000", "--log-every", "1"]
    try:
        try:
            code: object = main(args)
        except KeyboardInterrupt:
            code = "KeyboardInterrupt escaped"
    finally:
        logging.getLogger("dllm_bench.training").removeHandler(trigger)
        signal.signal(signal.SIGINT, previous)
    assert trigger.sent == 1
    assert code == EXIT_INTERRUPTED
    assert not (tmp_path / "models").exists() or list((tmp_path / "models").iterdir()) == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith("interrupted; no model was written")


def _files_under(folder: Path) -> list[Path]:
    return [Path(root) / name for root, _dirs, files in os.walk(folder) for name in files]


def _interrupt_the_save(out: Path, log: Path) -> tuple[int, bool]:
    """Start `dllm-bench-train`, freeze it (SIGSTOP) as soon as the first file of the model
    appears under `out`, send SIGINT, let it go on (SIGCONT), and send SIGINT again every few
    milliseconds until it ends. Returns the exit code and whether it was frozen inside the save
    (alive, and the last file of the model, the training record, not yet in place)."""
    command = [str(Path(sys.executable).parent / "dllm-bench-train"), "--out", str(out), *TINY_ARGS]
    command += ["--d-model", "256", "--mlp", "1024", "--layers", "2"]  # a few MB of weights: a longer save
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + 300
            while proc.poll() is None and not _files_under(out) and time.monotonic() < deadline:
                time.sleep(0.001)
            in_save = False
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGSTOP)
                in_save = proc.poll() is None and not (out / "tasks-llada" / TRAINING_RECORD).exists()
                os.kill(proc.pid, signal.SIGINT)
                os.kill(proc.pid, signal.SIGCONT)
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
                time.sleep(0.005)
            return proc.wait(timeout=60), in_save
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_during_the_save_leaves_no_model_folder(tmp_path: Path) -> None:
    """A real SIGINT to a real `dllm-bench-train` frozen while it writes the model's files, then
    a burst of SIGINTs during its cleanup: exit 130, one line, no traceback, and nothing left
    under --out that a `source:` could load (the old command left config.json and weights)."""
    for attempt in range(3):  # frozen after the save if the process outran the poll: run again
        out, log = tmp_path / f"out{attempt}", tmp_path / f"train{attempt}.txt"
        code, in_save = _interrupt_the_save(out, log)
        if in_save:
            break
    assert in_save, "the save was never caught in 3 runs"
    text = log.read_text()
    assert code == EXIT_INTERRUPTED, text[-3000:]
    assert "Traceback" not in text
    assert text.count("interrupted;") == 1
    assert list(out.iterdir()) == []
