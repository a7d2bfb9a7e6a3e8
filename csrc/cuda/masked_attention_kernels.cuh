// Kernels of agentfast::masked_attention on CUDA (FlashAttention-2 style, one pass per output),
// and the host code that prepares and launches them through a Launcher.
//
// forward_kernel:  one CTA per (query block, batch*head); warps own 16 query rows each. Q stays
//                  in shared memory, K/V blocks stream through it, online softmax keeps the
//                  running row max/sum. The fp32 output accumulator stays in wmma fragments
//                  (fp16/bf16 up to head dim 128) or in shared memory (fp32; head dim 256).
//                  Writes out and the row log-sum-exp (lse).
// dq_kernel:       one CTA per (query block, batch*head): dQ = scale * sum_k dS K.
// dkdv_kernel:     one CTA per (key block, batch*head); warps own 16 keys each:
//                  dV = P^T dO, dK = scale * dS^T Q. Separate dQ and dK/dV passes keep the
//                  backward free of atomics, hence deterministic.
//                  dQ, dK and dV accumulate in fragments where they fit (see Config).
// Matrix products use tensor cores (wmma 16x16x16, fp32 accumulate) for fp16/bf16 and plain
// FMA loops for fp32 (tf32 would not meet the fp32 accuracy contract).
//
// Whole blocks the mask empties are skipped: keys beyond seq_len, causal future, and key
// blocks holding no agent that any query of the block can see (per-16-row agent-presence
// bitmasks built by tile_masks_kernel). Blocks that every query fully sees skip the mask.
//
// Templates are instantiated per dtype (3) x head-dim bucket (64, 128, 256) only; masking
// options are runtime flags, to keep compile time small.
//
// The includer provides the CUDA vocabulary: masked_attention_cuda.cu the real one (nvcc,
// cuda_fp16.h, mma.h), tests/cuda_emulation the CPU emulation that runs these same kernels in
// the CPU-only test suite. Either way it defines before including this file:
//   __half, __nv_bfloat16, __float2half_rn, __float2bfloat16_rn, nvcuda::wmma, dim3 and the
//   thread/block built-ins, uint4, dynamic_shared_memory() (the kernel's extern __shared__
//   array), load_vector/store_vector (16-byte aligned copies of a uint4), and
//   AGENTFAST_TENSOR_CORES (1 where the wmma path may run).
// A Launcher is callable as launch(kernel, grid, threads, shared_bytes, kernel arguments...).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "masked_attention.h"

