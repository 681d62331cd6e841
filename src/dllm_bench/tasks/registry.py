"""The ``task`` axis: names, options, and the task object a case runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from dllm_bench.tasks.base import Task
from dllm_bench.tasks.jsonl import JsonlTask
from dllm_bench.tasks.random_tokens import RandomTask
from dllm_bench.tasks.synthetic import LIST_TASKS, ListTask

__all__ = ["DEFAULT_ITEMS", "TASK_NAMES", "TASK_OPTIONS", "make_task"]

#: Values of the ``task`` axis.
TASK_NAMES: tuple[str, ...] = ("random", *LIST_TASKS, "jsonl")
#: Items per prompt of the list tasks when not set.
DEFAULT_ITEMS = 8
#: The options each task accepts.
TASK_OPTIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "random": frozenset(),
        "copy": frozenset({"items"}),
        "permute": frozenset({"items"}),
        "jsonl": frozenset({"path", "extractor", "chat_template"}),
    }
)


def _check_options(name: str, options: Mapping[str, Any]) -> None:
    if name not in TASK_OPTIONS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASK_NAMES)}")
    unknown = sorted(set(options) - TASK_OPTIONS[name])
    if unknown:
        allowed = ", ".join(sorted(TASK_OPTIONS[name])) or "none"
        raise ValueError(f"task {name!r} does not take option(s) {', '.join(unknown)} (it takes: {allowed})")


def _items(options: Mapping[str, Any]) -> int:
    value = options.get("items", DEFAULT_ITEMS)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"task option items must be an integer, got {value!r}")
    return value


def make_task(
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    vocab_size: int | None = None,
    forbidden_ids: tuple[int, ...] = (),
    tokenizer: Any = None,
    eos_ids: tuple[int, ...] = (),
) -> Task:
    """The task ``name`` with ``options``.

    ``random`` needs the model's ``vocab_size`` and the ids it must not draw
    (``forbidden_ids``); ``jsonl`` needs the model's tokenizer and takes the model's
    end-of-sequence ids (``eos_ids``) to cut answers at; ``copy`` and ``permute`` use
    the built-in vocabulary and need neither.
    """
    options = dict(options or {})
    _check_options(name, options)
    if name == "random":
        if vocab_size is None:
            raise ValueError("the random task needs the model's vocab_size")
        return RandomTask(vocab_size=vocab_size, forbidden_ids=tuple(forbidden_ids))
    if name in LIST_TASKS:
        return ListTask(name, _items(options))
    if "path" not in options:
        raise ValueError('the jsonl task needs option path: a file of {"prompt": ..., "answer": ...} lines')
    if tokenizer is None:
        raise ValueError("the jsonl task needs the model's tokenizer")
    chat = options.get("chat_template", True)
    if not isinstance(chat, bool):
        raise ValueError(f"task option chat_template must be true or false, got {chat!r}")
    return JsonlTask(
        path=Path(options["path"]),
        tokenizer=tokenizer,
        extractor=str(options.get("extractor", "last_number")),
        chat_template=chat,
        eos_ids=tuple(eos_ids),
    )
