"""The benchmark cases: one test per model kind, `test_<kind>(<kind>_case, bench)` (the kind
specs in `dllm_bench.kinds` name them; tests/test_cases.py checks that each has its test).
Each grid point of the config is one parametrized case; the plugin (`dllm_bench.plugin`)
parametrizes the case fixtures and provides `bench`, which loads the model once per
process, measures and records the row."""

from dllm_bench.cases import Case
from dllm_bench.fixture import CaseRunner


def test_llada(llada_case: Case, bench: CaseRunner) -> None:
    bench.run(llada_case)


def test_diffusion_gemma(diffusion_gemma_case: Case, bench: CaseRunner) -> None:
    bench.run(diffusion_gemma_case)


def test_dream(dream_case: Case, bench: CaseRunner) -> None:
    bench.run(dream_case)


def test_llada2(llada2_case: Case, bench: CaseRunner) -> None:
    bench.run(llada2_case)


def test_baseline(baseline_case: Case, bench: CaseRunner) -> None:
    bench.run(baseline_case)
