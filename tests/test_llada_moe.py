"""The suite's LLaDA-MoE model: checkpoint loading and refusals, and equality with the published code
(ZHZisZZ/dllm's `modeling_lladamoe.py`, where DLLM_BENCH_LLADAMOE_REFERENCE points to it; a
recorded fixture of its outputs checks the same without it)."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file

from dllm_bench.backends import backend
from dllm_bench.cases import expand_cases
from dllm_bench.config import ConfigError, check_runnable, parse_config
from dllm_bench.models.checkpoint import CheckpointError
from dllm_bench.models.llada_checkpoint import load_llada_checkpoint
from dllm_bench.models.lladamoe.checkpoint import load_lladamoe_checkpoint
from dllm_bench.models.lladamoe.configuration import LLaDAMoEConfig
from dllm_bench.models.lladamoe.modeling import LLaDAMoEModelLM
from dllm_bench.models.loader import ModelCache, ModelLoadError
from dllm_bench.runner import run_case
from dllm_bench.sampling.llada import generate
from dllm_bench.sampling.schedule import LladaSettings
from dllm_bench.spec import ModelSpec
from tests.lladamoe_reference import FILES, needs_reference, reference_folder, reference_model
from tests.published_llada import published_layout

FIXTURE = Path(__file__).parent / "fixtures" / "lladamoe_reference.json"
MASK = 255
#: Every key of the published configuration (its class defaults most of them to -1), at a tiny
#: shape: 2 MoE layers of 4 experts, top 2, query/key norms, half the head rotated.
TINY: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 32,
    "dense_intermediate_size": 64,
    "expert_intermediate_size": 16,
    "shared_expert_intermediate_size": None,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 256,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.5,
    "rope_scaling": None,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "clip_qkv": None,
    "num_experts_per_tok": 2,
    "num_experts": 4,
    "norm_topk_prob": True,
    "qk_layernorm": True,
    "moe_layer_freq": [1, 1],
    "moe_router_enable_expert_bias": False,
    "moe_router_score_function": "softmax",
    "routed_scaling_factor": 1.0,
    "router_num_group": 1,
    "router_topk_group": 1,
    "mask_token_id": MASK,
    "pad_token_id": 254,
    "bos_token_id": None,
    "eos_token_id": 254,
}
#: Every optional part on: a dense first layer, a shared expert, the expert bias, biased and clipped
#: projections; and the keys the published forward never reads set away from 7B-A1B's.
FULL: dict[str, Any] = {
    **TINY,
    "num_hidden_layers": 3,
    "moe_layer_freq": [0, 1, 1],
    "shared_expert_intermediate_size": 24,
    "moe_router_enable_expert_bias": True,
    "attention_bias": True,
    "clip_qkv": 2.0,
    "norm_topk_prob": False,
    "routed_scaling_factor": 2.5,
    "router_num_group": 2,
    "router_topk_group": 1,
}
CONFIGS = {"tiny": TINY, "full": FULL}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def seeded_model(arch: dict[str, Any], seed: int = 0) -> LLaDAMoEModelLM:
    """A model whose every tensor is drawn by name order from `seed` (independent of the model's
    own initialisation): std 0.3 weights, norm scales near 1, router biases that change the choice."""
    model = LLaDAMoEModelLM(LLaDAMoEConfig(**arch)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            noise = torch.randn(tensor.shape, generator=generator)
            tensor.copy_(1.0 + 0.1 * noise if "norm" in name else 0.3 * noise)
    return model


def tokens(seed: int, batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, MASK - 2, (batch, length), generator=torch.Generator().manual_seed(seed))


def padding_mask(batch: int, length: int) -> torch.Tensor:
    """Row i has i * 3 left-padding positions."""
    mask = torch.ones((batch, length), dtype=torch.long)
    for row in range(batch):
        mask[row, : row * 3] = 0
    return mask


SETTINGS = LladaSettings(steps=8, block_length=8)


def write_checkpoint(folder: Path, model: LLaDAMoEModelLM, **overrides: Any) -> Path:
    """A folder in the published layout: the hub's config.json keys (model_type llada, the
    architecture LLaDAMoEModelLM), safetensors weights under the published names, no code. An
    override of `...` leaves its key out."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LLaDAMoEModelLM"],
        "model_type": "llada",
        "auto_map": {"AutoConfig": "configuration_lladamoe.LLaDAMoEConfig",
                     "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM"},
        "output_router_logits": False,
        "router_aux_loss_coef": 0.01,
        "torch_dtype": "bfloat16",
        "use_cache": False,
        **{k: v for k, v in TINY.items() if k != "mask_token_id"},
        **overrides,
    }
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not ...}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return folder


