"""Tasks: prompt streams, scoring, extractors, the jsonl path, the tokenizer, accuracy and AUP."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from dllm_bench.tasks import (
    TASK_VOCAB,
    JsonlTask,
    ListTask,
    RandomTask,
    accuracy_stats,
    aup,
    extract_answer,
    left_pad,
    make_task,
    rounds_needed,
    write_tokenizer,
)
from dllm_bench.tasks.gsm8k import INSTALL_HINT, gsm8k_record, load_datasets_module, write_jsonl
from dllm_bench.tasks.jsonl import REGEX_TEXT_LIMIT, answer_matches, read_records
from dllm_bench.tasks.stats import aup_weight
from dllm_bench.tasks.synthetic import answer_is_correct, draw_example

V = TASK_VOCAB


def _items(*letters: str) -> tuple[int, ...]:
    return tuple(V.id_of(letter) for letter in letters)


def _output(batch_ids: torch.Tensor, answers: list[list[int]]) -> torch.Tensor:
    return torch.cat([batch_ids, torch.tensor(answers, dtype=torch.long)], dim=1)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(folder)
    return folder


# ---- the list tasks ------------------------------------------------------------------------


def test_copy_prompt_layout_and_length() -> None:
    task = ListTask("copy", 5)
    batch = task.batch(batch_size=3, prompt_length=None, seed=0, round_index=0)
    assert batch.input_ids.shape == (3, 8)
    assert not batch.padded
    for row, items in zip(batch.input_ids.tolist(), batch.references, strict=True):
        assert row[0] == V.bos_id and row[1] == V.id_of("copy") and row[-1] == V.sep_id
        assert tuple(row[2:-1]) == items
        assert all(token in V.item_ids for token in items)


def test_permute_items_are_distinct() -> None:
    task = ListTask("permute", 16)
    batch = task.batch(batch_size=8, prompt_length=None, seed=3, round_index=2)
    for items in batch.references:
        assert isinstance(items, tuple)
        assert len(set(items)) == 16


def test_prompts_are_deterministic_and_rounds_differ() -> None:
    task = ListTask("copy", 8)
    first = task.batch(batch_size=4, prompt_length=None, seed=7, round_index=0)
    again = task.batch(batch_size=4, prompt_length=None, seed=7, round_index=0)
    later = task.batch(batch_size=4, prompt_length=None, seed=7, round_index=1)
    other_seed = task.batch(batch_size=4, prompt_length=None, seed=8, round_index=0)
    assert torch.equal(first.input_ids, again.input_ids)
    assert not torch.equal(first.input_ids, later.input_ids)
    assert not torch.equal(first.input_ids, other_seed.input_ids)
    assert later.indices == (4, 5, 6, 7)


def test_stream_does_not_depend_on_batch_size() -> None:
    task = ListTask("permute", 6)
    big = task.batch(batch_size=8, prompt_length=None, seed=1, round_index=0)
    small = [task.batch(batch_size=2, prompt_length=None, seed=1, round_index=r) for r in range(4)]
    assert torch.equal(big.input_ids, torch.cat([b.input_ids for b in small]))


def test_longer_prompt_length_left_pads() -> None:
    task = ListTask("copy", 4)
    plain = task.batch(batch_size=2, prompt_length=None, seed=0, round_index=0)
    padded = task.batch(batch_size=2, prompt_length=12, seed=0, round_index=0)
    assert padded.input_ids.shape == (2, 12) and padded.padded
    assert torch.equal(padded.input_ids[:, 5:], plain.input_ids)
    assert (padded.input_ids[:, :5] == V.pad_id).all()
    assert padded.attention_mask[:, :5].sum() == 0 and padded.attention_mask[:, 5:].all()


def test_too_short_prompt_length_is_refused() -> None:
    with pytest.raises(ValueError, match="raise prompt_length to at least 11"):
        ListTask("copy", 8).batch(batch_size=1, prompt_length=10, seed=0, round_index=0)


def test_bad_task_options_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct"):
        ListTask("permute", 17)
    with pytest.raises(ValueError, match="unknown task"):
        make_task("sort")
    with pytest.raises(ValueError, match="does not take option"):
        make_task("copy", {"path": "x"})
    with pytest.raises(ValueError, match="vocab_size"):
        make_task("random")


def test_copy_scoring() -> None:
    items = _items("a", "b", "a")
    assert answer_is_correct("copy", items, [*_items("a", "b", "a"), V.eos_id])
    assert answer_is_correct("copy", items, [*_items("a", "b", "a"), *_items("d")])  # what follows is not read
    assert not answer_is_correct("copy", items, list(_items("a", "a", "b")))
    assert not answer_is_correct("copy", items, [*_items("a", "b"), V.eos_id])
    assert not answer_is_correct("copy", items, list(_items("a", "b")))


def test_permute_scoring_accepts_any_order_of_capitals_and_rejects_duplicates() -> None:
    items = _items("a", "b", "c")
    assert answer_is_correct("permute", items, list(_items("B", "C", "A")))
    assert answer_is_correct("permute", items, list(_items("A", "B", "C")))
    assert not answer_is_correct("permute", items, list(_items("a", "b", "c")))  # not capitals
    assert not answer_is_correct("permute", items, list(_items("A", "A", "C")))
    assert not answer_is_correct("permute", items, [*_items("A", "B"), V.eos_id])


def test_capitals() -> None:
    assert V.capital_of(V.id_of("c")) == V.id_of("C")
    assert len(set(V.capital_ids)) == len(V.item_ids) == 16
    with pytest.raises(KeyError, match="not an item"):
        V.capital_of(V.eos_id)


def test_score_reads_the_generated_part_of_the_output() -> None:
    task = ListTask("copy", 3)
    batch = task.batch(batch_size=2, prompt_length=6, seed=0, round_index=0)
    right = [[*ref, V.eos_id] for ref in batch.references if isinstance(ref, tuple)]
    assert task.score(batch, _output(batch.input_ids, right)) == [True, True]
    early_eos = [[V.eos_id] * 4, right[1]]
    assert task.score(batch, _output(batch.input_ids, early_eos)) == [False, True]


def test_score_refuses_an_output_of_another_batch() -> None:
    task = ListTask("copy", 3)
    batch = task.batch(batch_size=2, prompt_length=None, seed=0, round_index=0)
    other = task.batch(batch_size=2, prompt_length=None, seed=0, round_index=1)
    with pytest.raises(ValueError, match="does not start with the batch's prompt"):
        task.score(batch, _output(other.input_ids, [[V.eos_id] * 3] * 2))


def test_draw_example_uses_only_items() -> None:
    rng = random.Random(0)
    for _ in range(50):
        example = draw_example("copy", 8, rng)
        assert set(example.items) <= set(V.item_ids)


# ---- random --------------------------------------------------------------------------------


def test_random_task_round_zero_is_the_plain_prompt() -> None:
    task = make_task("random", vocab_size=100, forbidden_ids=(0, 1, 2))
    assert isinstance(task, RandomTask) and not task.scored
    batch = task.batch(batch_size=2, prompt_length=16, seed=5, round_index=0)
    again = task.batch(batch_size=2, prompt_length=16, seed=5, round_index=1)
    assert batch.input_ids.shape == (2, 16)
    assert not torch.isin(batch.input_ids, torch.tensor([0, 1, 2])).any()
    assert not torch.equal(batch.input_ids, again.input_ids)
    assert task.score(batch, torch.cat([batch.input_ids, batch.input_ids], dim=1)) == []


# ---- accuracy and AUP ----------------------------------------------------------------------


def test_accuracy_stats() -> None:
    stats = accuracy_stats([True, True, False, True])
    assert stats.accuracy == 0.75 and stats.n_scored == 4 and stats.n_correct == 3
    assert stats.accuracy_se == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    empty = accuracy_stats([])
    assert empty.accuracy is None and empty.accuracy_se is None and empty.n_scored == 0


def test_rounds_needed() -> None:
    assert rounds_needed(batch_size=1, min_scored=64, measured_rounds=3) == 64
    assert rounds_needed(batch_size=8, min_scored=64, measured_rounds=3) == 8
    assert rounds_needed(batch_size=64, min_scored=64, measured_rounds=3) == 3
    assert rounds_needed(batch_size=48, min_scored=64) == 2


def test_aup_of_one_point_is_its_area() -> None:
    assert aup([(1.0, 90.0)]) == pytest.approx(90.0)


def test_aup_by_hand() -> None:
    # y_max 90; W(88) = exp(-3 * (1 - 88 / 90)); the point at 80 is below the cutoff 85 and dropped.
    points = [(2.0, 88.0), (1.0, 90.0), (4.0, 80.0)]
    w88 = math.exp(-3 * (1 - 88 / 90))
    expected = 1.0 * 90.0 + (2.0 - 1.0) * (88.0 * w88 + 90.0 * 1.0) / 2
    assert aup(points) == pytest.approx(expected)


def test_aup_weight_and_y_max() -> None:
    assert aup_weight(90.0, 90.0) == 1.0
    assert aup_weight(95.0, 90.0) == 1.0  # capped at 1
    assert aup_weight(45.0, 90.0) == pytest.approx(math.exp(-1.5))
    # A higher y_max (another model's best) discounts every point of this curve.
    points = [(1.0, 80.0), (2.0, 80.0)]
    assert aup(points) == pytest.approx(80.0 + 80.0)
    assert aup(points, y_max=100.0) == pytest.approx(80.0 + 80.0 * math.exp(-0.6))


def test_aup_rewards_parallelism_only_while_accurate() -> None:
    accurate = aup([(1.0, 95.0), (2.0, 95.0), (4.0, 94.0)])
    collapsed = aup([(1.0, 95.0), (2.0, 95.0), (4.0, 40.0)])
    assert accurate > collapsed == pytest.approx(95.0 * 2)


def test_aup_refuses_fractions_and_bad_tpf() -> None:
    with pytest.raises(ValueError, match="percent"):
        aup([(1.0, 101.0)])
    with pytest.raises(ValueError, match="positive"):
        aup([(0.0, 50.0)])
    with pytest.raises(ValueError, match="at least one"):
        aup([])


# ---- extractors and jsonl ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the total is 1,234 dollars.", "1234"),
        ("3 apples and 4 pears: 7", "7"),
        ("costs $18.50 in the end", "18.50"),
        ("minus -5", "-5"),
        ("no digits here", None),
    ],
)
def test_last_number(text: str, expected: str | None) -> None:
    assert extract_answer(text, "last_number") == expected


def test_answer_matching() -> None:
    assert answer_matches("72.0", "72", "last_number")
    assert not answer_matches("71", "72", "last_number")
    assert not answer_matches(None, "72", "last_number")
    assert answer_matches(" c b a ", "c b a", "exact")
    assert extract_answer("answer: (B) and more", r"regex:\(([A-D])\)") == "B"
    assert extract_answer("x", "regex:[0-9]+") is None
    with pytest.raises(ValueError, match="unknown extractor"):
        extract_answer("x", "first_word")


def test_read_records_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "answer": 1}\n\n{"prompt": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3"):
        read_records(path)
    path.write_text('{"prompt": "a", "answer": 12}\n')
    assert read_records(path)[0].answer == "12"


def test_a_jsonl_file_that_is_not_utf8_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a", "answer": 1}\n{"prompt": "caf\xe9", "answer": 2}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        read_records(path)


def test_a_regex_extractor_sees_only_the_end_of_a_long_text() -> None:
    text = "answer 7 " + "x" * REGEX_TEXT_LIMIT + " answer 9"
    assert extract_answer(text, r"regex:answer (\d)") == "9"
    assert extract_answer("answer 7 " + "x" * REGEX_TEXT_LIMIT, r"regex:answer (\d)") is None
    assert extract_answer("answer 7 " + "x" * (REGEX_TEXT_LIMIT - 9), r"regex:answer (\d)") == "7"


def _write_jsonl(path: Path) -> None:
    records = [
        {"prompt": "copy a b c =", "answer": "a b c"},
        {"prompt": "copy d e =", "answer": "d e"},
        {"prompt": "permute f g h i =", "answer": "F G H I"},
    ]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_jsonl_batches_left_pad_and_score(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    _write_jsonl(path)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    task = make_task("jsonl", {"path": str(path), "extractor": "exact"}, tokenizer=tokenizer)
    assert isinstance(task, JsonlTask) and not task.uses_chat_template
    assert task.min_prompt_length() == 7  # <bos> permute f g h i =
    batch = task.batch(batch_size=3, prompt_length=None, seed=0, round_index=0)
    assert batch.input_ids.shape == (3, 7)
    assert sorted(str(ref) for ref in batch.references) == ["F G H I", "a b c", "d e"]
    answers = []
    for reference in batch.references:
        ids = tokenizer(str(reference), add_special_tokens=False)["input_ids"]
        answers.append([*ids, V.eos_id] + [V.pad_id] * (5 - len(ids)))
    assert task.score(batch, _output(batch.input_ids, answers)) == [True, True, True]
    # Text after the first <eos> is not part of the answer; a token instead of the <eos> is.
    answers = [[*row[:-1], V.id_of("a")] for row in answers]
    assert task.score(batch, _output(batch.input_ids, answers)) == [True, True, True]
    first_eos = answers[0].index(V.eos_id)
    answers[0][first_eos] = V.id_of("a")
    assert task.score(batch, _output(batch.input_ids, answers)) == [False, True, True]


def test_jsonl_uses_the_chat_template(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    _write_jsonl(path)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    tokenizer.chat_template = "{% for m in messages %}<bos> {{ m['content'] }}{% endfor %} ="
    task = make_task("jsonl", {"path": str(path)}, tokenizer=tokenizer)
    assert isinstance(task, JsonlTask) and task.uses_chat_template
    assert task.encode("copy a") == [V.bos_id, V.id_of("copy"), V.id_of("a"), V.sep_id]
    plain = make_task("jsonl", {"path": str(path), "chat_template": False}, tokenizer=tokenizer)
    assert isinstance(plain, JsonlTask)
    assert plain.encode("copy a") == [V.bos_id, V.id_of("copy"), V.id_of("a")]


def test_jsonl_stream_is_a_seeded_shuffle(tmp_path: Path, tokenizer_dir: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    _write_jsonl(path)
    task = make_task("jsonl", {"path": str(path)}, tokenizer=AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    assert isinstance(task, JsonlTask)
    assert sorted(task.order(1)) == [0, 1, 2]
    assert task.record_at(1, 3) == task.record_at(1, 0)  # the stream repeats after the last record
    with pytest.raises(ValueError, match="raise prompt_length"):
        task.batch(batch_size=3, prompt_length=4, seed=0, round_index=0)


def test_left_pad() -> None:
    ids, mask = left_pad([[5, 6], [7]], 3, 0)
    assert ids.tolist() == [[0, 5, 6], [0, 0, 7]] and mask.tolist() == [[0, 1, 1], [0, 0, 1]]


# ---- GSM8K exporter ------------------------------------------------------------------------


def test_gsm8k_record_and_write(tmp_path: Path) -> None:
    example = {"question": "How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,007"}
    record = gsm8k_record(example, suffix=" Answer with a number.")
    assert record == {"prompt": "How many? Answer with a number.", "answer": "1007"}
    path = tmp_path / "out" / "gsm8k.jsonl"
    assert write_jsonl([record, record], path) == 2
    assert read_records(path)[1].answer == "1007"
    with pytest.raises(ValueError, match="####"):
        gsm8k_record({"question": "q", "answer": "no marker"})


def test_gsm8k_exporter_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(SystemExit, match=r"pip install 'dllm-bench\[gsm8k\]'"):
        load_datasets_module()
    assert "dllm-bench[gsm8k]" in INSTALL_HINT


# ---- the tokenizer -------------------------------------------------------------------------


def test_tokenizer_loads_with_auto_tokenizer(tokenizer_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert tokenizer.pad_token_id == V.pad_id
    assert tokenizer.eos_token_id == V.eos_id
    assert tokenizer.bos_token_id == V.bos_id
    assert tokenizer.mask_token_id == V.mask_id
    assert len(tokenizer) == V.size
    ids = tokenizer("copy c a f =")["input_ids"]
    assert ids == [V.bos_id, V.id_of("copy"), *_items("c", "a", "f"), V.sep_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "copy c a f ="
    assert tokenizer("zebra", add_special_tokens=False)["input_ids"] == [V.unk_id]
