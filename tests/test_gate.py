"""The regression gate: rule specs, matching current rows to the reference run's, and loading a reference run."""

from __future__ import annotations

from pathlib import Path

import pytest

from dllm_bench.rows import COLUMN_NAMES, IDENTITY_COLUMNS, Row
from dllm_bench.sinks.csvfiles import FINAL_CSV, PARTIAL_CSV, append_row, read_results
from dllm_bench.sinks.gate import (
    GateError,
    GateFailure,
    GateRule,
    check_gate,
    gate_metrics,
    load_reference,
    parse_gate,
)
from dllm_bench.sinks.text import format_significant

TOKENS_DROP_10 = GateRule(metric="tokens_per_s", change=-10.0)
LATENCY_RISE_15 = GateRule(metric="latency_mean_s", change=15.0)


def make_row(steps: int, tokens_per_s: float | None, latency_mean_s: float = 1.0, status: str = "ok") -> Row:
    """A LLaDA row whose case differs from others only by `steps`."""
    return Row(case_id=f"tiny-llada-p32-g32-b1-s{steps}-k32").with_values(
        {
            "model": "tiny-llada",
            "kind": "llada",
            "source": "random-init",
            "device": "cpu",
            "dtype": "float32",
            "prompt_length": 32,
            "gen_length": 32,
            "batch_size": 1,
            "steps": steps,
            "block_length": 32,
            "remasking": "low_confidence",
            "temperature": 0.0,
            "cfg_scale": 0.0,
            "warmup_rounds": 1,
            "measured_rounds": 2,
            "status": status,
            "error": None if status == "ok" else "boom",
            "latency_mean_s": latency_mean_s,
            "tokens_per_s": tokens_per_s,
            "nfe": steps,
        }
    )


def round_trip(path: Path, rows: list[Row]) -> list[Row]:
    """Rows as they come back from a results CSV."""
    for row in rows:
        append_row(path, row)
    return read_results(path)


# --- parse_gate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tokens_per_s:-10%", GateRule("tokens_per_s", -10.0)),
        ("latency_mean_s:+15%", GateRule("latency_mean_s", 15.0)),
        ("latency_median_s:+2.5%", GateRule("latency_median_s", 2.5)),
        (" nfe : +0% ", GateRule("nfe", 0.0)),
    ],
)
def test_parse_gate_accepts_signed_percentages(spec: str, expected: GateRule) -> None:
    assert parse_gate(spec) == expected


def test_sign_gives_the_bad_direction_even_for_zero() -> None:
    assert parse_gate("latency_mean_s:+15%").rise_is_bad
    assert not parse_gate("tokens_per_s:-10%").rise_is_bad
    assert parse_gate("tokens_per_s:+0%").rise_is_bad
    assert not parse_gate("tokens_per_s:-0%").rise_is_bad


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("tokens_per_s:10%", "needs a sign"),
        ("tps:-10%", "unknown metric 'tps'"),
        ("status:-10%", "'status' is not a numeric measurement"),
        ("steps:+10%", "'steps' is not a numeric measurement"),
        ("timestamp:+10%", "'timestamp' is not a numeric measurement"),
        ("tokens_per_s:-ten%", "'ten' is not a number"),
        ("tokens_per_s:-%", "'' is not a number"),
        ("tokens_per_s:-1e3%", "'1e3' is not a number"),
        ("tokens_per_s-10%", "no ':'"),
        ("tokens_per_s:-10", "must end with %"),
        ("tokens_per_s:-2pp", "pp (percentage points) applies to the share columns"),
        ("", "no ':'"),
    ],
)
def test_parse_gate_rejects_bad_specs_with_the_spec_and_the_form(spec: str, reason: str) -> None:
    with pytest.raises(GateError) as info:
        parse_gate(spec)
    message = str(info.value)
    assert reason in message
    assert repr(spec) in message
    assert "METRIC:+N%" in message and "METRIC:-N%" in message


