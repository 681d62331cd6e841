"""Tests of the LLaDA remote-code implementation and of the random-init folder writers."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import torch
import transformers
from safetensors.torch import load_file

from dllm_bench.backends.baseline import write_llama_folder
from dllm_bench.backends.llada import write_llada_folder
from dllm_bench.models import random_init
from dllm_bench.models.llada_hf.configuration_llada import LLADA_FIXED_KEYS, LLaDAConfig
from dllm_bench.models.llada_hf.modeling_llada import LLaDAKVCache, LLaDAModelLM, UnsupportedConfigError
from dllm_bench.models.random_init import folder_key
from tests.helpers import auto_classes_as_shipped

TINY: dict[str, Any] = {
    "d_model": 64,
    "n_heads": 4,
    "n_layers": 2,
    "mlp_hidden_size": 128,
    "vocab_size": 512,
    "embedding_size": 512,
    "mask_token_id": 500,
    "eos_token_id": 501,
    "bos_token_id": 502,
    "pad_token_id": 501,
}

LLADA_FILES = ["configuration_llada.py", "modeling_llada.py"]

AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
}

TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 512,
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once at import, so also patch the parsed constant.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module", autouse=True)
def _auto_classes_as_shipped() -> Iterator[None]:
    """These tests load folders with their own code (trust_remote_code): without the suite's
    LLaDA registration, which an in-process suite run earlier in this process leaves behind."""
    with auto_classes_as_shipped():
        yield


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llada_folder(tmp_path_factory.mktemp("written") / "llada_tiny", TINY, seed=0, dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny_model(tiny_folder: Path) -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        model = transformers.AutoModel.from_pretrained(tiny_folder, trust_remote_code=True)
    assert not model.training  # from_pretrained returns the model in eval mode
    yield model


def _llada_num_params(cfg: LLaDAConfig) -> int:
    """Parameter count from the config alone (no instantiation)."""
    d, head_dim = cfg.d_model, cfg.d_model // cfg.n_heads
    kv = cfg.n_kv_heads * head_dim
    bias = int(cfg.include_bias)
    attn = (d * d + d * bias) * 2 + (d * kv + kv * bias) * 2  # q_proj, attn_out, k_proj, v_proj
    mlp = (d * cfg.mlp_hidden_size + cfg.mlp_hidden_size * bias) * 2 + cfg.mlp_hidden_size * d + d * bias
    block = attn + mlp + 2 * d  # + attn_norm, ff_norm
    embed = cfg.embedding_size * d
    head = 0 if cfg.weight_tying else cfg.embedding_size * d + cfg.embedding_size * bias
    return embed + cfg.n_layers * block + d + head  # + ln_f


def _tokens(seed: int, batch: int, length: int, high: int = 500) -> torch.Tensor:
    return torch.randint(0, high, (batch, length), generator=torch.Generator().manual_seed(seed))


def _reference_logits(
    state: dict[str, torch.Tensor], cfg: LLaDAConfig, ids: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """A deliberately naive float64 forward pass written from the architecture description.

    Per-row, per-head loops; softmax over the attended keys only; rotary embedding
    as a complex rotation of the pairs (j, j + head_dim / 2).
    """
    d, nh, nkv = cfg.d_model, cfg.n_heads, cfg.n_kv_heads
    hd = d // nh
    w = {k: v.double() for k, v in state.items()}
    p = "model.transformer."

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps)

    def rope(x: torch.Tensor) -> torch.Tensor:  # x: (L, hd)
        pos = torch.arange(x.shape[0], dtype=torch.float64)[:, None]
        freq = cfg.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        z = torch.complex(x[:, : hd // 2], x[:, hd // 2 :]) * torch.polar(torch.ones_like(pos * freq), pos * freq)
        return torch.cat([z.real, z.imag], dim=-1)

    rows = []
    for b in range(ids.shape[0]):
        keep = torch.ones(ids.shape[1], dtype=torch.bool) if mask is None else mask[b].bool()
        x = w[p + "wte.weight"][ids[b]]
        for i in range(cfg.n_layers):
            q_ = f"{p}blocks.{i}."
            h = rms(x, w[q_ + "attn_norm.weight"])
            q, k, v = h @ w[q_ + "q_proj.weight"].T, h @ w[q_ + "k_proj.weight"].T, h @ w[q_ + "v_proj.weight"].T
            heads = []
            for j in range(nh):
                kv = j // (nh // nkv)
                qj = rope(q[:, j * hd : (j + 1) * hd])
                kj = rope(k[:, kv * hd : (kv + 1) * hd])
                scores = (qj @ kj.T) / hd**0.5
                scores = scores.masked_fill(~keep[None, :], float("-inf"))
                heads.append(torch.softmax(scores, dim=-1) @ v[:, kv * hd : (kv + 1) * hd])
            x = x + torch.cat(heads, dim=-1) @ w[q_ + "attn_out.weight"].T
            h = rms(x, w[q_ + "ff_norm.weight"])
            gate, up = h @ w[q_ + "ff_proj.weight"].T, h @ w[q_ + "up_proj.weight"].T
            x = x + (torch.nn.functional.silu(gate) * up) @ w[q_ + "ff_out.weight"].T
        x = rms(x, w[p + "ln_f.weight"])
        head = w[p + "wte.weight"] if cfg.weight_tying else w[p + "ff_out.weight"]
        rows.append(x @ head.T)
    return torch.stack(rows)


# --------------------------------------------------------------------------- folder layout


def test_folder_has_weights_config_and_remote_code(tiny_folder: Path) -> None:
    names = set(os.listdir(tiny_folder))
    assert {"config.json", "model.safetensors", "configuration_llada.py", "modeling_llada.py"} <= names
    config = json.loads((tiny_folder / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    assert config["architectures"] == ["LLaDAModelLM"]
    assert config["model_type"] == "llada"
    for key, value in TINY.items():
        assert config[key] == value, key
    assert config["n_kv_heads"] == TINY["n_heads"]
    # Every published key the model does not implement is written with its only accepted value.
    for key, value in LLADA_FIXED_KEYS.items():
        assert config[key] == value, key
    assert config["bias_for_layer_norm"] is False
    # No temporary directory left beside the folder.
    assert sorted(os.listdir(tiny_folder.parent)) == ["llada_tiny"]


def test_auto_classes_load_the_folder_as_remote_code(tiny_folder: Path, tiny_model: Any) -> None:
    assert type(tiny_model).__name__ == "LLaDAModelLM"
    # Loaded from the folder's copy (transformers' dynamic module cache), not from the package.
    assert type(tiny_model).__module__.startswith("transformers_modules.")
    config = transformers.AutoConfig.from_pretrained(tiny_folder, trust_remote_code=True)
    assert type(config).__name__ == "LLaDAConfig"
    assert (config.d_model, config.n_heads, config.n_layers, config.mask_token_id) == (64, 4, 2, 500)
    causal = transformers.AutoModelForCausalLM.from_pretrained(tiny_folder, trust_remote_code=True)
    assert type(causal).__name__ == "LLaDAModelLM"


def test_state_dict_names(tiny_model: Any) -> None:
    keys = set(tiny_model.state_dict())
    for name in ("wte", "blocks.0.q_proj", "blocks.1.ff_out", "ff_out", "ln_f"):
        assert f"model.transformer.{name}.weight" in keys
    block = {k.removeprefix("model.transformer.blocks.0.") for k in keys if k.startswith("model.transformer.blocks.0.")}
    expected = {"attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out"}
    assert block == {f"{n}.weight" for n in expected}
    assert len(keys) == 2 * len(expected) + 3


def test_loaded_weights_equal_written(tiny_folder: Path, tiny_model: Any) -> None:
    written = load_file(tiny_folder / "model.safetensors")
    loaded = tiny_model.state_dict()
    assert set(written) == set(loaded)
    for name, tensor in written.items():
        assert loaded[name].dtype == torch.float32
        assert torch.equal(loaded[name], tensor), name


def test_random_init_distribution_and_seed(tmp_path: Path, tiny_folder: Path) -> None:
    written = load_file(tiny_folder / "model.safetensors")
    for name, tensor in written.items():
        if "norm" in name or "ln_f" in name:
            assert torch.equal(tensor, torch.ones_like(tensor)), name
        else:
            assert abs(tensor.std().item() - 0.02) < 0.004, name
            assert abs(tensor.mean().item()) < 0.004, name
    same = load_file(write_llada_folder(tmp_path / "same", TINY, seed=0, dtype=torch.float32) / "model.safetensors")
    other = load_file(write_llada_folder(tmp_path / "other", TINY, seed=1, dtype=torch.float32) / "model.safetensors")
    assert all(torch.equal(same[k], written[k]) for k in written)
    assert not torch.equal(other["model.transformer.wte.weight"], written["model.transformer.wte.weight"])


def test_bf16_folder(tmp_path: Path) -> None:
    folder = write_llada_folder(tmp_path / "bf16", TINY, seed=0, dtype=torch.bfloat16)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(folder / "model.safetensors").values()} == {torch.bfloat16}
    model = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        logits = model(_tokens(0, 2, 8)).logits
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()


# --------------------------------------------------------------------------- forward semantics


def test_logits_shape(tiny_model: Any) -> None:
    with torch.no_grad():
        out = tiny_model(_tokens(0, 3, 11))
    assert out.logits.shape == (3, 11, 512)
    assert torch.isfinite(out.logits).all()


def test_logits_match_naive_reference(tiny_model: Any) -> None:
    ids = _tokens(10, 2, 9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        logits = tiny_model(ids, attention_mask=mask).logits
    expected = _reference_logits(tiny_model.state_dict(), tiny_model.config, ids, mask)
    # Padding queries are not compared: only the non-padded positions are defined.
    torch.testing.assert_close(logits[0].double(), expected[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1, 3:].double(), expected[1, 3:], atol=1e-5, rtol=0)


def test_gqa_and_tied_logits_match_naive_reference() -> None:
    torch.manual_seed(0)
    cfg = LLaDAConfig(**{**TINY, "n_kv_heads": 1, "weight_tying": True, "rope_theta": 10000.0})
    model = LLaDAModelLM(cfg)
    ids = _tokens(11, 1, 7)
    with torch.no_grad():
        # Random-init norm scales are all ones; perturb them so that their use is checked too.
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "ln_f" in name:
                param.add_(0.5 * torch.randn_like(param))
        logits = model(ids).logits
    torch.testing.assert_close(logits.double(), _reference_logits(model.state_dict(), cfg, ids), atol=1e-5, rtol=0)


def test_positions_matter() -> None:
    torch.manual_seed(0)
    model = LLaDAModelLM(LLaDAConfig(**{**TINY, "rope_theta": 10000.0}))
    ids = _tokens(12, 1, 8)
    with torch.no_grad():
        forward = model(ids).logits
        reversed_ = model(ids.flip(1)).logits.flip(1)
    # Without position information attention is permutation-equivariant; with rotary embeddings it is not.
    assert not torch.allclose(forward, reversed_, atol=1e-4)


def test_logits_width_is_embedding_size() -> None:
    model = LLaDAModelLM(LLaDAConfig(**{**TINY, "embedding_size": 520}))
    with torch.no_grad():
        assert model(_tokens(0, 2, 5)).logits.shape == (2, 5, 520)


def test_attention_is_bidirectional(tiny_model: Any) -> None:
    ids = _tokens(1, 1, 12)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 7) % 500
    with torch.no_grad():
        a = tiny_model(ids).logits
        b = tiny_model(changed).logits
    # A later token influences the earliest position: no causal mask.
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-6)


def test_left_padding_matches_unpadded_rows(tiny_model: Any) -> None:
    length, pad = 10, 4
    full = _tokens(2, 1, length)
    short = _tokens(3, 1, length - pad)
    # The padding positions hold arbitrary tokens: only the mask may hide them.
    padded = torch.cat([_tokens(4, 1, pad), short], dim=1)
    batch = torch.cat([full, padded], dim=0)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, :pad] = 0
    with torch.no_grad():
        batched = tiny_model(batch, attention_mask=mask).logits
        alone_short = tiny_model(short).logits
        alone_full = tiny_model(full).logits
        unmasked = tiny_model(batch).logits
    torch.testing.assert_close(batched[1, pad:], alone_short[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[0], alone_full[0], atol=1e-5, rtol=0)
    assert not torch.allclose(unmasked[1, pad:], alone_short[0], atol=1e-3)
    # A row that is all padding still gives finite logits (it attends everywhere instead of nowhere).
    empty = torch.zeros_like(mask)
    empty[0] = 1
    with torch.no_grad():
        assert torch.isfinite(tiny_model(batch, attention_mask=empty).logits).all()
    # An all-ones mask is the same as no mask.
    torch.testing.assert_close(tiny_model(full, attention_mask=torch.ones_like(full)).logits, alone_full)


def test_grouped_query_attention_equals_repeated_heads(tmp_path: Path) -> None:
    gqa_arch = {**TINY, "n_kv_heads": 2}
    folder = write_llada_folder(tmp_path / "gqa", gqa_arch, seed=0, dtype=torch.float32)
    gqa = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert gqa.config.n_kv_heads == 2
    assert gqa.model.transformer.blocks[0].k_proj.weight.shape == (2 * 16, 64)
    # The same network with every key/value head duplicated for its query group.
    mha = LLaDAModelLM(LLaDAConfig(**TINY))
    state = {}
    for name, tensor in gqa.state_dict().items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            tensor = tensor.view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
        state[name] = tensor
    mha.load_state_dict(state)
    ids = _tokens(5, 2, 9)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids, attention_mask=mask).logits, mha(ids, attention_mask=mask).logits)


def test_weight_tying_uses_embedding_as_head() -> None:
    model = LLaDAModelLM(LLaDAConfig(**{**TINY, "weight_tying": True}))
    assert "ff_out" not in model.model.transformer
    assert "model.transformer.ff_out.weight" not in model.state_dict()
    assert model.get_output_embeddings() is None
    ids = _tokens(6, 1, 6)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    wte = model.get_input_embeddings().weight
    torch.testing.assert_close(out.logits, out.hidden_states[-1] @ wte.T)


def test_hidden_states_and_return_dict(tiny_model: Any) -> None:
    ids = _tokens(7, 2, 5)
    with torch.no_grad():
        out = tiny_model(ids, output_hidden_states=True)
        as_tuple = tiny_model(ids, return_dict=False)
    assert len(out.hidden_states) == TINY["n_layers"] + 1
    assert all(h.shape == (2, 5, 64) for h in out.hidden_states)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.logits)


# --------------------------------------------------------------------------- KV cache


def _naive_row(
    state: dict[str, torch.Tensor],
    cfg: LLaDAConfig,
    ids: torch.Tensor,
    keep: torch.Tensor,
    fed: tuple[int, int] | None = None,
    stale: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Naive float64 forward of one row ``ids`` (L,), written from the cache semantics.

    Without ``stale``: every position; returns the logits (L, V) and each layer's
    keys (after rotary embedding) and values, (L, n_kv_heads * head_dim). With
    ``stale`` (such keys/values of an earlier canvas): only the positions
    ``fed = (lo, hi)`` are computed, their keys/values replace the stale ones,
    and they attend to all L positions; returns their logits (hi - lo, V).
    """
    d, nh, nkv = cfg.d_model, cfg.n_heads, cfg.n_kv_heads
    hd = d // nh
    w = {k: v.double() for k, v in state.items()}
    p = "model.transformer."
    lo, hi = fed if fed is not None else (0, ids.shape[0])
    positions = torch.arange(lo, hi, dtype=torch.float64)[:, None]
    freq = cfg.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angle = positions * freq

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps)

    def rope(x: torch.Tensor) -> torch.Tensor:  # x: (n, hd), rotation of the pairs (j, j + hd / 2)
        z = torch.complex(x[:, : hd // 2], x[:, hd // 2 :]) * torch.polar(torch.ones_like(angle), angle)
        return torch.cat([z.real, z.imag], dim=-1)

    x = w[p + "wte.weight"][ids[lo:hi]]
    layers = []
    for i in range(cfg.n_layers):
        q_ = f"{p}blocks.{i}."
        h = rms(x, w[q_ + "attn_norm.weight"])
        q, k, v = h @ w[q_ + "q_proj.weight"].T, h @ w[q_ + "k_proj.weight"].T, h @ w[q_ + "v_proj.weight"].T
        k = torch.cat([rope(k[:, j * hd : (j + 1) * hd]) for j in range(nkv)], dim=-1)
        if stale is not None:
            all_k, all_v = stale[i][0].clone(), stale[i][1].clone()
            all_k[lo:hi], all_v[lo:hi] = k, v
            k, v = all_k, all_v
        layers.append((k, v))
        heads = []
        for j in range(nh):
            kv = j // (nh // nkv)
            scores = rope(q[:, j * hd : (j + 1) * hd]) @ k[:, kv * hd : (kv + 1) * hd].T / hd**0.5
            scores = scores.masked_fill(~keep[None, :], float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ v[:, kv * hd : (kv + 1) * hd])
        x = x + torch.cat(heads, dim=-1) @ w[q_ + "attn_out.weight"].T
        h = rms(x, w[q_ + "ff_norm.weight"])
        x = (
            x
            + (torch.nn.functional.silu(h @ w[q_ + "ff_proj.weight"].T) * (h @ w[q_ + "up_proj.weight"].T))
            @ w[q_ + "ff_out.weight"].T
        )
    x = rms(x, w[p + "ln_f.weight"])
    return x @ w[p + "ff_out.weight"].T, layers


@pytest.fixture(scope="module")
def gqa_model() -> LLaDAModelLM:
    torch.manual_seed(3)
    model = LLaDAModelLM(LLaDAConfig(**{**TINY, "n_kv_heads": 2, "rope_theta": 10000.0})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "ln_f" in name:
                param.add_(0.5 * torch.randn_like(param))
    return model


def _padded_batch(seed: int, length: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    ids = _tokens(seed, 2, length)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids, mask


def test_full_forward_returns_every_layers_keys_and_values(gqa_model: LLaDAModelLM) -> None:
    ids, mask = _padded_batch(20)
    with torch.no_grad():
        out = gqa_model(ids, attention_mask=mask, use_cache=True)
        plain = gqa_model(ids, attention_mask=mask).logits
    cache = out.past_key_values
    assert isinstance(cache, LLaDAKVCache)
    assert len(cache) == TINY["n_layers"] and cache.length == 14 and cache.batch_size == 2
    for i in range(TINY["n_layers"]):
        keys, values = cache.layer(i)
        assert keys.shape == values.shape == (2, 2, 14, 16)
    # Asking for the cache does not change the logits; without it none is returned.
    assert torch.equal(out.logits, plain)
    assert gqa_model(ids, attention_mask=mask).past_key_values is None
    # The keys/values are the naive ones (keys after the rotary embedding of their position).
    _, layers = _naive_row(gqa_model.state_dict(), gqa_model.config, ids[0], mask[0].bool())
    for i, (k, v) in enumerate(layers):
        torch.testing.assert_close(cache.keys[i][0].transpose(0, 1).reshape(14, -1).double(), k, atol=1e-5, rtol=0)
        torch.testing.assert_close(cache.values[i][0].transpose(0, 1).reshape(14, -1).double(), v, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_forward_on_an_unchanged_canvas_equals_the_full_forward(gqa_model: LLaDAModelLM, mode: str) -> None:
    ids, mask = _padded_batch(21)
    lo, hi = 5, 9
    with torch.no_grad():
        full = gqa_model(ids, attention_mask=mask, use_cache=True)
        fed = ids[:, lo:] if mode == "prefix" else ids[:, lo:hi]
        cached = gqa_model(fed, attention_mask=mask, past_key_values=full.past_key_values, replace_position=lo)
    torch.testing.assert_close(cached.logits[:, : hi - lo], full.logits[:, lo:hi], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_forward_uses_the_stale_cache_outside_the_fed_positions(gqa_model: LLaDAModelLM, mode: str) -> None:
    # Fast-dLLM semantics: after the canvas changed, a cached forward recomputes the fed positions
    # (and replaces their cache entries) but takes every other position's keys/values from the cache.
    ids, mask = _padded_batch(22)
    lo, hi = 6, 10
    changed = ids.clone()
    changed[:, lo:hi] = _tokens(23, 2, hi - lo)
    if mode == "prefix":
        changed[:, hi:] = _tokens(24, 2, ids.shape[1] - hi)  # the suffix is fed too
    with torch.no_grad():
        full = gqa_model(ids, attention_mask=mask, use_cache=True)
        cache = full.past_key_values
        fed_end = ids.shape[1] if mode == "prefix" else hi
        out = gqa_model(
            changed[:, lo:fed_end], attention_mask=mask, past_key_values=cache, replace_position=lo, use_cache=True
        )
        fresh = gqa_model(changed, attention_mask=mask).logits
    assert out.past_key_values is cache  # updated in place
    state, cfg = gqa_model.state_dict(), gqa_model.config
    for row in range(2):
        keep = mask[row].bool()
        _, stale = _naive_row(state, cfg, ids[row], keep)
        expected, layers = _naive_row(state, cfg, changed[row], keep, fed=(lo, fed_end), stale=stale)
        torch.testing.assert_close(out.logits[row].double(), expected, atol=1e-5, rtol=0)
        for i, (k, _) in enumerate(layers):
            torch.testing.assert_close(
                cache.keys[i][row].transpose(0, 1).reshape(ids.shape[1], -1).double(), k, atol=1e-5, rtol=0
            )
    # The stale prefix makes a difference: the cached logits are not those of a fresh full forward.
    assert not torch.allclose(out.logits[:, : hi - lo], fresh[:, lo:hi], atol=1e-4)


def test_logits_to_keep(gqa_model: LLaDAModelLM) -> None:
    ids, mask = _padded_batch(25)
    with torch.no_grad():
        full = gqa_model(ids, attention_mask=mask).logits
        for kept, rows in [
            (0, list(range(14))),
            (3, [11, 12, 13]),
            (slice(4, 7), [4, 5, 6]),
            (torch.tensor([9, 2, 5]), [9, 2, 5]),
        ]:
            got = gqa_model(ids, attention_mask=mask, logits_to_keep=kept).logits
            torch.testing.assert_close(got, full[:, rows], atol=1e-6, rtol=0)
        with pytest.raises(ValueError, match="logits_to_keep"):
            gqa_model(ids, logits_to_keep=-1)
        with pytest.raises(ValueError, match="logits_to_keep"):
            gqa_model(ids, logits_to_keep=torch.tensor([0.5]))


def test_cache_arguments_are_checked(tiny_model: Any) -> None:
    ids = _tokens(8, 1, 6)
    with torch.no_grad():
        cache = tiny_model(ids, use_cache=True).past_key_values
        with pytest.raises(ValueError, match="replace_position needs past_key_values"):
            tiny_model(ids, replace_position=0)
        with pytest.raises(ValueError, match="replace_position"):
            tiny_model(ids[:, 2:], past_key_values=cache)
        with pytest.raises(ValueError, match=r"positions \[4, 8\) .* outside the cache's 6 positions"):
            tiny_model(ids[:, :4], past_key_values=cache, replace_position=4)
        with pytest.raises(ValueError, match="batch"):
            tiny_model(ids.repeat(2, 1)[:, :2], past_key_values=cache, replace_position=0)
        with pytest.raises(TypeError, match="LLaDAKVCache"):
            tiny_model(ids, past_key_values=((torch.zeros(1),),), replace_position=0)
        with pytest.raises(ValueError, match="attention_mask must have shape"):
            tiny_model(ids[:, 2:4], attention_mask=torch.ones(1, 2), past_key_values=cache, replace_position=2)
    with pytest.raises(TypeError, match="position_ids"):
        tiny_model(ids, position_ids=torch.arange(6)[None])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_matches_cpu_float32(tiny_model: Any) -> None:
    ids = _tokens(9, 2, 16)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        ref = tiny_model(ids, attention_mask=mask).logits
        gpu: Any = LLaDAModelLM(tiny_model.config)
        gpu = gpu.to(device="cuda", dtype=torch.bfloat16).eval()
        gpu.load_state_dict(tiny_model.state_dict())
        out = gpu(ids.cuda(), attention_mask=mask.cuda()).logits
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float().cpu(), ref, atol=0.05, rtol=0.05)


# --------------------------------------------------------------------------- config and size


def test_default_config_is_the_8b_shape() -> None:
    cfg = LLaDAConfig()
    expected = {
        "d_model": 4096,
        "n_heads": 32,
        "n_kv_heads": 32,
        "n_layers": 32,
        "mlp_hidden_size": 12288,
        "vocab_size": 126464,
        "embedding_size": 126464,
        "mask_token_id": 126336,
        "eos_token_id": 126081,
        "pad_token_id": 126081,
        "bos_token_id": 126080,
        "rope": True,
        "rope_theta": 500000.0,
        "max_sequence_length": 4096,
        "block_type": "llama",
        "activation_type": "silu",
        "layer_norm_type": "rms",
        "rms_norm_eps": 1e-5,
        "weight_tying": False,
        "include_bias": False,
        "init_std": 0.02,
    }
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert cfg.model_type == "llada"
    assert cfg.auto_map == AUTO_MAP
    n = _llada_num_params(cfg)
    # 2 x 126464 x 4096 (embedding, head) + 32 x (4 x 4096^2 + 3 x 4096 x 12288 + 2 x 4096) + 4096
    assert n == 8_015_581_184
    assert 7.9e9 < n < 8.1e9


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_kv_heads": 2}, {"weight_tying": True}, {"include_bias": True, "embedding_size": 520}],
)
def test_parameter_formula_matches_instantiated_model(overrides: dict[str, Any]) -> None:
    cfg = LLaDAConfig(**{**TINY, **overrides})
    model = LLaDAModelLM(cfg)
    assert _llada_num_params(cfg) == sum(p.numel() for p in model.parameters())


def test_unsupported_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="n_kv_heads"):
        LLaDAModelLM(LLaDAConfig(**{**TINY, "n_kv_heads": 3}))
    with pytest.raises(NotImplementedError, match="block_type"):
        LLaDAModelLM(LLaDAConfig(**{**TINY, "block_type": "sequential"}))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("include_qkv_bias", True),
        ("attention_layer_norm", True),
        ("bias_for_layer_norm", True),
        ("layer_norm_with_affine", False),
        ("input_emb_norm", True),
        ("scale_logits", True),
        ("multi_query_attention", False),
        ("rope_full_precision", False),
        ("alibi", True),
        ("block_group_size", 4),
    ],
)
def test_each_unimplemented_key_is_refused_by_name(key: str, value: object) -> None:
    with pytest.raises(UnsupportedConfigError) as excinfo:
        LLaDAModelLM(LLaDAConfig(**{**TINY, key: value}))
    assert f"{key}=" in str(excinfo.value)
    assert isinstance(excinfo.value, ValueError) and isinstance(excinfo.value, NotImplementedError)


def test_every_problem_of_a_config_is_named() -> None:
    with pytest.raises(UnsupportedConfigError) as excinfo:
        LLaDAModelLM(LLaDAConfig(**{**TINY, "scale_logits": True, "include_qkv_bias": True, "n_kv_heads": 3}))
    for key in ("scale_logits", "include_qkv_bias", "n_kv_heads"):
        assert key in str(excinfo.value)
    # include_qkv_bias null is the hub code's "no bias"; bias_for_layer_norm null follows include_bias.
    LLaDAModelLM(LLaDAConfig(**{**TINY, "include_qkv_bias": None, "bias_for_layer_norm": None}))
    with pytest.raises(UnsupportedConfigError, match="bias_for_layer_norm=true"):
        LLaDAModelLM(LLaDAConfig(**{**TINY, "include_bias": True, "bias_for_layer_norm": None}))


# --------------------------------------------------------------------------- writers


def test_unknown_arch_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'n_head'"):
        write_llada_folder(tmp_path / "x", {**TINY, "n_head": 4}, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="'d_model'"):
        write_llama_folder(tmp_path / "y", {**TINY_LLAMA, "d_model": 64}, seed=0, dtype=torch.float32)
    assert not os.listdir(tmp_path)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fails while building the model.
    with pytest.raises(ValueError, match="multiple of n_heads"):
        write_llada_folder(tmp_path / "bad", {**TINY, "n_heads": 3}, seed=0, dtype=torch.float32)
    assert not os.listdir(tmp_path)

    # Fails after the weights and config.json were saved (while copying the remote code).
    def broken_copy(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        write_llada_folder(tmp_path / "late", TINY, seed=0, dtype=torch.float32)
    assert not os.listdir(tmp_path)


def test_writing_twice_does_not_rewrite(tmp_path: Path) -> None:
    folder = write_llada_folder(tmp_path / "once", TINY, seed=0, dtype=torch.float32)
    weights = folder / "model.safetensors"
    before = (weights.stat().st_ino, weights.stat().st_mtime_ns, weights.read_bytes())
    # A different seed would give different weights if the folder were rewritten.
    again = write_llada_folder(tmp_path / "once", TINY, seed=1, dtype=torch.float32)
    assert again == folder
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns, weights.read_bytes()) == before
    assert sorted(os.listdir(tmp_path)) == ["once"]
    # A stale copy of the remote code is brought up to date; the weights stay as they are.
    package_code = (Path(random_init.__file__).parent / "llada_hf" / "modeling_llada.py").read_bytes()
    (folder / "modeling_llada.py").write_text("# stale\n")
    write_llada_folder(folder, TINY, seed=0, dtype=torch.float32)
    assert (folder / "modeling_llada.py").read_bytes() == package_code
    assert (weights.stat().st_ino, weights.stat().st_mtime_ns) == before[:2]
    written = ["config.json", "model.safetensors", "dllm-bench-cache.json", *LLADA_FILES]
    assert sorted(os.listdir(folder)) == sorted(written)


def test_existing_non_model_folder_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_llada_folder(tmp_path / "taken", TINY, seed=0, dtype=torch.float32)
    assert os.listdir(tmp_path / "taken") == ["notes.txt"]
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_llama_folder_round_trip(tmp_path: Path) -> None:
    folder = write_llama_folder(tmp_path / "llama", TINY_LLAMA, seed=0, dtype=torch.bfloat16)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in config
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert not model.training
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == torch.bfloat16
    written = load_file(folder / "model.safetensors")
    loaded = model.state_dict()
    assert set(written) == set(loaded)
    assert all(torch.equal(loaded[k], v) for k, v in written.items())
    with torch.no_grad():
        assert model(_tokens(0, 2, 7)).logits.shape == (2, 7, 512)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert write_llama_folder(folder, TINY_LLAMA, seed=1, dtype=torch.bfloat16) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_folder_key() -> None:
    arch = {"d_model": 64, "n_heads": 4}
    key = folder_key("llada", arch, 0, "bfloat16")
    # sha256 of '{"arch":{"d_model":64,"n_heads":4},"dtype":"bfloat16","format":2,"kind":"llada","seed":0}':
    # stable across runs.
    assert key == "d0f922224503523f"
    assert all(c in "0123456789abcdef" for c in key)
    assert folder_key("llada", {"n_heads": 4, "d_model": 64}, 0, "bfloat16") == key
    others = {
        folder_key("llama", arch, 0, "bfloat16"),
        folder_key("llada", arch, 1, "bfloat16"),
        folder_key("llada", arch, 0, "float32"),
        folder_key("llada", {**arch, "n_heads": 8}, 0, "bfloat16"),
    }
    assert key not in others
    assert len(others) == 4
