"""The ``flex`` backend's mask_mod is the contract's rule.

FlexAttention serves calls on CUDA only (its CPU path has no backward), but its forward runs
on CPU, which is enough to check the mask_mod against the reference on every machine.
"""

from __future__ import annotations

import pytest
import torch

from agentfast.attention import attention, get_backend, make_call
from tests.attention_cases import MASK_FEATURES, check_backend, make_case

FLEX = get_backend("flex")
pytestmark = pytest.mark.skipif(FLEX.unavailable_reason() is not None, reason=str(FLEX.unavailable_reason()))


def run_flex_forward(q, k, v, **kwargs):
    return FLEX.forward(make_call(q, k, v, **kwargs))


@pytest.mark.parametrize("feature", ["causal", "padding+agents", "causal+padding+agents", "empty-rows"])
def test_mask_mod_matches_reference_on_cpu(feature):
    case = make_case(2, 2, 33, None, 32, seed=5, **MASK_FEATURES[feature])
    check_backend(case, run_flex_forward, backward=False)


def test_decode_queries_use_bottom_right_alignment_on_cpu():
    case = make_case(2, 2, 5, 37, 32, agents=3, padding=True, seed=6)
    check_backend(case, run_flex_forward, backward=False)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("feature", list(MASK_FEATURES))
def test_flex_backend_matches_reference_on_gpu(feature, dtype):
    case = make_case(2, 2, 97, None, 64, dtype=dtype, device="cuda", **MASK_FEATURES[feature])
    check_backend(case, lambda q, k, v, **kw: attention(q, k, v, backend="flex", **kw))
