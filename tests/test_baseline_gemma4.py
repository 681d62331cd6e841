"""Gemma 4 through the autoregressive `baseline` kind: `arch.model_type: gemma4_text`
random-init folders, their checks, greedy generation with left padding and several EOS
ids, the multimodal `gemma4` checkpoint layout, and the Llama cache folders unchanged."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma4Config,
    Gemma4ForConditionalGeneration,
    Gemma4TextConfig,
    Gemma4VisionConfig,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

from dllm_bench.backends.baseline import BaselineBackend, greedy_call, write_causal_lm_folder
from dllm_bench.config import ConfigError, parse_config
from dllm_bench.feed import PromptFeed
from dllm_bench.models.loader import LoadedModel, load_model, random_init_folder
from dllm_bench.models.random_init import folder_key
from dllm_bench.spec import ModelSpec
from dllm_bench.tasks import PromptBatch
from dllm_bench.tasks.base import left_pad
from dllm_bench.tasks.jsonl import JsonlTask
from tests.helpers import TINY_LLAMA_ARCH, tiny_config

# Gemma 4 defaults that a tiny model must set: head_dim 256 and global_head_dim 512 (the
# full-attention layers' heads), and per-layer input embeddings of 262144 x 256 per layer
# (hidden_size_per_layer_input 0 turns them off). Two layers: sliding, then full attention.
TINY_GEMMA4 = {
    "model_type": "gemma4_text",
    "vocab_size": 160,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "global_head_dim": 16,
    "hidden_size_per_layer_input": 0,
    "sliding_window": 8,
    "max_position_embeddings": 256,
}
PAD, EOS, BOS = 0, 1, 2  # Gemma4TextConfig's defaults


def _spec(source: str, arch: dict[str, Any] | None = None, seed: int = 0) -> ModelSpec:
    return ModelSpec(
        name="tiny-gemma4",
        kind="baseline",
        source=source,
        dtype="float32",
        device="cpu",
        arch=tuple(sorted((arch or {}).items())),
        seed=seed,
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gemma4-cache")


@pytest.fixture(scope="module")
def gemma4(cache_dir: Path) -> LoadedModel:
    """The tiny random-init Gemma 4, written and loaded the way a config entry is."""
    return load_model(_spec("random-init", TINY_GEMMA4), cache_dir)


def _feed(rows: list[list[int]], length: int | None = None) -> PromptFeed:
    ids, mask = left_pad(rows, length or max(map(len, rows)), PAD)
    batch = PromptBatch(
        task="random", input_ids=ids, attention_mask=mask, indices=tuple(range(len(rows))), references=()
    )
    return PromptFeed([batch], torch.device("cpu"))


def _generated(loaded: LoadedModel, rows: list[list[int]], new_tokens: int, **options: Any) -> list[list[int]]:
    feed = _feed(rows)
    output = greedy_call(loaded, feed, None, new_tokens=new_tokens, **options)()
    return output[:, feed.input_ids.shape[1] :].tolist()


ROWS = [[5 + (7 * i) % 150 for i in range(12)], [40, 41, 99, 3, 17, 150, 22], [77, 8, 120]]


# --- checks of the arch mapping -------------------------------------------------------------


def _config_with(arch: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(tiny_config())
    raw["models"][1] = {"name": "tiny-gemma4", "kind": "baseline", "source": "random-init", "arch": arch}
    return raw


def test_the_readme_example_is_the_tiny_gemma4() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("```yaml\nmodels:\n  - name: tiny-gemma4\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load("models:\n  - name: tiny-gemma4\n" + block)["models"][0]["arch"] == TINY_GEMMA4


def test_gemma4_arch_is_accepted(tmp_path: Path) -> None:
    config = parse_config(_config_with(dict(TINY_GEMMA4)), tmp_path / "grid.yaml")
    assert config.models[1].arch_dict() == TINY_GEMMA4
    assert BaselineBackend().max_length(TINY_GEMMA4) == 256


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        ({"d_model": 32}, "models[1].arch.d_model", "an architecture key of Gemma4TextConfig (unknown key)"),
        ({"mlp_bias": True}, "models[1].arch.mlp_bias", "an architecture key of Gemma4TextConfig (unknown key)"),
        ({"sliding_window": "wide"}, "models[1].arch.sliding_window", "expected int, got 'wide'"),
        ({"global_head_dim": 16.0}, "models[1].arch.global_head_dim", "expected int, got 16.0"),
        ({"head_dim": 0}, "models[1].arch.head_dim", "expected a positive integer, got 0"),
        ({"num_key_value_heads": 3}, "models[1].arch.num_attention_heads", "a multiple of num_key_value_heads"),
        ({"eos_token_id": 160}, "models[1].arch.eos_token_id", "a token id below vocab_size 160"),
        ({"hidden_size_per_layer_input": -1}, "models[1].arch.hidden_size_per_layer_input", "integer >= 0"),
        (
            {"hidden_size_per_layer_input": 8, "vocab_size_per_layer_input": 100},
            "models[1].arch.vocab_size_per_layer_input",
            "at least vocab_size (160)",
        ),
        ({"enable_moe_block": True}, "models[1].arch.num_experts", "with enable_moe_block: true"),
        ({"dtype": "bfloat16"}, "models[1].arch.dtype", "the entry's dtype key"),
        ({"model_type": "mistral"}, "models[1].arch.model_type", "one of llama, gemma4_text, qwen2, got 'mistral'"),
        ({"model_type": 4}, "models[1].arch.model_type", "one of llama, gemma4_text, qwen2, got 4"),
        # Refused by the library (huggingface_hub's strict dataclass), with its own message.
        (
            {"use_bidirectional_attention": "sideways"},
            "models[1].arch.use_bidirectional_attention",
            "Gemma4TextConfig refuses it: Validation error for field 'use_bidirectional_attention'",
        ),
    ],
)
def test_bad_gemma4_arch_is_refused_at_config_load(
    tmp_path: Path, change: dict[str, Any], key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(_config_with({**TINY_GEMMA4, **change}), tmp_path / "grid.yaml")
    assert f"key '{key}'" in str(error.value)
    assert words in str(error.value)


def test_gemma4_keys_are_refused_for_a_llama() -> None:
    backend = BaselineBackend()
    assert "sliding_window" not in backend.arch_keys(TINY_LLAMA_ARCH)
    assert "sliding_window" not in backend.arch_keys({**TINY_LLAMA_ARCH, "model_type": "llama"})
    assert "sliding_window" in backend.arch_keys(TINY_GEMMA4)
    assert backend.arch_class(TINY_LLAMA_ARCH) == "LlamaConfig"
    assert backend.arch_class(TINY_GEMMA4) == "Gemma4TextConfig"
    with pytest.raises(ValueError, match="llama, gemma4_text, qwen2"):
        write_causal_lm_folder(Path("unused"), {"model_type": "gemma3"}, seed=0, dtype=torch.float32)


# --- the written folder ------------------------------------------------------------------------


def test_gemma4_folder_loads_with_auto_model_and_generates(gemma4: LoadedModel) -> None:
    folder = Path(gemma4.location)
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["Gemma4ForCausalLM"]
    assert type(gemma4.model).__name__ == "Gemma4ForCausalLM"
    assert type(AutoModelForCausalLM.from_pretrained(folder)).__name__ == "Gemma4ForCausalLM"
    # The full-attention layer got global_head_dim, the sliding one head_dim.
    layers: Any = gemma4.model.model.layers  # type: ignore[union-attr]
    assert gemma4.model.config.layer_types == ["sliding_attention", "full_attention"]  # type: ignore[union-attr]
    assert [layer.self_attn.head_dim for layer in layers] == [16, 16]
    assert (gemma4.vocab_size, gemma4.eos_ids, gemma4.pad_id, gemma4.max_length) == (160, (EOS,), PAD, 256)
    generated = _generated(gemma4, ROWS, new_tokens=16)
    assert [len(row) for row in generated] == [16, 16, 16]
    assert all(0 <= token < 160 and token != EOS for row in generated for token in row)
    # Tiny by size, not by a wall-clock time a busy machine could flip (the README says 24k).
    assert sum(p.numel() for p in gemma4.model.parameters()) < 30_000


def test_gemma4_weights_are_seeded(cache_dir: Path, gemma4: LoadedModel) -> None:
    other = load_model(_spec("random-init", TINY_GEMMA4, seed=1), cache_dir)
    assert other.location != gemma4.location
    weight: Any = gemma4.model.get_input_embeddings().weight  # type: ignore[operator]
    assert not torch.equal(weight, other.model.get_input_embeddings().weight)  # type: ignore[operator]


def test_left_padded_batch_equals_each_row_alone(gemma4: LoadedModel) -> None:
    """Rows of 12, 7 and 3 tokens, left-padded to 12, generate what each generates alone;
    the prompts are longer than the sliding window (8), so the sliding layer's window is
    checked across the padding too."""
    batched = _generated(gemma4, ROWS, new_tokens=10)
    alone = [_generated(gemma4, [row], new_tokens=10)[0] for row in ROWS]
    assert batched == alone
    # The check can fail: padding the model attends to changes the padded rows.
    feed = _feed(ROWS)
    with torch.inference_mode():
        unmasked = gemma4.model.generate(  # type: ignore[operator]
            input_ids=feed.input_ids,
            attention_mask=torch.ones_like(feed.input_ids),
            max_new_tokens=10,
            min_new_tokens=10,
            do_sample=False,
            pad_token_id=PAD,
        )
    assert unmasked[1:, 12:].tolist() != alone[1:]


def test_every_eos_id_stops_and_is_suppressed(gemma4: LoadedModel, tmp_path: Path) -> None:
    """A Gemma checkpoint lists several EOS ids in generation_config.json (<eos> and the
    end-of-turn id): the loader takes the union with the config's, and greedy_call stops at
    any of them (fixed-length calls never emit one)."""
    row = ROWS[2]
    plain = _generated(gemma4, [row], new_tokens=10)[0]
    turn_end = plain[3]  # a token this model emits: make it the second EOS id
    assert turn_end not in plain[:3]
    folder = tmp_path / "two-eos"
    shutil.copytree(gemma4.location, folder)
    (folder / "dllm-bench-cache.json").unlink()
    generation = GenerationConfig.from_pretrained(folder)
    generation.eos_token_id = [EOS, turn_end]
    generation.save_pretrained(folder)
    loaded = load_model(_spec(str(folder)), tmp_path / "unused-cache")
    assert json.loads((folder / "config.json").read_text())["eos_token_id"] == EOS
    assert loaded.eos_ids == tuple(sorted({EOS, turn_end}))
    stopped = _generated(loaded, [row], new_tokens=10, fixed_length=False)[0]
    assert stopped == plain[:4]  # stopped at the end-of-turn id (a single row: no padding after it)
    fixed = _generated(loaded, [row], new_tokens=10)[0]
    assert fixed[:3] == plain[:3] and turn_end not in fixed and EOS not in fixed


# --- the multimodal gemma4 layout of the hub checkpoints ----------------------------------------


# The text part of google/gemma-4-26B-A4B-it: a mixture of experts, keys equal values in
# the full-attention layers (with their own KV heads).
TINY_MOE = {
    "enable_moe_block": True,
    "num_experts": 4,
    "top_k_experts": 2,
    "moe_intermediate_size": 16,
    "attention_k_eq_v": True,
    "num_global_key_value_heads": 1,
}


def _tiny_multimodal(folder: Path, text_arch: dict[str, Any]) -> Path:
    """A random `Gemma4ForConditionalGeneration` in the layout of google/gemma-4-*-it: the
    vocabulary and token ids in `text_config`, two EOS ids in generation_config.json."""
    text = Gemma4TextConfig(**{k: v for k, v in text_arch.items() if k != "model_type"})
    vision = Gemma4VisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        position_embedding_size=64,
        patch_size=4,
    )
    # Multimodal token ids inside the tiny vocabulary (the defaults are above 255999).
    names = ("boi_token_id", "eoi_token_id", "image_token_id", "video_token_id", "boa_token_id", "eoa_token_index")
    ids: dict[str, Any] = {name: 150 + i for i, name in enumerate((*names, "audio_token_id"))}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Gemma4ForConditionalGeneration(Gemma4Config(text_config=text, vision_config=vision, **ids))
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, 106], pad_token_id=PAD)
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("text_arch", [TINY_GEMMA4, {**TINY_GEMMA4, **TINY_MOE}], ids=["dense", "moe"])
def test_multimodal_gemma4_checkpoint_runs_through_greedy_call(tmp_path: Path, text_arch: dict[str, Any]) -> None:
    folder = _tiny_multimodal(tmp_path / "gemma4-it", text_arch)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma4" and "vocab_size" not in config and "eos_token_id" not in config
    loaded = load_model(_spec(str(folder)), tmp_path / "unused-cache")
    assert type(loaded.model).__name__ == "Gemma4ForConditionalGeneration"
    # Read from text_config: before, the loader failed on the missing config.vocab_size.
    assert (loaded.vocab_size, loaded.eos_ids, loaded.pad_id, loaded.max_length) == (160, (EOS, 106), PAD, 256)
    assert set(loaded.special_ids) == {PAD, EOS, BOS, 106}
    batched = _generated(loaded, ROWS, new_tokens=6)
    assert batched == [_generated(loaded, [row], new_tokens=6)[0] for row in ROWS]
    assert not {EOS, 106} & {token for row in batched for token in row}


# --- the chat template of the jsonl task -----------------------------------------------------


def _gemma_style_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with Gemma's special tokens and a Gemma-style chat template,
    whose text starts with the BOS token itself."""
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
    words = ["user", "model", "what", "is", "two", "plus", "three"]
    vocab = {token: i for i, token in enumerate([*specials, "<unk>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    template = (
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}"
        "\n{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template=template,
    )


def test_gemma_style_chat_template_gives_one_bos(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"prompt": "what is two plus three", "answer": "5"}) + "\n")
    tokenizer = _gemma_style_tokenizer()
    task = JsonlTask(path=path, tokenizer=tokenizer, eos_ids=(1, 4))
    ids = task.encode("what is two plus three")
    turn = ["<start_of_turn>", "user", "what", "is", "two", "plus", "three", "<end_of_turn>"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<bos>", *turn, "<start_of_turn>", "model"]
    # The answer is cut at the end-of-turn id (an EOS id of the model, not the tokenizer's eos).
    assert task.decode([vocab_id("three", tokenizer), 4, vocab_id("two", tokenizer)]) == "three"


def vocab_id(word: str, tokenizer: PreTrainedTokenizerFast) -> int:
    return int(tokenizer.convert_tokens_to_ids(word))


# --- the Llama cache folders ---------------------------------------------------------------------


def test_llama_cache_folder_is_unchanged(tmp_path: Path) -> None:
    """No model_type and `model_type: llama` name the same folder, whose key is that of
    the arch without model_type: folders written before the choice existed are reused."""
    plain = random_init_folder(_spec("random-init", dict(TINY_LLAMA_ARCH)), tmp_path, torch.float32)
    explicit = random_init_folder(
        _spec("random-init", {**TINY_LLAMA_ARCH, "model_type": "llama"}), tmp_path, torch.float32
    )
    assert explicit == plain
    assert plain.name == f"baseline-{folder_key('baseline', TINY_LLAMA_ARCH, 0, 'float32')}"
    assert json.loads((plain / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    gemma = dict(TINY_GEMMA4)
    assert BaselineBackend().folder_arch(gemma) == gemma  # model_type is part of a Gemma folder's key
