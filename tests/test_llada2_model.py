"""The suite's LLaDA2 model and sampler: checkpoint loading, the block sampler's rules, batches and
the prefix cache, and equality with the published code (ZHZisZZ/dllm `dllm/pipelines/llada2{,1}/`,
where DLLM_BENCH_LLADA2_REFERENCE points to it; its recorded decodes in
`tests/fixtures/llada2_reference.json` otherwise)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from dllm_bench.kinds.llada2 import Llada2Settings, Llada2SettingsError
from dllm_bench.models.checkpoint import CheckpointError
from dllm_bench.models.llada2.checkpoint import load_llada2_checkpoint
from dllm_bench.models.llada2.configuration import CONFIG_CLASSES, MODEL_TYPE_20, MODEL_TYPE_21
from dllm_bench.models.llada2.modeling import LLaDA2MoeLM, UnsupportedLLaDA2ConfigError
from dllm_bench.sampling.llada2 import generate, transfer_schedule
from tests.llada2_reference import RECORDED, needs_reference, reference_generate, reference_model

FIXTURE = Path(__file__).parent / "fixtures" / "llada2_reference.json"
MASK, EOS, PAD = 122, 121, 120
ARCH: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "moe_intermediate_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_experts": 8,
    "n_group": 4,
    "topk_group": 2,
    "num_experts_per_tok": 3,
    "num_shared_experts": 1,
    "first_k_dense_replace": 1,
    "max_position_embeddings": 256,
    "initializer_range": 0.3,  # peaked predictions: near-uniform ones rank by float noise
    "use_qkv_bias": True,
    "pad_token_id": PAD,
    "mask_token_id": MASK,
    "eos_token_id": EOS,
}
VERSION_TYPES = {"2.0": MODEL_TYPE_20, "2.1": MODEL_TYPE_21}
PROMPT_LENGTH, GEN_LENGTH, BLOCK = 11, 20, 8


def build(version: str) -> LLaDA2MoeLM:
    """The tiny model of a version, seeded, with a non-zero expert_bias (it steers the routing)."""
    torch.manual_seed(0)
    model = LLaDA2MoeLM(CONFIG_CLASSES[VERSION_TYPES[version]](**ARCH)).eval()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("expert_bias"):
                buffer.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny models run in milliseconds on one thread; two threads on a shared, busy machine spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["2.0", "2.1"])
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def models() -> dict[str, LLaDA2MoeLM]:
    return {v: build(v) for v in VERSION_TYPES}


def prompt_of(seed: int, length: int = PROMPT_LENGTH) -> torch.Tensor:
    return torch.randint(0, PAD, (1, length), generator=torch.Generator().manual_seed(seed))


def block_mask(length: int, block: int) -> torch.Tensor:
    blocks = torch.arange(length) // block
    return (blocks[:, None] >= blocks[None, :])[None, None]


def decode(model: LLaDA2MoeLM, prompt: torch.Tensor, settings: Llada2Settings, version: str, eos: int = EOS,
           mask: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int]:
    """Tokens, forwards (counted by a hook) and edits of one call."""
    calls = [0]
    hook = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        result = generate(model, prompt, settings, gen_length=GEN_LENGTH, mask_id=MASK, eos_id=eos, version=version,
                          attention_mask=mask)
    finally:
        hook.remove()
    return result.tokens, calls[0], result.edits


def cut(tokens: torch.Tensor, eos: int) -> list[int]:
    """The generated part up to and including the first EOS (what the published generate returns)."""
    generated = tokens[0, PROMPT_LENGTH:].tolist()
    return generated[: generated.index(eos) + 1] if eos in generated else generated


# --- always run --------------------------------------------------------------------------------------


def test_weight_names_and_routing(models: dict[str, LLaDA2MoeLM]) -> None:
    names = set(models["2.0"].state_dict())
    assert {"model.word_embeddings.weight", "model.layers.0.attention.query_key_value.weight", "lm_head.weight",
            "model.layers.0.mlp.gate_proj.weight", "model.layers.1.mlp.gate.expert_bias",
            "model.layers.1.mlp.experts.7.down_proj.weight", "model.layers.1.mlp.shared_experts.up_proj.weight",
            "model.layers.0.attention.query_layernorm.weight"} <= names
    router = models["2.0"].model.layers[1].mlp.gate
    chosen, weights = router(torch.randn(50, 32))
    assert chosen.shape == (50, 3) and torch.allclose(weights.sum(-1), torch.full((50,), 2.5))
    groups = (chosen // 2).tolist()  # 8 experts in 4 groups of 2: at most topk_group 2 groups per token
    assert all(len(set(row)) <= 2 for row in groups)


def test_block_causal_mask_hides_later_blocks(models: dict[str, LLaDA2MoeLM]) -> None:
    x = torch.randint(0, PAD, (1, 24))
    changed = x.clone()
    changed[0, 16:] = MASK
    mask = block_mask(24, 8)
    with torch.no_grad():
        a = models["2.0"](x, attention_mask=mask).logits
        b = models["2.0"](changed, attention_mask=mask).logits
        full = models["2.0"](changed).logits
    torch.testing.assert_close(a[:, :16], b[:, :16], rtol=1e-5, atol=1e-5)  # the experts batch other tokens
    assert not torch.equal(full[:, :16], b[:, :16])  # without the mask every position sees the last block


def test_prefix_cache_forward_equals_the_full_forward(models: dict[str, LLaDA2MoeLM]) -> None:
    x = torch.randint(0, PAD, (2, 24))
    mask = block_mask(24, 8)
    with torch.no_grad():
        full = models["2.0"](x, attention_mask=mask).logits
        prefix = models["2.0"](x[:, :16], attention_mask=mask[:, :, :16, :16], use_cache=True).past_key_values
        part = models["2.0"](x[:, 16:], attention_mask=mask[:, :, 16:, :], past_key_values=prefix,
                             position_ids=torch.arange(16, 24)[None]).logits
    torch.testing.assert_close(part, full[:, 16:], rtol=1e-5, atol=1e-5)


def test_kept_rows_skip_the_last_layer_of_the_others(models: dict[str, LLaDA2MoeLM]) -> None:
    """`logits_to_keep` runs the last layer's attention output and experts for the kept rows only:
    the same logits up to float rounding (other batch shapes in the matrix products)."""
    x = torch.randint(0, PAD, (2, 24))
    mask = block_mask(24, 8)
    with torch.no_grad():
        full = models["2.1"](x, attention_mask=mask).logits
        kept = models["2.1"](x, attention_mask=mask, logits_to_keep=slice(16, 24)).logits
    assert kept.shape == (2, 8, 128)
    torch.testing.assert_close(kept, full[:, 16:], rtol=1e-5, atol=1e-5)


def test_transfer_schedule_spreads_the_block() -> None:
    assert transfer_schedule(8, 3) == [3, 3, 2]
    assert transfer_schedule(8, 8) == [1] * 8


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        (Llada2Settings(steps=9, block_length=8), "steps"),
        (Llada2Settings(threshold=1.5), "threshold"),
        (Llada2Settings(cache="dual"), "cache"),
        (Llada2Settings(minimal_topk=0), "minimal_topk"),
        (Llada2Settings(max_post_steps=4), "max_post_steps"),
        (Llada2Settings(editing_threshold=-0.1), "editing_threshold"),
    ],
)
def test_settings_refused_under_their_key(settings: Llada2Settings, key: str) -> None:
    with pytest.raises(Llada2SettingsError) as caught:
        settings.validate(32)
    assert list(caught.value.problems) == [key]


def test_editing_refused_on_llada20(models: dict[str, LLaDA2MoeLM]) -> None:
    with pytest.raises(ValueError, match=r"llada2\.editing_threshold: null for a LLaDA2\.0 model"):
        generate(models["2.0"], prompt_of(0), Llada2Settings(editing_threshold=0.5), gen_length=8, mask_id=MASK,
                 eos_id=EOS, version="2.0")


def test_unsupported_config_refused_by_key() -> None:
    with pytest.raises(UnsupportedLLaDA2ConfigError, match=r"hidden_act 'gelu'"):
        LLaDA2MoeLM(CONFIG_CLASSES[MODEL_TYPE_20](**{**ARCH, "hidden_act": "gelu"}))
    with pytest.raises(UnsupportedLLaDA2ConfigError, match=r"n_group 3: not a divisor of num_experts 8"):
        LLaDA2MoeLM(CONFIG_CLASSES[MODEL_TYPE_20](**{**ARCH, "n_group": 3}))


def test_checkpoint_loads_by_name_and_refuses_other_layouts(models: dict[str, LLaDA2MoeLM], tmp_path: Path) -> None:
    folder = tmp_path / "llada21"
    models["2.1"].save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llada21_moe"
    loaded = load_llada2_checkpoint(folder, dtype=torch.float32)
    x = torch.randint(0, PAD, (1, 7))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, models["2.1"](x).logits)
    assert loaded.config.version == "2.1"
    (folder / "config.json").write_text(json.dumps({**config, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}}))
    with pytest.raises(CheckpointError, match=r"LLaDA2\.1 checkpoint .*rope_scaling"):
        load_llada2_checkpoint(folder, dtype=torch.float32)
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "Dream"}))
    with pytest.raises(CheckpointError, match="model_type 'Dream', expected 'llada2_moe'"):
        load_llada2_checkpoint(folder, dtype=torch.float32)
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    weights["model.extra.weight"] = torch.zeros(2)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=re.escape("model.extra.weight")):
        load_llada2_checkpoint(folder, dtype=torch.float32)


@pytest.mark.parametrize(
    "keywords", [{}, {"cache": "prefix"}, {"editing_threshold": 0.5, "max_post_steps": 4, "cache": "prefix"}]
)
def test_batch_rows_equal_their_batch_1_decode(
    models: dict[str, LLaDA2MoeLM], version: str, keywords: dict[str, Any]
) -> None:
    """Left-padded prompts of different lengths: each row decodes as it does alone (same padded row)."""
    if version == "2.0" and keywords.get("editing_threshold") is not None:
        pytest.skip("editing is LLaDA2.1's")
    settings = Llada2Settings(block_length=BLOCK, **{"steps": 8, "threshold": 0.5, **keywords})
    prompts = torch.cat([prompt_of(seed) for seed in range(3)])
    mask = torch.ones_like(prompts)
    for row, pad in ((1, 3), (2, 9)):
        prompts[row, :pad], mask[row, :pad] = PAD, 0
    together, _, edits = decode(models[version], prompts, settings, version, mask=mask)
    alone = [decode(models[version], prompts[i : i + 1], settings, version, mask=mask[i : i + 1]) for i in range(3)]
    for row, (tokens, _, _) in enumerate(alone):
        assert torch.equal(together[row], tokens[0]), row
    assert edits == sum(e for _, _, e in alone)


def test_prefix_cache_changes_no_token(models: dict[str, LLaDA2MoeLM], version: str) -> None:
    editing = {"editing_threshold": 0.5} if version == "2.1" else {}
    for seed in range(3):
        for threshold in (None, 0.5):
            base = Llada2Settings(steps=8, block_length=BLOCK, threshold=threshold, **editing)  # type: ignore[arg-type]
            plain, plain_nfe, _ = decode(models[version], prompt_of(seed), base, version)
            cached, cached_nfe, _ = decode(models[version], prompt_of(seed), Llada2Settings(
                **{**base.__dict__, "cache": "prefix"}), version)
            assert torch.equal(plain, cached) and plain_nfe == cached_nfe


def test_outputs_after_eos_read_eos(models: dict[str, LLaDA2MoeLM]) -> None:
    settings = Llada2Settings(steps=8, block_length=BLOCK, threshold=None)
    tokens, _, _ = decode(models["2.0"], prompt_of(0), settings, "2.0")
    eos = int(tokens[0, PROMPT_LENGTH + 2])
    stopped, nfe, _ = decode(models["2.0"], prompt_of(0), settings, "2.0", eos=eos)
    first = stopped[0, PROMPT_LENGTH:].tolist().index(eos)
    assert nfe == 5  # LLaDA2.0 stops after the block of its EOS: the 5 masked positions of the first block
    assert set(stopped[0, PROMPT_LENGTH + first :].tolist()) == {eos}
    assert MASK not in stopped.tolist()[0]


def test_tokens_equal_the_recorded_reference(models: dict[str, LLaDA2MoeLM]) -> None:
    """The published generate's decodes, recorded (regenerate: `python -m tests.llada2_reference`)."""
    records = json.loads(FIXTURE.read_text())
    assert len(records) == len(RECORDED) * 3
    for record in records:
        settings = Llada2Settings(block_length=BLOCK, **record["settings"])
        tokens, nfe, _ = decode(models[record["version"]], torch.tensor([record["prompt"]]), settings,
                                record["version"], eos=record["eos"])
        assert cut(tokens, record["eos"]) == record["tokens"], record
        assert nfe == record["nfe"], record


