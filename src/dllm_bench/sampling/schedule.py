"""The LLaDA decoding options without torch: their names, defaults and validation, and the
step schedule (how many forward passes a setting makes). The sampler (`sampling.llada`)
and everything that only reads settings (the report, the config check) use this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dllm_bench.sampling.rules import CONFIDENCE_RULES, RULE_KEYS, rule_problems, transfer_schedule
from dllm_bench.sampling.rules.base import Problem, finite

__all__ = [
    "CACHE_MODES",
    "LLADA_DEFAULTS",
    "REMASKING_STRATEGIES",
    "DecodingError",
    "LladaDecodingDefaults",
    "LladaSettings",
    "forward_pass_bounds",
    "num_forward_passes",
    "transfer_schedule",
    "validate_decoding",
    "validate_schedule",
]

REMASKING_STRATEGIES: tuple[str, ...] = ("low_confidence", "random")
CACHE_MODES: tuple[str, ...] = ("none", "prefix", "dual")


@dataclass(frozen=True)
class LladaDecodingDefaults:
    """The defaults of the LLaDA decoding options (``steps`` and ``block_length`` have none)."""

    remasking: str = "low_confidence"
    temperature: float = 0.0
    cfg_scale: float = 0.0
    cache: str = "none"
    threshold: float | None = None
    factor: float | None = None


#: The one place the LLaDA decoding defaults are written down.
LLADA_DEFAULTS = LladaDecodingDefaults()


class DecodingError(ValueError):
    """Invalid decoding options; ``problems`` holds one message per offending parameter and
    ``parameters`` the parameter each is about (``"threshold"`` when threshold and factor
    are both set)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.parameters: tuple[str, ...] = tuple(name for name, _ in problems)
        self.problems: tuple[str, ...] = tuple(message for _, message in problems)


# --------------------------------------------------------------------------- validation


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int_problem(name: str, value: object) -> Problem | None:
    if not _is_int(value):
        return name, f"{name} must be a positive integer, got {value!r}"
    assert isinstance(value, int)
    return None if value > 0 else (name, f"{name} must be a positive integer, got {value}")


def _schedule_problems(steps: object, gen_length: object, block_length: object, dynamic: bool) -> list[Problem]:
    """The step/block schedule rule (the only copy of it)."""
    problems: list[Problem] = []
    steps_problem: Problem | None
    if dynamic and steps is None:
        steps_problem = None  # steps do not matter with threshold or factor
    elif steps is None:
        omitted = "steps must be a positive integer, got None (it may be omitted only with threshold or factor)"
        steps_problem = ("steps", omitted)
    else:
        steps_problem = _positive_int_problem("steps", steps)
    sizes = [_positive_int_problem("gen_length", gen_length), _positive_int_problem("block_length", block_length)]
    problems.extend(p for p in (steps_problem, *sizes) if p is not None)
    if any(sizes):
        return problems
    assert isinstance(gen_length, int) and isinstance(block_length, int)
    if gen_length % block_length != 0:
        multiple = f"gen_length ({gen_length}) must be a multiple of block_length ({block_length})"
        problems.append(("gen_length", multiple))
        return problems
    num_blocks = gen_length // block_length
    if not dynamic and steps_problem is None and isinstance(steps, int) and steps % num_blocks != 0:
        blocks = f"the number of blocks gen_length/block_length = {num_blocks}"
        problems.append(("steps", f"steps ({steps}) must be a multiple of {blocks}"))
    return problems


def _option_problems(cache: object, cfg_scale: object, temperature: object, remasking: object) -> list[Problem]:
    problems: list[Problem] = []
    if cache not in CACHE_MODES:
        problems.append(("cache", f"cache must be one of {', '.join(map(repr, CACHE_MODES))}, got {cache!r}"))
    if remasking not in REMASKING_STRATEGIES:
        expected = ", ".join(repr(r) for r in REMASKING_STRATEGIES)
        problems.append(("remasking", f"unknown remasking {remasking!r}; expected one of {expected}"))
    for name, value in (("temperature", temperature), ("cfg_scale", cfg_scale)):
        number = finite(value)
        if number is None or number < 0:
            problems.append((name, f"{name} must be a finite number >= 0, got {value!r}"))
    return problems


