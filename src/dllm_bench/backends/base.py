"""What every model kind provides, behind one interface.

A backend owns everything that differs between model kinds: its config section and the
decoding settings it multiplies out, the case-id parts, its architecture keys and their
checks, how a random-init folder is written and a checkpoint loaded, the timed generate
call, how many forward passes a call makes, and the extra measurements of its rows.
Adding a model kind means one new module here, registered in `dllm_bench.backends`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from dllm_bench.spec import Checker, ModelSpec

if TYPE_CHECKING:
    from dllm_bench.cases import Case
    from dllm_bench.feed import PromptFeed
    from dllm_bench.models.loader import LoadedModel
    from dllm_bench.runner import CallRecorder
    from dllm_bench.timing import LatencyStats


class Settings(Protocol):
    """The decoding settings of one case (one point of a backend's axes)."""

    def columns(self) -> dict[str, object]:
        """The row columns these settings set (a subset of the identity columns)."""

    def id_parts(self) -> list[str]:
        """The case-id parts after `<model>-p<P>-g<G>-b<B>`."""

    def expected_nfe(self, gen_length: int) -> int:
        """Forward passes one generate call is expected to make (progress, sharding)."""

    def batch_factor(self) -> int:
        """How many times the batch each forward pass runs (2 with classifier-free guidance)."""

    def work_per_call(self, prompt_length: int, gen_length: int, batch_size: int) -> float:
        """An estimate of one call's work in token-forwards (for cost-balanced shards)."""


class Backend(ABC):
    """One model kind."""

    kind: str
    case_fixture: str
    section: str | None = None
    section_keys: tuple[str, ...] = ()
    loader_name: str
    arch_class: str

    @abstractmethod
    def parse_section(self, check: Checker, raw: Mapping[str, Any] | None, *, used: bool) -> tuple[Settings, ...]:
        """The settings this kind's cases run with, multiplied out from its config section."""

    def check_grid(self, check: Checker, gen_lengths: tuple[int, ...], settings: tuple[Settings, ...]) -> None:
        """Rules that tie the settings to the grid (none by default)."""
        return None

    def check_model(self, check: Checker, key: str, spec: ModelSpec, settings: tuple[Settings, ...]) -> None:
        """Rules that tie a model entry (at `key`) to this kind's settings (none by default)."""
        return None

    @abstractmethod
    def arch_keys(self) -> frozenset[str]:
        """The architecture keys a random-init entry of this kind accepts."""

    @abstractmethod
    def check_arch(self, arch: Mapping[str, Any]) -> list[str]:
        """Problems of a random-init architecture, each naming its key ([] when fine)."""

    @abstractmethod
    def max_length(self, arch: Mapping[str, Any]) -> int:
        """The longest sequence (prompt + generated) a random-init model of `arch` takes."""

    @abstractmethod
    def write_random_init(self, folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> None:
        """Write a loadable random-init model folder."""

    def code_files(self) -> tuple[Path, ...]:
        """Files of the installed package a random-init folder carries (and must still equal)."""
        return ()

    @abstractmethod
    def load(self, spec: ModelSpec, location: str, dtype: torch.dtype) -> torch.nn.Module:
        """Load a model folder or hub id (raises with a message; the loader adds context)."""

    @abstractmethod
    def build_call(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, recorder: CallRecorder
    ) -> Callable[[], torch.Tensor]:
        """The function that is timed: one generate call over the feed's selected batch."""

    def eos_output(self, case: Case, loaded: LoadedModel, feed: PromptFeed, last: torch.Tensor) -> torch.Tensor:
        """The output whose EOS positions count for `tokens_until_eos` (the last timed one)."""
        return last

    def extra_fields(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, stats: LatencyStats
    ) -> dict[str, object]:
        """Row fields only this kind measures (on the feed's selected batch)."""
        return {}

    def agreement(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, outputs: Sequence[torch.Tensor]
    ) -> float | None:
        """`agreement_exact`: the share of generated positions of `outputs` (one per round
        of the feed) equal to a reference decode of the same prompts; None when the kind
        has none."""
        return None

    def check_output(self, case: Case, loaded: LoadedModel, output: torch.Tensor) -> None:
        """Complain (log or raise) about an output the kind considers wrong (nothing by default)."""
        return None


def check_arch_types(arch: Mapping[str, Any], expected: Mapping[str, tuple[type, ...]]) -> list[str]:
    """Problems of values whose type is not one of the key's expected types (ints are
    accepted for floats, booleans never for numbers)."""
    problems = []
    for key, value in arch.items():
        types = expected.get(key)
        if types is None or (value is None and type(None) in types):
            continue
        accepted = tuple({*types, int} if float in types else types)
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, accepted):
            names = " or ".join(sorted({t.__name__ for t in types if t is not type(None)}))
            problems.append(f"arch.{key}: expected {names}, got {value!r}")
    return problems


def check_positive(arch: Mapping[str, Any], keys: tuple[str, ...]) -> list[str]:
    """Problems of size keys that are not positive integers."""
    return [
        f"arch.{key}: expected a positive integer, got {arch[key]!r}"
        for key in keys
        if key in arch and isinstance(arch[key], int) and not isinstance(arch[key], bool) and arch[key] < 1
    ]