# --- always run --------------------------------------------------------------------------------------


def test_the_recorded_reference_outputs_are_reproduced() -> None:
    """The published model's logits and the LLaDA sampler's tokens on it, recorded once
    (tests/fixtures/lladamoe_reference.json), from the same seeded weights."""
    recorded = json.loads(FIXTURE.read_text(encoding="utf-8"))
    model = seeded_model(recorded["config"], recorded["seed"])
    ids = torch.tensor(recorded["input_ids"])
    with torch.no_grad():
        logits = model(ids, attention_mask=torch.tensor(recorded["attention_mask"])).logits
    torch.testing.assert_close(logits[:, :4, :8], torch.tensor(recorded["logits_slice"]), rtol=0, atol=1e-5)
    assert abs(float(logits.double().sum()) - recorded["logits_sum"]) < 1e-3
    prompt = torch.tensor(recorded["prompt"])
    out = generate(model, prompt, SETTINGS, gen_length=recorded["gen_length"], mask_id=MASK)
    assert out.tolist() == recorded["tokens"]


def test_a_folder_in_the_published_layout_loads_by_weight_name(tmp_path: Path) -> None:
    model = seeded_model(TINY)
    folder = write_checkpoint(tmp_path / "moe", model)
    loaded = load_lladamoe_checkpoint(folder, dtype=torch.float32)
    assert type(loaded) is LLaDAMoEModelLM and loaded.config.mask_token_id == 156895  # not in config.json
    assert all(torch.equal(loaded.state_dict()[name], t) for name, t in model.state_dict().items())
    ids = tokens(1, 2, 9)
    with torch.no_grad():  # weights read from safetensors may sit unaligned: CPU kernels may round otherwise
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("hidden_act", "gelu", "hidden_act='gelu'"),
        ("rope_scaling", {"rope_type": "linear", "factor": 2.0}, "rope_scaling="),
        ("tie_word_embeddings", True, "tie_word_embeddings=true"),
        ("expert_intermediate_size", -1, "expert_intermediate_size=-1"),
        ("moe_layer_freq", [1], "moe_layer_freq=[1]"),
        ("num_experts_per_tok", 5, "num_experts_per_tok=5"),
    ],
)
def test_config_values_the_model_does_not_implement_are_refused_by_name(
    tmp_path: Path, key: str, value: Any, named: str
) -> None:
    folder = write_checkpoint(tmp_path / "moe", seeded_model(TINY), **{key: value})
    with pytest.raises(CheckpointError, match=re.escape(named)) as error:
        load_lladamoe_checkpoint(folder, dtype=torch.float32)
    assert str(folder) in str(error.value)


def test_keys_the_published_class_defaults_to_minus_one_must_be_set(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "moe", seeded_model(TINY), expert_intermediate_size=..., num_experts=...)
    with pytest.raises(CheckpointError, match="does not set expert_intermediate_size, num_experts"):
        load_lladamoe_checkpoint(folder, dtype=torch.float32)