namespace agentfast {
namespace {

constexpr int kGranule = 16;  // rows per agent-presence bitmask entry
constexpr float kInf = __builtin_huge_valf();

// ---------------------------------------------------------------------------------------
// fp32 -> element conversion (torch builds with __CUDA_NO_HALF_CONVERSIONS__, so spell it out).

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// ---------------------------------------------------------------------------------------
// Parameters.

struct Strides4 {
  int64_t b, h, n, d;
};

Strides4 strides_of(const Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

struct MaskParams {
  int batch_heads, heads, num_queries, num_keys, offset, num_agents;
  bool causal;
  const int64_t* seq_lens;       // [B] or null
  const int32_t* agent_ids;      // [B, Nk] or null (then no agent mask)
  const int64_t* agent_bitmask;  // [B, A]
  const uint64_t* key_presence;  // [B, key granules]: OR of 1 << agent over 16 keys
  const uint64_t* query_union;   // [B, query granules]: OR of the visibility rows of 16 queries
  const uint64_t* query_common;  // [B, query granules]: AND of the same
  int key_granules, query_granules;
};

template <typename T>
struct ForwardArgs {
  const T* q;
  const T* k;
  const T* v;
  T* out;      // [B, H, Nq, D] contiguous
  float* lse;  // [B, H, Nq]
  Strides4 qs, ks, vs;
  int head_dim;
  float scale;
  MaskParams mask;
};

template <typename T>
struct BackwardArgs {
  const T* q;
  const T* k;
  const T* v;
  const T* grad_out;
  const float* lse;    // [B, H, Nq]
  const float* delta;  // [B, H, Nq]: rowsum(dO * O) - grad_lse
  T* grad_q;           // contiguous
  T* grad_k;
  T* grad_v;
  Strides4 qs, ks, vs, gs;
  int head_dim;
  float scale;
  MaskParams mask;
};

// ---------------------------------------------------------------------------------------
// Mask helpers.

// The (batch, head) of this CTA. B * H is spread over grid.y and grid.z because grid.y alone
// stops at 65535 (B = 8192 environments x 8 heads is past it); a few trailing CTAs of the
// rounded-up grid have no (batch, head) and return before touching memory.
__device__ __forceinline__ int batch_head_of_block() { return blockIdx.y + blockIdx.z * gridDim.y; }

__device__ __forceinline__ int seq_len_of(const MaskParams& m, int b) {
  if (m.seq_lens == nullptr) return m.num_keys;
  const int64_t len = m.seq_lens[b];
  return static_cast<int>(len < 0 ? 0 : (len > m.num_keys ? m.num_keys : len));
}

__device__ __forceinline__ int agent_at(const MaskParams& m, int b, int position) {
  const int a = m.agent_ids[static_cast<int64_t>(b) * m.num_keys + position];
  return a < 0 ? 0 : (a >= m.num_agents ? m.num_agents - 1 : a);  // inputs are validated upstream
}

__device__ __forceinline__ uint64_t visibility_row(const MaskParams& m, int b, int query) {
  return static_cast<uint64_t>(m.agent_bitmask[static_cast<int64_t>(b) * m.num_agents + agent_at(m, b, m.offset + query)]);
}

__device__ __forceinline__ uint64_t or_granules(const uint64_t* bits, int first, int count) {
  uint64_t r = 0;
  for (int g = first / kGranule; g * kGranule < first + count; ++g) r |= bits[g];
  return r;
}

__device__ __forceinline__ uint64_t and_granules(const uint64_t* bits, int first, int count) {
  uint64_t r = ~uint64_t(0);
  for (int g = first / kGranule; g * kGranule < first + count; ++g) r &= bits[g];
  return r;
}

struct BlockDecision {
  bool skip;
  bool full;  // every (valid query, key) pair of the block is allowed: no per-element mask
};

// Queries [q_first, q_first + q_count) against keys [k_first, k_first + k_valid) of a block of
// `block_keys` keys (k_valid < block_keys means the rest are padding and must be masked).
__device__ __forceinline__ BlockDecision classify_block(const MaskParams& m, int b, int q_first, int q_count,
                                                        int k_first, int k_valid, int block_keys) {
  bool full = k_valid == block_keys;
  if (m.causal) {
    if (k_first > m.offset + q_first + q_count - 1) return {true, false};
    full = full && (k_first + block_keys - 1 <= m.offset + q_first);
  }
  if (m.agent_ids != nullptr) {
    const uint64_t present = or_granules(m.key_presence + static_cast<int64_t>(b) * m.key_granules, k_first, k_valid);
    const uint64_t* qrow = m.query_union + static_cast<int64_t>(b) * m.query_granules;
    if ((present & or_granules(qrow, q_first, q_count)) == 0) return {true, false};
    const uint64_t* qcommon = m.query_common + static_cast<int64_t>(b) * m.query_granules;
    full = full && (present & and_granules(qcommon, q_first, q_count)) == present;
  }
  return {false, full};
}

__device__ __forceinline__ bool allowed(const MaskParams& m, int key, int k_valid_end, int position,
                                        uint64_t query_sees, int key_agent) {
  bool ok = key < k_valid_end && (!m.causal || key <= position);
  if (m.agent_ids != nullptr) ok = ok && ((query_sees >> key_agent) & 1ull);
  return ok;
}

__global__ void tile_masks_kernel(MaskParams m, int batch, uint64_t* key_presence, uint64_t* query_union,
                                  uint64_t* query_common) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t key_entries = static_cast<int64_t>(batch) * m.key_granules;
  const int64_t query_entries = static_cast<int64_t>(batch) * m.query_granules;
  if (idx < key_entries) {
    const int b = static_cast<int>(idx / m.key_granules), g = static_cast<int>(idx % m.key_granules);
    uint64_t bits = 0;
    for (int j = g * kGranule; j < min((g + 1) * kGranule, m.num_keys); ++j) bits |= 1ull << agent_at(m, b, j);
    key_presence[idx] = bits;
  } else if (idx < key_entries + query_entries) {
    const int64_t qidx = idx - key_entries;
    const int b = static_cast<int>(qidx / m.query_granules), g = static_cast<int>(qidx % m.query_granules);
    uint64_t any = 0, all = ~uint64_t(0);
    for (int i = g * kGranule; i < min((g + 1) * kGranule, m.num_queries); ++i) {
      const uint64_t sees = visibility_row(m, b, i);
      any |= sees;
      all &= sees;
    }
    query_union[qidx] = any;
    query_common[qidx] = all;
  }
}

// ---------------------------------------------------------------------------------------
// Shared-memory tiles.

__host__ __device__ constexpr size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }

// Leading dimensions: wmma wants multiples of 8 elements (16-bit) / 4 (fp32); the fp32 FMA
// path pads by one so lanes reading a column hit distinct banks.
template <typename T>
constexpr int pad_of() {
  return sizeof(T) == 2 ? 8 : 1;
}

// rows x cols of a strided [N, D] slice into shared memory, zero-filled past valid rows/cols.
// 16-bit rows whose head dim is contiguous and 16-byte aligned move in 16-byte chunks (shared
// rows are COLS + 8 elements, a multiple of 16 bytes); anything else element by element.
template <typename T, int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void load_rows(T* dst, int ld, const T* src, int64_t row_stride, int64_t col_stride,
                                          int valid_rows, int valid_cols) {
  if constexpr (sizeof(T) == 2) {
    constexpr int kVector = 8, kChunks = COLS / kVector;
    if (col_stride == 1 && row_stride % kVector == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0) {
      for (int idx = threadIdx.x; idx < ROWS * kChunks; idx += THREADS) {
        const int r = idx / kChunks, c = (idx % kChunks) * kVector;
        uint4 chunk = {0u, 0u, 0u, 0u};  // zero bits: +0.0 in fp16 and bf16
        if (r < valid_rows && c + kVector <= valid_cols) {
          chunk = load_vector(src + r * row_stride + c);
        } else if (r < valid_rows && c < valid_cols) {  // the ragged end of a row
          T part[kVector];
          for (int e = 0; e < kVector; ++e) part[e] = c + e < valid_cols ? src[r * row_stride + c + e] : from_float<T>(0.0f);
          memcpy(&chunk, part, sizeof(chunk));
        }
        store_vector(dst + r * ld + c, chunk);
      }
      return;
    }
  }
  for (int idx = threadIdx.x; idx < ROWS * COLS; idx += THREADS) {
    const int r = idx / COLS, c = idx % COLS;
    T value = from_float<T>(0.0f);
    if (r < valid_rows && c < valid_cols) value = src[r * row_stride + c * col_stride];
    dst[r * ld + c] = value;
  }
}

// Rows [first, first + count) of (b, h) of a [B, H, N, D] tensor into a ROWS-row shared tile.
template <int ROWS, int HD, int THREADS, typename T>
__device__ __forceinline__ void load_head_rows(T* dst, int ld, const T* tensor, const Strides4& strides, int b, int h,
                                               int first, int count, int head_dim) {
  load_rows<T, ROWS, HD, THREADS>(dst, ld, tensor + b * strides.b + h * strides.h + first * strides.n, strides.n,
                                  strides.d, count, head_dim);
}

// Keys [k_first, k_first + k_valid) of (b, h): their K and V rows and their agents. The agents
// are written even without an agent mask: allowed() reads them (and ignores them), so they are
// never uninitialised.
template <int BN, int HD, int THREADS, typename Args, typename T>
__device__ __forceinline__ void load_key_block(const Args& args, int b, int h, int k_first, int k_valid, T* s_k,
                                               T* s_v, int ld, int* s_key_agent) {
  load_head_rows<BN, HD, THREADS>(s_k, ld, args.k, args.ks, b, h, k_first, k_valid, args.head_dim);
  load_head_rows<BN, HD, THREADS>(s_v, ld, args.v, args.vs, b, h, k_first, k_valid, args.head_dim);
  const MaskParams& m = args.mask;
  for (int j = threadIdx.x; j < BN; j += THREADS) {
    s_key_agent[j] = (m.agent_ids != nullptr && j < k_valid) ? agent_at(m, b, k_first + j) : 0;
  }
}

// Queries [q_first, q_first + q_count) of (b, h) for the backward: their Q and dO rows, and per
// row the lse, delta and agents seen. Padding rows get lse = +inf, so P = 0 there.
template <int BM, int HD, int THREADS, typename T>
__device__ __forceinline__ void load_query_block(const BackwardArgs<T>& args, int b, int h, int q_first, int q_count,
                                                 T* s_q, T* s_do, int ld, float* s_lse, float* s_delta,
                                                 uint64_t* s_sees) {
  load_head_rows<BM, HD, THREADS>(s_q, ld, args.q, args.qs, b, h, q_first, q_count, args.head_dim);
  load_head_rows<BM, HD, THREADS>(s_do, ld, args.grad_out, args.gs, b, h, q_first, q_count, args.head_dim);
  const MaskParams& m = args.mask;
  const int64_t row_base = (static_cast<int64_t>(b) * m.heads + h) * m.num_queries + q_first;
  for (int i = threadIdx.x; i < BM; i += THREADS) {
    const bool valid = i < q_count;
    s_lse[i] = valid ? args.lse[row_base + i] : kInf;
    s_delta[i] = valid ? args.delta[row_base + i] : 0.0f;
    s_sees[i] = (m.agent_ids != nullptr && valid) ? visibility_row(m, b, q_first + i) : 0;
  }
}

template <int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void zero_floats(float* dst, int ld) {
  for (int idx = threadIdx.x; idx < ROWS * COLS; idx += THREADS) dst[(idx / COLS) * ld + idx % COLS] = 0.0f;
}

// One warp: C[16, N] (fp32, shared, row-major) (+)= A[16, K] (row-major) @ B, where B is [K, N]
// row-major, or with B_TRANSPOSED the rows of a [N, K] row-major matrix (B = that^T).
template <typename T, bool B_TRANSPOSED, int K, int N>
__device__ __forceinline__ void warp_gemm(float* c, int ldc, const T* a, int lda, const T* b, int ldb,
                                          bool accumulate) {
  if constexpr (std::is_same_v<T, float>) {
    const int lane = threadIdx.x & 31;
    for (int n = lane; n < N; n += 32) {
      float acc[16];
#pragma unroll
      for (int r = 0; r < 16; ++r) acc[r] = accumulate ? c[r * ldc + n] : 0.0f;
      for (int kk = 0; kk < K; ++kk) {
        const float bv = B_TRANSPOSED ? b[n * ldb + kk] : b[kk * ldb + n];
#pragma unroll
        for (int r = 0; r < 16; ++r) acc[r] = fmaf(a[r * lda + kk], bv, acc[r]);
      }
#pragma unroll
      for (int r = 0; r < 16; ++r) c[r * ldc + n] = acc[r];
    }
  } else {
#if AGENTFAST_TENSOR_CORES
    using namespace nvcuda;
    using BLayout = std::conditional_t<B_TRANSPOSED, wmma::col_major, wmma::row_major>;
#pragma unroll
    for (int n0 = 0; n0 < N; n0 += 16) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      if (accumulate) {
        wmma::load_matrix_sync(acc, c + n0, ldc, wmma::mem_row_major);
      } else {
        wmma::fill_fragment(acc, 0.0f);
      }
#pragma unroll 4
      for (int k0 = 0; k0 < K; k0 += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> b_frag;
        wmma::load_matrix_sync(a_frag, a + k0, lda);
        wmma::load_matrix_sync(b_frag, B_TRANSPOSED ? b + n0 * ldb + k0 : b + k0 * ldb + n0, ldb);
        wmma::mma_sync(acc, a_frag, b_frag, acc);
      }
      wmma::store_matrix_sync(c + n0, acc, ldc, wmma::mem_row_major);
    }
#else
    __trap();  // fp16/bf16 tensor-core path needs sm_80+; the host refuses older devices
#endif
  }
}

