"""The end-of-run terminal tables: the aligned per-case summary and LLaDA-vs-AR speed ratios."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dllm_bench.rows import Row
from dllm_bench.sinks.csvfiles import append_row, read_results
from dllm_bench.sinks.summary import (
    NOISE_NOTE,
    aup_header,
    aup_lines,
    relative_speed_header,
    relative_speed_lines,
    summary_lines,
)

LLADA_ID = "tiny-llada-p32-g32-b1-s8-k32"
LLAMA_ID = "tiny-llama-p32-g32-b1"


def llada_row(case_id: str = LLADA_ID, tokens_per_s: object = 300.0, **overrides: object) -> Row:
    row: dict[str, object] = {
        "kind": "llada",
        "status": "ok",
        "prompt_length": 32,
        "gen_length": 32,
        "batch_size": 1,
        "latency_mean_s": 0.1067,
        "tokens_per_s": tokens_per_s,
        "nfe": 8,
    }
    row.update(overrides)
    return Row(case_id=case_id).with_values(row)


def baseline_row(case_id: str = LLAMA_ID, tokens_per_s: object = 100.0, **overrides: object) -> Row:
    return llada_row(case_id=case_id, tokens_per_s=tokens_per_s, **{"kind": "baseline", "nfe": 32, **overrides})


def cells(line: str) -> list[str]:
    return line.split()


# --- summary_lines ------------------------------------------------------------------------------


def test_header_then_one_line_per_row() -> None:
    lines = summary_lines([llada_row(), baseline_row()])
    assert cells(lines[0]) == ["case_id", "status", "latency_mean_s", "tokens_per_s", "nfe", "peak_rss_increase_mb"]
    assert cells(lines[1]) == [LLADA_ID, "ok", "0.1067", "300.0", "8", "-"]
    assert cells(lines[2]) == [LLAMA_ID, "ok", "0.1067", "100.0", "32", "-"]
    assert len(lines) == 3


def test_columns_are_aligned_from_the_content() -> None:
    rows = [
        llada_row(case_id="a", latency_mean_s=12.5, tokens_per_s=2.0, nfe=1024),
        llada_row(case_id="a-much-longer-case-id", latency_mean_s=0.001234, tokens_per_s=123456.7, nfe=8),
        llada_row(case_id="mid-case", status="error", latency_mean_s=None, tokens_per_s=None, nfe=None),
    ]
    lines = summary_lines(rows)
    status_at = lines[0].index("status")
    assert status_at == len("a-much-longer-case-id") + 2
    assert [line[status_at:].split()[0] for line in lines[1:]] == ["ok", "ok", "error"]
    # Numbers are right-aligned: every line's tokens/s cell ends in the same place.
    tokens_end = lines[0].index("tokens_per_s") + len("tokens_per_s")
    assert [line[:tokens_end].split()[-1] for line in lines[1:]] == ["2.0", "123456.7", "-"]


def test_latency_keeps_four_significant_digits() -> None:
    lines = summary_lines([llada_row(latency_mean_s=0.00123456), llada_row(latency_mean_s=2.5)])
    assert cells(lines[1])[2] == "0.001235"
    assert cells(lines[2])[2] == "2.500"


def test_failed_rows_show_status_and_dashes() -> None:
    oom = llada_row(status="oom", latency_mean_s=None, tokens_per_s=None, nfe=None)
    error = llada_row(status="error", latency_mean_s=None, tokens_per_s=None, nfe=None)
    lines = summary_lines([oom, error])
    assert cells(lines[1]) == [LLADA_ID, "oom", "-", "-", "-", "-"]
    assert cells(lines[2]) == [LLADA_ID, "error", "-", "-", "-", "-"]


def test_memory_column_is_the_cuda_peak_when_any_row_has_it() -> None:
    cuda = [llada_row(peak_memory_allocated_mb=512.0), llada_row(peak_rss_increase_mb=64.5)]
    lines = summary_lines(cuda)
    assert cells(lines[0])[-1] == "peak_memory_allocated_mb"
    assert [cells(line)[-1] for line in lines[1:]] == ["512.0", "-"]
    cpu = summary_lines([llada_row(peak_rss_increase_mb=20.0), llada_row()])
    assert cells(cpu[0])[-1] == "peak_rss_increase_mb"
    assert [cells(line)[-1] for line in cpu[1:]] == ["20.0", "-"]


def test_noisy_cases_are_marked_and_explained() -> None:
    lines = summary_lines([llada_row(noise_warning="load,cv"), llada_row()])
    assert cells(lines[0])[-1] == "noise_warning"
    assert cells(lines[1])[-1] == "load,cv"
    assert lines[-1] == NOISE_NOTE
    assert "noise_warning" not in summary_lines([llada_row()])[0]


def test_summary_of_rows_read_back_from_csv(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    append_row(path, llada_row())
    append_row(path, baseline_row(status="error", latency_mean_s=None, tokens_per_s=None, nfe=None))
    lines = summary_lines(read_results(path))
    assert cells(lines[1]) == [LLADA_ID, "ok", "0.1067", "300.0", "8", "-"]
    assert cells(lines[2]) == [LLAMA_ID, "error", "-", "-", "-", "-"]


def test_summary_of_no_rows_is_the_header() -> None:
    assert len(summary_lines([])) == 1


# --- relative_speed_lines -----------------------------------------------------------------------


def test_ratio_is_llada_tokens_per_s_over_baseline() -> None:
    lines = relative_speed_lines([llada_row(tokens_per_s=300.0), baseline_row(tokens_per_s=100.0)])
    assert lines == [relative_speed_header("LLaDA"), f"  {LLADA_ID} vs {LLAMA_ID}: 3.00x"]


def test_header_says_what_the_ratio_is_and_names_the_families_of_the_rows() -> None:
    header = relative_speed_lines([llada_row(tokens_per_s=300.0), baseline_row(tokens_per_s=100.0)])[0]
    assert "tokens_per_s ratio" in header
    assert ">1 means LLaDA is faster" in header
    dgemma = dataclasses.replace(llada_row(tokens_per_s=200.0), kind="diffusion_gemma", case_id="dg-p8-g8-b2-d4")
    rows = [llada_row(tokens_per_s=300.0), dgemma, baseline_row(tokens_per_s=100.0)]
    assert ">1 means LLaDA / DiffusionGemma is faster" in relative_speed_lines(rows)[0]


def test_ratios_from_rows_read_back(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    append_row(path, llada_row(tokens_per_s=42.0))
    append_row(path, baseline_row(tokens_per_s=100.0))
    assert relative_speed_lines(read_results(path))[1:] == [f"  {LLADA_ID} vs {LLAMA_ID}: 0.42x"]


def test_each_baseline_of_the_same_shape_is_compared() -> None:
    rows = [
        llada_row(tokens_per_s=50.0),
        baseline_row(tokens_per_s=100.0),
        baseline_row(case_id="tiny-gpt-p32-g32-b1", tokens_per_s=25.0),
    ]
    assert relative_speed_lines(rows)[1:] == [
        f"  {LLADA_ID} vs {LLAMA_ID}: 0.50x",
        f"  {LLADA_ID} vs tiny-gpt-p32-g32-b1: 2.00x",
    ]


def test_only_the_same_shape_and_ok_rows_are_compared() -> None:
    rows = [
        llada_row(tokens_per_s=300.0),
        baseline_row(case_id="tiny-llama-p32-g32-b4", batch_size=4, tokens_per_s=1.0),
        baseline_row(case_id="tiny-llama-p64-g32-b1", prompt_length=64, tokens_per_s=1.0),
        baseline_row(status="oom", tokens_per_s=1.0),
        baseline_row(tokens_per_s=150.0),
        llada_row(case_id="tiny-llada-p32-g32-b1-s32-k32", status="error", tokens_per_s=1.0),
    ]
    assert relative_speed_lines(rows)[1:] == [f"  {LLADA_ID} vs {LLAMA_ID}: 2.00x"]


def test_missing_baseline_is_named_once_per_shape() -> None:
    rows = [
        llada_row(case_id="tiny-llada-p64-g16-b2-s8-k16", prompt_length=64, gen_length=16, batch_size=2),
        llada_row(case_id="tiny-llada-p64-g16-b2-s16-k16", prompt_length=64, gen_length=16, batch_size=2),
        llada_row(tokens_per_s=200.0),
        baseline_row(tokens_per_s=100.0),
    ]
    assert relative_speed_lines(rows)[1:] == [
        "  no AR model at p64 g16 b2",
        f"  {LLADA_ID} vs {LLAMA_ID}: 2.00x",
    ]


def test_tiny_ratio_is_not_rounded_to_zero() -> None:
    lines = relative_speed_lines([llada_row(tokens_per_s=1.0), baseline_row(tokens_per_s=400.0)])
    assert lines[1].endswith(": 0.0025x")


def test_a_baseline_without_speed_is_reported_not_divided() -> None:
    lines = relative_speed_lines([llada_row(tokens_per_s=10.0), baseline_row(tokens_per_s=0.0)])
    assert lines[1] == f"  {LLADA_ID} vs {LLAMA_ID}: no tokens_per_s to compare"


def test_no_llada_rows_means_no_lines() -> None:
    assert relative_speed_lines([baseline_row()]) == []
    assert relative_speed_lines([llada_row(status="error"), baseline_row()]) == []


def test_aup_has_one_line_per_curve_even_when_models_share_a_name() -> None:
    # Two models named alike (another model_id) and two task option sets: four AUP curves.
    rows = [
        llada_row(f"case-{i}", model_id=model_id, task="copy", task_options=options, aup=score)
        for i, (model_id, options, score) in enumerate(
            [("a", None, 10.0), ("a", None, 10.0), ("b", None, 20.0), ("a", "items=4", 30.0), ("b", "items=4", 40.0)]
        )
    ]
    lines = aup_lines(rows)
    assert lines[0] == aup_header("LLaDA")
    scores = sorted(float(line.rsplit(":", 1)[1]) for line in lines[1:])
    assert scores == [10.0, 20.0, 30.0, 40.0]
