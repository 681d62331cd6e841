"""Load and validate a benchmark grid from YAML.

The YAML file is the single source of the grid. Every key read here is documented in the
README's "Config reference"; the names are the same as the CSV columns and case-id parts.
Validation happens before any model is loaded and reports every problem of the file at
once (`ConfigError`, one line per problem, each naming its key). The checks that depend on
the machine (is there a GPU, does a local folder exist) are separate (`check_runnable`), so
that a config can be read anywhere, e.g. by `dllm-bench-merge` on a login node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from dllm_bench.backends import BACKENDS, Settings
from dllm_bench.spec import (
    DEVICE_PATTERN,
    DTYPES,
    HUB_ID_PATTERN,
    LOCAL_PREFIXES,
    MAX_BATCH,
    MAX_ROUNDS,
    MAX_SEED,
    MAX_THREADS,
    MODEL_KINDS,
    NAME_PATTERN,
    RANDOM_INIT,
    TRAINED_PREFIX,
    Checker,
    ConfigError,
    ModelSpec,
    one_line,
)
from dllm_bench.tasks import DEFAULT_ITEMS, EXTRACTORS, TASK_NAMES, TASK_OPTIONS, check_extractor
from dllm_bench.trained import TRAINED_MODELS

GRID_KEYS = ("prompt_length", "gen_length", "batch_size", "task")
REQUIRED_GRID_KEYS = ("prompt_length", "gen_length", "batch_size")
SECTION_KEYS = tuple(b.section for b in BACKENDS.values() if b.section)
TOP_LEVEL_KEYS = ("models", "grid", *SECTION_KEYS, "tasks", "warmup_rounds", "measured_rounds", "seed", "threads")
MODEL_KEYS = ("name", "kind", "source", "revision", "dtype", "device", "arch", "seed", "trust_remote_code")

__all__ = ["BenchConfig", "ConfigError", "ModelSpec", "check_runnable", "load_config", "parse_config"]


@dataclass(frozen=True)
class BenchConfig:
    """A validated grid file."""

    path: Path
    models: tuple[ModelSpec, ...]
    prompt_length: tuple[int, ...]
    gen_length: tuple[int, ...]
    batch_size: tuple[int, ...]
    settings: Mapping[str, tuple[Settings, ...]]
    warmup_rounds: int = 1
    measured_rounds: int = 3
    seed: int = 0
    threads: int | None = None
    tasks: tuple[str, ...] = ("random",)
    task_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, compare=False, hash=False)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def models_of_kind(self, kind: str) -> tuple[ModelSpec, ...]:
        return tuple(m for m in self.models if m.kind == kind)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (YAML would keep the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_config(path: Path) -> BenchConfig:
    """Read and validate the grid file at `path`."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (pass an existing YAML file to --config)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from exc
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {one_line(str(exc))}") from exc
    return parse_config(raw, path)


def parse_config(raw: object, path: Path) -> BenchConfig:
    """Validate an already parsed YAML document; every problem is reported at once."""
    check = Checker(path)
    top = check.mapping(raw if raw is not None else {}, "(top level)") or {}
    check.known_keys(top, "", TOP_LEVEL_KEYS)
    if "models" not in top:
        check.fail("models", "a list of model entries (missing)", show_got=False)
    models = _parse_models(check, top.get("models", []), path.parent) if "models" in top else ()
    grid = check.mapping(top.get("grid", {}), "grid") or {}
    check.known_keys(grid, "grid", GRID_KEYS)
    for key in REQUIRED_GRID_KEYS:
        if key not in grid:
            check.fail(f"grid.{key}", "a positive integer or a list of them (missing)", show_got=False)
    prompt_length = check.int_axis(grid.get("prompt_length", 1), "grid.prompt_length")
    gen_length = check.int_axis(grid.get("gen_length", 1), "grid.gen_length")
    batch_size = check.int_axis(grid.get("batch_size", 1), "grid.batch_size", maximum=MAX_BATCH)
    tasks = check.choice_axis(grid.get("task", "random"), "grid.task", TASK_NAMES)
    task_options = _parse_task_options(check, top.get("tasks"), tasks, path.parent)
    _check_task_lengths(check, tasks, task_options, prompt_length, gen_length)
    settings = _parse_sections(check, top, models, gen_length)
    _check_lengths(check, models, prompt_length, gen_length)
    warmup = check.integer(top.get("warmup_rounds", 1), "warmup_rounds", minimum=0, maximum=MAX_ROUNDS)
    measured = check.integer(top.get("measured_rounds", 3), "measured_rounds", maximum=MAX_ROUNDS)
    seed = check.integer(top.get("seed", 0), "seed", minimum=0, maximum=MAX_SEED)
    threads = top.get("threads")
    if threads is not None:
        threads = check.integer(threads, "threads", maximum=MAX_THREADS)
    check.raise_if_failed()
    assert warmup is not None and measured is not None and seed is not None
    return BenchConfig(
        path=path,
        models=models,
        prompt_length=prompt_length,
        gen_length=gen_length,
        batch_size=batch_size,
        settings=settings,
        warmup_rounds=warmup,
        measured_rounds=measured,
        seed=seed,
        threads=threads,
        tasks=tasks,
        task_options=task_options,
        raw=top,
    )