// One warp's fp32 accumulator C[16, N] (+)= A[16, K] @ B (B as in warp_gemm) over a kernel's
// whole loop. In shared memory by default: warp_gemm reads and writes C at every step (the
// fp32 FMA path, and head dims whose fragments would not fit in registers). With
// IN_REGISTERS (fp16/bf16), C stays in wmma fragments and reaches shared memory once, in
// finish(); the fragments' element layout is never looked at, so this holds for any layout.
template <typename T, int N, bool IN_REGISTERS>
struct WarpAccumulator {
  float* c;
  int ldc;

  // c must hold zeros (the kernels zero-fill it before their loop).
  __device__ __forceinline__ WarpAccumulator(float* c_, int ldc_, const float* /*row_index*/ = nullptr)
      : c(c_), ldc(ldc_) {}

  template <bool B_TRANSPOSED, int K>
  __device__ __forceinline__ void add(const T* a, int lda, const T* b, int ldb) {
    warp_gemm<T, B_TRANSPOSED, K, N>(c, ldc, a, lda, b, ldb, true);
  }

  // C[r, :] *= scale[r] for the 16 rows; scale is in shared memory. __syncwarp() before (the
  // scales) and after (C is shared by the warp's lanes).
  __device__ __forceinline__ void scale_rows(const float* scale) {
    for (int idx = threadIdx.x & 31; idx < 16 * N; idx += 32) {
      const float factor = scale[idx / N];
      if (factor != 1.0f) c[(idx / N) * ldc + idx % N] *= factor;
    }
  }

  __device__ __forceinline__ void finish() {}
};

template <typename T, int N>
struct WarpAccumulator<T, N, true> {
  static_assert(!std::is_same_v<T, float>, "register accumulators are for the tensor-core path");
  float* c;
  int ldc;
#if AGENTFAST_TENSOR_CORES
  using Fragment = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  Fragment tiles[N / 16];
  int row_of[Fragment::num_elements];  // the tile row of each fragment element
#endif

  // Starts from zero; c is written only by finish(). scale_rows() needs row_index: a 16 x 16
  // fp32 matrix in shared memory (ld 16) whose element (r, c) is r. Loading it as a fragment
  // tells each lane the row of every element it holds, whatever the layout.
  __device__ __forceinline__ WarpAccumulator(float* c_, int ldc_, const float* row_index = nullptr)
      : c(c_), ldc(ldc_) {
#if AGENTFAST_TENSOR_CORES
#pragma unroll
    for (int n = 0; n < N / 16; ++n) nvcuda::wmma::fill_fragment(tiles[n], 0.0f);
    Fragment rows;
    if (row_index != nullptr) {
      nvcuda::wmma::load_matrix_sync(rows, row_index, 16, nvcuda::wmma::mem_row_major);
    } else {
      nvcuda::wmma::fill_fragment(rows, 0.0f);
    }
#pragma unroll
    for (int i = 0; i < Fragment::num_elements; ++i) row_of[i] = static_cast<int>(rows.x[i]);
#endif
  }

  // C[r, :] *= scale[r], on the fragments (no __syncwarp needed after).
  __device__ __forceinline__ void scale_rows(const float* scale) {
#if AGENTFAST_TENSOR_CORES
    float factor[Fragment::num_elements];
#pragma unroll
    for (int i = 0; i < Fragment::num_elements; ++i) factor[i] = scale[row_of[i]];
#pragma unroll
    for (int n = 0; n < N / 16; ++n) {
#pragma unroll
      for (int i = 0; i < Fragment::num_elements; ++i) tiles[n].x[i] *= factor[i];
    }
#endif
  }

