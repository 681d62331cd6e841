"""Multiply a validated config out into benchmark cases with stable, readable ids."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from dllm_bench.config import BenchConfig, ModelSpec


@dataclass(frozen=True)
class Case:
    """One grid point: a model and every parameter that decides what is run."""

    model: ModelSpec
    prompt_length: int
    gen_length: int
    batch_size: int
    warmup_rounds: int
    measured_rounds: int
    seed: int
    steps: int | None = None
    block_length: int | None = None
    remasking: str | None = None
    temperature: float | None = None
    cfg_scale: float | None = None

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def case_id(self) -> str:
        return case_id(self)

    def params(self) -> dict[str, object]:
        """The full parameter set, used to match rows across runs (resume, compare)."""
        return {
            "model": self.model.name,
            "kind": self.kind,
            "source": self.model.source,
            "prompt_length": self.prompt_length,
            "gen_length": self.gen_length,
            "batch_size": self.batch_size,
            "steps": self.steps,
            "block_length": self.block_length,
            "remasking": self.remasking,
            "temperature": self.temperature,
            "cfg_scale": self.cfg_scale,
            "warmup_rounds": self.warmup_rounds,
            "measured_rounds": self.measured_rounds,
        }


def _number(value: float) -> str:
    """`0.5` -> `0.5`, `2.0` -> `2`: short and stable."""
    return f"{value:g}"


def case_id(case: Case) -> str:
    """`<model>-p<P>-g<G>-b<B>` and for LLaDA `-s<steps>-k<block_length>`, then the
    non-default LLaDA settings: `-random`, `-t<temperature>`, `-cfg<cfg_scale>`."""
    parts = [case.model.name, f"p{case.prompt_length}", f"g{case.gen_length}", f"b{case.batch_size}"]
    if case.kind == "llada":
        parts += [f"s{case.steps}", f"k{case.block_length}"]
        if case.remasking == "random":
            parts.append("random")
        if case.temperature:
            parts.append(f"t{_number(case.temperature)}")
        if case.cfg_scale:
            parts.append(f"cfg{_number(case.cfg_scale)}")
    return "-".join(parts)


def expand_cases(config: BenchConfig) -> list[Case]:
    """All cases of the grid, LLaDA models first, in the config's order."""
    cases: list[Case] = []
    for model in config.models_of_kind("llada"):
        cases += _llada_cases(config, model)
    for model in config.models_of_kind("baseline"):
        cases += _baseline_cases(config, model)
    return cases


def _shared(config: BenchConfig) -> itertools.product[tuple[int, int, int]]:
    return itertools.product(config.prompt_length, config.gen_length, config.batch_size)


def _llada_cases(config: BenchConfig, model: ModelSpec) -> list[Case]:
    axes = config.llada
    if axes is None:
        return []
    cases = []
    for (prompt, gen, batch), steps, block, remasking, temperature, cfg in itertools.product(
        _shared(config), axes.steps, axes.block_length, axes.remasking, axes.temperature, axes.cfg_scale
    ):
        cases.append(
            Case(
                model=model,
                prompt_length=prompt,
                gen_length=gen,
                batch_size=batch,
                warmup_rounds=config.warmup_rounds,
                measured_rounds=config.measured_rounds,
                seed=config.seed,
                steps=steps,
                block_length=block,
                remasking=remasking,
                temperature=temperature,
                cfg_scale=cfg,
            )
        )
    return cases


def _baseline_cases(config: BenchConfig, model: ModelSpec) -> list[Case]:
    return [
        Case(
            model=model,
            prompt_length=prompt,
            gen_length=gen,
            batch_size=batch,
            warmup_rounds=config.warmup_rounds,
            measured_rounds=config.measured_rounds,
            seed=config.seed,
        )
        for prompt, gen, batch in _shared(config)
    ]