def _parse_task_options(
    check: Checker, value: object, tasks: tuple[str, ...], base_dir: Path
) -> dict[str, dict[str, Any]]:
    """`tasks:` maps a task name to its options (`copy: {items: 8}`, `jsonl: {path: ...}`);
    a relative jsonl path is relative to the config file's folder."""
    if value is None:
        value = {}
    options = check.mapping(value, "tasks")
    if options is None:
        return {}
    parsed: dict[str, dict[str, Any]] = {}
    for name, raw in options.items():
        if name not in TASK_NAMES:
            check.fail(f"tasks.{name}", f"one of the tasks {', '.join(TASK_NAMES)} (unknown task)", show_got=False)
            continue
        entry = check.mapping(raw if raw is not None else {}, f"tasks.{name}")
        if entry is None:
            continue
        check.known_keys(entry, f"tasks.{name}", sorted(TASK_OPTIONS[name]))
        parsed[name] = dict(entry)
    for name in ("copy", "permute"):
        if "items" in parsed.get(name, {}):
            check.integer(parsed[name]["items"], f"tasks.{name}.items", maximum=1024)
    if "jsonl" in tasks:
        jsonl = parsed.get("jsonl", {})
        path = jsonl.get("path")
        if not isinstance(path, str) or not path:
            check.fail("tasks.jsonl.path", 'a JSONL file of {"prompt": ..., "answer": ...} lines', path)
        else:
            jsonl["path"] = str((base_dir / Path(path).expanduser()).resolve())
        _check_extractor(check, jsonl.get("extractor", "last_number"))
        if not isinstance(jsonl.get("chat_template", True), bool):
            check.fail("tasks.jsonl.chat_template", "true or false", jsonl.get("chat_template"))
    return parsed


def _check_extractor(check: Checker, extractor: object) -> None:
    """A known extractor name, or ``regex:PATTERN`` whose pattern compiles (now, not per case)."""
    expected = f"one of {', '.join(EXTRACTORS)} or regex:PATTERN"
    if not isinstance(extractor, str):
        check.fail("tasks.jsonl.extractor", expected, extractor)
        return
    try:
        check_extractor(extractor)
    except ValueError as exc:
        check.fail("tasks.jsonl.extractor", f"{expected} ({exc})", show_got=False)


def _check_task_lengths(
    check: Checker,
    tasks: tuple[str, ...],
    options: Mapping[str, Mapping[str, Any]],
    prompt_length: tuple[int, ...],
    gen_length: tuple[int, ...],
) -> None:
    """The built-in list tasks need room for their prompt and their answer."""
    for name in tasks:
        if name not in ("copy", "permute") or not prompt_length or not gen_length:
            continue
        items = options.get(name, {}).get("items", DEFAULT_ITEMS)
        if not isinstance(items, int):
            continue
        if min(prompt_length) < items + 3:
            check.fail(
                "grid.prompt_length", f"at least {items + 3} for task {name} ({items} items)", min(prompt_length)
            )
        if min(gen_length) < items:
            check.fail("grid.gen_length", f"at least {items} for task {name} (its answer)", min(gen_length))


