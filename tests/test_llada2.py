"""The `llada2` kind through the suite: config load (axes, refusals naming the model and key, nothing
written), random-init folders of both versions, and the row a case gives (edits, agreement)."""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from dllm_bench.backends import backend
from dllm_bench.cases import Case, expand_cases
from dllm_bench.config import ConfigError, check_runnable, load_config, parse_config
from dllm_bench.kinds.llada2 import Llada2Settings
from dllm_bench.models.loader import ModelCache
from dllm_bench.runner import CallRecorder, case_feed, case_task, run_case
from tests.llada2_reference import FILES, needs_reference, reference_folder

ARCH: dict[str, Any] = {
    "vocab_size": 256,
    "hidden_size": 32,
    "intermediate_size": 64,
    "moe_intermediate_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "n_group": 4,
    "topk_group": 2,
    "num_shared_experts": 1,
    "first_k_dense_replace": 1,
    "max_position_embeddings": 128,
    "initializer_range": 0.3,  # peaked predictions: the threshold and the editing phase act
    "mask_token_id": 255,
    "eos_token_id": 254,
    "pad_token_id": 254,
}


def entry(name: str, model_type: str = "llada2_moe", **arch: object) -> dict[str, Any]:
    return {"name": name, "kind": "llada2", "source": "random-init", "device": "cpu",
            "arch": {**ARCH, "model_type": model_type, **arch}}


def llada2_config(*models: dict[str, Any], **section: object) -> dict[str, Any]:
    return {
        "models": list(models) or [entry("tiny-llada21", "llada21_moe")],
        "grid": {"prompt_length": [8], "gen_length": [16], "batch_size": [1, 2]},
        "llada2": {"steps": 8, "block_length": 8, **section},
        "seed": 3,
        "warmup_rounds": 0,
        "measured_rounds": 2,
    }


def cases_of(raw: dict[str, Any]) -> list[Case]:
    return expand_cases(parse_config(raw, Path("llada2.yaml")))


def refusal(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, Path("llada2.yaml"))
    return str(caught.value)


@contextlib.contextmanager
def count_forwards(module: torch.nn.Module, recorder: CallRecorder) -> Iterator[None]:
    hook = module.register_forward_hook(recorder.count_forward)
    try:
        yield
    finally:
        hook.remove()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny models run in milliseconds on one thread; two threads on a shared, busy machine spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return ModelCache(tmp_path_factory.mktemp("models"))


def test_axes_multiply_and_round_trip_through_columns() -> None:
    raw = llada2_config(threshold=[None, 0.95], cache=["none", "prefix"], editing_threshold=[None, 0.5],
                        max_post_steps=[2])
    ids = sorted({c.case_id.split("-b1-")[1] for c in cases_of(raw) if c.batch_size == 1})
    assert ids == [
        "s8-k8", "s8-k8-cprefix", "s8-k8-cprefix-et0.5-mp2", "s8-k8-et0.5-mp2",
        "s8-k8-thoff", "s8-k8-thoff-cprefix", "s8-k8-thoff-cprefix-et0.5-mp2", "s8-k8-thoff-et0.5-mp2",
    ]
    for case in cases_of(raw):
        assert Llada2Settings.from_columns(case.settings.columns()) == case.settings


@pytest.mark.parametrize(
    ("change", "key", "text"),
    [
        (lambda c: c["llada2"].update(alg="entropy"), "llada2.alg", "alg is a key of the dream section"),
        (lambda c: c["llada2"].update(steps=9), "llada2.steps", "1..block_length 8"),
        (lambda c: c["llada2"].update(cache="dual"), "llada2.cache", "none, prefix"),
        (lambda c: c["llada2"].update(threshold=1.5), "llada2.threshold", "between 0 and 1"),
        (lambda c: c["llada2"].update(minimal_topk=32), "llada2.minimal_topk", "at most grid.gen_length 16"),
        (lambda c: c["models"][0]["arch"].update(hidden_act="gelu"), "models[0].arch", "hidden_act 'gelu'"),
        (lambda c: c["models"][0]["arch"].update(model_type="llada3"), "models[0].arch", "llada2_moe or llada21_moe"),
        (lambda c: c["models"][0]["arch"].update(n_group=3), "models[0].arch", "n_group 3: not a divisor"),
    ],
)
def test_bad_input_is_refused_under_its_key(change: Any, key: str, text: str) -> None:
    raw = copy.deepcopy(llada2_config())
    change(raw)
    message = refusal(raw)
    assert key in message and text in message


