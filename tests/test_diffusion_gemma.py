"""DiffusionGemma through the suite: the library's own generate is the reference.

Every case's output must be token for token what a direct call of
`DiffusionGemmaForBlockDiffusion.generate` gives from the same seed with the same
settings (batch 1 and a left-padded batch 2), its tokens_per_forward the library's own
figure, its nfe the decoder passes; bad settings and bad models are refused before
anything is written. Tiny random-init models on the CPU, in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.diffusion_gemma import EntropyBoundSamplerConfig

from dllm_bench.backends import backend
from dllm_bench.backends import diffusion_gemma as dgemma_backend
from dllm_bench.cases import Case, expand_cases
from dllm_bench.config import ConfigError, check_runnable, parse_config
from dllm_bench.feed import PromptFeed
from dllm_bench.kinds import MODEL_KINDS, is_diffusion
from dllm_bench.models.loader import LoadedModel, ModelCache, ModelLoadError
from dllm_bench.runner import CallRecorder, case_feed, case_task, run_case
from dllm_bench.sinks.csvfiles import FINAL_CSV, read_results
from dllm_bench.sinks.report.data import pair_with_ar, strategy_label
from dllm_bench.tasks import PromptBatch
from tests.helpers import TINY_DGEMMA_ARCH, TINY_LLADA_ARCH, TINY_LLAMA_ARCH

SEED = 3


def dgemma_config(**section: object) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "tiny-dgemma",
                "kind": "diffusion_gemma",
                "source": "random-init",
                "device": "cpu",
                "arch": TINY_DGEMMA_ARCH,
            }
        ],
        "grid": {"prompt_length": [8], "gen_length": [16], "batch_size": [1, 2]},
        "diffusion_gemma": section,
        "seed": SEED,
        "warmup_rounds": 1,
        "measured_rounds": 2,
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> ModelCache:
    return ModelCache(tmp_path_factory.mktemp("models"))


def cases_of(raw: dict[str, Any]) -> list[Case]:
    return expand_cases(parse_config(raw, Path("dgemma.yaml")))


def library_generate(loaded: LoadedModel, feed: PromptFeed, **settings: Any) -> Any:
    """The library's generate called directly, written out here (not the backend's code)."""
    torch.manual_seed(SEED)
    with torch.inference_mode():
        return loaded.model.generate(  # type: ignore[operator]
            input_ids=feed.input_ids,
            attention_mask=feed.full_mask(),
            eos_token_id=[1],
            pad_token_id=0,
            disable_compile=True,
            **settings,
        )


def left_padded_feed(device: torch.device) -> PromptFeed:
    """Two prompts of 8 positions, the second left-padded by 3 (pad id 0)."""
    ids = torch.tensor([[5, 9, 13, 17, 21, 25, 29, 33], [0, 0, 0, 40, 44, 48, 52, 56]])
    mask = (ids != 0).long()
    batch = PromptBatch(task="random", input_ids=ids, attention_mask=mask, indices=(0, 1), references=())
    return PromptFeed([batch], device)


SETTINGS = [
    ({"max_denoising_steps": 3}, {"max_denoising_steps": 3}),
    (
        {"max_denoising_steps": 4, "entropy_bound": 2.5, "t_min": 0.2, "t_max": 0.9},
        {
            "max_denoising_steps": 4,
            "sampler_config": EntropyBoundSamplerConfig(entropy_bound=2.5),
            "t_min": 0.2,
            "t_max": 0.9,
        },
    ),
    ({"block_length": 4, "max_denoising_steps": 2}, {"max_denoising_steps": 2}),
]


@pytest.mark.parametrize(("section", "library"), SETTINGS, ids=["steps", "sampler-and-schedule", "block-length"])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_outputs_equal_the_library_generate(
    models: ModelCache, section: dict[str, Any], library: dict[str, Any], batch_size: int
) -> None:
    case = next(c for c in cases_of(dgemma_config(**section)) if c.batch_size == batch_size)
    loaded = models.get(case.model)
    feed = case_feed(case, loaded, case_task(case, loaded)) if batch_size == 1 else left_padded_feed(loaded.device)
    recorder = CallRecorder()
    ours = backend(case.kind).build_call(case, loaded, feed, recorder)()
    canvas = section.get("block_length", TINY_DGEMMA_ARCH["canvas_length"])
    config: Any = loaded.model.config
    config.canvas_length = canvas
    try:
        theirs = library_generate(loaded, feed, max_new_tokens=case.gen_length, **library)
    finally:
        config.canvas_length = TINY_DGEMMA_ARCH["canvas_length"]
    assert config.canvas_length == TINY_DGEMMA_ARCH["canvas_length"]  # the case put the checkpoint's back
    expected = theirs.sequences
    if expected.shape[1] < ours.shape[1]:  # every row met EOS early: the suite pads with the pad id
        assert torch.equal(ours[:, expected.shape[1] :], torch.zeros_like(ours[:, expected.shape[1] :]))
        ours = ours[:, : expected.shape[1]]
    assert torch.equal(ours, expected)
    assert recorder.figures[0]["tokens_per_forward"] == pytest.approx(float(theirs.tokens_per_forward.float().mean()))


def test_the_row_counts_decoder_passes_and_reports_the_library_tokens_per_forward(models: ModelCache) -> None:
    """No adaptive stop: every canvas runs all its steps (2 canvases x 5 = 10 decoder passes,
    the encoder once for the prompt and once for the first canvas); tokens_per_forward is the
    mean of the library's own figure over the measured calls."""
    case = next(c for c in cases_of(dgemma_config(max_denoising_steps=5)) if c.batch_size == 2)
    loaded = models.get(case.model)
    row = run_case(case, loaded)
    assert row.status == "ok"
    assert (row.nfe, row.nfe_min, row.nfe_max, row.encoder_nfe) == (10, 10, 10, 2)
    feed = case_feed(case, loaded, case_task(case, loaded))
    figures = []
    for round_index in range(case.measured_rounds):
        feed.select(round_index)
        result = library_generate(loaded, feed, max_new_tokens=16, max_denoising_steps=5)
        figures.append(float(result.tokens_per_forward.float().mean()))
    assert row.tokens_per_forward == pytest.approx(sum(figures) / len(figures))
    assert row.ttft_s is not None and row.ttft_s > 0
    assert row.agreement_exact is None
    assert row.case_id == "tiny-dgemma-p8-g16-b2-d5"