def test_checkpoints_of_the_other_architecture_are_refused(tmp_path: Path) -> None:
    """A dense LLaDA folder is not a LLaDA-MoE one, and a LLaDA-MoE folder (model_type llada on the
    hub) is not a dense LLaDA one."""
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps(published_layout()))
    with pytest.raises(CheckpointError, match=r"model_type 'llada', expected 'lladamoe' or architectures"):
        load_lladamoe_checkpoint(dense, dtype=torch.float32)
    moe = write_checkpoint(tmp_path / "moe", seeded_model(TINY))
    with pytest.raises(CheckpointError, match=r"architectures \['LLaDAMoEModelLM'\]"):
        load_llada_checkpoint(moe, dtype=torch.float32)


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    model = seeded_model(TINY)
    folder = write_checkpoint(tmp_path / "moe", model, moe_router_enable_expert_bias=True)
    with pytest.raises(CheckpointError, match=r"lacks: model\.layers\.0\.mlp\.expert_bias"):
        load_lladamoe_checkpoint(folder, dtype=torch.float32)


def test_the_cache_and_logits_to_keep_give_the_full_forward(tmp_path: Path) -> None:
    """With nothing changed since the full forward, a cached forward of the block (dual) or of the
    block and its suffix (prefix) gives the full forward's logits (the llada kind's cache axis)."""
    model = seeded_model(FULL)
    ids = tokens(2, 2, 24)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        for end in (16, 24):
            part = model(ids[:, 8:end], past_key_values=out.past_key_values, replace_position=8, use_cache=True)
            torch.testing.assert_close(part.logits, out.logits[:, 8:end], rtol=1e-5, atol=1e-5)
        kept = model(ids, logits_to_keep=torch.tensor([3, 7])).logits
    torch.testing.assert_close(kept, out.logits[:, [3, 7]], rtol=0, atol=1e-6)
    cached = LladaSettings(steps=8, block_length=8, cache="dual")
    assert not bool(torch.eq(generate(model, tokens(3, 1, 6), cached, gen_length=16, mask_id=MASK), MASK).any())


#: The random-init entry of config/families-tiny.yaml (its arch keys, as a config gives them).
TINY_ARCH: dict[str, Any] = {
    "model_type": "lladamoe",
    "vocab_size": 256,
    "hidden_size": 32,
    "dense_intermediate_size": 64,
    "expert_intermediate_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.5,
    "max_position_embeddings": 64,
    "mask_token_id": MASK,
    "eos_token_id": 254,
    "pad_token_id": 254,
}


def moe_config(arch: dict[str, Any] | None = None, **entry: Any) -> dict[str, Any]:
    model = {"name": "tiny-llada-moe", "kind": "llada", "source": "random-init", "device": "cpu",
             "arch": TINY_ARCH if arch is None else arch, **entry}
    return {
        "models": [model],
        "grid": {"prompt_length": [8], "gen_length": [16], "batch_size": [1]},
        "llada": {"steps": [8], "block_length": [8], "cache": ["none", "dual"]},
        "warmup_rounds": 0,
        "measured_rounds": 1,
    }


