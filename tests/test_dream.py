"""The `dream` kind through the suite: config load (axes, refusals under their keys), random-init
folders, the row a case gives, and the backend's call against the sampler called directly."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from dllm_bench.backends import backend
from dllm_bench.cases import Case, expand_cases
from dllm_bench.config import ConfigError, parse_config
from dllm_bench.kinds.dream import DreamSettings
from dllm_bench.models.dream.modeling import DreamLM
from dllm_bench.models.loader import ModelCache
from dllm_bench.runner import CallRecorder, case_feed, case_task, run_case
from dllm_bench.sampling.dream import generate
from tests.dream_reference import FILES, needs_reference, reference_folder
from tests.helpers import TINY_LLAMA_ARCH

TINY_DREAM_ARCH: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 128,
    "rope_theta": 10000.0,
    "initializer_range": 0.3,  # peaked predictions: near-uniform ones rank by float noise
    "mask_token_id": 255,
    "eos_token_id": 254,
    "pad_token_id": 254,
    "bos_token_id": 253,
}


def dream_config(**section: object) -> dict[str, Any]:
    return {
        "models": [
            {"name": "tiny-dream", "kind": "dream", "source": "random-init", "device": "cpu", "arch": TINY_DREAM_ARCH}
        ],
        "grid": {"prompt_length": [8], "gen_length": [16], "batch_size": [1, 2]},
        "dream": {"steps": 8, **section},
        "seed": 3,
        "warmup_rounds": 0,
        "measured_rounds": 2,
    }


def cases_of(raw: dict[str, Any]) -> list[Case]:
    return expand_cases(parse_config(raw, Path("dream.yaml")))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return ModelCache(tmp_path_factory.mktemp("models"))


def test_axes_multiply_and_caches_take_their_algorithm() -> None:
    raw = dream_config(
        steps=[8, 16], alg=["entropy", "maskgit_plus"], cache=["none", "dual"], block_length=8, threshold=[None, 0.9]
    )
    ids = sorted({c.case_id.split("-b1-")[1] for c in cases_of(raw) if c.batch_size == 1})
    assert ids == [
        "maskgit_plus-k8-cdual-th0.9",
        "s16-entropy",
        "s16-entropy-k8-cdual",
        "s16-maskgit_plus",
        "s8-entropy",
        "s8-entropy-k8-cdual",
        "s8-maskgit_plus",
    ]
    for case in cases_of(raw):
        assert type(case.settings).from_columns(case.settings.columns()) == case.settings


BAD_SECTIONS = [
    ({"alg": "greedy"}, "dream.alg", "one of origin, maskgit_plus, topk_margin, entropy"),
    ({"alg": "origin", "cache": "prefix", "block_length": 8}, "dream.alg", "entropy among the algorithms"),
    ({"alg": "entropy", "cache": "dual", "block_length": 8, "threshold": 0.9}, "dream.alg", "maskgit_plus among"),
    ({"cache": "dual"}, "dream.block_length", "a positive integer with cache dual"),
    ({"cache": "prefix", "block_length": 5}, "dream.block_length", "a divisor of grid.gen_length 16"),
    ({"steps": 3, "cache": "prefix", "block_length": 8}, "dream.steps", "a multiple of the 2 blocks"),
    ({"top_p": 1.5}, "dream.top_p", "between 0 and 1"),
    ({"top_k": 0}, "dream.top_k", "a positive integer"),
    ({"eps": 1.0}, "dream.eps", "a number in (0, 1)"),
    ({"cache": "paged"}, "dream.cache", "one of none, prefix, dual"),
    ({"remasking": "random"}, "dream.remasking", "remasking is a key of the llada section"),
]


@pytest.mark.parametrize(("section", "key", "message"), BAD_SECTIONS, ids=[m for _, _, m in BAD_SECTIONS])
def test_bad_settings_are_refused_once_with_their_key(
    section: dict[str, Any], key: str, message: str, tmp_path: Path
) -> None:
    raw = dream_config(**{"temperature": [0.0, 0.5], **section})  # two points: still one message
    with pytest.raises(ConfigError) as error:
        parse_config(raw, tmp_path / "dream.yaml")
    assert f"'{key}'" in str(error.value) and message in str(error.value)
    assert str(error.value).count(f"'{key}'") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written for a refused run


def test_steps_are_required_and_remote_code_needs_a_checkpoint() -> None:
    raw = dream_config()
    del raw["dream"]["steps"]
    with pytest.raises(ConfigError, match=r"dream\.steps"):
        parse_config(raw, Path("dream.yaml"))
    raw = dream_config(cache="dual", block_length=8)
    raw["models"][0]["trust_remote_code"] = True
    with pytest.raises(ConfigError) as error:
        parse_config(raw, Path("dream.yaml"))
    assert "random-init" in str(error.value) and "has no cache" in str(error.value)


BAD_ARCHS = [
    ({"mask_token_id": 256}, "arch.mask_token_id", "below vocab_size 256"),
    ({"num_attention_heads": 3}, "arch", "not a multiple of num_attention_heads"),
    ({"use_sliding_window": True}, "arch", "use_sliding_window"),
    ({"hidden_size": 0}, "arch.hidden_size", "positive integer"),
    ({"layers": 2}, "arch.layers", "unknown key"),
]


@pytest.mark.parametrize(("change", "key", "message"), BAD_ARCHS, ids=[k for _, k, _ in BAD_ARCHS])
def test_bad_architectures_are_refused_at_config_load(change: dict[str, Any], key: str, message: str) -> None:
    raw = dream_config()
    raw["models"][0]["arch"] = {**TINY_DREAM_ARCH, **change}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, Path("dream.yaml"))
    assert f"models[0].{key}" in str(error.value) and message in str(error.value)


SETTINGS = [
    {"alg": "entropy"},
    {"alg": "origin"},
    {"alg": "maskgit_plus", "temperature": 0.8, "top_k": 50},
    {"cache": "prefix", "block_length": 8},
    {"alg": "maskgit_plus", "cache": "dual", "block_length": 8, "threshold": 0.5},
]


@pytest.mark.parametrize("section", SETTINGS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_the_call_is_the_sampler_from_the_case_seed(models: ModelCache, section: dict[str, Any]) -> None:
    """Batch 2: the backend's timed call gives what the sampler called directly gives from the seed."""
    case = next(c for c in cases_of(dream_config(**section)) if c.batch_size == 2)
    loaded = models.get(case.model)
    assert isinstance(loaded.model, DreamLM)
    feed = case_feed(case, loaded, case_task(case, loaded))
    ours = backend("dream").build_call(case, loaded, feed, CallRecorder())()
    torch.manual_seed(case.seed)
    settings = case.settings
    assert isinstance(settings, DreamSettings)
    mask = feed.attention_mask
    theirs = generate(loaded.model, feed.input_ids, settings, gen_length=16, mask_id=255, attention_mask=mask)
    assert torch.equal(ours, theirs)