def test_adaptive_stopping_shows_in_nfe(models: ModelCache) -> None:
    """Stability 0 and a confidence threshold above any entropy (ln 256 < 6): every canvas stops after its
    first step, so the call makes one decoder pass per canvas instead of max_denoising_steps."""
    raw = dgemma_config(max_denoising_steps=6, stability_threshold=0, confidence_threshold=100)
    case = next(c for c in cases_of(raw) if c.batch_size == 1)
    row = run_case(case, models.get(case.model))
    assert (row.nfe, row.encoder_nfe) == (2, 2)
    assert row.case_id == "tiny-dgemma-p8-g16-b1-d6-st0-ct100"


def test_settings_round_trip_through_the_row_columns() -> None:
    raw = dgemma_config(
        block_length=[4, 8], max_denoising_steps=3, entropy_bound=[None, 0.5], cache_implementation="static"
    )
    cases = cases_of(raw)
    assert len(cases) == 2 * 2 * 2
    for case in cases:
        spec_settings = type(case.settings).from_columns(case.settings.columns())
        assert spec_settings == case.settings
    assert {c.case_id for c in cases if c.batch_size == 1} == {
        "tiny-dgemma-p8-g16-b1-k4-d3-cstatic",
        "tiny-dgemma-p8-g16-b1-k4-d3-eb0.5-cstatic",
        "tiny-dgemma-p8-g16-b1-k8-d3-cstatic",
        "tiny-dgemma-p8-g16-b1-k8-d3-eb0.5-cstatic",
    }


BAD_SECTIONS = [
    ({"steps": 4}, "diffusion_gemma.steps", "steps is a key of the llada section"),
    ({"entropy_bound": 0}, "diffusion_gemma.entropy_bound", "a number above 0"),
    ({"t_min": 0.8, "t_max": 0.4}, "diffusion_gemma.t_max", "above t_min"),
    ({"cache_implementation": "paged"}, "diffusion_gemma.cache_implementation", "one of dynamic"),
    ({"block_length": 5}, "diffusion_gemma.block_length", "does not divide 16"),
    ({"max_denoising_steps": 0}, "diffusion_gemma.max_denoising_steps", "a positive integer"),
    ({"stability_threshold": -1}, "diffusion_gemma.stability_threshold", "an integer >= 0"),
]


@pytest.mark.parametrize(("section", "key", "message"), BAD_SECTIONS, ids=[k for _, k, _ in BAD_SECTIONS])
def test_bad_settings_are_refused_once_with_their_key(section: dict[str, Any], key: str, message: str) -> None:
    raw = dgemma_config(**{"max_denoising_steps": [2, 3], **section})  # two points: still one message
    with pytest.raises(ConfigError) as error:
        parse_config(raw, Path("dgemma.yaml"))
    assert f"'{key}'" in str(error.value) and message in str(error.value)
    assert str(error.value).count(f"'{key}'") == 1