def _parse_sections(
    check: Checker, top: Mapping[str, Any], models: tuple[ModelSpec, ...], gen_length: tuple[int, ...]
) -> dict[str, tuple[Settings, ...]]:
    """Each kind's settings from its config section (its spec's `section`), checked against the grid."""
    settings: dict[str, tuple[Settings, ...]] = {}
    for kind, backend in BACKENDS.items():
        used = any(m.kind == kind for m in models)
        if backend.section is not None and isinstance(top.get(backend.section), list):
            settings[kind] = _parse_sub_grids(check, backend.section, top[backend.section], kind, used=used)
        else:
            raw = None
            if backend.section is not None and backend.section in top:
                raw = check.mapping(top[backend.section], backend.section)
            settings[kind] = backend.parse_section(check, raw, used=used)
        if used and settings[kind]:
            backend.check_grid(check, gen_length, settings[kind])
        for index, model in enumerate(models):
            if model.kind == kind:
                backend.check_model(check, f"models[{index}]", model, settings[kind])
    return settings


def _parse_sub_grids(
    check: Checker, section: str, items: list[object], kind: str, *, used: bool
) -> tuple[Settings, ...]:
    """A section given as a list of sub-grids: each item is a mapping of the section's keys,
    multiplied out on its own; the kind runs the union, in order, each point once."""
    if not items:
        check.fail(section, "a mapping, or a non-empty list of mappings (sub-grids)", items)
        return ()
    union: dict[Settings, None] = {}
    for index, item in enumerate(items):
        item_check = check.item(section, index)
        raw = item_check.mapping(item, section)
        if raw is not None:
            union.update(dict.fromkeys(BACKENDS[kind].parse_section(item_check, raw, used=used)))
    return tuple(union)


def _check_lengths(
    check: Checker, models: tuple[ModelSpec, ...], prompt_length: tuple[int, ...], gen_length: tuple[int, ...]
) -> None:
    """A random-init model's maximum sequence length must hold prompt + generated tokens."""
    if not prompt_length or not gen_length:
        return
    longest = max(prompt_length) + max(gen_length)
    for index, model in enumerate(models):
        if not model.is_random_init:
            continue
        limit = BACKENDS[model.kind].max_length(model.arch_dict())
        if longest > limit:
            check.fail(
                "grid",
                f"prompt_length + gen_length <= {limit}, the maximum sequence length of models[{index}] "
                f"({model.name}); the longest case has {longest} (raise its arch max length or shorten the grid)",
                show_got=False,
            )


def _parse_models(check: Checker, value: object, base_dir: Path) -> tuple[ModelSpec, ...]:
    if not isinstance(value, list) or not value:
        check.fail("models", "a non-empty list of model entries", value)
        return ()
    models = [m for index, entry in enumerate(value) if (m := _parse_model(check, entry, f"models[{index}]", base_dir))]
    names = [m.name for m in models]
    for name in dict.fromkeys(n for n in names if names.count(n) > 1):
        check.fail("models.name", "unique model names", name)
    return tuple(models)


def _parse_model(check: Checker, value: object, key: str, base_dir: Path) -> ModelSpec | None:
    entry = check.mapping(value, key)
    if entry is None:
        return None
    before = len(check.problems)
    check.known_keys(entry, key, MODEL_KEYS)
    for required in ("name", "kind", "source"):
        if required not in entry:
            check.fail(f"{key}.{required}", "a value (missing)", show_got=False)
    name = entry.get("name", "")
    if "name" in entry and (not isinstance(name, str) or not NAME_PATTERN.match(name)):
        check.fail(f"{key}.name", "a name of letters, digits, '_', '.' and single '-'", name)
    kind = check.choice(entry["kind"], f"{key}.kind", MODEL_KINDS) if "kind" in entry else None
    source = _parse_source(check, entry.get("source"), key) if "source" in entry else None
    dtype = check.choice(entry.get("dtype", "auto"), f"{key}.dtype", DTYPES)
    device = entry.get("device", "auto")
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        check.fail(f"{key}.device", "auto, cpu, cuda or cuda:N", device)
    seed = check.integer(entry.get("seed", 0), f"{key}.seed", minimum=0, maximum=MAX_SEED)
    revision = _parse_revision(check, entry.get("revision"), key, source)
    trust = check.boolean(entry.get("trust_remote_code", False), f"{key}.trust_remote_code")
    arch = _parse_arch(check, entry.get("arch"), key, source, kind)
    if len(check.problems) > before:
        return None
    assert kind is not None and source is not None and dtype is not None and seed is not None
    return ModelSpec(
        name=name,
        kind=kind,
        source=source,
        dtype=dtype,
        device=device,
        arch=arch,
        seed=seed,
        revision=revision,
        trust_remote_code=bool(trust),
        base_dir=base_dir,
    )


