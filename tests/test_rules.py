"""Decoding rules as modules: each confidence rule owns its config key, validation, case-id
part and column meaning; the config section, the exclusion of two rules and the sampler's
dispatch come from the registry (`dllm_bench.sampling.rules`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dllm_bench.config import parse_config
from dllm_bench.kinds import KIND_SPECS
from dllm_bench.rows import COLUMN_DOCS
from dllm_bench.sampling import rules
from dllm_bench.sampling.llada import generate, generate_keywords
from dllm_bench.sampling.rules import CONFIDENCE_RULES, ConfidenceRule, Problem, rule_problems
from dllm_bench.sampling.schedule import LladaSettings
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("rule", CONFIDENCE_RULES, ids=[r.key for r in CONFIDENCE_RULES])
def test_each_rule_owns_its_key_id_part_and_column(rule: type[ConfidenceRule]) -> None:
    # The rule's text is the column's meaning; a column other kinds share (Dream's threshold) adds theirs after it.
    sharing = [spec.kind for spec in KIND_SPECS if rule.key in spec.column_names]
    doc = dict(COLUMN_DOCS)[rule.key]
    assert doc == rule.doc if sharing == ["llada"] else doc.startswith(rule.doc + "; ")
    assert f"| `llada.{rule.key}` |" in README
    settings = LladaSettings(steps=None, block_length=8, **{rule.key: 0.5})
    assert settings.id_parts() == ["k8", rule.id_part(0.5)]
    raw = tiny_config(llada={"steps": [8], "block_length": [8], rule.key: [None, 0.5]})
    parsed = parse_config(raw, Path("grid.yaml")).settings["llada"]
    with_rule = [s for s in parsed if isinstance(s, LladaSettings) and s.rule_values()[rule.key] is not None]
    assert [(s.steps, s.rule_values()[rule.key]) for s in with_rule] == [(None, 0.5)]
    assert rule.problems(0.5) == []
    assert rule.problems("0.5") and rule.problems(float("nan"))


class _Alpha(ConfidenceRule):
    """A rule registered by the test: commits everything masked."""

    key = "alpha"
    id_prefix = "a"
    doc = "a test rule"

    @classmethod
    def problems(cls, value: object) -> list[Problem]:
        return [] if isinstance(value, float) else [(cls.key, f"alpha must be a float, got {value!r}")]

    def select(self, confidence: torch.Tensor, masked: torch.Tensor, step: int) -> torch.Tensor:
        return masked


def test_a_registered_rule_joins_the_exclusion_and_the_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rules, "CONFIDENCE_RULES", (*CONFIDENCE_RULES, _Alpha))
    problems = rule_problems({"threshold": 0.9, "factor": None, "alpha": "x"})
    assert problems == [
        ("threshold", "threshold and alpha exclude each other: set one of them (got threshold=0.9, alpha='x')"),
        ("alpha", "alpha must be a float, got 'x'"),
    ]
    assert isinstance(rules.active_rule({"alpha": 0.5}), _Alpha)


class _Model(torch.nn.Module):
    """Logits from a fixed random table by token id (deterministic, no training)."""

    def __init__(self, vocab: int = 32) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> object:
        logits = self.table[ids] + torch.arange(ids.shape[1]).unsqueeze(-1) * 0.01
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("options", [{"steps": 8}, {"steps": None, "threshold": 0.5}, {"steps": None, "factor": 1.0}])
def test_the_sampler_takes_one_settings_object(options: dict[str, object]) -> None:
    model, prompt = _Model(), torch.tensor([[1, 2, 3, 4]])
    settings = LladaSettings(block_length=4, **options)  # type: ignore[arg-type]
    out = generate(model, prompt, settings, gen_length=8, mask_id=31)
    keywords = generate_keywords(model, prompt, gen_length=8, mask_id=31, block_length=4, **options)
    assert torch.equal(out, keywords)
    assert out.shape == (1, 12) and not bool((out[:, 4:] == 31).any())
