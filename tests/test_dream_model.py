"""The suite's Dream model and sampler: checkpoint loading, KV cache, batches, and equality with the
published code (Fast-dLLM's `dream/model/`, where DLLM_BENCH_DREAM_REFERENCE points to it)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from dllm_bench.kinds.dream import DreamSettings, DreamSettingsError
from dllm_bench.models.checkpoint import CheckpointError
from dllm_bench.models.dream.checkpoint import load_dream_checkpoint
from dllm_bench.models.dream.configuration import DreamConfig
from dllm_bench.models.dream.modeling import DreamLM
from dllm_bench.sampling.dream import generate
from tests.dream_reference import generation_config, module, needs_reference, reference_model

MASK = 250
ARCH: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "initializer_range": 0.3,  # peaked predictions: near-uniform ones rank by float noise
    "mask_token_id": MASK,
    "pad_token_id": 251,
    "bos_token_id": 252,
    "eos_token_id": 253,
}
ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
CACHED = [
    DreamSettings(steps=8, alg="entropy", cache="prefix", block_length=8),
    DreamSettings(steps=8, alg="entropy", cache="dual", block_length=8),
    DreamSettings(steps=None, alg="maskgit_plus", cache="prefix", block_length=8, threshold=0.3),
    DreamSettings(steps=None, alg="maskgit_plus", cache="dual", block_length=8, threshold=0.3),
]


@pytest.fixture(scope="module")
def model() -> DreamLM:
    torch.manual_seed(0)
    return DreamLM(DreamConfig(**ARCH)).eval()


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randint(0, MASK, (1, 12), generator=torch.Generator().manual_seed(1))


def _quiet(call: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):  # the published sampler prints on every call
        return call()


# --- always run --------------------------------------------------------------------------------------


def test_shifted_prediction_and_weight_names(model: DreamLM) -> None:
    names = set(model.state_dict())
    assert {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.bias", "lm_head.weight"} <= names
    assert "model.layers.1.mlp.down_proj.weight" in names and "model.norm.weight" in names
    x = torch.randint(0, MASK, (2, 10))
    with torch.no_grad():
        full = model(x).logits
        kept = model(x, logits_to_keep=slice(3, 9)).logits
    assert full.shape == (2, 10, 256)
    torch.testing.assert_close(kept, full[:, 3:9], rtol=0, atol=1e-6)


def test_cached_forward_equals_the_full_forward(model: DreamLM) -> None:
    """With nothing changed since the refresh, a cached forward of the block (dual) or of the block
    and its suffix (prefix) gives the full forward's logits."""
    x = torch.randint(0, MASK, (2, 24))
    with torch.no_grad():
        out = model(x, use_cache=True)
        for end in (16, 24):
            part = model(x[:, 8:end], past_key_values=out.past_key_values, replace_position=8, use_cache=True)
            torch.testing.assert_close(part.logits, out.logits[:, 8:end], rtol=1e-5, atol=1e-5)


def test_padding_is_hidden_and_positions_start_at_the_first_token(model: DreamLM) -> None:
    x = torch.randint(0, MASK, (1, 9))
    padded = torch.cat([torch.full((1, 3), 251), x], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = model(x).logits
        inside = model(padded, attention_mask=mask, position_ids=positions).logits[:, 3:]
    torch.testing.assert_close(inside, alone, rtol=1e-5, atol=1e-5)


def test_checkpoint_loads_by_name_and_refuses_other_layouts(model: DreamLM, tmp_path: Path) -> None:
    folder = tmp_path / "dream"
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "Dream"
    loaded = load_dream_checkpoint(folder, dtype=torch.float32)
    x = torch.randint(0, MASK, (1, 7))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    weights = load_file(folder / "model.safetensors")
    weights["model.extra.weight"] = torch.zeros(2)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=re.escape("model.extra.weight")):
        load_dream_checkpoint(folder, dtype=torch.float32)
    (folder / "config.json").write_text(json.dumps({**config, "use_sliding_window": True}))
    with pytest.raises(CheckpointError, match="use_sliding_window: true"):
        load_dream_checkpoint(folder, dtype=torch.float32)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llada"}))
    with pytest.raises(CheckpointError, match="model_type 'llada'"):
        load_dream_checkpoint(folder, dtype=torch.float32)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        (DreamSettings(alg="greedy"), "alg"),
        (DreamSettings(alg="maskgit_plus", cache="prefix", block_length=8), "alg"),
        (DreamSettings(alg="entropy", cache="dual", block_length=8, threshold=0.9), "alg"),
        (DreamSettings(cache="prefix"), "block_length"),
        (DreamSettings(steps=16, cache="dual", block_length=5), "block_length"),
        (DreamSettings(steps=3, cache="dual", block_length=8), "steps"),
        (DreamSettings(threshold=0.9, steps=None), "threshold"),
        (DreamSettings(top_p=1.5), "top_p"),
        (DreamSettings(eps=0.0), "eps"),
    ],
)
def test_settings_refused_under_their_key(settings: DreamSettings, key: str) -> None:
    with pytest.raises(DreamSettingsError) as info:
        settings.validate(16)
    assert key in info.value.problems


