"""`python -m dllm_bench.gpu_check`: see `dllm_bench.gpu_check.cli`."""

import sys

from dllm_bench.gpu_check.cli import main

sys.exit(main())
