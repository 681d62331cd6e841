"""This folder holds dllm-bench cases: `pytest benchmarks` turns the suite's plugin on
(the plugin stays off in sessions that neither collect a folder like this one nor pass a
suite option such as --config)."""

DLLM_BENCH_CASES = True