@pytest.mark.parametrize(
    "settings",
    [DreamSettings(steps=8, alg=alg) for alg in ALGS[1:]] + CACHED,
    ids=lambda s: "-".join(s.id_parts()),
)
def test_batch_rows_equal_their_batch_1_decode(model: DreamLM, settings: DreamSettings) -> None:
    """Left-padded rows decode as each prompt alone (temperature 0; origin draws one stream for the batch)."""
    lengths = (12, 7, 3)
    prompts = [torch.randint(0, MASK, (1, n), generator=torch.Generator().manual_seed(n)) for n in lengths]
    batch = torch.full((3, 12), 251)
    mask = torch.zeros((3, 12), dtype=torch.long)
    for row, (n, p) in enumerate(zip(lengths, prompts, strict=True)):
        batch[row, 12 - n :] = p[0]
        mask[row, 12 - n :] = 1
    together = generate(model, batch, settings, gen_length=16, mask_id=MASK, attention_mask=mask)
    for row, p in enumerate(prompts):
        alone = generate(model, p, settings, gen_length=16, mask_id=MASK)
        assert torch.equal(together[row, 12:], alone[0, p.shape[1] :]), row
    assert not bool(torch.eq(together[:, 12:], MASK).any())


def test_no_forward_that_cannot_commit(model: DreamLM, prompt: torch.Tensor) -> None:
    calls: list[int] = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = generate(model, prompt, DreamSettings(steps=40, alg="entropy"), gen_length=16, mask_id=MASK)
    finally:
        hook.remove()
    assert len(calls) <= 16 and not bool(torch.eq(out, MASK).any())


def test_temperature_draws_follow_the_seed(model: DreamLM, prompt: torch.Tensor) -> None:
    settings = DreamSettings(steps=8, alg="maskgit_plus", temperature=1.0, top_k=20)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(generate(model, prompt, settings, gen_length=16, mask_id=MASK))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# --- against the published code ---------------------------------------------------------------------


@needs_reference
def test_logits_equal_the_published_model(model: DreamLM) -> None:
    reference = reference_model(model.state_dict(), ARCH)
    x = torch.randint(0, MASK, (2, 20))
    with torch.no_grad():
        assert torch.equal(model(x).logits, reference(x).logits)


@needs_reference
def test_bfloat16_logits_equal_the_published_model(model: DreamLM) -> None:
    """In bf16 too, with the published rotary frequencies in float32 as its model computes them
    (a `.to(bfloat16)` rounds that buffer; its own reset_rope_parameters computes it again)."""
    reference = reference_model(model.state_dict(), ARCH).to(torch.bfloat16)
    reference.reset_rope_parameters()
    ours = DreamLM(DreamConfig(**ARCH)).eval()
    ours.load_state_dict(model.state_dict())
    ours = ours.to(torch.bfloat16)
    x = torch.randint(0, MASK, (2, 40))
    with torch.no_grad():
        assert torch.equal(ours(x).logits, reference(x).logits)


@needs_reference
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("alg", ALGS)
def test_tokens_equal_the_published_sampler(model: DreamLM, prompt: torch.Tensor, alg: str, temperature: float) -> None:
    """At temperature 0 and, from the same seed, at 0.7 (the same draws in the same order)."""
    reference = reference_model(model.state_dict(), ARCH)
    config = generation_config(
        "generation_utils", steps=8, alg=alg, temperature=temperature, max_new_tokens=16, mask_token_id=MASK
    )
    torch.manual_seed(3)
    expected = _quiet(lambda: reference.diffusion_generate(prompt, generation_config=config))
    torch.manual_seed(3)
    settings = DreamSettings(steps=8, alg=alg, temperature=temperature)
    assert torch.equal(generate(model, prompt, settings, gen_length=16, mask_id=MASK), expected)