  template <bool B_TRANSPOSED, int K>
  __device__ __forceinline__ void add(const T* a, int lda, const T* b, int ldb) {
#if AGENTFAST_TENSOR_CORES
    using namespace nvcuda;
    using BLayout = std::conditional_t<B_TRANSPOSED, wmma::col_major, wmma::row_major>;
#pragma unroll 2
    for (int k0 = 0; k0 < K; k0 += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a_frag;
      wmma::load_matrix_sync(a_frag, a + k0, lda);
#pragma unroll
      for (int n = 0; n < N / 16; ++n) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> b_frag;
        wmma::load_matrix_sync(b_frag, B_TRANSPOSED ? b + n * 16 * ldb + k0 : b + k0 * ldb + n * 16, ldb);
        wmma::mma_sync(tiles[n], a_frag, b_frag, tiles[n]);
      }
    }
#else
    __trap();
#endif
  }

  __device__ __forceinline__ void finish() {
#if AGENTFAST_TENSOR_CORES
#pragma unroll
    for (int n = 0; n < N / 16; ++n) nvcuda::wmma::store_matrix_sync(c + n * 16, tiles[n], ldc, nvcuda::wmma::mem_row_major);
#endif
  }
};

// ---------------------------------------------------------------------------------------
// Forward.

template <typename T, int HD, int BM, int BN>
struct ForwardTile {
  static constexpr int kWarps = BM / 16, kThreads = kWarps * 32;
  static constexpr int kLdT = HD + pad_of<T>(), kLdP = BN + pad_of<T>(), kLdS = BN + 4, kLdO = HD + 4;
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = align128(kQ + sizeof(T) * BM * kLdT);
  static constexpr size_t kV = align128(kK + sizeof(T) * BN * kLdT);
  static constexpr size_t kP = align128(kV + sizeof(T) * BN * kLdT);
  static constexpr size_t kS = align128(kP + sizeof(T) * BM * kLdP);
  static constexpr size_t kO = align128(kS + sizeof(float) * BM * kLdS);
  static constexpr size_t kRowMax = align128(kO + sizeof(float) * BM * kLdO);
  static constexpr size_t kRowSum = align128(kRowMax + sizeof(float) * BM);
  static constexpr size_t kSees = align128(kRowSum + sizeof(float) * BM);
  static constexpr size_t kKeyAgent = align128(kSees + sizeof(uint64_t) * BM);
  static constexpr size_t kScale = align128(kKeyAgent + sizeof(int) * BN);
  static constexpr size_t kRowIndex = align128(kScale + sizeof(float) * BM);
  // The 16 x 16 row-index matrix of WarpAccumulator, for the fp16/bf16 register accumulator.
  static constexpr size_t kBytes = align128(kRowIndex + (std::is_same_v<T, float> ? 0 : sizeof(float) * 256));
  static_assert(BM % 16 == 0 && BN % 32 == 0 && HD % 16 == 0, "tile sizes");
};

