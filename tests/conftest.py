"""Suite-wide settings.

The test models are tiny: on a 2-core machine, intra-op threads only add
contention (a tiny matmul takes ~15 ms with 2 threads under load vs ~0.2 ms
with one), so the suite and the subprocesses it starts use one thread.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