def test_a_random_init_entry_runs_with_the_llada_axes(tmp_path: Path) -> None:
    cases = expand_cases(parse_config(moe_config(), tmp_path / "moe.yaml"))
    assert [c.case_id for c in cases] == ["tiny-llada-moe-p8-g16-b1-s8-k8", "tiny-llada-moe-p8-g16-b1-s8-k8-cdual"]
    models = ModelCache(tmp_path / "cache")
    rows = [run_case(case, models.get(case.model)) for case in cases]
    assert all(row.ok for row in rows), [row.error for row in rows]
    assert type(models.get(cases[0].model).model) is LLaDAMoEModelLM


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"hidden_act": "gelu"}, "arch", "hidden_act='gelu'"),
        ({"rope_scaling": {"rope_type": "linear"}}, "arch.rope_scaling", "a scalar"),
        ({"num_experts_per_tok": 8}, "arch", "num_experts_per_tok=8"),
        ({"n_layers": 2}, "arch.n_layers", "an architecture key of LLaDAMoEConfig"),
        ({"mask_token_id": 256}, "arch.mask_token_id", "below vocab_size 256"),
        ({"model_type": "lladamoe2"}, "arch.model_type", "expected one of llada, lladamoe"),
    ],
)
def test_bad_architectures_are_refused_by_name_and_nothing_is_written(
    tmp_path: Path, change: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(moe_config({**TINY_ARCH, **change}), tmp_path / "moe.yaml")
    assert f"'models[0].{key}'" in str(error.value) and message in str(error.value)
    assert list(tmp_path.iterdir()) == []  # nothing written for a refused run


def test_remote_code_needs_a_checkpoint() -> None:
    raw = moe_config(trust_remote_code=True)
    raw["llada"]["cache"] = ["none"]
    with pytest.raises(ConfigError, match=r"models\[0\]\.trust_remote_code.*random-init LLaDA-MoE"):
        parse_config(raw, Path("moe.yaml"))


def test_a_folder_of_another_architecture_is_refused_at_config_load(tmp_path: Path) -> None:
    """A Dream folder given as a llada entry: refused when the config is read, before any model loads."""
    folder = tmp_path / "dream"
    backend("dream").write_random_init(folder, {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64,
                                               "num_hidden_layers": 1, "num_attention_heads": 2,
                                               "num_key_value_heads": 1, "mask_token_id": 250, "pad_token_id": 251,
                                               "bos_token_id": 252, "eos_token_id": 253}, seed=0, dtype=torch.float32)
    raw = moe_config(source=str(folder))
    del raw["models"][0]["arch"]
    raw["llada"]["cache"] = ["none"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ConfigError, match=r"'models\[0\]\.source': expected a LLaDA or LLaDA-MoE checkpoint.*'Dream'"):
        check_runnable(parse_config(raw, tmp_path / "moe.yaml"))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_a_checkpoint_entry_loads_the_moe_model_and_refuses_unimplemented_values(tmp_path: Path) -> None:
    """The llada kind tells a LLaDA-MoE folder by its config.json and loads it into the suite's
    LLaDA-MoE model; a value the model does not implement fails the load by name."""
    folder = write_checkpoint(tmp_path / "moe", seeded_model(TINY))
    raw = moe_config(source=str(folder))
    del raw["models"][0]["arch"]
    spec = expand_cases(parse_config(raw, tmp_path / "moe.yaml"))[0].model
    assert type(ModelCache(tmp_path / "cache").get(spec).model) is LLaDAMoEModelLM
    write_checkpoint(folder, seeded_model(TINY), hidden_act="relu")
    with pytest.raises(ModelLoadError, match=re.escape("hidden_act='relu'")):
        ModelCache(tmp_path / "cache").get(spec)


# --- against the published code ---------------------------------------------------------------------


@needs_reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_equal_the_published_model(name: str) -> None:
    """float32, bit for bit, without and with padding (routing, the expert bias and the shared expert included)."""
    model = seeded_model(CONFIGS[name])
    reference = reference_model(model.state_dict(), CONFIGS[name])
    ids = tokens(4, 3, 20)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
        mask = padding_mask(3, 20)
        assert torch.equal(model(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits)


@needs_reference
@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_samplers_tokens_equal_on_the_published_model(name: str) -> None:
    model = seeded_model(CONFIGS[name])
    reference = reference_model(model.state_dict(), CONFIGS[name])
    prompt = tokens(5, 1, 12)
    ours = generate(model, prompt, SETTINGS, gen_length=16, mask_id=MASK)
    theirs = generate(reference, prompt, SETTINGS, gen_length=16, mask_id=MASK)
    assert torch.equal(ours, theirs) and not bool(torch.eq(ours, MASK).any())


@needs_reference
def test_the_checkpoints_own_code_computes_the_same_after_the_rotary_reset(tmp_path: Path) -> None:
    """`trust_remote_code: true` with the published code as the folder's code: the same logits and
    tokens as the suite's model (transformers 5 leaves the published rotary buffer unset; the
    backend computes it again), and the published mask token id on its config."""
    model = seeded_model(FULL)
    folder = write_checkpoint(tmp_path / "moe", model, **{k: v for k, v in FULL.items() if k != "mask_token_id"})
    for name in FILES:
        shutil.copyfile(reference_folder() / name, folder / name)  # type: ignore[operator]
    spec = ModelSpec(name="moe", kind="llada", source=str(folder), device="cpu", trust_remote_code=True)
    remote = backend("llada").load(spec, str(folder), torch.float32)
    assert type(remote).__module__.endswith("modeling_lladamoe") and remote.config.mask_token_id == 156895
    ids = tokens(6, 2, 14)
    with torch.no_grad():
        # Not bit for bit: weights read from safetensors are not 64-byte aligned in memory, and the
        # CPU matrix kernels then round some small products differently (1e-6 on this model).
        torch.testing.assert_close(remote(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    prompt = tokens(5, 1, 12)
    expected = generate(model, prompt, SETTINGS, gen_length=16, mask_id=MASK)
    assert torch.equal(generate(remote, prompt, SETTINGS, gen_length=16, mask_id=MASK), expected)


def record_fixture(path: Path = FIXTURE, seed: int = 7) -> None:
    """Write the fixture from the published model (`python -m tests.test_llada_moe`, with the reference)."""
    model = seeded_model(FULL, seed)
    reference = reference_model(model.state_dict(), FULL)
    ids, mask, prompt = tokens(8, 2, 12), padding_mask(2, 12), tokens(9, 1, 12)
    with torch.no_grad():
        logits = reference(ids, attention_mask=mask).logits
    record = {
        "about": "outputs of the published LLaDA-MoE code (ZHZisZZ/dllm modeling_lladamoe.py, transformers-5 "
        "rope shim) on seeded_model(config, seed); written by tests/test_llada_moe.py record_fixture",
        "seed": seed,
        "config": FULL,
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "logits_slice": logits[:, :4, :8].tolist(),
        "logits_sum": float(logits.double().sum()),
        "prompt": prompt.tolist(),
        "gen_length": 16,
        "settings": {"steps": SETTINGS.steps, "block_length": SETTINGS.block_length},
        "tokens": generate(reference, prompt, SETTINGS, gen_length=16, mask_id=MASK).tolist(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    logging.getLogger("tests.test_llada_moe").info("wrote %s", path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    record_fixture()
    sys.exit(0)


@pytest.mark.parametrize(
    "settings",
    [
        LladaSettings(steps=8, block_length=8),
        LladaSettings(steps=None, block_length=8, threshold=0.3),
        LladaSettings(steps=8, block_length=8, cache="dual"),
    ],
    ids=["steps", "threshold", "dual-cache"],
)
def test_each_row_of_a_left_padded_batch_decodes_as_that_row_alone(settings: LladaSettings) -> None:
    """The LLaDA sampler on the MoE model: a batch of 3 prompts left padded by 0, 3 and 6
    positions (the padding holds arbitrary tokens) gives each row the tokens it gets alone."""
    model = seeded_model(TINY)
    length, gen = 12, 16
    prompts = tokens(7, 3, length)
    mask = padding_mask(3, length)
    with torch.no_grad():
        batched = generate(model, prompts, settings, gen_length=gen, mask_id=MASK, attention_mask=mask)
        for row in range(3):
            alone = generate(model, prompts[row : row + 1, row * 3 :], settings, gen_length=gen, mask_id=MASK)
            assert torch.equal(batched[row, length:], alone[0, length - row * 3 :]), row
    assert (batched[:, length:] != MASK).all()
