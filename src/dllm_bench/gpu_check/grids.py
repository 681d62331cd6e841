"""The grids of the self-check's suite runs: random-init models only, nothing downloaded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

OOM_BATCH = 131072  # the embedding output alone needs 275 GB (Llama, prompt 256) and 412 GB (LLaDA, 384 positions)


LLADA_8B_SHAPE_L4: Mapping[str, Any] = {
    "name": "llada-8b-shape-l4",
    "kind": "llada",
    "source": "random-init",
    "dtype": "bfloat16",
    "device": "cuda",
    "arch": {"n_layers": 4},  # the LLaDAConfig defaults are the 8B shape
}
LLAMA3_8B_SHAPE_L4: Mapping[str, Any] = {
    "name": "llama3-8b-shape-l4",
    "kind": "baseline",
    "source": "random-init",
    "dtype": "bfloat16",
    "device": "cuda",
    "arch": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 4,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "pad_token_id": 128001,
    },
}
TINY_ARCH_LLADA: Mapping[str, Any] = {
    "d_model": 64,
    "n_heads": 2,
    "n_kv_heads": 2,
    "n_layers": 1,
    "mlp_hidden_size": 128,
    "vocab_size": 512,
    "embedding_size": 512,
    "mask_token_id": 511,
    "eos_token_id": 510,
    "pad_token_id": 510,
    "bos_token_id": 509,
    "max_sequence_length": 128,
}


def grid_config() -> dict[str, Any]:
    """8B-shape LLaDA and Llama (4 layers, bf16): an oversized batch first, then batch 1."""
    return {
        "models": [dict(LLADA_8B_SHAPE_L4), dict(LLAMA3_8B_SHAPE_L4)],
        "grid": {"prompt_length": [256], "gen_length": [128], "batch_size": [OOM_BATCH, 1]},
        "llada": {"steps": [128], "block_length": [32]},
        "warmup_rounds": 1,
        "measured_rounds": 2,
        "seed": 0,
    }


def cache_config() -> dict[str, Any]:
    """The same LLaDA at two grid points (batch 1 and 4), cache none and dual, one token per step."""
    return {
        "models": [dict(LLADA_8B_SHAPE_L4)],
        "grid": {"prompt_length": [256], "gen_length": [128], "batch_size": [1, 4]},
        "llada": {"steps": [128], "block_length": [32], "cache": ["none", "dual"]},
        "warmup_rounds": 1,
        "measured_rounds": 2,
        "seed": 0,
    }


def pinning_config(gpu_count: int) -> dict[str, Any]:
    """A tiny LLaDA with two cases per GPU, on the default device (each worker's own GPU)."""
    return {
        "models": [{"name": "tiny-llada", "kind": "llada", "source": "random-init", "arch": dict(TINY_ARCH_LLADA)}],
        "grid": {"prompt_length": [16], "gen_length": [16], "batch_size": list(range(1, 2 * gpu_count + 1))},
        "llada": {"steps": [4], "block_length": [16]},
        "warmup_rounds": 0,
        "measured_rounds": 1,
        "seed": 0,
    }


DGEMMA_CANVAS = 32
DGEMMA_STEPS = 8
DGEMMA_GEN = 64
#: A random-init DiffusionGemma of a middling shape with Gemma's vocabulary (about 0.37 B
#: parameters, bf16): big enough to exercise the CUDA path, small enough to write in seconds.
DGEMMA_MID: Mapping[str, Any] = {
    "name": "dgemma-mid",
    "kind": "diffusion_gemma",
    "source": "random-init",
    "dtype": "bfloat16",
    "device": "cuda",
    "arch": {
        "vocab_size": 262144,
        "hidden_size": 1024,
        "intermediate_size": 2048,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "global_head_dim": 256,
        "num_experts": 8,
        "top_k_experts": 2,
        "moe_intermediate_size": 512,
        "max_position_embeddings": 4096,
        "canvas_length": DGEMMA_CANVAS,
    },
}


def dgemma_config() -> dict[str, Any]:
    """DiffusionGemma at batch 1 and 4, a dynamic and a static cache (the library compiles the
    decoder with the static one): every canvas runs its steps on random weights."""
    return {
        "models": [dict(DGEMMA_MID)],
        "grid": {"prompt_length": [64], "gen_length": [DGEMMA_GEN], "batch_size": [1, 4]},
        "diffusion_gemma": {"max_denoising_steps": [DGEMMA_STEPS], "cache_implementation": ["dynamic", "static"]},
        "warmup_rounds": 1,
        "measured_rounds": 2,
        "seed": 0,
    }
