"""dllm-bench: a pytest-benchmark suite for diffusion language models against
autoregressive models. The pytest plugin is `dllm_bench.plugin`.

An xdist worker (PYTEST_XDIST_WORKER is set before any plugin is imported) is pinned to
one GPU here, on the package's first import, before torch can initialise CUDA.
"""

import os

from dllm_bench.devices import PINNED_MARK, pin_worker_gpu

if os.environ.get("PYTEST_XDIST_WORKER"):
    _gpu = pin_worker_gpu(os.environ["PYTEST_XDIST_WORKER"], os.environ)
    if _gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = _gpu
        os.environ[PINNED_MARK] = _gpu