# The gen_length rule (block_length) ties the settings to the kind's own cases; the rest hold alone.
SECTION_ONLY = [bad for bad in BAD_SECTIONS if not bad[1].endswith("block_length")]


@pytest.mark.parametrize(("section", "key", "message"), SECTION_ONLY, ids=[k for _, k, _ in SECTION_ONLY])
def test_a_section_without_a_model_of_the_kind_is_still_checked(
    section: dict[str, Any], key: str, message: str
) -> None:
    raw = dgemma_config(**section)
    raw["models"][0] = {"name": "tiny-llama", "kind": "baseline", "source": "random-init", "arch": TINY_LLAMA_ARCH}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, Path("dgemma.yaml"))
    assert f"'{key}'" in str(error.value) and message in str(error.value)


BAD_ARCHS = [
    ({"num_experts": None}, "arch.num_experts", "required"),
    ({"hidden_activation": "nope"}, "arch", "the library refuses it"),
    ({"eos_token_id": 256}, "arch.eos_token_id", "below vocab_size 256"),
    ({"canvas_length": 0}, "arch.canvas_length", "positive integer"),
    ({"layer_count": 2}, "arch.layer_count", "unknown key"),
]


@pytest.mark.parametrize(("change", "key", "message"), BAD_ARCHS, ids=[k for _, k, _ in BAD_ARCHS])
def test_bad_architectures_are_refused_at_config_load(change: dict[str, Any], key: str, message: str) -> None:
    arch = {k: v for k, v in {**TINY_DGEMMA_ARCH, **change}.items() if v is not None}
    raw = dgemma_config()
    raw["models"][0]["arch"] = arch
    with pytest.raises(ConfigError) as error:
        parse_config(raw, Path("dgemma.yaml"))
    assert f"models[0].{key}" in str(error.value) and message in str(error.value)


def test_remote_code_is_refused() -> None:
    raw = dgemma_config()
    raw["models"][0] = {"name": "dg", "kind": "diffusion_gemma", "source": "some/hub-id", "trust_remote_code": True}
    with pytest.raises(ConfigError, match=r"models\[0\].trust_remote_code.*native in transformers"):
        parse_config(raw, Path("dgemma.yaml"))


def test_a_checkpoint_of_another_architecture_is_refused_by_name(tmp_path: Path, models: ModelCache) -> None:
    """A LLaDA folder given as a DiffusionGemma entry: one error naming both model types."""
    llada = backend("llada")
    folder = tmp_path / "llada"
    llada.write_random_init(folder, TINY_LLADA_ARCH, seed=0, dtype=torch.float32)
    raw = dgemma_config()
    raw["models"][0] = {"name": "not-dg", "kind": "diffusion_gemma", "source": str(folder), "device": "cpu"}
    case = cases_of(raw)[0]
    with pytest.raises(ModelLoadError, match=r"\(model_type diffusion_gemma\); it is a llada checkpoint"):
        ModelCache(tmp_path / "cache").get(case.model)
    # Before that, at config load (nothing written): the folder's config.json names its type.
    with pytest.raises(ConfigError, match=r"key 'models\[0\].source': expected a DiffusionGemma checkpoint.*llada"):
        check_runnable(parse_config(raw, Path("dgemma.yaml")))


@pytest.mark.parametrize(("source", "key"), [("random-init", "models[0].arch"), ("google/some-id", "diffusion_gemma")])
def test_a_transformers_without_diffusion_gemma_is_refused_at_config_load(
    monkeypatch: pytest.MonkeyPatch, source: str, key: str
) -> None:
    monkeypatch.setattr(dgemma_backend, "MISSING_LIBRARY", "transformers 5.3 has no DiffusionGemma; upgrade it")
    raw = dgemma_config()
    if source != "random-init":
        raw["models"][0] = {"name": "dg", "kind": "diffusion_gemma", "source": source}
    with pytest.raises(ConfigError) as error:
        parse_config(raw, Path("dgemma.yaml"))
    assert f"key '{key}'" in str(error.value) and "upgrade it" in str(error.value)


def test_a_gen_length_the_checkpoint_canvas_does_not_divide_fails_the_case_with_advice(models: ModelCache) -> None:
    """Without block_length the canvas is the checkpoint's (8), known only once it is loaded."""
    raw = dgemma_config(max_denoising_steps=2)
    raw["grid"]["gen_length"] = [12]
    case = next(c for c in cases_of(raw) if c.batch_size == 1)
    with pytest.raises(ValueError, match="gen_length 12 is not a multiple of the canvas length 8"):
        run_case(case, models.get(case.model))


