"""The CUDA emulation itself (tests/cuda_emulation): the tensor-core vocabulary the kernels are
written in (csrc/cuda/warp_primitives.cuh) gives, lane by lane, what the PTX ISA documents, and
the emulation fails what a GPU would get wrong. The kernels' own tests
(tests/test_cuda_attention.py) rely on both."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def emulation():
    from tests.cuda_emulation.build import emulated_kernels

    return emulated_kernels()


DTYPES = [torch.float16, torch.bfloat16]


def small_values(shape, dtype, seed):
    # Small integers: exact in fp16/bf16 and in every fp32 partial sum, so any correct
    # accumulation order gives the exact product.
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, shape, generator=generator).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mma_with_ptx_fragment_layouts_is_a_matrix_product(emulation, dtype):
    a, b = small_values((16, 16), dtype, 0), small_values((16, 8), dtype, 1)
    c = small_values((16, 8), torch.float32, 2)
    expected = a.float() @ b.float() + c
    assert torch.equal(emulation.check_mma(a, b, c, 0), expected)
    # B's registers filled from the transposed layout: not the product.
    assert not torch.equal(emulation.check_mma(a, b, c, 1), expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mma_rounds_inputs_and_accumulates_in_fp32(emulation, dtype):
    generator = torch.Generator().manual_seed(3)
    a, b = (torch.randn(shape, generator=generator).to(dtype) for shape in ((16, 16), (16, 8)))
    c = torch.randn(16, 8, generator=generator)
    expected = a.double() @ b.double() + c.double()
    torch.testing.assert_close(emulation.check_mma(a, b, c, 0).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("transposed_in_memory", [False, True], ids=["B-trans-ldmatrix", "BT-ldmatrix"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ldmatrix_feeds_mma_as_the_kernels_do(emulation, dtype, transposed_in_memory):
    a, b = small_values((16, 16), dtype, 4), small_values((16, 8), dtype, 5)
    assert torch.equal(emulation.check_mma_shared(a, b, transposed_in_memory), a.float() @ b.float())


def expected_ldmatrix(matrix: torch.Tensor, count: int, trans: bool) -> torch.Tensor:
    """Register j of lane l per the PTX ISA: of matrix j (rows 8j..8j+7), row l // 4 and
    elements 2 (l % 4), 2 (l % 4) + 1; with .trans, column l // 4 and rows 2 (l % 4), +1."""
    out = torch.zeros(32, count, dtype=torch.int64)
    for lane in range(32):
        for j in range(count):
            m = matrix[8 * j:8 * j + 8].long() & 0xFFFF
            if trans:
                lo, hi = m[2 * (lane % 4), lane // 4], m[2 * (lane % 4) + 1, lane // 4]
            else:
                lo, hi = m[lane // 4, 2 * (lane % 4)], m[lane // 4, 2 * (lane % 4) + 1]
            out[lane, j] = lo | (hi << 16)
    return out.to(torch.int32)  # two's complement, as the kernel stores uint32 into int32


@pytest.mark.parametrize("trans", [False, True], ids=["plain", "trans"])
@pytest.mark.parametrize("count", [1, 2, 4])
def test_ldmatrix_registers_follow_the_ptx_layout(emulation, count, trans):
    matrix = torch.arange(32 * 8, dtype=torch.int16).reshape(32, 8) * 3 + 1
    assert torch.equal(emulation.check_ldmatrix(matrix, count, trans), expected_ldmatrix(matrix, count, trans))


def test_cp_async_data_is_visible_only_after_its_wait(emulation):
    src = torch.randint(0, 200, (1024,), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    full = torch.full((64,), 16, dtype=torch.int32)
    chunks = src.view(64, 16)

    after_wait = emulation.check_cp_async(src, full, 0)
    assert torch.equal(after_wait, src)

    # wait_group 1 retires the first group only: the second still holds poison (0xFF bytes).
    after_first = emulation.check_cp_async(src, full, 1).view(64, 16)
    assert torch.equal(after_first[:32], chunks[:32])
    assert (after_first[32:] == 0xFF).all()

    # No wait before the read: every chunk is poison (NaN as fp16, bf16 or fp32).
    assert (emulation.check_cp_async(src, full, 2) == 0xFF).all()
    assert torch.isnan(emulation.check_cp_async(src, full, 2).view(torch.float16)).all()


def test_cp_async_zero_fills_past_the_source_bytes(emulation):
    src = torch.full((1024,), 7, dtype=torch.uint8)
    sizes = torch.arange(64, dtype=torch.int32) % 17  # 0..16 bytes
    out = emulation.check_cp_async(src, sizes, 0).view(64, 16)
    expected = (torch.arange(16)[None, :] < sizes[:, None]).to(torch.uint8) * 7
    assert torch.equal(out, expected)


@pytest.mark.parametrize("which,message", [
    (0, "not 16-byte aligned"),
    (1, "outside the block's shared memory"),
    (2, "never reached"),
    (3, "different collectives"),
    (4, "never waited for"),
], ids=["misaligned-cp-async", "ldmatrix-from-global", "skipped-barrier", "divergent-warp", "unwaited-copy"])
def test_broken_kernels_fail_the_launch(emulation, which, message):
    with pytest.raises(RuntimeError, match=message):
        emulation.check_broken(torch.zeros(4096, dtype=torch.uint8), which)