def test_the_row_counts_forwards_and_agreement(models: ModelCache) -> None:
    raw = dream_config(steps=16, cache=["none", "dual"], block_length=8)
    rows = {c.case_id: run_case(c, models.get(c.model)) for c in cases_of(raw) if c.batch_size == 1}
    exact = rows["tiny-dream-p8-g16-b1-s16-entropy"]
    cached = rows["tiny-dream-p8-g16-b1-s16-entropy-k8-cdual"]
    assert exact.status == cached.status == "ok"
    # No forward that cannot commit: the first step of the schedule linspace(1, eps, 17) commits
    # int(16 x 0.0624) = 0 tokens, and so does one step of each dual block's schedule of 8.
    assert (exact.nfe, cached.nfe) == (15, 14)
    assert exact.agreement_exact == 1.0 and cached.agreement_exact is not None
    assert (exact.alg, cached.cache, cached.block_length) == ("entropy", "dual", 8)


def test_a_section_without_a_model_of_the_kind_is_still_checked() -> None:
    raw = dream_config(alg="greedy")
    raw["models"][0] = {"name": "tiny-llama", "kind": "baseline", "source": "random-init", "arch": TINY_LLAMA_ARCH}
    with pytest.raises(ConfigError, match=r"dream\.alg"):
        parse_config(copy.deepcopy(raw), Path("dream.yaml"))


@needs_reference
def test_remote_code_runs_the_checkpoints_own_generate(models: ModelCache, tmp_path: Path) -> None:
    """A folder in the hub layout whose code is the published one (the reference copy): with
    trust_remote_code the case loads that code and decodes with its own diffusion_generate,
    which gives the tokens of the suite's sampler on the same weights."""
    own = next(c for c in cases_of(dream_config(alg="maskgit_plus")) if c.batch_size == 1)
    loaded = models.get(own.model)
    folder = tmp_path / "dream-remote"
    loaded.model.save_pretrained(folder)  # type: ignore[operator]
    reference = reference_folder()
    assert reference is not None
    for name in FILES:
        shutil.copy(reference / name, folder / name)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"}
    (folder / "config.json").write_text(json.dumps(config))
    ids = {key: TINY_DREAM_ARCH[key] for key in ("mask_token_id", "pad_token_id", "bos_token_id", "eos_token_id")}
    (folder / "generation_config.json").write_text(json.dumps(ids))
    raw = dream_config(alg="maskgit_plus")
    raw["models"][0] = {"name": "remote", "kind": "dream", "source": str(folder), "device": "cpu",
                        "trust_remote_code": True}
    case = next(c for c in cases_of(raw) if c.batch_size == 1)
    remote = models.get(case.model)
    assert type(remote.model).__name__ == "DreamModel" and not isinstance(remote.model, DreamLM)
    feed = case_feed(case, remote, case_task(case, remote))
    theirs = backend("dream").build_call(case, remote, feed, CallRecorder())()
    ours = backend("dream").build_call(own, loaded, feed, CallRecorder())()
    assert torch.equal(theirs, ours)
