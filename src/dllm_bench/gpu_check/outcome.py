"""The self-check's items, one item's outcome and its line, and the verdict line."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

# Item name -> what it checks, in the order of the README.
ITEMS: tuple[tuple[str, str], ...] = (
    ("timer", "synchronized timer against CUDA events on the same calls, within 2%"),
    ("memory", "CUDA memory columns non-zero, allocated <= reserved"),
    ("energy", "NVML energy columns present, with a plausible watts figure"),
    ("environment", "GPU name, driver and CUDA version in the rows"),
    ("pinning", "one GPU per worker under -n auto"),
    ("sampler", "bf16 LLaDA sampler token-identical to the reference on GPU, tied confidences handled"),
    ("cache", "8B-shape LLaDA (4 layers, bf16), cache none and dual at two grid points: dual faster, tokens/s"),
    ("oom", "an oversized batch with --allow-oom: the row says oom and the run goes on"),
    ("dgemma", "random-init DiffusionGemma (bf16), dynamic and static cache: rows ok with decoder/encoder passes"),
)
ITEM_NAMES: tuple[str, ...] = tuple(name for name, _ in ITEMS)


@dataclass(frozen=True)
class CheckResult:
    item: str
    outcome: str
    detail: str

    def line(self) -> str:
        return f"{self.outcome} {self.item}: {self.detail}"


def passed(item: str, detail: str) -> CheckResult:
    return CheckResult(item, PASS, detail)


def failed(item: str, detail: str) -> CheckResult:
    return CheckResult(item, FAIL, detail)


def skip_all(reason: str) -> list[CheckResult]:
    return [CheckResult(name, SKIP, reason) for name in ITEM_NAMES]


def in_item_order(results: Sequence[CheckResult]) -> list[CheckResult]:
    return sorted(results, key=lambda r: ITEM_NAMES.index(r.item))


def verdict_line(results: Sequence[CheckResult]) -> str:
    """`VERDICT: FAIL: 2 failed (cache, oom), 6 passed` and the like."""
    fails = [r.item for r in results if r.outcome == FAIL]
    n_pass = sum(r.outcome == PASS for r in results)
    n_skip = sum(r.outcome == SKIP for r in results)
    counts = f"{n_pass} passed" + (f", {n_skip} skipped" if n_skip else "")
    if fails:
        return f"VERDICT: FAIL: {len(fails)} failed ({', '.join(fails)}), {counts}"
    return f"VERDICT: PASS: {counts}"
