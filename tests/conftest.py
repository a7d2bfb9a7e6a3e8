import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run under the interpreter. triton.jit reads this when
    # agentfast.kernels is first imported, so it must be set before any test imports it.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
