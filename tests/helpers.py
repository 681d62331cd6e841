"""Helpers shared by the suite's own tests: tiny configs, the benchmark test file, and
running `python -m pytest` as a real process (real signals, real files)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import yaml
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

from dllm_bench.rows import Row
from dllm_bench.sinks.csvfiles import read_results
from tests.prestarted import PRESTARTED_ENV, PrestartedProcess

TINY_LLADA_ARCH = {
    "d_model": 32,
    "n_heads": 2,
    "n_kv_heads": 2,
    "n_layers": 1,
    "mlp_hidden_size": 64,
    "vocab_size": 256,
    "embedding_size": 256,
    "mask_token_id": 255,
    "eos_token_id": 254,
    "pad_token_id": 254,
    "bos_token_id": 253,
    "max_sequence_length": 256,
}
TINY_LLAMA_ARCH = {
    "hidden_size": 32,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "num_hidden_layers": 1,
    "intermediate_size": 64,
    "vocab_size": 256,
    "eos_token_id": 254,
    "pad_token_id": 254,
    "bos_token_id": 253,
    "max_position_embeddings": 256,
}
# DiffusionGemma of the smallest shape the library builds (a tiny vision tower is added by the suite).
TINY_DGEMMA_ARCH = {
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "global_head_dim": 16,
    "num_experts": 2,
    "top_k_experts": 1,
    "moe_intermediate_size": 32,
    "sliding_window": 16,
    "max_position_embeddings": 256,
    "canvas_length": 8,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
}
# The suite's LLaDA model class, for a sleep plugin that slows the LLaDA model only.
LLADA_MODEL_CLASS = "dllm_bench.models.llada_hf.modeling_llada.LLaDAModelLM"
# What makes a slow grid slow: each LLaDA forward pass sleeps this long after its real work
# (about 1 ms for the tiny model), so a case takes long enough to be interrupted while the
# machine stays free for the other tests. A slow grid's LLaDA cases take 0.4-3 s each.
SLOW_FORWARD_S = 0.003

# The benchmark test file itself (one test per model kind), copied into pytester folders.
BENCH_TEST_FILE = (Path(__file__).resolve().parent.parent / "benchmarks" / "test_generation.py").read_text(
    encoding="utf-8"
)

_SLEEP_PLUGIN = """
import importlib
import time

import pytest

_HOOK = pytest.StashKey()


def pytest_configure(config):
    import torch

    model_class = getattr(importlib.import_module("{module}"), "{name}")

    def sleep_after_forward(module, args, output):
        if isinstance(module, model_class) and getattr(output, "logits", None) is not None:
            time.sleep({seconds})

    config.stash[_HOOK] = torch.nn.modules.module.register_module_forward_hook(sleep_after_forward)


def pytest_unconfigure(config):
    hook = config.stash.get(_HOOK, None)  # None when a Ctrl+C came before configure ended
    if hook is not None:
        hook.remove()
"""


def sleep_plugin(seconds: float, model_class: str = "transformers.PreTrainedModel") -> str:
    """A pytest plugin that sleeps `seconds` after every top-level forward pass (the call that
    returns logits) of a `model_class` model. In every run of a comparison it is a latency
    floor that host load cannot shorten, so the tiny models' milliseconds of real work, even
    many times slower under load, cannot move a run past a test's limits; a second plugin in
    one run only is an injected slowdown. The hook is registered for the pytest run only
    (configure to unconfigure), so the plugin can be used in an in-process run too. It imports
    torch there, not when it is imported: in a conftest.py, importing torch would move the
    start-up's torch import out of the pytest session, where Ctrl+C is handled."""
    module, name = model_class.rsplit(".", 1)
    return _SLEEP_PLUGIN.format(module=module, name=name, seconds=seconds)


@contextlib.contextmanager
def auto_classes_as_shipped() -> Iterator[None]:
    """transformers' Auto classes without any registration (as the library ships them) while
    the context runs, and the process's registrations back afterwards. Registrations are
    process-wide: a suite run in this process registers the suite's LLaDA classes
    (`register_llada_auto_classes`), and AutoModel then prefers them to a folder's own code."""
    mappings = (CONFIG_MAPPING, MODEL_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING)
    saved = [dict(mapping._extra_content) for mapping in mappings]
    for mapping in mappings:
        mapping._extra_content.clear()
    try:
        yield
    finally:
        for mapping, content in zip(mappings, saved, strict=True):
            mapping._extra_content.clear()
            mapping._extra_content.update(content)


PARTIAL = "raw_metrics_partial.csv"
FINAL = "raw_metrics.csv"


def tiny_config(**overrides: object) -> dict[str, Any]:
    """A grid of tiny models: 2 LLaDA cases (steps 4 and 8) and 1 baseline case."""
    config: dict[str, Any] = {
        "models": [
            {"name": "tiny-llada", "kind": "llada", "source": "random-init", "device": "cpu", "arch": TINY_LLADA_ARCH},
            {
                "name": "tiny-llama",
                "kind": "baseline",
                "source": "random-init",
                "device": "cpu",
                "arch": TINY_LLAMA_ARCH,
            },
        ],
        "grid": {"prompt_length": [8], "gen_length": [8], "batch_size": [2]},
        "llada": {"steps": [4, 8], "block_length": [8]},
        "warmup_rounds": 1,
        "measured_rounds": 2,
    }
    config.update(overrides)
    return config


