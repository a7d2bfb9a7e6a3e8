// Small kernels over csrc/cuda/warp_primitives.cuh that tests/test_cuda_emulation.py runs on the
// emulation: each builds fragments from the layouts the PTX ISA documents (written out here,
// independently of the emulation's own bookkeeping) and checks the result against a plain
// matrix product, or shows that a broken discipline (a missing cp.async wait, a wrong fragment
// layout, a misaligned row, a skipped barrier) fails.
#pragma once

#include <torch/extension.h>

#include "cuda_emulation.h"
#include "warp_primitives.cuh"

namespace vocabulary_checks {

using agentfast::cp_async_16;
using agentfast::cp_async_commit;
using agentfast::cp_async_wait;

template <typename T>
uint32_t pair_of(const T* m, int ld, int row0, int col0, int row1, int col1) {
  uint16_t lo, hi;
  std::memcpy(&lo, &m[row0 * ld + col0], 2);
  std::memcpy(&hi, &m[row1 * ld + col1], 2);
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// One warp: D = A @ B + C with A [16, 16], B [16, 8] (both T, row-major), C and D [16, 8] fp32,
// registers filled element by element from global memory. `variant` 1 builds B's registers
// from the transposed layout (row g, col 2t + h): a wrong layout the product must expose.
template <typename T>
void mma_from_registers(const T* a, const T* b, const float* c, float* d, int variant) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  uint32_t ra[4], rb[2];
  // PTX ISA, mma.m16n8k16 .f16/.bf16 A fragment: a0,a1: (g, 2t..2t+1); a2,a3: (g+8, 2t..);
  // a4,a5: (g, 2t+8..); a6,a7: (g+8, 2t+8..); two elements per 32-bit register.
  ra[0] = pair_of(a, 16, g, 2 * t, g, 2 * t + 1);
  ra[1] = pair_of(a, 16, g + 8, 2 * t, g + 8, 2 * t + 1);
  ra[2] = pair_of(a, 16, g, 2 * t + 8, g, 2 * t + 9);
  ra[3] = pair_of(a, 16, g + 8, 2 * t + 8, g + 8, 2 * t + 9);
  // B fragment: b0,b1: (row 2t..2t+1, col g); b2,b3: (row 2t+8..2t+9, col g).
  if (variant == 0) {
    rb[0] = pair_of(b, 8, 2 * t, g, 2 * t + 1, g);
    rb[1] = pair_of(b, 8, 2 * t + 8, g, 2 * t + 9, g);
  } else {
    rb[0] = pair_of(b, 8, g, 2 * t, g, 2 * t + 1);
    rb[1] = pair_of(b, 8, g + 8, 2 * t, g + 8, 2 * t + 1);
  }
  // C/D fragment: c0,c1: (g, 2t..2t+1); c2,c3: (g+8, 2t..2t+1).
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  agentfast::mma_m16n8k16<T>(acc, ra, rb[0], rb[1]);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// One warp: `count` 8x8 matrices (rows 8j..8j+7 of a [32, 8] b16 matrix held in shared memory
// with a 24-element row pitch) through ldmatrix; out[lane][j] = register j.
template <int COUNT, bool TRANS>
void ldmatrix_registers(const int16_t* matrix, int32_t* out) {
  constexpr int kPitch = 24;  // 48 bytes: rows stay 16-byte aligned, not contiguous
  auto* tile = reinterpret_cast<int16_t*>(agentfast::dynamic_shared_memory());
  const int lane = threadIdx.x % 32;
  for (int c = 0; c < 8; ++c) tile[lane * kPitch + c] = matrix[lane * 8 + c];
  __syncthreads();
  uint32_t regs[4] = {0, 0, 0, 0};
  const void* row = tile + (lane % (8 * COUNT)) * kPitch;
  if constexpr (COUNT == 1) {
    if constexpr (TRANS) agentfast::ldmatrix_x1_trans(regs[0], row); else agentfast::ldmatrix_x1(regs[0], row);
  } else if constexpr (COUNT == 2) {
    uint32_t (&r)[2] = *reinterpret_cast<uint32_t(*)[2]>(regs);
    if constexpr (TRANS) agentfast::ldmatrix_x2_trans(r, row); else agentfast::ldmatrix_x2(r, row);
  } else {
    if constexpr (TRANS) agentfast::ldmatrix_x4_trans(regs, row); else agentfast::ldmatrix_x4(regs, row);
  }
  for (int j = 0; j < COUNT; ++j) out[lane * COUNT + j] = static_cast<int32_t>(regs[j]);
}

// One warp, the way the attention kernels feed tensor cores: A [16, 16] row-major through
// ldmatrix_x4, B [16, 8] either from B^T [8, 16] row-major through ldmatrix_x2 or from B
// [16, 8] row-major through ldmatrix_x2_trans; D = A @ B.
template <typename T>
void mma_from_shared(const T* a, const T* b, float* d, bool b_transposed_in_memory) {
  constexpr int kPitch = 24;
  T* s_a = reinterpret_cast<T*>(agentfast::dynamic_shared_memory());
  T* s_b = s_a + 16 * kPitch;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int i = lane; i < 256; i += 32) s_a[(i / 16) * kPitch + i % 16] = a[i];
  for (int i = lane; i < 128; i += 32) {
    const int k = i / 8, n = i % 8;
    if (b_transposed_in_memory) {
      s_b[n * kPitch + k] = b[i];  // B^T: row n holds column n of B
    } else {
      s_b[k * kPitch + n] = b[i];
    }
  }
  __syncthreads();
  uint32_t ra[4], rb[2];
  // x4: lanes 0-15 address rows 0-15 at column 0, lanes 16-31 rows 0-15 at column 8: matrices
  // (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) = a0..a3.
  agentfast::ldmatrix_x4(ra, s_a + (lane % 16) * kPitch + (lane / 16) * 8);
  if (b_transposed_in_memory) {
    // Rows n = 0..7 of B^T at k = 0 (lanes 0-7) and k = 8 (lanes 8-15).
    agentfast::ldmatrix_x2(rb, s_b + (lane % 8) * kPitch + ((lane / 8) % 2) * 8);
  } else {
    // Rows k = 0..15 of B (lanes 0-15), transposed.
    agentfast::ldmatrix_x2_trans(rb, s_b + (lane % 16) * kPitch);
  }
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  agentfast::mma_m16n8k16<T>(acc, ra, rb[0], rb[1]);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// Two warps copy 64 x 16 bytes of `src` into shared memory with cp.async, in two groups (the
// first 32 chunks, then the rest; chunk i copies src_bytes[i] bytes), then read the tile back
// into `out` after `wait` (0: wait_group 0 -> all visible; 1: wait_group 1 -> the first group;
// 2: no wait before the read, the wait comes after it).
void cp_async_groups(const uint8_t* src, const int32_t* src_bytes, uint8_t* out, int wait) {
  unsigned char* tile = agentfast::dynamic_shared_memory();
  const int t = threadIdx.x;  // 64 threads, chunk t in group t / 32
  if (t < 32) cp_async_16(tile + 16 * t, src + 16 * t, src_bytes[t]);
  cp_async_commit();
  if (t >= 32) cp_async_16(tile + 16 * t, src + 16 * t, src_bytes[t]);
  cp_async_commit();
  if (wait == 0) cp_async_wait<0>();
  if (wait == 1) cp_async_wait<1>();
  __syncthreads();
  std::memcpy(out + 16 * t, tile + 16 * t, 16);
  cp_async_wait<0>();
}

// Launch failures the emulation must report: 0 a cp.async destination that is not 16-byte
// aligned; 1 an ldmatrix row address outside shared memory; 2 a __syncthreads() that thread 0
// skips; 3 lanes of one warp at different collectives; 4 a thread ending with an unwaited copy.
void broken_kernel(const uint8_t* src, int which) {
  unsigned char* tile = agentfast::dynamic_shared_memory();
  const int t = threadIdx.x;
  switch (which) {
    case 0:
      cp_async_16(tile + 8 + 16 * t, src, 16);
      cp_async_commit();
      cp_async_wait<0>();
      break;
    case 1: {
      uint32_t r;
      agentfast::ldmatrix_x1(r, src);
      break;
    }
    case 2:
      if (t != 0) __syncthreads();
      break;
    case 3:
      if (t % 32 == 0) {
        agentfast::shuffle_xor(1.0f, 1);
      } else {
        __syncwarp();
      }
      break;
    case 4:
      cp_async_16(tile + 16 * t, src, 16);
      cp_async_commit();
      break;
  }
}

inline void launch(auto kernel, int threads, size_t shared_bytes, const auto&... args) {
  cuda_emulation::Launcher{}(kernel, dim3(1), threads, shared_bytes, args...);
}

template <typename T>
const T* data_of(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}

inline at::Tensor mma(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, int variant) {
  TORCH_CHECK(a.sizes() == at::IntArrayRef({16, 16}) && b.sizes() == at::IntArrayRef({16, 8}) &&
              c.sizes() == at::IntArrayRef({16, 8}) && a.is_contiguous() && b.is_contiguous() && c.is_contiguous());
  at::Tensor d = at::empty({16, 8}, c.options());
  if (a.scalar_type() == at::kHalf) {
    launch(mma_from_registers<c10::Half>, 32, 0, data_of<c10::Half>(a), data_of<c10::Half>(b), data_of<float>(c),
           d.data_ptr<float>(), variant);
  } else {
    launch(mma_from_registers<c10::BFloat16>, 32, 0, data_of<c10::BFloat16>(a), data_of<c10::BFloat16>(b),
           data_of<float>(c), d.data_ptr<float>(), variant);
  }
  return d;
}

inline at::Tensor mma_shared(const at::Tensor& a, const at::Tensor& b, bool b_transposed_in_memory) {
  at::Tensor d = at::empty({16, 8}, a.options().dtype(at::kFloat));
  const size_t bytes = 2 * 32 * 24 * 2;
  if (a.scalar_type() == at::kHalf) {
    launch(mma_from_shared<c10::Half>, 32, bytes, data_of<c10::Half>(a), data_of<c10::Half>(b), d.data_ptr<float>(),
           b_transposed_in_memory);
  } else {
    launch(mma_from_shared<c10::BFloat16>, 32, bytes, data_of<c10::BFloat16>(a), data_of<c10::BFloat16>(b),
           d.data_ptr<float>(), b_transposed_in_memory);
  }
  return d;
}

inline at::Tensor ldmatrix(const at::Tensor& matrix, int count, bool trans) {
  TORCH_CHECK(matrix.sizes() == at::IntArrayRef({32, 8}) && matrix.scalar_type() == at::kShort && matrix.is_contiguous());
  at::Tensor out = at::zeros({32, count}, matrix.options().dtype(at::kInt));
  const size_t bytes = 32 * 24 * 2;
  const int16_t* m = data_of<int16_t>(matrix);
  int32_t* o = out.data_ptr<int32_t>();
  if (count == 1) {
    trans ? launch(ldmatrix_registers<1, true>, 32, bytes, m, o) : launch(ldmatrix_registers<1, false>, 32, bytes, m, o);
  } else if (count == 2) {
    trans ? launch(ldmatrix_registers<2, true>, 32, bytes, m, o) : launch(ldmatrix_registers<2, false>, 32, bytes, m, o);
  } else {
    TORCH_CHECK(count == 4, "ldmatrix loads 1, 2 or 4 matrices");
    trans ? launch(ldmatrix_registers<4, true>, 32, bytes, m, o) : launch(ldmatrix_registers<4, false>, 32, bytes, m, o);
  }
  return out;
}

inline at::Tensor cp_async(const at::Tensor& src, const at::Tensor& src_bytes, int wait) {
  TORCH_CHECK(src.numel() == 1024 && src.scalar_type() == at::kByte && src_bytes.numel() == 64 &&
              src_bytes.scalar_type() == at::kInt);
  at::Tensor out = at::empty({1024}, src.options());
  launch(cp_async_groups, 64, 1024, data_of<uint8_t>(src), data_of<int32_t>(src_bytes), out.data_ptr<uint8_t>(), wait);
  return out;
}

inline void broken(const at::Tensor& src, int which) {
  launch(broken_kernel, 64, 2048, data_of<uint8_t>(src), which);
}

inline void register_checks(pybind11::module& m) {
  m.def("check_mma", &mma, "D = A @ B + C through mma_m16n8k16 with fragments built from the PTX layouts");
  m.def("check_mma_shared", &mma_shared, "D = A @ B through ldmatrix and mma_m16n8k16");
  m.def("check_ldmatrix", &ldmatrix, "the registers ldmatrix gives each lane");
  m.def("check_cp_async", &cp_async, "a tile after cp.async copies and a chosen wait");
  m.def("check_broken", &broken, "a kernel breaking one rule of the emulation");
}

}  // namespace vocabulary_checks