# --- with the published code -----------------------------------------------------------------------


@needs_reference
def test_logits_equal_the_published_model(models: dict[str, LLaDA2MoeLM], version: str) -> None:
    """Float32, MoE routing with a non-zero expert_bias, without and with the block-causal mask: bit for bit."""
    ours = models[version]
    reference = reference_model(version, ours.state_dict(), ARCH)
    x = torch.randint(0, PAD, (2, 24))
    mask = block_mask(24, 8)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    with torch.no_grad():
        assert torch.equal(ours(x).logits, reference(x).logits)
        assert torch.equal(ours(x, attention_mask=mask).logits, reference(x, attention_mask=additive).logits)


@needs_reference
def test_tokens_equal_the_published_generate(models: dict[str, LLaDA2MoeLM]) -> None:
    """Batch 1: tokens (cut at the first EOS) and forwards equal the published generate's, and the fixture
    holds the same decodes."""
    records = json.loads(FIXTURE.read_text())
    references = {v: reference_model(v, models[v].state_dict(), ARCH) for v in VERSION_TYPES}
    for record in records:
        version = record["version"]
        prompt = torch.tensor([record["prompt"]])
        expected = reference_generate(references[version], prompt, record["settings"], version=version,
                                      gen_length=GEN_LENGTH, block_length=BLOCK, mask_id=MASK, eos_id=record["eos"])
        assert expected == (record["tokens"], record["nfe"]), record
        tokens, nfe, _ = decode(models[version], prompt, Llada2Settings(block_length=BLOCK, **record["settings"]),
                                version, eos=record["eos"])
        assert (cut(tokens, record["eos"]), nfe) == expected, record