def _parse_source(check: Checker, source: object, key: str) -> str | None:
    expected = (
        f"'{RANDOM_INIT}', a shipped model ({', '.join(TRAINED_PREFIX + name for name in TRAINED_MODELS)}), "
        f"a hub id (org/name) or a local folder starting with {', '.join(LOCAL_PREFIXES)} "
        "(relative paths are relative to the config file)"
    )
    if not isinstance(source, str) or not source:
        check.fail(f"{key}.source", expected, source)
        return None
    if source.startswith(TRAINED_PREFIX):
        if source.removeprefix(TRAINED_PREFIX) not in TRAINED_MODELS:
            check.fail(f"{key}.source", expected, source)
            return None
        return source
    if source != RANDOM_INIT and not source.startswith(LOCAL_PREFIXES) and not HUB_ID_PATTERN.match(source):
        check.fail(f"{key}.source", expected, source)
        return None
    return source


def _parse_revision(check: Checker, revision: object, key: str, source: str | None) -> str | None:
    if revision is None:
        return None
    if not isinstance(revision, str) or not revision.strip():
        check.fail(f"{key}.revision", "a branch, tag or commit of the hub repository", revision)
        return None
    if source is not None and not HUB_ID_PATTERN.match(source):
        check.fail(f"{key}.revision", "no revision (it pins a hub id; this source is not one)", show_got=False)
        return None
    return revision


def _parse_arch(
    check: Checker, value: object, key: str, source: str | None, kind: str | None
) -> tuple[tuple[str, Any], ...]:
    if source is None or kind is None:
        return ()
    if source != RANDOM_INIT:
        if value is not None:
            check.fail(f"{key}.arch", f"no arch (it is only used with source '{RANDOM_INIT}')", show_got=False)
        return ()
    if value is None:
        check.fail(
            f"{key}.arch", f"a mapping of architecture keys (required with source '{RANDOM_INIT}')", show_got=False
        )
        return ()
    arch = check.mapping(value, f"{key}.arch")
    if arch is None:
        return ()
    backend = BACKENDS[kind]
    before = len(check.problems)
    unknown = sorted(k for k in arch if k not in backend.arch_keys(arch))
    for name in unknown:
        check.fail(
            f"{key}.arch.{name}", f"an architecture key of {backend.arch_class(arch)} (unknown key)", show_got=False
        )
    for k, v in arch.items():
        if not isinstance(v, int | float | str | bool) and v is not None:
            check.fail(f"{key}.arch.{k}", "a scalar", v)
    if len(check.problems) > before:
        return tuple(sorted(arch.items()))
    for problem in backend.check_arch(arch):
        where, _, message = problem.partition(": ")
        check.problems.append(f"key '{key}.{where}': {message}")
    return tuple(sorted(arch.items()))


def check_runnable(config: BenchConfig) -> None:
    """What only this machine can tell: a GPU the config asks for, local model folders.
    Raises ConfigError with every problem."""
    check = Checker(config.path)
    for index, model in enumerate(config.models):
        key = f"models[{index}]"
        if model.device.startswith("cuda") and not torch.cuda.is_available():
            check.fail(
                f"{key}.device",
                f"a device this machine has: torch {torch.__version__} sees no CUDA GPU; "
                "install a CUDA build of torch, or use device: auto or cpu",
                model.device,
            )
        if model.is_local and not Path(model.location()).is_dir():
            check.fail(f"{key}.source", f"an existing model folder ({model.location()} does not exist)", model.source)
        elif model.is_local and (problem := BACKENDS[model.kind].check_folder(Path(model.location()))):
            check.fail(f"{key}.source", problem, model.source)
        elif HUB_ID_PATTERN.match(model.source) and Path(model.source).is_dir():
            check.fail(
                f"{key}.source",
                f"'./{model.source}' (relative to the config file) or an absolute path for the local folder "
                f"'{model.source}' ('{model.source}' is read as a hub id)",
                model.source,
            )
    jsonl_path = config.task_options.get("jsonl", {}).get("path")
    if "jsonl" in config.tasks and isinstance(jsonl_path, str) and not Path(jsonl_path).is_file():
        check.fail("tasks.jsonl.path", "an existing file (relative paths are relative to the config file)", jsonl_path)
    check.raise_if_failed()
