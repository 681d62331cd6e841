"""xdist scheduling by model: each worker gets whole groups of one model's cases, so a
model is loaded once per worker that runs it.

xdist's own `loadgroup` does not work with pytest 9 (it rewrites a node id attribute that
pytest 9 no longer reads), so the suite's default `--dist loadgroup` uses this scheduler:
xdist's `loadscope` with the case's model as the scope. With fewer models than workers,
each model's cases are split round robin into enough groups to keep every worker busy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

from dllm_bench.cases import Case


def case_groups(cases: Sequence[Case], workers: int) -> dict[str, str]:
    """Case id -> scheduling group `<model>#<n>`."""
    models = list(dict.fromkeys(case.model.name for case in cases))
    groups_per_model = max(1, workers // max(1, len(models)))
    seen: dict[str, int] = {}
    groups = {}
    for case in cases:
        index = seen.get(case.model.name, 0)
        seen[case.model.name] = index + 1
        groups[case.case_id] = f"{case.model.name}#{index % groups_per_model}"
    return groups


def case_id_of(nodeid: str) -> str:
    """`path::test_llada[<case id>]` (with any xdist `@group` suffix) -> the case id."""
    return nodeid.split("@", 1)[0].rsplit("[", 1)[-1].removesuffix("]")


class ModelScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """loadscope with the scope of a benchmark case taken from `case_groups`."""

    def __init__(self, config: pytest.Config, log: Any, cases: Sequence[Case]) -> None:
        super().__init__(config, log)
        self._groups: Mapping[str, str] = case_groups(cases, self.numnodes)

    def _split_scope(self, nodeid: str) -> str:
        group = self._groups.get(case_id_of(nodeid)) if "[" in nodeid else None
        return group if group is not None else str(super()._split_scope(nodeid))