template <typename T, int HD, int BM, int BN, bool REGISTER_ACCUMULATOR>
__global__ void __launch_bounds__(ForwardTile<T, HD, BM, BN>::kThreads) forward_kernel(const ForwardArgs<T> args) {
  using Tile = ForwardTile<T, HD, BM, BN>;
  unsigned char* smem = dynamic_shared_memory();
  T* s_q = reinterpret_cast<T*>(smem + Tile::kQ);
  T* s_k = reinterpret_cast<T*>(smem + Tile::kK);
  T* s_v = reinterpret_cast<T*>(smem + Tile::kV);
  T* s_p = reinterpret_cast<T*>(smem + Tile::kP);
  float* s_s = reinterpret_cast<float*>(smem + Tile::kS);
  float* s_o = reinterpret_cast<float*>(smem + Tile::kO);
  float* s_row_max = reinterpret_cast<float*>(smem + Tile::kRowMax);
  float* s_row_sum = reinterpret_cast<float*>(smem + Tile::kRowSum);
  uint64_t* s_sees = reinterpret_cast<uint64_t*>(smem + Tile::kSees);
  int* s_key_agent = reinterpret_cast<int*>(smem + Tile::kKeyAgent);
  float* s_scale = reinterpret_cast<float*>(smem + Tile::kScale);
  float* s_row_index = reinterpret_cast<float*>(smem + Tile::kRowIndex);

  const MaskParams& m = args.mask;
  const int bh = batch_head_of_block(), b = bh / m.heads, h = bh % m.heads;
  if (bh >= m.batch_heads) return;  // uniform over the CTA, before any barrier
  const int q_first = blockIdx.x * BM, q_count = min(BM, m.num_queries - q_first);
  const bool has_agents = m.agent_ids != nullptr;
  int key_end = seq_len_of(m, b);
  if (m.causal) key_end = min(key_end, m.offset + q_first + q_count);

  load_head_rows<BM, HD, Tile::kThreads>(s_q, Tile::kLdT, args.q, args.qs, b, h, q_first, q_count, args.head_dim);
  if constexpr (REGISTER_ACCUMULATOR) {
    for (int i = threadIdx.x; i < 256; i += Tile::kThreads) s_row_index[i] = static_cast<float>(i / 16);
  } else {
    zero_floats<BM, HD, Tile::kThreads>(s_o, Tile::kLdO);
  }
  for (int i = threadIdx.x; i < BM; i += Tile::kThreads) {
    s_row_max[i] = -kInf;
    s_row_sum[i] = 0.0f;
    s_sees[i] = (has_agents && i < q_count) ? visibility_row(m, b, q_first + i) : 0;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r0 = warp * 16, row = r0 + (lane >> 1), half = lane & 1;
  const int position = m.offset + q_first + row;
  const uint64_t sees = s_sees[row];
  WarpAccumulator<T, HD, REGISTER_ACCUMULATOR> output(s_o + r0 * Tile::kLdO, Tile::kLdO, s_row_index);

  for (int k_first = 0; k_first < key_end; k_first += BN) {
    const int k_valid = min(BN, key_end - k_first);
    const BlockDecision decision = classify_block(m, b, q_first, q_count, k_first, k_valid, BN);
    if (decision.skip) continue;  // uniform over the CTA
    __syncthreads();              // previous K/V block no longer in use
    load_key_block<BN, HD, Tile::kThreads>(args, b, h, k_first, k_valid, s_k, s_v, Tile::kLdT, s_key_agent);
    __syncthreads();

    warp_gemm<T, true, HD, BN>(s_s + r0 * Tile::kLdS, Tile::kLdS, s_q + r0 * Tile::kLdT, Tile::kLdT, s_k, Tile::kLdT, false);
    __syncwarp();

    // Online softmax: two lanes per row, on alternate keys (adjacent words: fewer bank conflicts).
    float* s_row = s_s + row * Tile::kLdS;
    float block_max = -kInf;
    for (int c = half; c < BN; c += 2) {
      float s = s_row[c] * args.scale;
      if (!decision.full && !allowed(m, k_first + c, k_first + k_valid, position, sees, s_key_agent[c])) s = -kInf;
      s_row[c] = s;
      block_max = fmaxf(block_max, s);
    }
    block_max = fmaxf(block_max, __shfl_xor_sync(0xffffffffu, block_max, 1));
    const float old_max = s_row_max[row];
    const float new_max = fmaxf(old_max, block_max);
    const float correction = new_max == -kInf ? 1.0f : __expf(old_max - new_max);
    float block_sum = 0.0f;
    T* p_row = s_p + row * Tile::kLdP;
    for (int c = half; c < BN; c += 2) {
      const float s = s_row[c];
      const float p = s == -kInf ? 0.0f : __expf(s - new_max);
      p_row[c] = from_float<T>(p);
      block_sum += p;
    }
    block_sum += __shfl_xor_sync(0xffffffffu, block_sum, 1);
    __syncwarp();  // both lanes have read the old row statistics
    if (half == 0) {
      s_row_max[row] = new_max;
      s_row_sum[row] = s_row_sum[row] * correction + block_sum;
      s_scale[row] = correction;
    }
    __syncwarp();
    output.scale_rows(s_scale + r0);
    __syncwarp();
    output.template add<false, BN>(s_p + r0 * Tile::kLdP, Tile::kLdP, s_v, Tile::kLdT);
  }
  output.finish();
  __syncwarp();

  for (int r = 0; r < 16; ++r) {
    const int i = r0 + r, query = q_first + i;
    if (query >= m.num_queries) break;
    const float total = s_row_sum[i];
    const float inv_total = total > 0.0f ? 1.0f / total : 0.0f;  // rows with no key return 0
    const int64_t out_row = static_cast<int64_t>(bh) * m.num_queries + query;
    T* dst = args.out + out_row * args.head_dim;
    for (int c = lane; c < args.head_dim; c += 32) dst[c] = from_float<T>(s_o[i * Tile::kLdO + c] * inv_total);
    if (lane == 0) args.lse[out_row] = total > 0.0f ? s_row_max[i] + logf(total) : -kInf;
  }
}

// ---------------------------------------------------------------------------------------
// Backward, dQ: warps own 16 query rows; key blocks stream through shared memory.

template <typename T, int HD, int BM, int BN>
struct DqTile {
  static constexpr int kWarps = BM / 16, kThreads = kWarps * 32;
  static constexpr int kLdT = HD + pad_of<T>(), kLdP = BN + pad_of<T>(), kLdS = BN + 4, kLdO = HD + 4;
  static constexpr size_t kQ = 0;
  static constexpr size_t kdO = align128(kQ + sizeof(T) * BM * kLdT);
  static constexpr size_t kK = align128(kdO + sizeof(T) * BM * kLdT);
  static constexpr size_t kV = align128(kK + sizeof(T) * BN * kLdT);
  static constexpr size_t kS = align128(kV + sizeof(T) * BN * kLdT);
  static constexpr size_t kdP = align128(kS + sizeof(float) * BM * kLdS);
  static constexpr size_t kdS = align128(kdP + sizeof(float) * BM * kLdS);
  static constexpr size_t kdQ = align128(kdS + sizeof(T) * BM * kLdP);
  static constexpr size_t kLse = align128(kdQ + sizeof(float) * BM * kLdO);
  static constexpr size_t kDelta = align128(kLse + sizeof(float) * BM);
  static constexpr size_t kSees = align128(kDelta + sizeof(float) * BM);
  static constexpr size_t kKeyAgent = align128(kSees + sizeof(uint64_t) * BM);
  static constexpr size_t kBytes = align128(kKeyAgent + sizeof(int) * BN);
  static_assert(BM % 16 == 0 && BN % 16 == 0 && HD % 16 == 0, "tile sizes");
};

template <typename T, int HD, int BM, int BN, bool REGISTER_ACCUMULATOR>
__global__ void __launch_bounds__(DqTile<T, HD, BM, BN>::kThreads) dq_kernel(const BackwardArgs<T> args) {
  using Tile = DqTile<T, HD, BM, BN>;
  unsigned char* smem = dynamic_shared_memory();
  T* s_q = reinterpret_cast<T*>(smem + Tile::kQ);
  T* s_do = reinterpret_cast<T*>(smem + Tile::kdO);
  T* s_k = reinterpret_cast<T*>(smem + Tile::kK);
  T* s_v = reinterpret_cast<T*>(smem + Tile::kV);
  float* s_s = reinterpret_cast<float*>(smem + Tile::kS);
  float* s_dp = reinterpret_cast<float*>(smem + Tile::kdP);
  T* s_ds = reinterpret_cast<T*>(smem + Tile::kdS);
  float* s_dq = reinterpret_cast<float*>(smem + Tile::kdQ);
  float* s_lse = reinterpret_cast<float*>(smem + Tile::kLse);
  float* s_delta = reinterpret_cast<float*>(smem + Tile::kDelta);
  uint64_t* s_sees = reinterpret_cast<uint64_t*>(smem + Tile::kSees);
  int* s_key_agent = reinterpret_cast<int*>(smem + Tile::kKeyAgent);

  const MaskParams& m = args.mask;
  const int bh = batch_head_of_block(), b = bh / m.heads, h = bh % m.heads;
  if (bh >= m.batch_heads) return;  // uniform over the CTA, before any barrier
  const int q_first = blockIdx.x * BM, q_count = min(BM, m.num_queries - q_first);
  int key_end = seq_len_of(m, b);
  if (m.causal) key_end = min(key_end, m.offset + q_first + q_count);
  const int64_t row_base = static_cast<int64_t>(bh) * m.num_queries + q_first;

  load_query_block<BM, HD, Tile::kThreads>(args, b, h, q_first, q_count, s_q, s_do, Tile::kLdT, s_lse, s_delta,
                                           s_sees);
  if constexpr (!REGISTER_ACCUMULATOR) zero_floats<BM, HD, Tile::kThreads>(s_dq, Tile::kLdO);
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r0 = warp * 16, row = r0 + (lane >> 1), half = lane & 1;
  const int position = m.offset + q_first + row;
  const uint64_t sees = s_sees[row];
  const float row_lse = s_lse[row], row_delta = s_delta[row];
  WarpAccumulator<T, HD, REGISTER_ACCUMULATOR> grad_q(s_dq + r0 * Tile::kLdO, Tile::kLdO);

  for (int k_first = 0; k_first < key_end; k_first += BN) {
    const int k_valid = min(BN, key_end - k_first);
    const BlockDecision decision = classify_block(m, b, q_first, q_count, k_first, k_valid, BN);
    if (decision.skip) continue;
    __syncthreads();
    load_key_block<BN, HD, Tile::kThreads>(args, b, h, k_first, k_valid, s_k, s_v, Tile::kLdT, s_key_agent);
    __syncthreads();

    warp_gemm<T, true, HD, BN>(s_s + r0 * Tile::kLdS, Tile::kLdS, s_q + r0 * Tile::kLdT, Tile::kLdT, s_k, Tile::kLdT, false);
    warp_gemm<T, true, HD, BN>(s_dp + r0 * Tile::kLdS, Tile::kLdS, s_do + r0 * Tile::kLdT, Tile::kLdT, s_v, Tile::kLdT, false);
    __syncwarp();
    for (int c = half; c < BN; c += 2) {
      const bool ok = decision.full || allowed(m, k_first + c, k_first + k_valid, position, sees, s_key_agent[c]);
      const float p = ok ? __expf(s_s[row * Tile::kLdS + c] * args.scale - row_lse) : 0.0f;
      s_ds[row * Tile::kLdP + c] = from_float<T>(p * (s_dp[row * Tile::kLdS + c] - row_delta));
    }
    __syncwarp();
    grad_q.template add<false, BN>(s_ds + r0 * Tile::kLdP, Tile::kLdP, s_k, Tile::kLdT);
  }
  grad_q.finish();
  __syncwarp();

  for (int r = 0; r < 16; ++r) {
    const int i = r0 + r;
    if (q_first + i >= m.num_queries) break;
    T* dst = args.grad_q + (row_base + i) * args.head_dim;
    for (int c = lane; c < args.head_dim; c += 32) dst[c] = from_float<T>(s_dq[i * Tile::kLdO + c] * args.scale);
  }
}

// ---------------------------------------------------------------------------------------
// Backward, dK and dV: warps own 16 keys each; query blocks stream through shared memory.
// Scores are formed transposed (keys x queries) so each warp's rows are its own keys.

template <typename T, int HD, int BM, int BN>
struct DkvTile {
  static constexpr int kWarps = BN / 16, kThreads = kWarps * 32;
  static constexpr int kLdT = HD + pad_of<T>(), kLdP = BM + pad_of<T>(), kLdS = BM + 4, kLdO = HD + 4;
  static constexpr size_t kK = 0;
  static constexpr size_t kV = align128(kK + sizeof(T) * BN * kLdT);
  static constexpr size_t kQ = align128(kV + sizeof(T) * BN * kLdT);
  static constexpr size_t kdO = align128(kQ + sizeof(T) * BM * kLdT);
  static constexpr size_t kST = align128(kdO + sizeof(T) * BM * kLdT);
  static constexpr size_t kdPT = align128(kST + sizeof(float) * BN * kLdS);
  static constexpr size_t kPT = align128(kdPT + sizeof(float) * BN * kLdS);
  static constexpr size_t kdST = align128(kPT + sizeof(T) * BN * kLdP);
  static constexpr size_t kdK = align128(kdST + sizeof(T) * BN * kLdP);
  static constexpr size_t kdV = align128(kdK + sizeof(float) * BN * kLdO);
  static constexpr size_t kLse = align128(kdV + sizeof(float) * BN * kLdO);
  static constexpr size_t kDelta = align128(kLse + sizeof(float) * BM);
  static constexpr size_t kSees = align128(kDelta + sizeof(float) * BM);
  static constexpr size_t kKeyAgent = align128(kSees + sizeof(uint64_t) * BM);
  static constexpr size_t kBytes = align128(kKeyAgent + sizeof(int) * BN);
  static_assert(BM % 32 == 0 && BN % 16 == 0 && HD % 16 == 0, "tile sizes");
};

template <typename T, int HD, int BM, int BN, bool REGISTER_ACCUMULATOR>
__global__ void __launch_bounds__(DkvTile<T, HD, BM, BN>::kThreads) dkdv_kernel(const BackwardArgs<T> args) {
  using Tile = DkvTile<T, HD, BM, BN>;
  unsigned char* smem = dynamic_shared_memory();
  T* s_k = reinterpret_cast<T*>(smem + Tile::kK);
  T* s_v = reinterpret_cast<T*>(smem + Tile::kV);
  T* s_q = reinterpret_cast<T*>(smem + Tile::kQ);
  T* s_do = reinterpret_cast<T*>(smem + Tile::kdO);
  float* s_st = reinterpret_cast<float*>(smem + Tile::kST);
  float* s_dpt = reinterpret_cast<float*>(smem + Tile::kdPT);
  T* s_pt = reinterpret_cast<T*>(smem + Tile::kPT);
  T* s_dst = reinterpret_cast<T*>(smem + Tile::kdST);
  float* s_dk = reinterpret_cast<float*>(smem + Tile::kdK);
  float* s_dv = reinterpret_cast<float*>(smem + Tile::kdV);
  float* s_lse = reinterpret_cast<float*>(smem + Tile::kLse);
  float* s_delta = reinterpret_cast<float*>(smem + Tile::kDelta);
  uint64_t* s_sees = reinterpret_cast<uint64_t*>(smem + Tile::kSees);
  int* s_key_agent = reinterpret_cast<int*>(smem + Tile::kKeyAgent);

  const MaskParams& m = args.mask;
  const int bh = batch_head_of_block(), b = bh / m.heads, h = bh % m.heads;
  if (bh >= m.batch_heads) return;  // uniform over the CTA, before any barrier
  const int k_first = blockIdx.x * BN;
  const int rows_out = min(BN, m.num_keys - k_first);
  const int k_valid = max(0, min(BN, seq_len_of(m, b) - k_first));  // keys past seq_len get 0

  if constexpr (!REGISTER_ACCUMULATOR) {
    zero_floats<BN, HD, Tile::kThreads>(s_dk, Tile::kLdO);
    zero_floats<BN, HD, Tile::kThreads>(s_dv, Tile::kLdO);
  }
  if (k_valid > 0) load_key_block<BN, HD, Tile::kThreads>(args, b, h, k_first, k_valid, s_k, s_v, Tile::kLdT, s_key_agent);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r0 = warp * 16, key_row = r0 + (lane >> 1), half = lane & 1;
  const int key = k_first + key_row;
  // Causal: queries at positions before k_first see none of these keys.
  const int first_query = m.causal ? max(0, k_first - m.offset) : 0;
  WarpAccumulator<T, HD, REGISTER_ACCUMULATOR> grad_v(s_dv + r0 * Tile::kLdO, Tile::kLdO);
  WarpAccumulator<T, HD, REGISTER_ACCUMULATOR> grad_k(s_dk + r0 * Tile::kLdO, Tile::kLdO);

  for (int q_first = k_valid > 0 ? first_query / BM * BM : m.num_queries; q_first < m.num_queries; q_first += BM) {
    const int q_count = min(BM, m.num_queries - q_first);
    const BlockDecision decision = classify_block(m, b, q_first, q_count, k_first, k_valid, BN);
    if (decision.skip) continue;
    __syncthreads();  // previous query block no longer in use (and K/V/agents loaded)
    load_query_block<BM, HD, Tile::kThreads>(args, b, h, q_first, q_count, s_q, s_do, Tile::kLdT, s_lse, s_delta,
                                             s_sees);
    __syncthreads();

    warp_gemm<T, true, HD, BM>(s_st + r0 * Tile::kLdS, Tile::kLdS, s_k + r0 * Tile::kLdT, Tile::kLdT, s_q, Tile::kLdT, false);
    warp_gemm<T, true, HD, BM>(s_dpt + r0 * Tile::kLdS, Tile::kLdS, s_v + r0 * Tile::kLdT, Tile::kLdT, s_do, Tile::kLdT, false);
    __syncwarp();
    const int agent = s_key_agent[key_row];
    for (int c = half; c < BM; c += 2) {
      const int position = m.offset + q_first + c;
      const bool ok = decision.full || allowed(m, key, k_first + k_valid, position, s_sees[c], agent);
      const float p = ok ? __expf(s_st[key_row * Tile::kLdS + c] * args.scale - s_lse[c]) : 0.0f;
      s_pt[key_row * Tile::kLdP + c] = from_float<T>(p);
      s_dst[key_row * Tile::kLdP + c] = from_float<T>(p * (s_dpt[key_row * Tile::kLdS + c] - s_delta[c]));
    }
    __syncwarp();
    grad_v.template add<false, BM>(s_pt + r0 * Tile::kLdP, Tile::kLdP, s_do, Tile::kLdT);
    grad_k.template add<false, BM>(s_dst + r0 * Tile::kLdP, Tile::kLdP, s_q, Tile::kLdT);
  }
  grad_v.finish();
  grad_k.finish();
  __syncthreads();  // the zero fill above may come from other warps when no block was visited

  for (int r = 0; r < 16; ++r) {
    const int j = r0 + r;
    if (j >= rows_out) break;
    const int64_t out_row = static_cast<int64_t>(bh) * m.num_keys + k_first + j;
    T* dk = args.grad_k + out_row * args.head_dim;
    T* dv = args.grad_v + out_row * args.head_dim;
    for (int c = lane; c < args.head_dim; c += 32) {
      dk[c] = from_float<T>(s_dk[j * Tile::kLdO + c] * args.scale);
      dv[c] = from_float<T>(s_dv[j * Tile::kLdO + c]);
    }
  }
}


// ---------------------------------------------------------------------------------------
// Host side: everything but the device checks, the stream and the launch itself, which the
// Launcher brings.

// Tile shapes per head-dim bucket, chosen so every kernel fits 163 KiB of shared memory
// (A100; H100 allows 227 KiB) in fp32, the widest dtype. fp16/bf16 kernels keep their
// output accumulators in registers where those take at most 64 per thread.
template <int HD>
struct Config;
template <>
struct Config<64> {
  static constexpr int kFwdM = 64, kFwdN = 64, kDqM = 64, kDqN = 64, kKvM = 32, kKvN = 64;
  static constexpr bool kFwdInRegisters = true;
  static constexpr bool kDqInRegisters = true, kKvInRegisters = true;
};
template <>
struct Config<128> {
  static constexpr int kFwdM = 64, kFwdN = 32, kDqM = 32, kDqN = 32, kKvM = 32, kKvN = 32;
  static constexpr bool kFwdInRegisters = true;
  static constexpr bool kDqInRegisters = true, kKvInRegisters = false;  // dK + dV: 128 registers
};
template <>
struct Config<256> {
  static constexpr int kFwdM = 32, kFwdN = 32, kDqM = 32, kDqN = 16, kKvM = 32, kKvN = 16;
  static constexpr bool kFwdInRegisters = false;
  static constexpr bool kDqInRegisters = false, kKvInRegisters = false;
};

// Owns the mask tensors the kernels read, so they live until the launches are queued.
struct MaskTensors {
  Tensor seq_lens, agent_ids, bitmask, key_presence, query_union, query_common;
  MaskParams params{};
};

template <typename Launcher>
MaskTensors prepare_mask(const Launcher& launch, const AttentionShape& shape, bool causal, const OptionalTensor& seq_lens,
                         const OptionalTensor& agent_ids, const OptionalTensor& agent_bitmask) {
  MaskTensors t;
  MaskParams& p = t.params;
  p.batch_heads = static_cast<int>(shape.batch * shape.heads);
  p.heads = static_cast<int>(shape.heads);
  p.num_queries = static_cast<int>(shape.num_queries);
  p.num_keys = static_cast<int>(shape.num_keys);
  p.offset = static_cast<int>(shape.query_offset());
  p.num_agents = static_cast<int>(shape.num_agents);
  p.causal = causal;
  if (seq_lens.has_value()) {
    t.seq_lens = seq_lens->to(at::kLong).contiguous();
    p.seq_lens = t.seq_lens.data_ptr<int64_t>();
  }
  if (!agent_ids.has_value()) return t;
  t.agent_ids = agent_ids->to(at::kInt).contiguous();
  t.bitmask = agent_bitmask->contiguous();
  p.agent_ids = t.agent_ids.data_ptr<int32_t>();
  p.agent_bitmask = t.bitmask.data_ptr<int64_t>();
  p.key_granules = static_cast<int>((shape.num_keys + kGranule - 1) / kGranule);
  p.query_granules = static_cast<int>((shape.num_queries + kGranule - 1) / kGranule);
  const auto options = t.agent_ids.options().dtype(at::kLong);
  t.key_presence = at::empty({shape.batch, p.key_granules}, options);
  t.query_union = at::empty({shape.batch, p.query_granules}, options);
  t.query_common = at::empty({shape.batch, p.query_granules}, options);
  p.key_presence = reinterpret_cast<const uint64_t*>(t.key_presence.data_ptr<int64_t>());
  p.query_union = reinterpret_cast<const uint64_t*>(t.query_union.data_ptr<int64_t>());
  p.query_common = reinterpret_cast<const uint64_t*>(t.query_common.data_ptr<int64_t>());
  const int64_t entries = shape.batch * (p.key_granules + p.query_granules);
  if (entries > 0) {
    const int threads = 256;
    launch(tile_masks_kernel, dim3(static_cast<unsigned>((entries + threads - 1) / threads)), threads, 0, p,
           static_cast<int>(shape.batch), reinterpret_cast<uint64_t*>(t.key_presence.data_ptr<int64_t>()),
           reinterpret_cast<uint64_t*>(t.query_union.data_ptr<int64_t>()),
           reinterpret_cast<uint64_t*>(t.query_common.data_ptr<int64_t>()));
  }
  return t;
}


// blocks x (B * H) CTAs, B * H folded over grid.y and grid.z (each at most 65535).
// CUDA's limit on gridDim.y and gridDim.z; the emulation lowers it so that small tests fold too.
#ifndef AGENTFAST_MAX_GRID_YZ
#define AGENTFAST_MAX_GRID_YZ 65535
#endif

dim3 grid_of(int64_t blocks, int64_t batch_heads) {
  constexpr int64_t kMaxGridYZ = AGENTFAST_MAX_GRID_YZ;
  const int64_t z = (batch_heads + kMaxGridYZ - 1) / kMaxGridYZ;
  const int64_t y = z == 0 ? 0 : (batch_heads + z - 1) / z;
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(y), static_cast<unsigned>(z));
}

