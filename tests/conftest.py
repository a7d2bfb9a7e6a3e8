import os
import sys

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run under the interpreter. triton.jit reads this when
    # agentfast.kernels is first imported, so it must be set before any test imports it.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests import attention_cases  # noqa: E402  (after TRITON_INTERPRET is decided)

# Shared helpers import as ``tests.<module>``. Three backend test files still import
# ``attention_cases`` by its bare name; until they move to ``tests.attention_cases`` that name
# is the same module object (not a second copy found through a sys.path entry).
sys.modules.setdefault("attention_cases", attention_cases)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