def test_editing_on_llada20_is_refused_naming_the_model_and_key() -> None:
    raw = llada2_config(entry("tiny-llada2"), entry("tiny-llada21", "llada21_moe"), editing_threshold=[None, 0.5])
    message = refusal(raw)
    assert "llada2.editing_threshold" in message and "model 'tiny-llada2'" in message
    assert "tiny-llada21" not in message
    assert message.count("editing_threshold") <= 3  # one problem, not one per setting


def test_a_checkpoint_of_another_architecture_is_refused_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "dream-folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "Dream"}))
    raw = llada2_config({"name": "not-llada2", "kind": "llada2", "source": str(folder), "device": "cpu"})
    (tmp_path / "grid.yaml").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as caught:
        check_runnable(load_config(tmp_path / "grid.yaml"))
    assert "models[0].source" in str(caught.value) and "it is a Dream checkpoint" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dream-folder", "grid.yaml"]


def test_a_checkpoint_with_an_unimplemented_value_is_refused_naming_the_key(tmp_path: Path) -> None:
    folder = tmp_path / "llada21-yarn"
    folder.mkdir()
    config = {**ARCH, "model_type": "llada21_moe", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    (folder / "config.json").write_text(json.dumps(config))
    raw = llada2_config({"name": "yarn-llada21", "kind": "llada2", "source": str(folder), "device": "cpu"})
    (tmp_path / "grid.yaml").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "grid.yaml")
    message = str(caught.value)
    assert "models[0].source" in message and "model 'yarn-llada21'" in message and "rope_scaling" in message
    raw["models"][0]["trust_remote_code"] = True  # the checkpoint's own code implements it
    (tmp_path / "grid.yaml").write_text(json.dumps(raw))
    assert load_config(tmp_path / "grid.yaml").models[0].trust_remote_code
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml", "llada21-yarn"]


def test_rows_count_forwards_edits_and_agreement(models: ModelCache) -> None:
    raw = llada2_config(threshold=[None, 0.5], editing_threshold=[None, 0.0], max_post_steps=[2])
    rows = {c.case_id: run_case(c, models.get(c.model)) for c in cases_of(raw) if c.batch_size == 2}
    exact = rows["tiny-llada21-p8-g16-b2-s8-k8-thoff"]
    assert exact.ok and exact.agreement_exact == 1.0 and exact.edits is None
    assert exact.nfe == 16 and exact.tokens_per_forward == 1.0
    fast = rows["tiny-llada21-p8-g16-b2-s8-k8-th0.5-et0-mp2"]
    assert fast.ok and fast.edits is not None and fast.edits > 0
    assert fast.nfe is not None and fast.nfe_min is not None and fast.nfe_max is not None
    assert fast.agreement_exact is not None and 0 <= fast.agreement_exact <= 1
    assert (fast.editing_threshold, fast.max_post_steps, fast.threshold) == (0.0, 2, 0.5)


@needs_reference
def test_remote_code_runs_the_checkpoints_own_generate(models: ModelCache, tmp_path: Path) -> None:
    """A folder in the hub layout whose code is the published one (the reference copy): with
    trust_remote_code the case loads that code and decodes with its own generate (batch 1), which
    gives the tokens and forwards of the suite's sampler on the same weights, editing included."""
    section = {"threshold": 0.5, "editing_threshold": 0.5, "max_post_steps": 2}
    own = next(c for c in cases_of(llada2_config(**section)) if c.batch_size == 1)
    loaded = models.get(own.model)
    folder = tmp_path / "llada21-remote"
    loaded.model.save_pretrained(folder)  # type: ignore[operator]
    reference = reference_folder()
    assert reference is not None
    for name in FILES:
        shutil.copy(reference / name, folder / name)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_llada21_moe.LLaDA2MoeConfig",
                          "AutoModelForCausalLM": "modeling_llada21_moe.LLaDA2MoeModelLM"}
    (folder / "config.json").write_text(json.dumps(config))
    raw = llada2_config(**section)
    raw["models"][0] = {"name": "remote", "kind": "llada2", "source": str(folder), "device": "cpu",
                        "trust_remote_code": True}
    case = next(c for c in cases_of(raw) if c.batch_size == 1)
    remote = models.get(case.model)
    assert type(remote.model).__name__ == "LLaDA2MoeModelLM"
    feed = case_feed(case, remote, case_task(case, remote))
    theirs_recorder, ours_recorder = CallRecorder(), CallRecorder()
    with count_forwards(backend("llada2").counted_module(remote), theirs_recorder):
        theirs = backend("llada2").build_call(case, remote, feed, theirs_recorder)()
    with count_forwards(backend("llada2").counted_module(loaded), ours_recorder):
        ours = backend("llada2").build_call(own, loaded, feed, ours_recorder)()
    assert torch.equal(theirs, ours)
    assert theirs_recorder.per_call == ours_recorder.per_call and ours_recorder.per_call[0] > 0