def test_random_init_folder_loads_as_the_library_class(models: ModelCache) -> None:
    case = cases_of(dgemma_config())[0]
    loaded = models.get(case.model)
    assert type(loaded.model).__name__ == "DiffusionGemmaForBlockDiffusion"
    assert (loaded.vocab_size, loaded.eos_ids, loaded.pad_id) == (256, (1,), 0)


def test_a_hook_on_the_whole_model_sees_no_pass_and_the_recorder_refuses_an_nfe(models: ModelCache) -> None:
    """The library's generate calls the model's forward directly, so a hook on the model sees
    none of it: the backend counts the decoder, and a recorder that saw no pass refuses to
    report an nfe rather than write 0."""
    case = next(c for c in cases_of(dgemma_config(max_denoising_steps=2)) if c.batch_size == 1)
    loaded = models.get(case.model)
    recorder = CallRecorder()
    hook = loaded.model.register_forward_hook(recorder.count_forward)
    try:
        backend(case.kind).build_call(case, loaded, case_feed(case, loaded, case_task(case, loaded)), recorder)()
    finally:
        hook.remove()
    with pytest.raises(RuntimeError, match="no forward pass of the counted module"):
        recorder.nfe()
    assert backend(case.kind).counted_module(loaded) is loaded.model.model.decoder  # type: ignore[union-attr]


def test_the_report_pairs_diffusion_gemma_with_the_ar_twin_as_a_diffusion_family(models: ModelCache) -> None:
    """A DiffusionGemma row and an AR row of the same task and shape: one speed-up pair, the
    DiffusionGemma row labelled by its own settings, never as AR."""
    raw = dgemma_config(max_denoising_steps=2)
    raw["models"].append({"name": "tiny-llama", "kind": "baseline", "source": "random-init", "device": "cpu"})
    raw["models"][1]["arch"] = TINY_LLAMA_ARCH
    raw["grid"]["batch_size"] = [1]
    rows = [run_case(case, models.get(case.model)) for case in cases_of(raw)]
    assert [row.kind for row in rows] == ["diffusion_gemma", "baseline"]
    pairing = pair_with_ar(rows)
    assert [(p.diffusion_case, p.reference_case) for p in pairing.speedups] == [
        ("tiny-dgemma-p8-g16-b1-d2", "tiny-llama-p8-g16-b1")
    ]
    assert strategy_label(rows[0]) == "d2" and strategy_label(rows[1]) == "AR"


def test_the_families_grid_runs_every_family_and_pairs_each_with_its_ar_twins(
    bench_project: pytest.Pytester,
) -> None:
    """config/families-tiny.yaml end to end in-process: one ok row per case, every kind in
    the rows, and every diffusion case paired with every AR model (Llama, Gemma 4, Qwen2) in the report."""
    config = Path(__file__).resolve().parent.parent / "config" / "families-tiny.yaml"
    result = bench_project.runpytest_inprocess("--config", str(config), "--output-dir", "out")
    result.assert_outcomes(passed=34)
    rows = read_results(bench_project.path / "out" / FINAL_CSV)
    assert len(rows) == 34 and all(row.ok for row in rows)
    assert {row.kind for row in rows} == set(MODEL_KINDS)
    pairs = pair_with_ar(rows).speedups
    diffusion = [row for row in rows if is_diffusion(row.kind)]
    assert len(pairs) == 3 * len(diffusion)
    assert {p.reference_model for p in pairs} == {"tiny-gemma4", "tiny-llama", "tiny-qwen2"}
    html = (bench_project.path / "out" / "report.html").read_text(encoding="utf-8")
    assert all(row.case_id in html for row in rows)


def test_a_random_init_folder_has_no_unset_tensor(tmp_path: Path) -> None:
    """The library's init_weights skips the encoder layers' layer_scalar buffers: built on the
    meta device they would hold whatever memory held (NaN in CI). Every tensor of the written
    folder is finite, and the scalars are the constructor's ones."""
    folder = tmp_path / "dg"
    backend("diffusion_gemma").write_random_init(folder, TINY_DGEMMA_ARCH, seed=0, dtype=torch.float32)
    weights = load_file(folder / "model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())
    scalars = [t for name, t in weights.items() if name.endswith("layer_scalar")]
    assert scalars and all(bool((t == 1).all()) for t in scalars)