template <typename T>
struct DeviceType {
  using type = T;
};
template <>
struct DeviceType<at::Half> {
  using type = __half;
};
template <>
struct DeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T, int HD, typename Launcher>
void run_forward(const Launcher& launch, const ForwardArgs<T>& args, int64_t batch_heads) {
  using C = Config<HD>;
  using Tile = ForwardTile<T, HD, C::kFwdM, C::kFwdN>;
  constexpr bool kInRegisters = !std::is_same_v<T, float> && C::kFwdInRegisters;
  const dim3 grid = grid_of((args.mask.num_queries + C::kFwdM - 1) / C::kFwdM, batch_heads);
  launch(forward_kernel<T, HD, C::kFwdM, C::kFwdN, kInRegisters>, grid, Tile::kThreads, Tile::kBytes, args);
}

template <typename T, int HD, typename Launcher>
void run_backward(const Launcher& launch, const BackwardArgs<T>& args, int64_t batch_heads) {
  using C = Config<HD>;
  using Dq = DqTile<T, HD, C::kDqM, C::kDqN>;
  using Kv = DkvTile<T, HD, C::kKvM, C::kKvN>;
  constexpr bool kTensorCores = !std::is_same_v<T, float>;
  const dim3 dq_grid = grid_of((args.mask.num_queries + C::kDqM - 1) / C::kDqM, batch_heads);
  launch(dq_kernel<T, HD, C::kDqM, C::kDqN, kTensorCores && C::kDqInRegisters>, dq_grid, Dq::kThreads, Dq::kBytes,
         args);
  const dim3 kv_grid = grid_of((args.mask.num_keys + C::kKvN - 1) / C::kKvN, batch_heads);
  launch(dkdv_kernel<T, HD, C::kKvM, C::kKvN, kTensorCores && C::kKvInRegisters>, kv_grid, Kv::kThreads, Kv::kBytes,
         args);
}