def test_every_gate_metric_is_a_result_column() -> None:
    metrics = gate_metrics()
    assert {"latency_mean_s", "tokens_per_s", "nfe"} <= set(metrics)
    assert set(metrics) <= set(COLUMN_NAMES)
    assert not set(metrics) & set(IDENTITY_COLUMNS)
    for metric in metrics:
        assert parse_gate(f"{metric}:+5%") == GateRule(metric, 5.0)


def test_gate_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_gate("nope")


# --- check_gate ---------------------------------------------------------------------------------


def test_within_threshold_and_improvements_pass() -> None:
    reference = [make_row(8, 100.0), make_row(16, 100.0), make_row(32, 100.0)]
    current = [make_row(8, 95.0), make_row(16, 90.5), make_row(32, 250.0)]
    result = check_gate(current, reference, [TOKENS_DROP_10])
    assert result.passed(allow_missing=False)
    assert result.failures == []
    assert result.compared == 3
    assert result.unmatched == []


def test_only_cases_past_the_threshold_fail_with_their_change() -> None:
    reference = [make_row(8, 100.0), make_row(16, 200.0), make_row(32, 100.0)]
    current = [make_row(8, 80.0), make_row(16, 190.0), make_row(32, 70.0)]
    result = check_gate(current, reference, [TOKENS_DROP_10])
    assert not result.passed(allow_missing=False)
    assert [f.case_id for f in result.failures] == [
        "tiny-llada-p32-g32-b1-s8-k32",
        "tiny-llada-p32-g32-b1-s32-k32",
    ]
    assert [f.change for f in result.failures] == pytest.approx([-20.0, -30.0])
    values = [(f.reference, f.current, f.limit) for f in result.failures]
    assert values == [(100.0, 80.0, -10.0), (100.0, 70.0, -10.0)]
    assert result.compared == 3


def test_exactly_at_the_limit_passes_in_both_directions() -> None:
    result = check_gate([make_row(8, 90.0)], [make_row(8, 100.0)], [TOKENS_DROP_10])
    assert result.passed(allow_missing=False)
    assert result.compared == 1
    latency = check_gate([make_row(8, 1.0, latency_mean_s=1.15)], [make_row(8, 1.0)], [LATENCY_RISE_15])
    assert latency.passed(allow_missing=False)
    assert latency.compared == 1
    just_over = check_gate([make_row(8, 1.0, latency_mean_s=1.1501)], [make_row(8, 1.0)], [LATENCY_RISE_15])
    assert not just_over.passed(allow_missing=False)


def test_plus_rule_fails_on_a_rise_and_passes_a_fall() -> None:
    reference = [make_row(8, 100.0, latency_mean_s=1.0), make_row(16, 100.0, latency_mean_s=1.0)]
    current = [make_row(8, 100.0, latency_mean_s=1.2), make_row(16, 100.0, latency_mean_s=0.5)]
    result = check_gate(current, reference, [LATENCY_RISE_15])
    assert [(f.case_id, f.metric) for f in result.failures] == [("tiny-llada-p32-g32-b1-s8-k32", "latency_mean_s")]
    assert result.failures[0].change == pytest.approx(20.0)


def test_minus_rule_passes_a_rise() -> None:
    result = check_gate([make_row(8, 1000.0)], [make_row(8, 100.0)], [TOKENS_DROP_10])
    assert result.passed(allow_missing=False)


def test_every_rule_is_checked_and_counted() -> None:
    reference = [make_row(8, 100.0, latency_mean_s=1.0), make_row(16, 100.0, latency_mean_s=1.0)]
    current = [make_row(8, 50.0, latency_mean_s=2.0), make_row(16, 100.0, latency_mean_s=1.0)]
    result = check_gate(current, reference, [TOKENS_DROP_10, LATENCY_RISE_15])
    assert result.compared == 4
    assert [f.metric for f in result.failures] == ["tokens_per_s", "latency_mean_s"]