@needs_reference
@pytest.mark.parametrize("settings", CACHED, ids=lambda s: "-".join(s.id_parts()))
def test_tokens_equal_fast_dllm_block_sampler(model: DreamLM, prompt: torch.Tensor, settings: DreamSettings) -> None:
    reference = reference_model(model.state_dict(), ARCH)
    mixin = module("generation_utils_block").DreamGenerationMixin
    reference.diffusion_generate = types.MethodType(mixin.diffusion_generate, reference)
    reference._sample = types.MethodType(mixin._sample, reference)
    alg = "confidence_threshold" if settings.threshold is not None else "entropy"
    config = generation_config("generation_utils_block", steps=8, alg=alg, max_new_tokens=16, mask_token_id=MASK)
    expected = reference.diffusion_generate(
        prompt, generation_config=config, block_length=8, dual_cache=settings.cache == "dual",
        threshold=settings.threshold,
    )
    assert torch.equal(generate(model, prompt, settings, gen_length=16, mask_id=MASK), expected)


class MaskPredictor(torch.nn.Module):
    """A stand-in model (not the thing under test) whose most probable token is always the mask id."""

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> types.SimpleNamespace:
        logits = torch.zeros((*input_ids.shape, 256))
        logits[..., MASK] = 5.0
        keep = kwargs.get("logits_to_keep")
        kept = logits if keep is None else logits[keep] if isinstance(keep, torch.Tensor) else logits[:, keep]
        return types.SimpleNamespace(logits=kept, past_key_values=object())


def test_a_threshold_block_that_cannot_complete_fails_instead_of_looping(prompt: torch.Tensor) -> None:
    settings = DreamSettings(steps=None, alg="maskgit_plus", cache="dual", block_length=8, threshold=0.9)
    with pytest.raises(RuntimeError, match="predicts the mask id 250"):
        generate(MaskPredictor(), prompt, settings, gen_length=16, mask_id=MASK)


#: The keys of Dream-org/Dream-v0-Instruct-7B's config.json (from memory of the published file, not
#: downloaded here), at the tiny test size: what a hub checkpoint's folder holds besides the weights.
PUBLISHED_LAYOUT: dict[str, Any] = {
    "architectures": ["DreamModel"],
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "max_window_layers": 28,
    "model_type": "Dream",
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.2",
    "use_cache": False,
    "use_sliding_window": False,
}


def test_a_folder_in_the_published_layout_loads_by_weight_name(model: DreamLM, tmp_path: Path) -> None:
    """config.json with the published keys, safetensors weights under the published names, no code."""
    (tmp_path / "config.json").write_text(json.dumps({**PUBLISHED_LAYOUT, **ARCH}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    loaded = load_dream_checkpoint(tmp_path, dtype=torch.float32)
    x = torch.randint(0, MASK, (1, 9))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    assert loaded.config.mask_token_id == MASK and loaded.config.rope_theta == ARCH["rope_theta"]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_draws_follow_the_filtered_distribution(model: DreamLM, prompt: torch.Tensor, cache: str) -> None:
    """At temperature > 0 the block's first token is a draw from softmax(logits / T) of the refresh
    forward, restricted to the top-k: over 400 seeds the frequencies match those probabilities."""
    settings = DreamSettings(steps=2, alg="entropy", temperature=1.5, top_k=4, cache=cache, block_length=2)
    with torch.no_grad():
        logits = model(prompt).logits[0, -1] / 1.5
    top = torch.topk(logits, 4)
    probs = torch.zeros_like(logits)
    probs[top.indices] = torch.softmax(top.values, dim=-1)
    counts = torch.zeros_like(logits)
    for seed in range(400):
        torch.manual_seed(seed)
        counts[generate(model, prompt, settings, gen_length=2, mask_id=MASK)[0, prompt.shape[1]]] += 1
    assert set(counts.nonzero().flatten().tolist()) <= set(top.indices.tolist())
    assert 0.5 * float((counts / 400 - probs).abs().sum()) < 0.1  # total variation
