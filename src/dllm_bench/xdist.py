"""pytest-xdist: model-grouped scheduling, the controller's hooks, and the stop file.

- Scheduling: each worker gets whole groups of one model's cases, so a model is loaded
  once per worker that runs it. It is xdist's `loadscope` with the case's model group as
  the scope (xdist's own `loadgroup` is a different behaviour and does not work with
  pytest 9). It applies to `-n N` without an explicit `--dist`.
- The controller does not collect: it hands the run directory to the workers and learns
  the planned cases from the first worker's collection.
- A stop asked of the controller alone (a signal sent to its pid) reaches the workers
  through a stop file in the run directory, checked after each case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

from dllm_bench.cases import Case, case_id_of

if TYPE_CHECKING:
    from dllm_bench.session import RunSession

STOP_FILE = ".stop-requested"


def case_groups(cases: Sequence[Case], workers: int) -> dict[str, str]:
    """Case id -> scheduling group `<model>#<n>`. With fewer models than workers, each
    model's cases are split round robin into enough groups to keep every worker busy."""
    models = list(dict.fromkeys(case.model.name for case in cases))
    groups_per_model = max(1, workers // max(1, len(models)))
    seen: dict[str, int] = {}
    groups = {}
    for case in cases:
        index = seen.get(case.model.name, 0)
        seen[case.model.name] = index + 1
        groups[case.case_id] = f"{case.model.name}#{index % groups_per_model}"
    return groups


class ModelGroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """loadscope with the scope of a benchmark case taken from `case_groups`."""

    def __init__(self, config: pytest.Config, log: Any, cases: Sequence[Case]) -> None:
        super().__init__(config, log)
        self._groups: Mapping[str, str] = case_groups(cases, self.numnodes)

    def _split_scope(self, nodeid: str) -> str:
        group = self._groups.get(case_id_of(nodeid)) if "[" in nodeid else None
        return group if group is not None else str(super()._split_scope(nodeid))


def dist_given(args: Sequence[str]) -> bool:
    return any(arg == "--dist" or arg.startswith("--dist=") or arg == "-d" for arg in args)


class XdistController:
    """Controller-side xdist hooks, registered only when xdist is active."""

    def __init__(self, session: RunSession) -> None:
        self.session = session
        self.started = False

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getvalue("dist") != "load" or dist_given(config.invocation_params.args):
            return None
        return ModelGroupScheduling(config, log, self.session.cases)

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["dllm_output_dir"] = str(self.session.output_dir)

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.started:
            return
        selected = [nodeid for nodeid in ids if self.session.is_case(nodeid)]
        if not selected:
            return
        self.started = True
        if self.session.options.resume:
            self.session.deselect(self.session.cases)
        self.session.planned(len(selected))


def write_stop_file(output_dir: Path, reason: str) -> None:
    (output_dir / STOP_FILE).write_text(reason + "\n", encoding="utf-8")


def stop_requested(output_dir: Path) -> str | None:
    """The reason in the stop file, if the controller asked the workers to stop."""
    stop_file = output_dir / STOP_FILE
    if not stop_file.exists():
        return None
    return stop_file.read_text(encoding="utf-8").strip() or "stop requested"
