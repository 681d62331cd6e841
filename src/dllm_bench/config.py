"""Load and validate a benchmark grid from YAML.

The YAML file is the single source of the grid. Every key read here is documented in the
README's "Config reference"; the names are the same as the CSV columns and case-id parts.
Validation happens before any model is loaded: a bad file raises :class:`ConfigError`
with the file, the key and what was expected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODEL_KINDS = ("llada", "baseline")
DTYPES = ("auto", "float32", "bfloat16", "float16")
REMASKING = ("low_confidence", "random")
RANDOM_INIT = "random-init"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]*(-[A-Za-z0-9_.]+)*$")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

TOP_LEVEL_KEYS = ("models", "grid", "llada", "warmup_rounds", "measured_rounds", "seed")
MODEL_KEYS = ("name", "kind", "source", "dtype", "device", "arch", "seed")
GRID_KEYS = ("prompt_length", "gen_length", "batch_size")
LLADA_KEYS = ("steps", "block_length", "remasking", "temperature", "cfg_scale")


class ConfigError(ValueError):
    """A grid file that cannot be used; the message names the file and the key."""


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

    @property
    def is_random_init(self) -> bool:
        return self.source == RANDOM_INIT

    def arch_dict(self) -> dict[str, Any]:
        return dict(self.arch)


@dataclass(frozen=True)
class LladaAxes:
    steps: tuple[int, ...]
    block_length: tuple[int, ...]
    remasking: tuple[str, ...] = ("low_confidence",)
    temperature: tuple[float, ...] = (0.0,)
    cfg_scale: tuple[float, ...] = (0.0,)


@dataclass(frozen=True)
class BenchConfig:
    """A validated grid file."""

    path: Path
    models: tuple[ModelSpec, ...]
    prompt_length: tuple[int, ...]
    gen_length: tuple[int, ...]
    batch_size: tuple[int, ...]
    llada: LladaAxes | None
    warmup_rounds: int = 1
    measured_rounds: int = 3
    seed: int = 0
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def models_of_kind(self, kind: str) -> tuple[ModelSpec, ...]:
        return tuple(m for m in self.models if m.kind == kind)


class _Checker:
    """Small helper that knows the file name, so every error says where it came from."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, expected: str, got: object = None, *, show_got: bool = True) -> ConfigError:
        got_text = f", got {got!r}" if show_got else ""
        return ConfigError(f"{self.path}: key '{key}': expected {expected}{got_text}")

    def mapping(self, value: object, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, "a mapping", value)
        for k in value:
            if not isinstance(k, str):
                raise self.fail(key, "string keys", k)
        return value

    def known_keys(self, value: Mapping[str, Any], key: str, allowed: Sequence[str]) -> None:
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.fail(where, f"one of the known keys {', '.join(allowed)} (unknown key)", show_got=False)

    def positive_int(self, value: object, key: str, *, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, "an integer", value)
        if value < minimum:
            word = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise self.fail(key, word, value)
        return value

    def non_negative_float(self, value: object, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, "a number", value)
        if value < 0:
            raise self.fail(key, "a number >= 0", value)
        return float(value)

    def choice(self, value: object, key: str, choices: Sequence[str]) -> str:
        if not isinstance(value, str) or value not in choices:
            raise self.fail(key, f"one of {', '.join(choices)}", value)
        return value

    def axis(self, value: object, key: str) -> list[object]:
        """An axis is a scalar or a non-empty list of scalars, without repeats."""
        items = list(value) if isinstance(value, list) else [value]
        if not items:
            raise self.fail(key, "a value or a non-empty list", value)
        if len(set(map(repr, items))) != len(items):
            raise self.fail(key, "a list without repeated values", value)
        return items

    def int_axis(self, value: object, key: str) -> tuple[int, ...]:
        return tuple(self.positive_int(v, key) for v in self.axis(value, key))

    def float_axis(self, value: object, key: str) -> tuple[float, ...]:
        return tuple(self.non_negative_float(v, key) for v in self.axis(value, key))

    def choice_axis(self, value: object, key: str, choices: Sequence[str]) -> tuple[str, ...]:
        return tuple(self.choice(v, key, choices) for v in self.axis(value, key))


