"""Loading LLaDA checkpoints in the published layout into the suite's own model, without remote code."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from dllm_bench.backends import backend
from dllm_bench.backends.llada import write_llada_folder
from dllm_bench.models.llada_checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    load_llada_checkpoint,
    load_llada_config,
    register_llada_auto_classes,
)
from dllm_bench.models.llada_hf.configuration_llada import LLADA_FIXED_KEYS, LLaDAConfig
from dllm_bench.models.llada_hf.modeling_llada import LLaDAModelLM
from dllm_bench.spec import ModelSpec
from tests.helpers import TINY_LLADA_ARCH, auto_classes_as_shipped
from tests.published_llada import PUBLISHED_8B_CONFIG, TINY_SHAPE, published_layout

# A checkpoint's own code: importing it would fail the test.
TRAP = 'raise RuntimeError("the checkpoint\'s own code must not be imported")\n'


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def source_model(seed: int = 0) -> LLaDAModelLM:
    torch.manual_seed(seed)
    return LLaDAModelLM(LLaDAConfig(**TINY_SHAPE)).eval()


def write_checkpoint(
    folder: Path,
    model: LLaDAModelLM,
    config: dict[str, Any] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A folder in the GSAI-ML layout: config.json with every published key, model.safetensors, remote code."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config or published_layout(), indent=2))
    state = weights if weights is not None else {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "modeling_llada.py").write_text(TRAP)
    (folder / "configuration_llada.py").write_text(TRAP)
    return folder


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[Path, LLaDAModelLM]:
    model = source_model()
    return write_checkpoint(tmp_path / "LLaDA-tiny-Instruct", model), model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_published_layout_loads_into_the_suites_model(
    checkpoint: tuple[Path, LLaDAModelLM], dtype: torch.dtype
) -> None:
    folder, original = checkpoint
    model = load_llada_checkpoint(folder, dtype=dtype)
    assert type(model) is LLaDAModelLM
    assert not model.training
    assert {p.dtype for p in model.parameters()} == {dtype}
    written = load_file(folder / "model.safetensors")
    loaded = model.state_dict()
    assert set(loaded) == set(written)
    for name, tensor in written.items():
        assert torch.equal(loaded[name], tensor.to(dtype)), name
    ids = torch.randint(0, 500, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if dtype == torch.float32:
            torch.testing.assert_close(model(ids).logits, original(ids).logits, atol=0, rtol=0)
        assert torch.isfinite(model(ids).logits).all()
    # The published keys the model does not read are kept on the config.
    assert model.config.init_fn == "mitchell"
    assert model.config.precision == "amp_bf16"


def test_a_folder_written_by_the_suite_loads_too(tmp_path: Path) -> None:
    folder = write_llada_folder(tmp_path / "random", TINY_SHAPE, seed=0, dtype=torch.bfloat16)
    model = load_llada_checkpoint(folder, dtype=torch.bfloat16)
    written = load_file(folder / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in written.items())


def test_a_revision_of_a_local_folder_is_accepted(checkpoint: tuple[Path, LLaDAModelLM]) -> None:
    folder, _ = checkpoint
    assert type(load_llada_checkpoint(str(folder), dtype=torch.float32, revision="main")) is LLaDAModelLM


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("include_qkv_bias", True),
        ("attention_layer_norm", True),
        ("bias_for_layer_norm", True),
        ("layer_norm_with_affine", False),
        ("input_emb_norm", True),
        ("scale_logits", True),
        ("multi_query_attention", True),
        ("rope_full_precision", False),
        ("alibi", True),
        ("block_group_size", 2),
        ("block_type", "sequential"),
        ("activation_type", "swiglu"),
        ("layer_norm_type", "default"),
        ("rope", False),
    ],
)
def test_unsupported_config_values_are_refused(tmp_path: Path, key: str, value: Any) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", source_model(), published_layout(**{key: value}))
    with pytest.raises(CheckpointError) as excinfo:
        load_llada_checkpoint(folder, dtype=torch.float32)
    message = str(excinfo.value)
    assert f"{key}=" in message
    assert str(folder) in message
    assert isinstance(excinfo.value, ValueError)


def test_norm_bias_from_include_bias_is_refused(tmp_path: Path) -> None:
    # The hub code gives every norm a bias when bias_for_layer_norm is null and include_bias is set.
    folder = write_checkpoint(
        tmp_path / "ckpt", source_model(), published_layout(bias_for_layer_norm=None, include_bias=True)
    )
    with pytest.raises(CheckpointError, match="bias_for_layer_norm=true"):
        load_llada_config(folder)


def test_the_published_8b_config_is_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PUBLISHED_8B_CONFIG))
    config = load_llada_config(folder)
    shape = (config.d_model, config.n_layers, config.mask_token_id, config.bias_for_layer_norm)
    assert shape == (4096, 32, 126336, False)
    for key, value in LLADA_FIXED_KEYS.items():
        assert getattr(config, key) == value, key


def test_other_model_types_are_refused(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt", source_model(), published_layout(model_type="llama"))
    with pytest.raises(CheckpointError, match="model_type 'llama', expected 'llada'"):
        load_llada_checkpoint(folder, dtype=torch.float32)


def test_missing_sources_are_not_found_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no-such-folder") as excinfo:
        load_llada_checkpoint(tmp_path / "no-such-folder", dtype=torch.float32)
    assert isinstance(excinfo.value, OSError)
    with pytest.raises(CheckpointNotFoundError, match="GSAI-ML/LLaDA-8B-Instruct' \\(revision abc\\)"):
        load_llada_checkpoint("GSAI-ML/LLaDA-8B-Instruct", dtype=torch.float32, revision="abc")
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps(published_layout()))
    with pytest.raises(CheckpointNotFoundError, match="could not read the weights"):
        load_llada_checkpoint(config_only, dtype=torch.float32)


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    model = source_model()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    missing = dict(state)
    del missing["model.transformer.blocks.1.up_proj.weight"]
    folder = write_checkpoint(tmp_path / "missing", model, weights=missing)
    with pytest.raises(CheckpointError, match=r"lacks: model\.transformer\.blocks\.1\.up_proj\.weight"):
        load_llada_checkpoint(folder, dtype=torch.float32)
    extra = {**state, "model.transformer.blocks.0.q_norm.weight": torch.ones(64)}
    folder = write_checkpoint(tmp_path / "extra", model, weights=extra)
    with pytest.raises(CheckpointError, match=r"does not have: model\.transformer\.blocks\.0\.q_norm\.weight"):
        load_llada_checkpoint(folder, dtype=torch.float32)
    wrong = {**state, "model.transformer.ln_f.weight": torch.ones(32)}
    folder = write_checkpoint(tmp_path / "wrong", model, weights=wrong)
    with pytest.raises(CheckpointError, match="ln_f"):
        load_llada_checkpoint(folder, dtype=torch.float32)


@pytest.fixture
def auto_registration() -> Iterator[None]:
    """No registration before the test, and the process's back afterwards: it is process-wide
    state of transformers."""
    with auto_classes_as_shipped():
        yield


def test_auto_classes_load_a_llada_folder_without_remote_code(
    checkpoint: tuple[Path, LLaDAModelLM], auto_registration: None
) -> None:
    folder, original = checkpoint
    register_llada_auto_classes()
    register_llada_auto_classes()  # idempotent
    config = transformers.AutoConfig.from_pretrained(folder)
    assert type(config) is LLaDAConfig
    for auto in (transformers.AutoModel, transformers.AutoModelForCausalLM):
        model = auto.from_pretrained(folder)
        assert type(model) is LLaDAModelLM
        name = "model.transformer.wte.weight"
        assert torch.equal(model.state_dict()[name], original.state_dict()[name])


def test_trust_remote_code_loads_the_folders_own_code_after_the_suite_registered_its_classes(
    tmp_path: Path, auto_registration: None
) -> None:
    """A grid with a LLaDA entry and a `trust_remote_code: true` LLaDA entry: loading the first
    registers the suite's classes for model_type llada, and AutoModel would then load the
    suite's model for the second too. The backend resolves the folder's own class instead."""
    folder = write_llada_folder(tmp_path / "tiny", TINY_LLADA_ARCH, seed=0, dtype=torch.float32)
    llada = backend("llada")
    plain_spec = ModelSpec(name="ours", kind="llada", source=str(folder), device="cpu")
    plain = llada.load(plain_spec, str(folder), torch.float32)
    assert type(plain) is LLaDAModelLM
    remote_spec = ModelSpec(name="own", kind="llada", source=str(folder), device="cpu", trust_remote_code=True)
    remote = llada.load(remote_spec, str(folder), torch.float32)
    assert type(remote).__module__.startswith("transformers_modules."), type(remote).__module__
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(remote(ids).logits, plain(ids).logits)


def _without_auto_map(text: str) -> str:
    config = json.loads(text)
    del config["auto_map"]
    return json.dumps(config)


def _truncated(text: str) -> str:
    return text[: len(text) // 2]


@pytest.mark.parametrize(
    ("damage", "problem"),
    [(_without_auto_map, r"has no auto_map\.AutoModel"), (_truncated, "could not be read")],
    ids=["no-auto-map", "unreadable"],
)
def test_trust_remote_code_without_the_checkpoints_own_code_is_refused(
    tmp_path: Path, damage: Callable[[str], str], problem: str
) -> None:
    """trust_remote_code on a folder whose config.json names no code of its own (no
    auto_map.AutoModel), or cannot be read, is refused with what to do, instead of running the
    suite's model."""
    folder = write_llada_folder(tmp_path / "tiny", TINY_LLADA_ARCH, seed=0, dtype=torch.float32)
    config_path = folder / "config.json"
    config_path.write_text(damage(config_path.read_text(encoding="utf-8")), encoding="utf-8")
    spec = ModelSpec(name="own", kind="llada", source=str(folder), device="cpu", trust_remote_code=True)
    with pytest.raises(ValueError, match=rf"config\.json {problem}; leave trust_remote_code out"):
        backend("llada").load(spec, str(folder), torch.float32)