def test_cases_without_an_ok_reference_row_are_unmatched() -> None:
    reference = [make_row(8, 100.0), make_row(16, 100.0, status="error")]
    current = [make_row(8, 100.0), make_row(16, 100.0), make_row(32, 10.0)]
    result = check_gate(current, reference, [TOKENS_DROP_10])
    assert result.unmatched == ["tiny-llada-p32-g32-b1-s16-k32", "tiny-llada-p32-g32-b1-s32-k32"]
    assert result.compared == 1
    assert result.passed(allow_missing=False), "new cases without a reference do not fail the gate"


def test_rows_match_by_parameters_not_case_id() -> None:
    other_source = make_row(8, 100.0).with_values({"source": "GSAI-ML/LLaDA-8B-Instruct"})
    result = check_gate([make_row(8, 10.0)], [other_source], [TOKENS_DROP_10])
    assert result.unmatched == ["tiny-llada-p32-g32-b1-s8-k32"]
    assert result.compared == 0


def test_non_ok_current_rows_are_ignored() -> None:
    reference = [make_row(8, 100.0), make_row(16, 100.0)]
    current = [make_row(8, 0.0, status="error"), make_row(16, 0.0, status="oom")]
    result = check_gate(current, reference, [TOKENS_DROP_10])
    assert result.failures == []
    assert result.compared == 0
    assert result.unmatched == []
    # Nothing was compared: that is not a passed gate unless the user allows it.
    assert not result.passed(allow_missing=False)
    assert result.passed(allow_missing=True)


def test_a_current_case_rerun_into_an_error_is_not_compared() -> None:
    current = [make_row(8, 10.0), make_row(8, 0.0, status="error")]
    result = check_gate(current, [make_row(8, 100.0)], [TOKENS_DROP_10])
    assert result.compared == 0
    assert result.failures == []


def test_latest_reference_row_per_case_wins() -> None:
    reference = [make_row(8, 500.0), make_row(8, 100.0)]
    assert check_gate([make_row(8, 95.0)], reference, [TOKENS_DROP_10]).passed(allow_missing=False)
    reversed_reference = [make_row(8, 100.0), make_row(8, 500.0)]
    assert not check_gate([make_row(8, 95.0)], reversed_reference, [TOKENS_DROP_10]).passed(allow_missing=False)


def test_a_later_failed_reference_row_does_not_replace_an_ok_one() -> None:
    reference = [make_row(8, 100.0), make_row(8, 0.0, status="oom")]
    result = check_gate([make_row(8, 50.0)], reference, [TOKENS_DROP_10])
    assert result.compared == 1
    assert [f.reference for f in result.failures] == [100.0]


def test_pairs_missing_the_metric_fail_the_gate_unless_allowed() -> None:
    current = [make_row(8, None), make_row(16, 100.0)]
    reference = [make_row(8, 100.0), make_row(16, None)]
    result = check_gate(current, reference, [TOKENS_DROP_10])
    assert result.compared == 0
    assert result.incomparable == [
        "tiny-llada-p32-g32-b1-s8-k32:tokens_per_s",
        "tiny-llada-p32-g32-b1-s16-k32:tokens_per_s",
    ]
    assert not result.passed(allow_missing=False)
    assert "compared 0 case/metric pairs" in result.problem(allow_missing=False)
    assert result.passed(allow_missing=True)


def test_one_comparable_pair_does_not_hide_an_incomparable_one() -> None:
    result = check_gate(
        [make_row(8, 100.0), make_row(16, None)], [make_row(8, 100.0), make_row(16, 100.0)], [TOKENS_DROP_10]
    )
    assert result.compared == 1
    assert "1 case/metric pairs have a reference row but no value" in result.problem(allow_missing=False)


def test_a_different_measured_rounds_matches_nothing_and_fails_the_gate() -> None:
    reference = [make_row(8, 100.0).with_values({"measured_rounds": 5})]
    result = check_gate([make_row(8, 100.0)], reference, [TOKENS_DROP_10])
    assert result.compared == 0
    assert result.unmatched == ["tiny-llada-p32-g32-b1-s8-k32"]
    assert not result.passed(allow_missing=False)
    assert any(line.startswith("gate FAILED: compared 0") for line in result.lines(allow_missing=False))