def validate_decoding(
    *,
    steps: int | None,
    gen_length: int,
    block_length: int,
    cache: str = LLADA_DEFAULTS.cache,
    cfg_scale: float = LLADA_DEFAULTS.cfg_scale,
    temperature: float = LLADA_DEFAULTS.temperature,
    remasking: str = LLADA_DEFAULTS.remasking,
    **rules: object,
) -> None:
    """Raise :class:`DecodingError` (a ``ValueError``) listing every invalid option; return None if all are valid.

    Valid means: ``gen_length`` and ``block_length`` are positive integers and
    ``gen_length`` is a multiple of ``block_length``; without ``threshold`` and
    ``factor``, ``steps`` is a positive integer and a multiple of the number of
    blocks ``gen_length // block_length`` (with one of them, ``steps`` may be
    None and is not used); ``threshold`` (tau in (0, 1]) and ``factor`` (> 0)
    are not both set; ``cache`` is one of :data:`CACHE_MODES`; ``remasking`` one
    of :data:`REMASKING_STRATEGIES`; ``temperature`` and ``cfg_scale`` are
    finite and >= 0. cfg works with every cache mode (one cache per branch).
    ``rules`` holds the confidence rules' values by their keys (``threshold=0.9``; see
    :mod:`dllm_bench.sampling.rules`); another keyword is a TypeError.
    """
    _check_rule_keys(rules)
    problems = _decoding_problems(steps, gen_length, block_length, rules)
    problems += _option_problems(cache, cfg_scale, temperature, remasking)
    if problems:
        raise DecodingError(problems)


def _decoding_problems(
    steps: object, gen_length: object, block_length: object, rules: Mapping[str, object]
) -> list[Problem]:
    """The schedule's and the commit rules' problems."""
    dynamic = any(value is not None for value in rules.values())
    return _schedule_problems(steps, gen_length, block_length, dynamic) + rule_problems(rules)


def validate_schedule(*, steps: int, gen_length: int, block_length: int) -> None:
    """The fixed-step schedule check alone: :func:`validate_decoding` with the other options at their defaults."""
    validate_decoding(steps=steps, gen_length=gen_length, block_length=block_length)


def _check_rule_keys(rules: Mapping[str, object]) -> None:
    unknown = sorted(set(rules) - set(RULE_KEYS))
    if unknown:
        raise TypeError(f"unknown decoding options {', '.join(unknown)} (the commit rules are {', '.join(RULE_KEYS)})")