def write_config(directory: Path, config: object, name: str = "grid.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def rows(path: Path) -> list[Row]:
    """The rows of a results CSV, typed."""
    return read_results(path)


def manifest(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "run_manifest.json").read_text())
    return data


# --- real pytest processes ---------------------------------------------------------------------

STEPS = (32, 64)


def case_ids(steps: tuple[int, ...] = STEPS) -> list[str]:
    """The ids of `slow_grid`'s cases, sorted."""
    return sorted(
        [f"tiny-llada-p16-g64-b{b}-s{s}-k64" for b in (1, 2, 4) for s in steps]
        + [f"tiny-llama-p16-g64-b{b}" for b in (1, 2, 4)]
    )


def slow_grid(directory: Path, steps: tuple[int, ...] = STEPS, measured_rounds: int = 3) -> Path:
    """A grid whose cases take long enough to be interrupted: 3 batch sizes x steps, plus AR.
    The LLaDA model sleeps SLOW_FORWARD_S after each forward pass (a plugin added to the
    folder's conftest.py, so every run in the folder has it: resumes, xdist workers)."""
    config = tiny_config(
        grid={"prompt_length": [16], "gen_length": [64], "batch_size": [1, 2, 4]},
        llada={"steps": list(steps), "block_length": [64]},
        warmup_rounds=1,
        measured_rounds=measured_rounds,
    )
    add_conftest(directory, sleep_plugin(SLOW_FORWARD_S, LLADA_MODEL_CLASS))
    return write_config(directory, config)


def add_conftest(directory: Path, code: str) -> None:
    """Append `code` to the folder's conftest.py (created if missing): a test's own hooks and
    the slow grid's sleep live side by side, whichever is added first."""
    path = directory / "conftest.py"
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(f"{before}\n{code}", encoding="utf-8")


class Process(Protocol):
    """What the tests use of a started pytest process: `subprocess.Popen` or a
    `tests.prestarted.PrestartedProcess`."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def start_pytest(
    project: Path,
    *args: str,
    output_dir: str | None = "out",
    config: str = "grid.yaml",
    env: dict[str, str] | None = None,
    fresh: bool = False,
    stdio: tuple[int, int, int] | None = None,
) -> Process:
    """`python -m pytest --config grid.yaml --output-dir out ARGS` in its own process group,
    with the default SIGINT handler (a shell's `&` would ignore SIGINT); output goes to
    project/pytest-output.txt, or to `stdio` (stdin, stdout, stderr: a terminal, pipes) when
    given. `output_dir=None` leaves --output-dir out.

    The process is forked from the test process's prestarted interpreter (imports done; see
    `tests.prestarted`) when the `project` fixture made one; `fresh=True` starts a new
    interpreter instead, for a test about the start-up itself."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    server = full_env.pop(PRESTARTED_ENV, None)
    log = project / "pytest-output.txt"
    where = ["--output-dir", output_dir] if output_dir is not None else []
    pytest_args = ["-p", "no:cacheprovider", "--config", config, *where, *args]
    if server and not fresh:
        request: dict[str, Any] = {"args": pytest_args, "cwd": str(project), "env": full_env}
        if stdio is None:
            request["log"] = str(log)
        return PrestartedProcess(Path(server), request, stdio=stdio)
    with contextlib.ExitStack() as files:
        if stdio is None:
            output = files.enter_context(log.open("ab"))
            stdio = (subprocess.DEVNULL, output.fileno(), output.fileno())
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", *pytest_args],
            cwd=project,
            env=full_env,
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def wait_rows(path: Path, count: int, proc: Process, timeout: float = 300.0) -> None:
    """Return once `path` holds `count` complete rows; fail if pytest ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(read_results(path)) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"pytest ended (exit {proc.returncode}) before {count} rows were written")
        time.sleep(0.05)
    raise AssertionError(f"no {count} rows in {path} after {timeout} s")


def wait_for(predicate: Any, proc: Process, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"pytest ended (exit {proc.returncode}) before {what}")
        time.sleep(0.02)
    raise AssertionError(f"not {what} after {timeout} s")


def finish(proc: Process, timeout: float = 600.0) -> int:
    """The exit code; a process still running after `timeout` is killed and the test fails."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def output_of(project: Path) -> str:
    return (project / "pytest-output.txt").read_text(errors="replace")


def assert_exit(proc: Process, project: Path, expected: int, output_dir: str = "out") -> None:
    """Wait for pytest to end and check its exit code; when it is not the expected one,
    the message holds the ends of pytest's output and of the run's log."""
    code = finish(proc)
    if code == expected:
        return
    log = project / output_dir / "benchmark.log"
    log_tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no benchmark.log)"
    raise AssertionError(
        f"pytest exited {code}, expected {int(expected)}\n--- output ---\n{output_of(project)[-4000:]}"
        f"\n--- benchmark.log ---\n{log_tail}"
    )
