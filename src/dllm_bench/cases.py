"""Multiply a validated config out into benchmark cases with stable, readable ids.

A case is one grid point: a model entry, the shape (prompt length, generated length,
batch size), the rounds and prompt seed, and its kind's decoding settings. Its identity
(`Case.params`) is exactly the row's `IDENTITY_COLUMNS`, so a row and a case compare by
the same key; settings that set a column their kind's spec does not declare are refused,
never dropped.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from dllm_bench.config import BenchConfig
from dllm_bench.kinds import SPECS, Settings
from dllm_bench.rows import IDENTITY_COLUMNS, CaseKey
from dllm_bench.spec import ModelSpec


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
    settings: Settings
    task: str = "random"
    task_options: tuple[tuple[str, Any], ...] = ()

    @property
    def kind(self) -> str:
        return self.model.kind

    @property
    def case_id(self) -> str:
        """`<model>[-<task>]-p<P>-g<G>-b<B>` (the task when it is not `random`), then the kind's
        settings' id parts (its spec's `id_parts`)."""
        task = [] if self.task == "random" else [self.task]
        parts = [self.model.name, *task, f"p{self.prompt_length}", f"g{self.gen_length}", f"b{self.batch_size}"]
        return "-".join([*parts, *self.settings.id_parts()])

    def params(self) -> dict[str, object]:
        """The full parameter set, in `IDENTITY_COLUMNS` order (None where the kind has no such setting).

        Raises ValueError for a setting column the kind's spec does not declare: it would not
        be part of the identity, and two different settings would share one key."""
        settings = self.settings.columns()
        undeclared = sorted(set(settings) - set(SPECS[self.kind].column_names))
        if undeclared:
            raise ValueError(
                f"kind {self.kind!r}: its settings set {', '.join(undeclared)}, which its spec's columns do not "
                "list; add them to the spec (dllm_bench.kinds) and to dllm_bench.rows.Row"
            )
        values: dict[str, object] = {
            "model": self.model.name,
            "kind": self.kind,
            "model_id": self.model.model_id,
            "source": self.model.source,
            "prompt_length": self.prompt_length,
            "gen_length": self.gen_length,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "task": self.task,
            "task_options": json.dumps(dict(self.task_options), sort_keys=True) if self.task_options else None,
            "warmup_rounds": self.warmup_rounds,
            "measured_rounds": self.measured_rounds,
            **settings,
        }
        return {name: values.get(name) for name in IDENTITY_COLUMNS}

    def key(self) -> CaseKey:
        return tuple(self.params().values())

    def expected_nfe(self) -> int:
        return self.settings.expected_nfe(self.gen_length)


def expand_cases(config: BenchConfig) -> list[Case]:
    """All cases of the grid: models in the registry's kind order (`KIND_SPECS`), then tasks,
    then shapes, then settings."""
    cases: list[Case] = []
    for kind, settings in config.settings.items():
        for model in config.models_of_kind(kind):
            for task, prompt, gen, batch, item in itertools.product(
                config.tasks, config.prompt_length, config.gen_length, config.batch_size, settings
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
                        settings=item,
                        task=task,
                        task_options=tuple(sorted(config.task_options.get(task, {}).items())),
                    )
                )
    return cases


def case_id_of(nodeid: str) -> str:
    """`path::test_<kind>[<case id>]` (with any xdist `@group` suffix) -> the case id."""
    return nodeid.split("@", 1)[0].rsplit("[", 1)[-1].removesuffix("]")