template <typename Fn>
void dispatch_head_dim(int64_t head_dim, Fn&& fn) {
  if (head_dim <= 64) {
    fn(std::integral_constant<int, 64>{});
  } else if (head_dim <= 128) {
    fn(std::integral_constant<int, 128>{});
  } else {
    fn(std::integral_constant<int, 256>{});
  }
}

// (out, lse) of validated inputs.
template <typename Launcher>
std::tuple<Tensor, Tensor> launch_forward(const Launcher& launch, const Tensor& q, const Tensor& k, const Tensor& v,
                                          const AttentionShape& shape, const OptionalTensor& seq_lens,
                                          const OptionalTensor& agent_ids, const OptionalTensor& agent_bitmask,
                                          bool causal, double scale) {
  Tensor out = at::empty(q.sizes(), q.options());
  Tensor lse = at::empty({shape.batch, shape.heads, shape.num_queries}, q.options().dtype(at::kFloat));
  if (shape.num_queries == 0 || shape.batch * shape.heads == 0) return {out, lse};
  const MaskTensors mask = prepare_mask(launch, shape, causal, seq_lens, agent_ids, agent_bitmask);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_attention_cuda", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      using T = typename DeviceType<scalar_t>::type;
      ForwardArgs<T> args{};
      args.q = reinterpret_cast<const T*>(q.data_ptr<scalar_t>());
      args.k = reinterpret_cast<const T*>(k.data_ptr<scalar_t>());
      args.v = reinterpret_cast<const T*>(v.data_ptr<scalar_t>());
      args.out = reinterpret_cast<T*>(out.data_ptr<scalar_t>());
      args.lse = lse.data_ptr<float>();
      args.qs = strides_of(q);
      args.ks = strides_of(k);
      args.vs = strides_of(v);
      args.head_dim = static_cast<int>(shape.head_dim);
      args.scale = static_cast<float>(scale);
      args.mask = mask.params;
      dispatch_head_dim(shape.head_dim, [&](auto hd) { run_forward<T, decltype(hd)::value>(launch, args, shape.batch * shape.heads); });
    }
  });
  return {out, lse};
}

