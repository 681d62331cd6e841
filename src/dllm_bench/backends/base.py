"""What every model kind provides, behind one interface.

A backend owns the torch side of a model kind: the settings it multiplies out of its
config section, its architecture keys and their checks, how a random-init folder is
written and a checkpoint loaded, the timed generate call, and the extra measurements of
its rows. What the rest of the suite needs to know about the kind without torch (family,
label, config section and keys, columns, case-id parts) is its spec (`dllm_bench.kinds`).
Adding a model kind means a spec there and one module here, registered in
`dllm_bench.backends` (the README's "Adding a model family").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from dllm_bench.kinds import SPECS, KindSpec, Settings
from dllm_bench.spec import Checker, ModelSpec

if TYPE_CHECKING:
    from dllm_bench.cases import Case
    from dllm_bench.feed import PromptFeed
    from dllm_bench.models.loader import LoadedModel
    from dllm_bench.runner import CallRecorder
    from dllm_bench.timing import LatencyStats


class Backend(ABC):
    """One model kind."""

    spec: KindSpec
    loader_name: str

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def section(self) -> str | None:
        return self.spec.section

    @property
    def case_fixture(self) -> str:
        return self.spec.case_fixture

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
    def arch_keys(self, arch: Mapping[str, Any]) -> frozenset[str]:
        """The architecture keys a random-init entry of this kind with `arch` accepts (a kind
        with several architectures answers for the one `arch` names)."""

    @abstractmethod
    def arch_class(self, arch: Mapping[str, Any]) -> str:
        """The config class whose keys `arch_keys` are, as messages name it."""

    def folder_arch(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """The architecture keys that name the random-init cache folder of `arch` (all of them)."""
        return dict(arch)

    @abstractmethod
    def check_arch(self, arch: Mapping[str, Any]) -> list[str]:
        """Problems of a random-init architecture, each naming its key ([] when fine)."""

    @abstractmethod
    def max_length(self, arch: Mapping[str, Any]) -> int:
        """The longest sequence (prompt + generated) a random-init model of `arch` takes."""

    @abstractmethod
    def write_random_init(self, folder: Path, arch: Mapping[str, Any], *, seed: int, dtype: torch.dtype) -> None:
        """Write a loadable random-init model folder."""

    def check_folder(self, folder: Path) -> str | None:
        """What is wrong with a local checkpoint folder for this kind, told before any model
        loads (at config load: nothing is written for a refused run); None when nothing is."""
        return None

    def code_files(self, arch: Mapping[str, Any]) -> tuple[Path, ...]:
        """Files of the installed package a random-init folder of `arch` carries (and must still equal)."""
        return ()

    @abstractmethod
    def load(self, spec: ModelSpec, location: str, dtype: torch.dtype) -> torch.nn.Module:
        """Load a model folder or hub id (raises with a message; the loader adds context)."""

    @abstractmethod
    def build_call(
        self, case: Case, loaded: LoadedModel, feed: PromptFeed, recorder: CallRecorder
    ) -> Callable[[], torch.Tensor]:
        """The function that is timed: one generate call over the feed's selected batch."""

    def counted_module(self, loaded: LoadedModel) -> torch.nn.Module:
        """The module one forward pass of which is one `nfe` (hooked for counting, progress
        and the per-forward profile); the whole model by default."""
        return loaded.model

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


def check_section_keys(check: Checker, raw: Mapping[str, Any], spec: KindSpec) -> None:
    """Refuse the unknown keys of a kind's section, naming the section of another kind a key
    belongs to (`steps` in a section that has none is a key of the llada section)."""
    section = spec.section or ""
    for name in raw:
        if name in spec.section_keys:
            continue
        owners = [s.section for s in SPECS.values() if s.section not in (None, section) and name in s.section_keys]
        hint = f"; {name} is a key of the {owners[0]} section" if owners else ""
        check.fail(
            f"{section}.{name}", f"one of the known keys {', '.join(spec.section_keys)} (unknown key{hint})",
            show_got=False,
        )


def optional_axis(
    check: Checker, raw: Mapping[str, Any], key: str, name: str, parse: Callable[[object, str], Any]
) -> tuple[Any, ...]:
    """An axis of `raw[name]` (reported as `key`) where null is a value, also as a list item
    (`threshold: [null, 0.9]`); null alone when left out. Values `parse` refuses are dropped
    (it reports them)."""
    value = raw.get(name)
    if value is None:
        return (None,)
    items = check.axis(value, key)
    parsed = [(item, None if item is None else parse(item, key)) for item in items]
    return tuple(v for item, v in parsed if item is None or v is not None)


class CheckedSettings(Protocol):
    """Settings that say their own problems, alone (None) or for one generation length."""

    def problems(self, gen_length: int | None = None) -> dict[str, str]: ...


def check_settings_per_length(
    check: Checker, section: str, gen_lengths: Sequence[int], settings: Sequence[CheckedSettings]
) -> None:
    """Each setting's problems at each generation length of the grid, under the section's key;
    the same problem once."""
    reported: set[str] = set()
    for gen_length in gen_lengths:
        for item in settings:
            for key, text in item.problems(gen_length).items():
                if key + text not in reported:
                    reported.add(key + text)
                    check.fail(f"{section}.{key}", f"for grid.gen_length {gen_length}: {text}", show_got=False)
