"""The commit rules of LLaDA decoding, one module each: the fixed schedule (`fixed`, the
`steps` key) and the confidence rules (`threshold`, `factor`), at most one of which a
setting uses. Adding a confidence rule is a module here, its entry in `CONFIDENCE_RULES`,
and its README text (the README's "Adding a decoding rule")."""

from __future__ import annotations

from collections.abc import Mapping

from dllm_bench.sampling.rules.base import ConfidenceRule, Problem, StepRule
from dllm_bench.sampling.rules.factor import Factor
from dllm_bench.sampling.rules.fixed import FixedSchedule, transfer_schedule
from dllm_bench.sampling.rules.threshold import Threshold

#: The confidence rules, in the order of their config keys, columns and case-id parts.
CONFIDENCE_RULES: tuple[type[ConfidenceRule], ...] = (Threshold, Factor)
RULE_KEYS: tuple[str, ...] = tuple(rule.key for rule in CONFIDENCE_RULES)


def rule_problems(values: Mapping[str, object]) -> list[Problem]:
    """Every problem of the confidence rules' values (`values` maps a rule key to its value,
    None when unset): more than one set, then each set value's own problems."""
    chosen = [rule for rule in CONFIDENCE_RULES if values.get(rule.key) is not None]
    problems: list[Problem] = []
    if len(chosen) > 1:
        keys = " and ".join(rule.key for rule in chosen)
        got = ", ".join(f"{rule.key}={values[rule.key]!r}" for rule in chosen)
        problems.append((chosen[0].key, f"{keys} exclude each other: set one of them (got {got})"))
    for rule in chosen:
        problems += rule.problems(values[rule.key])
    return problems


def active_rule(values: Mapping[str, object]) -> ConfidenceRule | None:
    """The confidence rule a valid setting uses, with its value; None for the fixed schedule."""
    for rule in CONFIDENCE_RULES:
        value = values.get(rule.key)
        if value is not None:
            assert isinstance(value, int | float)
            return rule(float(value))
    return None


def step_rule(values: Mapping[str, object], steps: int | None, num_blocks: int, block_length: int) -> StepRule:
    """What a valid setting's steps commit: its confidence rule, else the fixed schedule."""
    rule = active_rule(values)
    if rule is not None:
        return rule
    assert steps is not None
    return FixedSchedule(steps, num_blocks, block_length)


__all__ = [
    "CONFIDENCE_RULES",
    "RULE_KEYS",
    "ConfidenceRule",
    "FixedSchedule",
    "Problem",
    "StepRule",
    "active_rule",
    "rule_problems",
    "step_rule",
    "transfer_schedule",
]
