import atexit
import os
import shutil
import tempfile

import pytest
import torch

if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    # torch.compile's caches key a compiled graph on the traced forward graph, not on the
    # autograd formula registered for a custom op: a graph cached by another checkout (before
    # an op's backward changed) would be served to this one. Each test run compiles afresh.
    _inductor_cache = tempfile.mkdtemp(prefix="agentfast-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _inductor_cache
    atexit.register(shutil.rmtree, _inductor_cache, ignore_errors=True)

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
