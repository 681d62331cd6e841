"""GPU self-check: verify the suite's CUDA paths on one GPU in a few minutes, downloading nothing.

`python -m dllm_bench.gpu_check` (run by `scripts/gpu_check.sh`; `cli.py` says how to call
it). One module per job:

- `outcome.py`: the items, one item's result line and the verdict line;
- `timer.py`: the `timer` item (the synchronized timer against CUDA events);
- `sampler.py`: the `sampler` item (the LLaDA sampler against the reference, ties counted);
- `suite_run.py`: one run of the suite in a subprocess, within the time budget, and its rows;
- `grids.py`: the configs of those runs;
- `row_checks.py`: the items judged from the typed rows of those runs;
- `run_items.py`: a run that was refused or stopped fails the items that read it;
- `driver.py`: every item in order, each failure confined to its item;
- `cli.py`: the command line and the no-GPU verdict.
"""
