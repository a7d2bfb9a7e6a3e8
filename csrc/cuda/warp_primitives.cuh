// The tensor-core and memory vocabulary of the attention kernels, written once for both builds:
// inline PTX under nvcc, the CPU emulation's calls (tests/cuda_emulation/cuda_emulation.h,
// included first, defines AGENTFAST_CUDA_EMULATION) in the test build.
//
//   mma_m16n8k16<T>(d, a, b0, b1)   d += a @ b; A 16x16 and B 16x8 in T (__half or __nv_bfloat16),
//                                   d 16x8 fp32; the PTX fragment layouts (g = lane / 4,
//                                   t = lane % 4; element h = 0 low, 1 high half of register r):
//                                     A: row g + 8 (r % 2), col 2t + h + 8 (r / 2)   (4 registers)
//                                     B: row 2t + h + 8 r,   col g                   (2 registers)
//                                     D: element i at row g + 8 (i / 2), col 2t + i % 2 (4 floats)
//   ldmatrix_x{1,2,4}[_trans](r, p) 8x8 b16 matrices from shared memory; lanes 8j..8j+7 give the
//                                   16-byte row addresses of matrix j; register j of lane l holds
//                                   row l / 4, elements 2 (l % 4) + {0, 1} (trans: column l / 4,
//                                   rows 2 (l % 4) + {0, 1}).
//   cp_async_16(dst, src, bytes)    16 bytes global -> shared, the first `bytes` copied, the rest
//                                   zero-filled; visible to the issuing thread after
//                                   cp_async_wait<N>() retires its group (cp_async_commit()
//                                   closes one), to others after a barrier as well.
//   cp_async_16_or_zero(dst, src, copy)  the same, all 16 bytes or (copy false: the ignore-src
//                                   form, src not read) zeros.
//   pack_pair<T>(lo, hi)            two floats rounded to T in one 32-bit register (lo in the low
//                                   half: the lower column of a fragment pair).
//   shuffle_xor(x, mask)            __shfl_xor_sync over the full warp.
//   exp2_approx(x)                  2^x (ex2.approx on the GPU).
//   AGENTFAST_NOINLINE              keeps a rarely taken path (a loop) out of a kernel's main loop.
#pragma once

#include <cstdint>

namespace agentfast {
namespace {

#if defined(AGENTFAST_CUDA_EMULATION)

#define AGENTFAST_NOINLINE

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const float c[4] = {d[0], d[1], d[2], d[3]};
  const uint32_t b[2] = {b0, b1};
  cuda_emulation::mma_m16n8k16<T>(d, a, b, c);
}

__device__ __forceinline__ void ldmatrix_x1(uint32_t& r, const void* p) { cuda_emulation::ldmatrix<1, false>(&r, p); }
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* p) { cuda_emulation::ldmatrix<2, false>(r, p); }
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) { cuda_emulation::ldmatrix<4, false>(r, p); }
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t& r, const void* p) { cuda_emulation::ldmatrix<1, true>(&r, p); }
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* p) { cuda_emulation::ldmatrix<2, true>(r, p); }
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) { cuda_emulation::ldmatrix<4, true>(r, p); }

__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int bytes) { cuda_emulation::cp_async_16(dst, src, bytes); }
__device__ __forceinline__ void cp_async_16_or_zero(void* dst, const void* src, bool copy) {
  cuda_emulation::cp_async_16(dst, src, copy ? 16 : 0);
}
__device__ __forceinline__ void cp_async_commit() { cuda_emulation::cp_async_commit(); }
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() { cuda_emulation::cp_async_wait(PENDING); }

template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  return static_cast<uint32_t>(cuda_emulation::bits_of<T>(lo)) | (static_cast<uint32_t>(cuda_emulation::bits_of<T>(hi)) << 16);
}

__device__ __forceinline__ float shuffle_xor(float x, int mask) { return __shfl_xor_sync(0xffffffffu, x, mask); }
__device__ __forceinline__ float exp2_approx(float x) { return std::exp2(x); }

#else  // nvcc

#define AGENTFAST_NOINLINE __noinline__

template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __half>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#else
  __trap();  // the host refuses fp16/bf16 below sm_80
#endif
}

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define AGENTFAST_SM80(...) __VA_ARGS__
#else
#define AGENTFAST_SM80(...) __trap()
#endif

__device__ __forceinline__ void ldmatrix_x1(uint32_t& r, const void* p) {
  AGENTFAST_SM80(asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r) : "r"(shared_address(p))));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* p) {
  AGENTFAST_SM80(asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                              : "=r"(r[0]), "=r"(r[1]) : "r"(shared_address(p))));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  AGENTFAST_SM80(asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                              : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(p))));
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t& r, const void* p) {
  AGENTFAST_SM80(asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r) : "r"(shared_address(p))));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* p) {
  AGENTFAST_SM80(asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                              : "=r"(r[0]), "=r"(r[1]) : "r"(shared_address(p))));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  AGENTFAST_SM80(asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                              : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(p))));
}

__device__ __forceinline__ void cp_async_16(void* dst, const void* src, int bytes) {
  AGENTFAST_SM80(asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src),
                              "r"(bytes)));
}
__device__ __forceinline__ void cp_async_16_or_zero(void* dst, const void* src, bool copy) {
  AGENTFAST_SM80(asm volatile(
      "{\n  .reg .pred ignore;\n  setp.eq.u32 ignore, %2, 0;\n  cp.async.cg.shared.global [%0], [%1], 16, ignore;\n}\n" ::"r"(
          shared_address(dst)),
      "l"(src), "r"(static_cast<uint32_t>(copy))));
}
__device__ __forceinline__ void cp_async_commit() { AGENTFAST_SM80(asm volatile("cp.async.commit_group;\n" ::)); }
// The memory clobber keeps the compiler from moving shared-memory reads above the wait.
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
  AGENTFAST_SM80(asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory"));
}
#undef AGENTFAST_SM80

template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  uint32_t packed;
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 pair = __floats2half2_rn(lo, hi);
    memcpy(&packed, &pair, 4);
  } else {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
    memcpy(&packed, &pair, 4);
  }
  return packed;
}

__device__ __forceinline__ float shuffle_xor(float x, int mask) { return __shfl_xor_sync(0xffffffffu, x, mask); }
__device__ __forceinline__ float exp2_approx(float x) { return exp2f(x); }

#endif

}  // namespace
}  // namespace agentfast