def forward_pass_bounds(
    *,
    steps: int | None,
    gen_length: int,
    block_length: int,
    **rules: float | None,
) -> tuple[int, int]:
    """Fewest and most model forwards one :func:`generate` call can make (cfg or not, any batch).

    Fixed schedule: exactly ``num_blocks * min(steps_per_block, block_length)``
    (steps that commit nothing are skipped). With ``threshold`` or ``factor``:
    at least one per block and at most one per generated position.
    """
    _check_rule_keys(rules)
    problems = _decoding_problems(steps, gen_length, block_length, rules)
    if problems:
        raise DecodingError(problems)
    num_blocks = gen_length // block_length
    if any(value is not None for value in rules.values()):
        return num_blocks, gen_length
    assert steps is not None
    forwards = num_blocks * min(steps // num_blocks, block_length)
    return forwards, forwards


def num_forward_passes(*, steps: int, gen_length: int, block_length: int) -> int:
    """Model forwards of one fixed-schedule :func:`generate` call (one per step that commits something)."""
    low, _ = forward_pass_bounds(steps=steps, gen_length=gen_length, block_length=block_length)
    return low


def _number(value: float) -> str:
    """`0.5` -> `0.5`, `2.0` -> `2`: short and stable."""
    return f"{value:g}"


@dataclass(frozen=True)
class LladaSettings:
    """How a LLaDA case decodes. `steps` is None with `threshold` or `factor`: the number of
    forward passes then follows from the commit rule, not from a schedule."""

    steps: int | None
    block_length: int
    remasking: str = LLADA_DEFAULTS.remasking
    temperature: float = LLADA_DEFAULTS.temperature
    cfg_scale: float = LLADA_DEFAULTS.cfg_scale
    cache: str = LLADA_DEFAULTS.cache
    threshold: float | None = LLADA_DEFAULTS.threshold
    factor: float | None = LLADA_DEFAULTS.factor

    def columns(self) -> dict[str, object]:
        return {
            "steps": self.steps,
            "block_length": self.block_length,
            "remasking": self.remasking,
            "temperature": self.temperature,
            "cfg_scale": self.cfg_scale,
            "cache": self.cache,
            "threshold": self.threshold,
            "factor": self.factor,
        }

    def id_parts(self) -> list[str]:
        """`s<steps>-k<block_length>` (no `s` part with a commit rule), then only what differs
        from the defaults: `random`, `t<temperature>`, `cfg<cfg_scale>`, `c<cache>`,
        `th<threshold>`, `f<factor>`."""
        parts = [] if self.steps is None else [f"s{self.steps}"]
        parts.append(f"k{self.block_length}")
        if self.remasking != LLADA_DEFAULTS.remasking:
            parts.append(self.remasking)
        if self.temperature:
            parts.append(f"t{_number(self.temperature)}")
        if self.cfg_scale:
            parts.append(f"cfg{_number(self.cfg_scale)}")
        if self.cache != LLADA_DEFAULTS.cache:
            parts.append(f"c{self.cache}")
        values = self.rule_values()
        parts.extend(rule.id_part(value) for rule in CONFIDENCE_RULES if (value := values[rule.key]) is not None)
        return parts

    def rule_values(self) -> dict[str, float | None]:
        """The confidence rules' values by their keys (None where unset)."""
        return {key: getattr(self, key) for key in RULE_KEYS}

    def validate(self, gen_length: int) -> None:
        """:func:`validate_decoding` of these settings at ``gen_length``."""
        validate_decoding(gen_length=gen_length, **self.columns())  # type: ignore[arg-type]

    def expected_nfe(self, gen_length: int) -> int:
        """The most forward passes one call can make (the progress bar's length)."""
        _, most = forward_pass_bounds(
            steps=self.steps,
            gen_length=gen_length,
            block_length=self.block_length,
            **self.rule_values(),
        )
        return most

    def is_deterministic_exact(self, gen_length: int) -> bool:
        """One token per step, no cache, no commit rule, and nothing drawn at random (greedy,
        low-confidence remasking): the output is the exact decode, bit for bit."""
        return (
            self.steps == gen_length
            and self.cache == "none"
            and all(value is None for value in self.rule_values().values())
            and self.temperature == 0
            and self.remasking == "low_confidence"
        )

    def batch_factor(self) -> int:
        return 2 if self.cfg_scale else 1

    def work_per_call(self, prompt_length: int, gen_length: int, batch_size: int) -> float:
        """Forward passes (at most) times the (batch, prompt + gen) canvas, doubled with cfg;
        a cache makes the real work smaller, which only unbalances shards a little."""
        return float(self.expected_nfe(gen_length) * batch_size * (prompt_length + gen_length) * self.batch_factor())

    @classmethod
    def from_columns(cls, columns: Mapping[str, Any]) -> LladaSettings:
        """The settings of a row (its `steps`, ..., `factor` columns); defaults where empty."""

        def value(key: str, default: Any) -> Any:
            found = columns.get(key)
            return default if found is None else found

        return cls(
            steps=columns.get("steps"),
            block_length=int(value("block_length", 1)),
            remasking=str(value("remasking", LLADA_DEFAULTS.remasking)),
            temperature=float(value("temperature", LLADA_DEFAULTS.temperature)),
            cfg_scale=float(value("cfg_scale", LLADA_DEFAULTS.cfg_scale)),
            cache=str(value("cache", LLADA_DEFAULTS.cache)),
            threshold=columns.get("threshold"),
            factor=columns.get("factor"),
        )
