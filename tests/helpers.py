"""Helpers shared by the suite's own tests: tiny configs and the benchmark test file."""

from __future__ import annotations

from pathlib import Path

import yaml

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

BENCH_TEST_FILE = """
from dllm_bench.cases import Case
from dllm_bench.plugin import CaseRunner


def test_llada(llada_case: Case, bench: CaseRunner) -> None:
    bench.run(llada_case)


def test_baseline(baseline_case: Case, bench: CaseRunner) -> None:
    bench.run(baseline_case)
"""


def tiny_config(**overrides: object) -> dict[str, object]:
    """A grid of tiny models: 2 LLaDA cases (steps 4 and 8) and 1 baseline case."""
    config: dict[str, object] = {
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