// (dq, dk, dv) of validated inputs; lse is float32 and contiguous, delta = rowsum(dO * O) - grad_lse.
template <typename Launcher>
std::tuple<Tensor, Tensor, Tensor> launch_backward(const Launcher& launch, const Tensor& grad_out, const Tensor& q,
                                                   const Tensor& k, const Tensor& v, const Tensor& lse,
                                                   const Tensor& delta, const AttentionShape& shape,
                                                   const OptionalTensor& seq_lens, const OptionalTensor& agent_ids,
                                                   const OptionalTensor& agent_bitmask, bool causal, double scale) {
  BackwardOutputs grads = allocate_backward_outputs(shape, q, k, v);
  if (grads.done) return grads.tuple();
  const MaskTensors mask = prepare_mask(launch, shape, causal, seq_lens, agent_ids, agent_bitmask);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_attention_backward_cuda", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      using T = typename DeviceType<scalar_t>::type;
      BackwardArgs<T> args{};
      args.q = reinterpret_cast<const T*>(q.data_ptr<scalar_t>());
      args.k = reinterpret_cast<const T*>(k.data_ptr<scalar_t>());
      args.v = reinterpret_cast<const T*>(v.data_ptr<scalar_t>());
      args.grad_out = reinterpret_cast<const T*>(grad_out.data_ptr<scalar_t>());
      args.lse = lse.data_ptr<float>();
      args.delta = delta.data_ptr<float>();
      args.grad_q = reinterpret_cast<T*>(grads.grad_q.data_ptr<scalar_t>());
      args.grad_k = reinterpret_cast<T*>(grads.grad_k.data_ptr<scalar_t>());
      args.grad_v = reinterpret_cast<T*>(grads.grad_v.data_ptr<scalar_t>());
      args.qs = strides_of(q);
      args.ks = strides_of(k);
      args.vs = strides_of(v);
      args.gs = strides_of(grad_out);
      args.head_dim = static_cast<int>(shape.head_dim);
      args.scale = static_cast<float>(scale);
      args.mask = mask.params;
      dispatch_head_dim(shape.head_dim, [&](auto hd) { run_backward<T, decltype(hd)::value>(launch, args, shape.batch * shape.heads); });
    }
  });
  return grads.tuple();
}

}  // namespace
}  // namespace agentfast
