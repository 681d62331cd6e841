"""Tasks with checkable answers: prompts drawn from a seed, and scorers of the outputs.

``make_task(name, options, ...)`` gives the task of a ``task`` axis value; its
``batch(...)`` gives a round's prompt ids and attention mask, its ``score(...)`` the
per-prompt results of a generate call's output; ``accuracy_stats`` and ``aup`` turn
results into the row's figures.
"""

from __future__ import annotations

from dllm_bench.tasks.base import PromptBatch, Task, left_pad
from dllm_bench.tasks.jsonl import EXTRACTORS, JsonlTask, check_extractor, extract_answer
from dllm_bench.tasks.random_tokens import RandomTask
from dllm_bench.tasks.registry import DEFAULT_ITEMS, TASK_NAMES, TASK_OPTIONS, make_task
from dllm_bench.tasks.stats import AUP_ALPHA, AUP_CUTOFF_POINTS, AccuracyStats, accuracy_stats, aup
from dllm_bench.tasks.synthetic import LIST_TASKS, ListTask
from dllm_bench.tasks.vocab import TASK_VOCAB, TaskVocab, write_tokenizer

__all__ = [
    "AUP_ALPHA",
    "AUP_CUTOFF_POINTS",
    "DEFAULT_ITEMS",
    "EXTRACTORS",
    "LIST_TASKS",
    "TASK_NAMES",
    "TASK_OPTIONS",
    "TASK_VOCAB",
    "AccuracyStats",
    "JsonlTask",
    "ListTask",
    "PromptBatch",
    "RandomTask",
    "Task",
    "TaskVocab",
    "accuracy_stats",
    "aup",
    "check_extractor",
    "extract_answer",
    "left_pad",
    "make_task",
    "rounds_needed",
    "write_tokenizer",
]


def rounds_needed(*, batch_size: int, min_scored: int = 64, measured_rounds: int = 0) -> int:
    """How many rounds (measured ones first, then untimed extra ones) score at least
    ``min_scored`` prompts with batches of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return max(measured_rounds, -(-min_scored // batch_size))
