"""The benchmark cases. Each grid point of the config is one parametrized case; the
plugin (`dllm_bench.plugin`) parametrizes `llada_case` and `baseline_case` and provides
`bench`, which loads the model once per process, measures and records the row."""

from dllm_bench.cases import Case
from dllm_bench.fixture import CaseRunner


def test_llada(llada_case: Case, bench: CaseRunner) -> None:
    bench.run(llada_case)


def test_baseline(baseline_case: Case, bench: CaseRunner) -> None:
    bench.run(baseline_case)
