"""The vocabulary of a grid file: model entries, the error collector that checks them, and limits.

`Checker` collects every problem of a file instead of stopping at the first, so a user
fixes a config in one round; `ConfigError` carries them all, one per line.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dllm_bench.kinds import MODEL_KINDS as KIND_NAMES
from dllm_bench.trained import trained_model_dir

MODEL_KINDS = KIND_NAMES  # derived from the kind specs (dllm_bench.kinds)
DTYPES = ("auto", "float32", "bfloat16", "float16")
RANDOM_INIT = "random-init"
TRAINED_PREFIX = "trained:"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]*(-[A-Za-z0-9_.]+)*$")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
LOCAL_PREFIXES = ("/", "./", "../", "~")

# Upper bounds: sizes no machine can run are refused before anything is allocated.
MAX_TOKENS = 1 << 20  # prompt_length, gen_length, block_length, steps
MAX_BATCH = 1 << 20
MAX_ROUNDS = 10_000
MAX_SEED = (1 << 63) - 1
MAX_SCALE = 1000.0  # temperature, cfg_scale
MAX_THREADS = 4096


class ConfigError(ValueError):
    """A grid file that cannot be used; the message names the file and every bad key."""


@dataclass(frozen=True)
class ModelSpec:
    """One model entry of the config (`models:` list)."""

    name: str
    kind: str
    source: str
    dtype: str = "auto"
    device: str = "auto"
    arch: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    revision: str | None = None
    trust_remote_code: bool = False
    base_dir: Path = field(default=Path("."), compare=False, hash=False, repr=False)

    @property
    def is_random_init(self) -> bool:
        return self.source == RANDOM_INIT

    @property
    def is_trained(self) -> bool:
        """One of the small trained models shipped with the suite (`trained:<name>`)."""
        return self.source.startswith(TRAINED_PREFIX)

    @property
    def is_local(self) -> bool:
        return self.source.startswith(LOCAL_PREFIXES) or self.is_trained

    def location(self) -> str:
        """What `from_pretrained` gets: a local folder (relative paths are relative to the
        config file's folder; `trained:<name>` is the shipped model's folder) or the hub id."""
        if self.is_trained:
            return str(trained_model_dir(self.source.removeprefix(TRAINED_PREFIX)))
        if self.is_local:
            return str((self.base_dir / Path(self.source).expanduser()).resolve())
        return self.source

    def arch_dict(self) -> dict[str, Any]:
        return dict(self.arch)

    def identity(self) -> dict[str, Any]:
        """Every key that decides what model runs."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "revision": self.revision,
            "dtype": self.dtype,
            "device": self.device,
            "arch": self.arch_dict(),
            "seed": self.seed,
            "trust_remote_code": self.trust_remote_code,
        }

    @property
    def model_id(self) -> str:
        """12 hex digits of the sha256 of the entry's identity (canonical JSON)."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class Checker:
    """Checks values of one file and collects every problem with its key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []

    def fail(self, key: str, expected: str, got: object = None, *, show_got: bool = True) -> None:
        got_text = f", got {got!r}" if show_got else ""
        self.problems.append(f"key '{key}': expected {expected}{got_text}")

    def item(self, section: str, index: int) -> Checker:
        """A checker for item `index` of `section` given as a list: its problems are this
        checker's, with the section's keys naming the item (`llada2[1].threshold`)."""
        return ItemChecker(self, section, index)

    def raise_if_failed(self) -> None:
        if not self.problems:
            return
        if len(self.problems) == 1:
            raise ConfigError(f"{self.path}: {self.problems[0]}")
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        raise ConfigError(f"{self.path}: {len(self.problems)} problems:\n{listed}")

    def mapping(self, value: object, key: str) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.fail(key, "a mapping", value)
            return None
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            self.fail(key, "string keys", bad[0])
            return None
        return value

    def known_keys(self, value: Mapping[str, Any], key: str, allowed: Sequence[str]) -> None:
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                self.fail(where, f"one of the known keys {', '.join(allowed)} (unknown key)", show_got=False)

    def integer(self, value: object, key: str, *, minimum: int = 1, maximum: int = MAX_TOKENS) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                self.fail(key, f"an integer (write {int(value)}, not {value!r})", show_got=False)
            else:
                self.fail(key, "an integer", value)
            return None
        if value < minimum:
            self.fail(key, "a positive integer" if minimum == 1 else f"an integer >= {minimum}", value)
            return None
        if value > maximum:
            self.fail(key, f"an integer <= {maximum} (no machine runs more)", value)
            return None
        return value

    def real(self, value: object, key: str, *, minimum: float = 0.0, maximum: float = MAX_SCALE) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, "a number", value)
            return None
        if not math.isfinite(value):
            self.fail(key, "a finite number", value)
            return None
        if not minimum <= value <= maximum:
            self.fail(key, f"a number between {minimum:g} and {maximum:g}", value)
            return None
        return float(value)

    def boolean(self, value: object, key: str) -> bool | None:
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
            return None
        return value

    def choice(self, value: object, key: str, choices: Sequence[str]) -> str | None:
        if not isinstance(value, str) or value not in choices:
            self.fail(key, f"one of {', '.join(choices)}", value)
            return None
        return value

    def axis(self, value: object, key: str) -> list[object]:
        """An axis is a scalar or a non-empty list of scalars, without repeats."""
        items = list(value) if isinstance(value, list) else [value]
        if not items:
            self.fail(key, "a value or a non-empty list", value)
            return []
        if len(set(map(repr, items))) != len(items):
            self.fail(key, "a list without repeated values", value)
            return []
        return items

    def int_axis(self, value: object, key: str, *, maximum: int = MAX_TOKENS) -> tuple[int, ...]:
        values = [self.integer(v, key, maximum=maximum) for v in self.axis(value, key)]
        return tuple(v for v in values if v is not None)

    def float_axis(self, value: object, key: str) -> tuple[float, ...]:
        values = [self.real(v, key) for v in self.axis(value, key)]
        return tuple(v for v in values if v is not None)

    def choice_axis(self, value: object, key: str, choices: Sequence[str]) -> tuple[str, ...]:
        values = [self.choice(v, key, choices) for v in self.axis(value, key)]
        return tuple(v for v in values if v is not None)


class ItemChecker(Checker):
    """See `Checker.item`."""

    def __init__(self, parent: Checker, section: str, index: int) -> None:
        super().__init__(parent.path)
        self.problems = parent.problems
        self.section = section
        self.index = index

    def fail(self, key: str, expected: str, got: object = None, *, show_got: bool = True) -> None:
        if key == self.section or key.startswith(self.section + "."):
            key = f"{self.section}[{self.index}]{key[len(self.section) :]}"
        super().fail(key, expected, got, show_got=show_got)


def one_line(text: str) -> str:
    return " ".join(text.split())