def load_config(path: Path) -> BenchConfig:
    """Read and validate the grid file at `path`."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (pass an existing YAML file to --config)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {_one_line(str(exc))}") from exc
    return parse_config(raw, path)


def parse_config(raw: object, path: Path) -> BenchConfig:
    """Validate an already parsed YAML document."""
    check = _Checker(path)
    top = check.mapping(raw if raw is not None else {}, "(top level)")
    check.known_keys(top, "", TOP_LEVEL_KEYS)
    if "models" not in top:
        raise check.fail("models", "a list of model entries (missing)", show_got=False)
    models = _parse_models(check, top["models"])
    grid = check.mapping(top.get("grid", {}), "grid")
    check.known_keys(grid, "grid", GRID_KEYS)
    for key in GRID_KEYS:
        if key not in grid:
            raise check.fail(f"grid.{key}", "a positive integer or a list of them (missing)", show_got=False)
    prompt_length = check.int_axis(grid["prompt_length"], "grid.prompt_length")
    gen_length = check.int_axis(grid["gen_length"], "grid.gen_length")
    batch_size = check.int_axis(grid["batch_size"], "grid.batch_size")
    llada = _parse_llada(check, top.get("llada"), models)
    if llada is not None:
        _check_schedules(check, gen_length, llada)
    return BenchConfig(
        path=path,
        models=models,
        prompt_length=prompt_length,
        gen_length=gen_length,
        batch_size=batch_size,
        llada=llada,
        warmup_rounds=check.positive_int(top.get("warmup_rounds", 1), "warmup_rounds", minimum=0),
        measured_rounds=check.positive_int(top.get("measured_rounds", 3), "measured_rounds"),
        seed=check.positive_int(top.get("seed", 0), "seed", minimum=0),
        raw=top,
    )


def _parse_models(check: _Checker, value: object) -> tuple[ModelSpec, ...]:
    if not isinstance(value, list) or not value:
        raise check.fail("models", "a non-empty list of model entries", value)
    models: list[ModelSpec] = []
    for index, entry in enumerate(value):
        models.append(_parse_model(check, entry, f"models[{index}]"))
    names = [m.name for m in models]
    for name in names:
        if names.count(name) > 1:
            raise check.fail("models.name", "unique model names", name)
    return tuple(models)


def _parse_model(check: _Checker, value: object, key: str) -> ModelSpec:
    entry = check.mapping(value, key)
    check.known_keys(entry, key, MODEL_KEYS)
    for required in ("name", "kind", "source"):
        if required not in entry:
            raise check.fail(f"{key}.{required}", "a value (missing)", show_got=False)
    name = entry["name"]
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise check.fail(f"{key}.name", "a name of letters, digits, '_', '.' and single '-'", name)
    kind = check.choice(entry["kind"], f"{key}.kind", MODEL_KINDS)
    source = entry["source"]
    if not isinstance(source, str) or not source:
        raise check.fail(f"{key}.source", f"'{RANDOM_INIT}', a hub id or a local path", source)
    dtype = check.choice(entry.get("dtype", "auto"), f"{key}.dtype", DTYPES)
    device = entry.get("device", "auto")
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise check.fail(f"{key}.device", "auto, cpu, cuda or cuda:N", device)
    arch = _parse_arch(check, entry.get("arch"), key, source)
    seed = check.positive_int(entry.get("seed", 0), f"{key}.seed", minimum=0)
    return ModelSpec(name=name, kind=kind, source=source, dtype=dtype, device=device, arch=arch, seed=seed)


def _parse_arch(check: _Checker, value: object, key: str, source: str) -> tuple[tuple[str, Any], ...]:
    if source != RANDOM_INIT:
        if value is not None:
            raise check.fail(f"{key}.arch", f"no arch (it is only used with source '{RANDOM_INIT}')", show_got=False)
        return ()
    if value is None:
        raise check.fail(
            f"{key}.arch", f"a mapping of architecture keys (required with source '{RANDOM_INIT}')", show_got=False
        )
    arch = check.mapping(value, f"{key}.arch")
    for k, v in arch.items():
        if not isinstance(v, int | float | str | bool) and v is not None:
            raise check.fail(f"{key}.arch.{k}", "a scalar", v)
    return tuple(sorted(arch.items()))


def _parse_llada(check: _Checker, value: object, models: tuple[ModelSpec, ...]) -> LladaAxes | None:
    has_llada = any(m.kind == "llada" for m in models)
    if value is None:
        if has_llada:
            raise check.fail(
                "llada", "the LLaDA axes (steps, block_length, ...) since a model has kind llada", show_got=False
            )
        return None
    axes = check.mapping(value, "llada")
    check.known_keys(axes, "llada", LLADA_KEYS)
    for key in ("steps", "block_length"):
        if key not in axes:
            raise check.fail(f"llada.{key}", "a positive integer or a list of them (missing)", show_got=False)
    return LladaAxes(
        steps=check.int_axis(axes["steps"], "llada.steps"),
        block_length=check.int_axis(axes["block_length"], "llada.block_length"),
        remasking=check.choice_axis(axes.get("remasking", "low_confidence"), "llada.remasking", REMASKING),
        temperature=check.float_axis(axes.get("temperature", 0.0), "llada.temperature"),
        cfg_scale=check.float_axis(axes.get("cfg_scale", 0.0), "llada.cfg_scale"),
    )


def _check_schedules(check: _Checker, gen_lengths: tuple[int, ...], llada: LladaAxes) -> None:
    for gen_length in gen_lengths:
        for block_length in llada.block_length:
            if gen_length % block_length:
                raise check.fail(
                    "llada.block_length",
                    f"a divisor of every grid.gen_length: gen_length % block_length != 0 for "
                    f"gen_length={gen_length}, block_length={block_length}",
                    show_got=False,
                )
            num_blocks = gen_length // block_length
            for steps in llada.steps:
                if steps % num_blocks:
                    raise check.fail(
                        "llada.steps",
                        f"a multiple of the number of blocks: steps % (gen_length / block_length) != 0 for "
                        f"steps={steps}, gen_length={gen_length}, block_length={block_length} ({num_blocks} blocks)",
                        show_got=False,
                    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