def test_gate_on_rows_read_back_from_csv(tmp_path: Path) -> None:
    reference = round_trip(tmp_path / "reference.csv", [make_row(8, 812.4), make_row(16, 400.0)])
    current = round_trip(tmp_path / "current.csv", [make_row(8, 650.1), make_row(16, 399.0)])
    result = check_gate(current, reference, [TOKENS_DROP_10])
    assert result.compared == 2
    assert [f.describe() for f in result.failures] == [
        "tiny-llada-p32-g32-b1-s8-k32: tokens_per_s 812.4 -> 650.1 (-20.0%, limit -10%)"
    ]


def test_describe_names_case_metric_values_change_and_limit() -> None:
    failure = GateFailure(
        case_id="tiny-llada-p32-g32-b1-s8-k32",
        metric="latency_mean_s",
        reference=0.01234,
        current=0.0150,
        change=21.5,
        limit=15.0,
    )
    assert failure.describe() == "tiny-llada-p32-g32-b1-s8-k32: latency_mean_s 0.01234 -> 0.01500 (+21.5%, limit +15%)"


@pytest.mark.parametrize(
    ("value", "text"),
    [(812.44, "812.4"), (1.5, "1.500"), (0.001234, "0.001234"), (9.99996, "10.00"), (12345.6, "12346"), (0.0, "0.000")],
)
def test_format_significant_keeps_four_digits_in_fixed_notation(value: float, text: str) -> None:
    assert format_significant(value) == text


# --- load_reference ------------------------------------------------------------------------------


def test_load_reference_from_a_csv_file(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    round_trip(path, [make_row(8, 100.0), make_row(16, 50.0)])
    rows = load_reference(path)
    assert [row.case_id for row in rows] == ["tiny-llada-p32-g32-b1-s8-k32", "tiny-llada-p32-g32-b1-s16-k32"]
    assert rows[1].tokens_per_s == 50.0


def test_load_reference_from_a_run_directory_prefers_the_final_csv(tmp_path: Path) -> None:
    round_trip(tmp_path / PARTIAL_CSV, [make_row(8, 1.0), make_row(8, 100.0)])
    round_trip(tmp_path / FINAL_CSV, [make_row(8, 100.0)])
    assert [row.tokens_per_s for row in load_reference(tmp_path)] == [100.0]


def test_load_reference_from_an_interrupted_run_directory(tmp_path: Path) -> None:
    round_trip(tmp_path / PARTIAL_CSV, [make_row(8, 100.0), make_row(16, 100.0)])
    assert len(load_reference(tmp_path)) == 2


def test_load_reference_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(GateError, match="does not exist") as info:
        load_reference(missing)
    assert str(missing) in str(info.value)


def test_load_reference_directory_without_results(tmp_path: Path) -> None:
    with pytest.raises(GateError, match="holds no results") as info:
        load_reference(tmp_path)
    assert FINAL_CSV in str(info.value) and PARTIAL_CSV in str(info.value)


@pytest.mark.parametrize("content", ["", "case_id,status\n"])
def test_load_reference_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GateError, match="has no result rows"):
        load_reference(path)


def test_load_reference_refuses_a_csv_that_is_not_results(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("name,value\na,1\n", encoding="utf-8")
    with pytest.raises(GateError, match="not a dllm-bench results file"):
        load_reference(path)


def test_accuracy_is_gated_in_percentage_points() -> None:
    rule = parse_gate("accuracy:-2pp")
    assert rule == GateRule("accuracy", -2.0, "pp")
    reference = [make_row(8, 100.0).with_values({"accuracy": 0.80}), make_row(16, 100.0).with_values({"accuracy": 0.5})]
    current = [make_row(8, 100.0).with_values({"accuracy": 0.785}), make_row(16, 100.0).with_values({"accuracy": 0.47})]
    result = check_gate(current, reference, [rule])
    assert result.compared == 2
    assert [f.case_id for f in result.failures] == ["tiny-llada-p32-g32-b1-s16-k32"]
    assert result.failures[0].change == pytest.approx(-3.0)
    assert result.failures[0].describe().endswith("(-3.0 pp, limit -2 pp)")
