// Kernels of agentfast::masked_attention on CUDA, in the FlashAttention-2 design, and the host
// code that prepares and launches them through a Launcher.
//
// fp16 / bf16 (tensor cores: mma.sync.m16n8k16, fp32 accumulation):
//   forward_kernel  one CTA per (query tile, batch*head); each warp owns 16 or 32 query rows.
//                   Q fragments are loaded once per query tile (ldmatrix) and stay in registers
//                   at head dim 128 (16 rows a warp); at head dim 64 a warp owns 32 rows and
//                   re-reads its Q fragments per key tile (8 ldmatrix), which keeps the kernel
//                   within 255 registers without spills. S = Q K^T, the online softmax (row max
//                   and sum by warp shuffles within a quad, exp2 with the scale folded in) and P
//                   stay in registers: the S accumulators are rounded to 16 bits in place and
//                   become the A operand of P V without touching shared memory. O accumulates in
//                   registers.
//   dq_kernel       one CTA per (query tile, batch*head): S, dP = dO V^T, P and dS in registers,
//                   dQ += dS K; Q and dO fragments in registers (head dim <= 128).
//   dkdv_kernel     one CTA per (key tile, batch*kv head); each warp owns 16 keys: S^T = K Q^T,
//                   dP^T = V dO^T, dV += P^T dO, dK += dS^T Q, over the query tiles of every query
//                   head that reads this kv head (grouped-query attention: no atomics, a fixed
//                   order, so reruns are bitwise identical). K and V fragments stay in registers
//                   at head dim 64. At head dim 256, dK/dV of the 256 columns would not fit in
//                   registers: the grid covers the columns in two halves of 128, each CTA
//                   recomputing S and dP for its half.
//   K/V tiles (forward, dQ) and Q/dO tiles (dK/dV) stream through two shared-memory stages with
//   cp.async: the copy of the next tile runs while the current one is computed; one barrier per
//   tile. Rows are padded by 16 bytes, so ldmatrix reads hit 8 different bank groups.
// fp32 (no tensor-core format meets the fp32 accuracy contract; tf32 does not): the same
//   kernels, tiles, pipeline and register-resident accumulators, with the products computed by
//   FMAs from shared memory (simt_abt / simt_ab) and P or dS passed to the second product
//   through a per-warp shared scratch.
//
// Tile skipping: per query tile, the list of key tiles to visit, partial ones (the mask decides
// per element) before full ones (no mask); per key tile, the list of query tiles, for dK/dV.
// The layout is FlexAttention's BlockMask (counts plus indices). tile_list_kernel builds the
// lists from per-16-row agent summaries (tile_summaries_kernel) with the rule of mask_rule.h:
// empty tiles are never loaded. Each kernel walks its list in two loops (visit_tiles): partial
// tiles, then full tiles, whose loop has no mask code, loads no mask data and no branch around
// the loads; the double-buffered pipeline carries over from one loop to the next.
//
// Templates are instantiated per dtype (3) x head-dim bucket (64, 128, 256) only; masking
// options are runtime flags, to keep compile time small.
//
// The includer provides the CUDA vocabulary: masked_attention_cuda.cu the real one (nvcc),
// tests/cuda_emulation the CPU emulation that runs these same kernels in the CPU-only test
// suite. Either way it defines, before including this file, __half, __nv_bfloat16,
// __float2half_rn, __float2bfloat16_rn, dim3 and the thread/block built-ins, and
// dynamic_shared_memory() (the kernel's extern __shared__ array); warp_primitives.cuh maps the
// tensor-core and copy instructions. A Launcher is callable as
// launch(kernel, grid, threads, shared_bytes, kernel arguments...).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "mask_rule.h"
#include "masked_attention.h"
#include "warp_primitives.cuh"

namespace agentfast {
namespace {

constexpr int kGranule = 16;  // rows per agent summary entry
constexpr float kInf = __builtin_huge_valf();
constexpr float kLog2e = 1.4426950408889634f;

// fp32 -> element conversion (torch builds with __CUDA_NO_HALF_CONVERSIONS__, so spell it out).
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__host__ __device__ constexpr size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }

// ---------------------------------------------------------------------------------------
// Parameters.

struct Strides4 {
  int64_t b, h, n, d;
};

// A [B, H, N, D] input as the kernels read it.
template <typename T>
struct InputTensor {
  const T* data;
  Strides4 strides;
  bool vector;  // rows start 16-byte aligned with a contiguous head dim: cp.async in 16-byte chunks

  __device__ __forceinline__ const T* rows(int b, int h, int first) const {
    return data + b * strides.b + h * strides.h + first * strides.n;
  }
};

struct MaskParams {
  int batch, heads, kv_heads, group, num_queries, num_keys, offset;
  bool causal, has_agents;
  const int64_t* seq_lens;     // [B] or null
  const int32_t* agent_ids;    // [B, agent_stride]: agent of each key
  const uint64_t* key_bits;    // [B, sees_stride]: the agent of each key as a one-hot bit
  const uint64_t* query_sees;  // [B, sees_stride]: visibility row of each query's agent
  int agent_stride, sees_stride;  // sees_stride covers Nq and Nk

  __device__ __forceinline__ int key_end(int b) const {
    if (seq_lens == nullptr) return num_keys;
    const int64_t len = seq_lens[b];
    return static_cast<int>(len < 0 ? 0 : (len > num_keys ? num_keys : len));
  }
};

// FlexAttention's BlockMask layout: per (batch, row tile), the number of partial and of full
// column tiles, and their indices (partial ones first).
struct TileList {
  const int32_t* counts;   // [B, rows, 2]
  const int32_t* indices;  // [B, rows, cols]
  int rows, cols;
};

// The column tiles one CTA visits: `passes` times over the same list (the query heads of a kv
// head, for dK/dV), the partial tiles of every pass first (partial_visits of them), then the
// full ones. The kernels walk them in two loops: the second, over full tiles, holds no mask
// code and loads no mask data, and the K/V (Q/dO) pipeline runs on across the two.
struct Visits {
  const int32_t* index;
  int partial, listed, passes, partial_visits, total;

  __device__ __forceinline__ Visits(const TileList& list, int b, int row, int passes_) : passes(passes_) {
    const int64_t entry = static_cast<int64_t>(b) * list.rows + row;
    index = list.indices + entry * list.cols;
    partial = list.counts[2 * entry];
    listed = partial + list.counts[2 * entry + 1];
    partial_visits = partial * passes;
    total = listed * passes;
  }
};

// Where a walk over the visits is: the position in the list and, with several passes, the pass
// and the range it walks (the partial range [0, partial) of every pass, then the full range
// [partial, listed) of every pass); advanced without divisions. One pass (forward, dQ) walks
// the list in order: the position alone, a register for each cursor.
template <bool MULTI_PASS>
struct VisitCursor;

template <>
struct VisitCursor<false> {
  static constexpr int pass = 0;
  int position = 0;

  __device__ __forceinline__ explicit VisitCursor(const Visits&) {}
  __device__ __forceinline__ void advance(const Visits&) { ++position; }
  __device__ __forceinline__ int tile(const Visits& visits) const { return visits.index[position]; }
  __device__ __forceinline__ bool partial(const Visits& visits) const { return position < visits.partial; }
};

template <>
struct VisitCursor<true> {
  int pass = 0, position = 0, begin = 0, end;

  __device__ __forceinline__ explicit VisitCursor(const Visits& visits)
      : end(visits.partial > 0 ? visits.partial : visits.listed) {}

  __device__ __forceinline__ void advance(const Visits& visits) {
    if (++position < end) return;
    position = begin;
    if (++pass < visits.passes) return;
    pass = 0;  // the partial range of every pass is done: the full ranges follow
    begin = position = visits.partial;
    end = visits.listed;
  }
  __device__ __forceinline__ int tile(const Visits& visits) const { return visits.index[position]; }
  __device__ __forceinline__ bool partial(const Visits& visits) const { return position < visits.partial; }
};

// The loop over the visits, in two runs: step(visit, std::true_type) for the partial tiles,
// step(visit, std::false_type) for the full ones; `current` follows the visit.
template <typename Cursor, typename Step>
__device__ __forceinline__ void visit_tiles(const Visits& visits, Cursor& current, const Step& step) {
  int visit = 0;
  for (; visit < visits.partial_visits; ++visit, current.advance(visits)) step(visit, std::true_type{});
  for (; visit < visits.total; ++visit, current.advance(visits)) step(visit, std::false_type{});
}

template <typename T>
struct ForwardArgs {
  InputTensor<T> q, k, v;
  T* out;      // [B, H, Nq, D] contiguous
  float* lse;  // [B, H, Nq]
  int head_dim;
  float scale;
  MaskParams mask;
  TileList tiles;  // per query tile: key tiles
};

template <typename T>
struct BackwardArgs {
  InputTensor<T> q, k, v, grad_out;
  const float* lse_log2;  // [B * H, row_stride]: lse * log2(e), +inf where a row sees no key
  const float* delta;     // [B * H, row_stride]: rowsum(dO * O) - grad_lse
  int row_stride;
  T* grad_q;  // [B, H, Nq, D] contiguous
  T* grad_k;  // [B, Hkv, Nk, D] contiguous
  T* grad_v;
  int head_dim;
  float scale;
  MaskParams mask;
  TileList query_tiles;  // per query tile: key tiles (dQ)
  TileList key_tiles;    // per key tile: query tiles (dK/dV)
};

// The (batch, head) of this CTA. B * H is spread over grid.y and grid.z because grid.y alone
// stops at 65535 (B = 8192 environments x 8 heads is past it); a few trailing CTAs of the
// rounded-up grid have no (batch, head) and return before touching memory.
__device__ __forceinline__ int batch_head_of_block() { return blockIdx.y + blockIdx.z * gridDim.y; }

// ---------------------------------------------------------------------------------------
// Mask summaries and tile lists.

__device__ __forceinline__ int agent_at(const MaskParams& m, int b, int key) {
  return m.agent_ids[static_cast<int64_t>(b) * m.agent_stride + key];
}

struct SummaryArrays {
  uint64_t* key_agents;  // [B, key granules]: agents present among 16 keys
  uint64_t* query_any;   // [B, query granules]: OR of the visibility rows of 16 queries
  uint64_t* query_all;   // [B, query granules]: AND of the same
  uint64_t* query_sees;  // [B, sees_stride]
  uint64_t* key_bits;    // [B, sees_stride]
  const int64_t* bitmask;  // [B, A]
  int num_agents, key_granules, query_granules;
};

__global__ void tile_summaries_kernel(MaskParams m, SummaryArrays s) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t key_entries = static_cast<int64_t>(m.batch) * s.key_granules;
  const int64_t query_entries = static_cast<int64_t>(m.batch) * s.query_granules;
  if (idx < key_entries) {
    const int b = static_cast<int>(idx / s.key_granules), g = static_cast<int>(idx % s.key_granules);
    uint64_t present = 0;
    for (int j = g * kGranule; j < min((g + 1) * kGranule, m.num_keys); ++j) {
      const uint64_t bit = mask_rule::agent_bit(agent_at(m, b, j));
      s.key_bits[static_cast<int64_t>(b) * m.sees_stride + j] = bit;
      present |= bit;
    }
    s.key_agents[idx] = present;
  } else if (idx < key_entries + query_entries) {
    const int64_t entry = idx - key_entries;
    const int b = static_cast<int>(entry / s.query_granules), g = static_cast<int>(entry % s.query_granules);
    mask_rule::QuerySummary summary;
    for (int i = g * kGranule; i < min((g + 1) * kGranule, m.num_queries); ++i) {
      const uint64_t sees = static_cast<uint64_t>(s.bitmask[static_cast<int64_t>(b) * s.num_agents + agent_at(m, b, m.offset + i)]);
      s.query_sees[static_cast<int64_t>(b) * m.sees_stride + i] = sees;
      mask_rule::add_query(summary, sees);
    }
    s.query_any[entry] = summary.any;
    s.query_all[entry] = summary.all;
  }
}

// Which tiles a list covers: rows of `row_tile` queries against columns of `col_tile` keys, or
// rows of keys against columns of queries (the dK/dV list).
struct TileListSpec {
  bool rows_are_queries;
  int row_tile, col_tile, rows, cols;
};

__device__ __forceinline__ mask_rule::TileKind classify(const MaskParams& m, const SummaryArrays& s, int b,
                                                        int q_first, int q_tile, int k_first, int k_tile) {
  const int q_last = min(q_first + q_tile, m.num_queries) - 1;
  const int k_stop = min(k_first + k_tile, m.num_keys);
  uint64_t key_agents = 0;
  mask_rule::QuerySummary queries;
  if (m.has_agents) {
    for (int g = k_first / kGranule; g * kGranule < k_stop; ++g) key_agents |= s.key_agents[static_cast<int64_t>(b) * s.key_granules + g];
    for (int g = q_first / kGranule; g * kGranule <= q_last; ++g) {
      const int64_t entry = static_cast<int64_t>(b) * s.query_granules + g;
      mask_rule::merge(queries, mask_rule::QuerySummary{s.query_any[entry], s.query_all[entry]});
    }
  }
  return mask_rule::classify_tile(m.causal, m.offset + q_first, m.offset + q_last, k_first, k_first + k_tile - 1,
                                  m.key_end(b), m.has_agents, key_agents, queries);
}

__global__ void tile_list_kernel(MaskParams m, SummaryArrays s, TileListSpec spec, int32_t* counts, int32_t* indices) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<int64_t>(m.batch) * spec.rows) return;
  const int b = static_cast<int>(idx / spec.rows), row = static_cast<int>(idx % spec.rows);
  int32_t* out = indices + idx * spec.cols;
  int listed[2] = {0, 0};
  // Two passes, partial tiles first: visiting them first keeps the full ones, the common case,
  // in one run at the end of the loop.
  for (int pass = 0; pass < 2; ++pass) {
    const auto wanted = pass == 0 ? mask_rule::TileKind::kPartial : mask_rule::TileKind::kFull;
    for (int col = 0; col < spec.cols; ++col) {
      const mask_rule::TileKind kind =
          spec.rows_are_queries
              ? classify(m, s, b, row * spec.row_tile, spec.row_tile, col * spec.col_tile, spec.col_tile)
              : classify(m, s, b, col * spec.col_tile, spec.col_tile, row * spec.row_tile, spec.row_tile);
      if (kind == wanted) {
        out[listed[0] + listed[1]] = col;
        ++listed[pass];
      }
    }
  }
  counts[2 * idx] = listed[0];
  counts[2 * idx + 1] = listed[1];
}

// ---------------------------------------------------------------------------------------
// Shared-memory tiles.

// The element-by-element copy of load_tile (strided or unaligned inputs), out of line: its loop
// stays out of the kernels' main loops.
template <typename T, int ROWS, int HD, int LD, int THREADS>
__device__ AGENTFAST_NOINLINE void copy_tile_elements(T* dst, const T* base, int64_t row_stride, int64_t col_stride,
                                                      int valid_rows, int head_dim) {
  for (int idx = threadIdx.x; idx < ROWS * HD; idx += THREADS) {
    const int r = idx / HD, c = idx % HD;
    dst[r * LD + c] = r < valid_rows && c < head_dim ? base[r * row_stride + c * col_stride] : from_float<T>(0.0f);
  }
}

// One thread's share of copying ROWS x HD tiles of a [B, H, N, D] input into shared memory
// (pitch LD), in 16-byte cp.async chunks (the data lands at the next cp_async_wait) where the
// input allows it, element by element otherwise. A thread's chunks sit in one column, rows
// THREADS / (HD / chunk) apart: their offsets are fixed, so a tile costs a base address and, per
// chunk, an add, a compare and the copy. Rows past the valid ones and columns past head_dim are
// zero.
template <typename T, int ROWS, int HD, int LD, int THREADS>
struct TileCopier {
  static constexpr int kPerChunk = 16 / static_cast<int>(sizeof(T)), kRowChunks = HD / kPerChunk;
  static constexpr int kRowsPerStep = THREADS / kRowChunks, kSteps = (ROWS + kRowsPerStep - 1) / kRowsPerStep;
  static_assert(THREADS % kRowChunks == 0, "a thread's chunks share a column");
  int row0, col, head_dim;

  __device__ __forceinline__ explicit TileCopier(int head_dim_) : head_dim(head_dim_) {
    row0 = static_cast<int>(threadIdx.x) / kRowChunks;
    col = (static_cast<int>(threadIdx.x) % kRowChunks) * kPerChunk;
  }

  // Rows [first, first + valid_rows) of (b, h).
  __device__ __forceinline__ void copy(T* dst, const InputTensor<T>& src, int b, int h, int first, int valid_rows) const {
    const T* head = src.data + b * src.strides.b + h * src.strides.h;
    if (!src.vector) {
      copy_tile_elements<T, ROWS, HD, LD, THREADS>(dst, head + first * src.strides.n, src.strides.n, src.strides.d,
                                                   valid_rows, head_dim);
      return;
    }
    const int rows = col < head_dim ? valid_rows - row0 : 0;  // this thread's chunks with data: r < rows
    const T* from = head + (first + row0) * src.strides.n + col;
    T* to = dst + row0 * LD + col;
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
      if (ROWS % kRowsPerStep != 0 && row0 + step * kRowsPerStep >= ROWS) break;
      cp_async_16_or_zero(to + step * kRowsPerStep * LD, from + step * kRowsPerStep * src.strides.n,
                          step * kRowsPerStep < rows);
    }
  }
};

// COUNT values of a per-row array (agents, lse, delta, sees) into shared memory by cp.async; the
// source must be 16-byte aligned (the host pads these arrays' rows); values past `valid` are 0.
template <typename E, int COUNT, int THREADS>
__device__ __forceinline__ void load_values(E* dst, const E* src, int valid) {
  constexpr int kPerChunk = 16 / static_cast<int>(sizeof(E)), kChunks = COUNT / kPerChunk;
  static_assert(COUNT % kPerChunk == 0 && kChunks <= THREADS, "per-row arrays move in one step of whole chunks");
  const int idx = threadIdx.x;
  if (idx < kChunks) {
    const int elements = max(0, min(kPerChunk, valid - idx * kPerChunk));
    cp_async_16(dst + idx * kPerChunk, elements > 0 ? src + idx * kPerChunk : src, elements * static_cast<int>(sizeof(E)));
  }
}

// ---------------------------------------------------------------------------------------
// Warp-level products. A warp owns MT x 16 rows; accumulators are m16n8 fragments
// acc[mt][nt][i]: row 16 mt + g + 8 (i / 2), column 8 nt + 2t + i % 2 (g = lane / 4, t = lane % 4).

__device__ __forceinline__ int lane_id() { return threadIdx.x & 31; }

// Tensor cores: acc += A B^T. A (MT x 16 rows, K columns) comes from a_frag(mt, kk, fragment),
// B^T is NT x 8 rows of K elements in shared memory (row-major, pitch ldb), read with ldmatrix.
template <typename T, int MT, int NT, int K, typename AFragment>
__device__ __forceinline__ void mma_abt(float (&acc)[MT][NT][4], const AFragment& a_frag, const T* b, int ldb) {
  static_assert(NT % 2 == 0 && K % 16 == 0, "whole 16 x 16 B tiles");
  const int lane = lane_id();
  // Matrix j = lane / 8 of each x4: rows 8 (j / 2) + lane % 8 of a 16-row slab, columns 8 (j % 2):
  // registers {0, 1} = B of n-tile nt, {2, 3} = B of n-tile nt + 1.
  const T* b_lane = b + ((lane / 16) * 8 + lane % 8) * ldb + ((lane / 8) % 2) * 8;
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) a_frag(mt, kk, a[mt]);
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t bf[4];
      ldmatrix_x4(bf, b_lane + nt * 8 * ldb + kk * 16);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_m16n8k16<T>(acc[mt][nt], a[mt], bf[0], bf[1]);
        mma_m16n8k16<T>(acc[mt][nt + 1], a[mt], bf[2], bf[3]);
      }
    }
  }
}

// Tensor cores: acc += A B. A (MT x 16 rows, 16 KSTEPS columns) from a_frag; B is 16 KSTEPS rows
// of NT x 8 elements in shared memory (row-major, pitch ldb), read with ldmatrix .trans.
template <typename T, int MT, int NT, int KSTEPS, typename AFragment>
__device__ __forceinline__ void mma_ab(float (&acc)[MT][NT][4], const AFragment& a_frag, const T* b, int ldb) {
  static_assert(NT % 2 == 0, "whole 16 x 16 B tiles");
  const int lane = lane_id();
  // Matrix j = lane / 8: rows 8 (j % 2) + lane % 8, columns 8 (j / 2): registers {0, 1} = B of
  // n-tile nt, {2, 3} = B of n-tile nt + 1.
  const T* b_lane = b + (((lane / 8) % 2) * 8 + lane % 8) * ldb + (lane / 16) * 8;
#pragma unroll
  for (int kk = 0; kk < KSTEPS; ++kk) {
    uint32_t a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) a_frag(mt, kk, a[mt]);
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2) {
      uint32_t bf[4];
      ldmatrix_x4_trans(bf, b_lane + kk * 16 * ldb + nt * 8);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        mma_m16n8k16<T>(acc[mt][nt], a[mt], bf[0], bf[1]);
        mma_m16n8k16<T>(acc[mt][nt + 1], a[mt], bf[2], bf[3]);
      }
    }
  }
}

// The A fragment of rows [16 mt, 16 mt + 16) x columns [16 kk, 16 kk + 16) of a row-major shared
// tile (x4: matrices rows 0-7 / 8-15 at columns 0 / 8 = registers 0..3).
template <typename T>
__device__ __forceinline__ void load_a_fragment(uint32_t (&f)[4], const T* a, int lda, int mt, int kk) {
  const int lane = lane_id();
  ldmatrix_x4(f, a + (16 * mt + lane % 16) * lda + 16 * kk + (lane / 16) * 8);
}

// The A fragment of columns [16 kk, 16 kk + 16) of accumulators (n-tiles 2 kk and 2 kk + 1),
// rounded to T: the accumulator layout of two n8 tiles is the A layout of one k16 step.
template <typename T, int NT>
__device__ __forceinline__ void accumulator_to_a(uint32_t (&f)[4], const float (&acc)[NT][4], int kk) {
  f[0] = pack_pair<T>(acc[2 * kk][0], acc[2 * kk][1]);
  f[1] = pack_pair<T>(acc[2 * kk][2], acc[2 * kk][3]);
  f[2] = pack_pair<T>(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
  f[3] = pack_pair<T>(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}

// fp32: acc += A B^T with A (the warp's MT x 16 rows, K columns, pitch lda) and B^T (NT x 8 rows,
// pitch ldb) in shared memory; each lane computes its own accumulator elements.
template <int MT, int NT, int K>
__device__ __forceinline__ void simt_abt(float (&acc)[MT][NT][4], const float* a, int lda, const float* b, int ldb) {
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    float av[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      av[mt][0] = a[(16 * mt + g) * lda + k];
      av[mt][1] = a[(16 * mt + g + 8) * lda + k];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const float b0 = b[(8 * nt + 2 * t) * ldb + k], b1 = b[(8 * nt + 2 * t + 1) * ldb + k];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        acc[mt][nt][0] = fmaf(av[mt][0], b0, acc[mt][nt][0]);
        acc[mt][nt][1] = fmaf(av[mt][0], b1, acc[mt][nt][1]);
        acc[mt][nt][2] = fmaf(av[mt][1], b0, acc[mt][nt][2]);
        acc[mt][nt][3] = fmaf(av[mt][1], b1, acc[mt][nt][3]);
      }
    }
  }
}

// fp32: acc += A B with A (the warp's rows, K columns) and B (K rows of NT x 8, pitch ldb) in
// shared memory.
template <int MT, int NT, int K>
__device__ __forceinline__ void simt_ab(float (&acc)[MT][NT][4], const float* a, int lda, const float* b, int ldb) {
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
#pragma unroll 4
  for (int k = 0; k < K; ++k) {
    float av[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      av[mt][0] = a[(16 * mt + g) * lda + k];
      av[mt][1] = a[(16 * mt + g + 8) * lda + k];
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const float b0 = b[k * ldb + 8 * nt + 2 * t], b1 = b[k * ldb + 8 * nt + 2 * t + 1];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        acc[mt][nt][0] = fmaf(av[mt][0], b0, acc[mt][nt][0]);
        acc[mt][nt][1] = fmaf(av[mt][0], b1, acc[mt][nt][1]);
        acc[mt][nt][2] = fmaf(av[mt][1], b0, acc[mt][nt][2]);
        acc[mt][nt][3] = fmaf(av[mt][1], b1, acc[mt][nt][3]);
      }
    }
  }
}

// fp32: the warp's accumulators into its rows of a shared scratch (pitch ld), for a product
// that needs them as whole rows.
template <int MT, int NT>
__device__ __forceinline__ void store_accumulators(float* dst, int ld, const float (&acc)[MT][NT][4]) {
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) dst[(16 * mt + g + 8 * (i / 2)) * ld + 8 * nt + 2 * t + i % 2] = acc[mt][nt][i];
    }
  }
}

template <int MT, int NT>
__device__ __forceinline__ void zero(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
    }
  }
}

// Stores the warp's accumulators (rows = `first_row` + fragment rows of a [rows, head_dim]
// row-major output, columns offset by `col0`) times `factor`, inside the valid rows and columns.
template <typename T, int MT, int NT>
__device__ __forceinline__ void store_rows(T* out, int64_t first_row, int valid_rows, int head_dim, int col0,
                                           const float (&acc)[MT][NT][4], const float (&factor)[MT][2]) {
  const int lane = lane_id(), g = lane / 4, t = lane % 4;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = 16 * mt + g + 8 * half;
      if (r >= valid_rows) continue;
      T* row = out + (first_row + r) * head_dim;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int c = col0 + 8 * nt + 2 * t;
        if (c < head_dim) row[c] = from_float<T>(acc[mt][nt][2 * half] * factor[mt][half]);
        if (c + 1 < head_dim) row[c + 1] = from_float<T>(acc[mt][nt][2 * half + 1] * factor[mt][half]);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Forward.

template <typename T, int HD, int BM, int BN, int WARPS>
struct ForwardTile {
  static constexpr bool kTensorCores = !std::is_same_v<T, float>;
  static constexpr int kThreads = WARPS * 32, kMT = BM / (16 * WARPS);
  static constexpr int kLd = HD + 16 / static_cast<int>(sizeof(T)), kLdP = BN + 4;
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = align128(kQ + sizeof(T) * BM * kLd);              // 2 stages
  static constexpr size_t kV = align128(kK + 2 * sizeof(T) * BN * kLd);          // 2 stages
  static constexpr size_t kKeyBits = align128(kV + 2 * sizeof(T) * BN * kLd);    // 2 stages
  static constexpr size_t kP = align128(kKeyBits + 2 * sizeof(uint64_t) * BN);   // fp32 only
  static constexpr size_t kBytes = align128(kP + (kTensorCores ? 0 : sizeof(float) * BM * kLdP));
  static_assert(BM % (16 * WARPS) == 0 && BN % 16 == 0 && HD % 16 == 0, "tile sizes");
};

// The lane's query rows (MT m-tiles x 2 halves: rows g and g + 8): the first key each may not
// attend for causality or padding (mask_rule::key_limit), and the agents each sees.
template <int MT>
struct QueryRows {
  int limit[MT][2];
  uint64_t sees[MT][2];

  __device__ __forceinline__ QueryRows(const MaskParams& m, int b, int q_first, int warp_row0) {
    const int g = lane_id() / 4, key_end = m.key_end(b);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int query = q_first + warp_row0 + 16 * mt + g + 8 * half;
        limit[mt][half] = static_cast<int>(mask_rule::key_limit(m.causal, m.offset + query, key_end));
        sees[mt][half] = m.has_agents && query < m.num_queries
                             ? m.query_sees[static_cast<int64_t>(b) * m.sees_stride + query]
                             : 0;
      }
    }
  }

  // Scores of the pairs mask_rule::allowed forbids become -inf: keys [k_first, k_first + 8 NT),
  // their one-hot agent bits in shared memory. The lane's key columns are 8 nt + 2t + e, so
  // key < limit is the constant comparison 8 nt + e < limit - k_first - 2t.
  template <bool AGENTS, int NT>
  __device__ __forceinline__ void mask(float (&s)[MT][NT][4], int k_first, const uint64_t* key_bits) const {
    const int t = lane_id() % 4;
    int below[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      below[mt][0] = limit[mt][0] - k_first - 2 * t;
      below[mt][1] = limit[mt][1] - k_first - 2 * t;
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      uint64_t bits[2] = {0, 0};
      if constexpr (AGENTS) {
        bits[0] = key_bits[8 * nt + 2 * t];
        bits[1] = key_bits[8 * nt + 2 * t + 1];
      }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int half = 0; half < 2; ++half) {
            const bool ok = 8 * nt + e < below[mt][half] && (!AGENTS || mask_rule::sees_bit(sees[mt][half], bits[e]));
            if (!ok) s[mt][nt][2 * half + e] = -kInf;
          }
        }
      }
    }
  }

  template <int NT>
  __device__ __forceinline__ void mask(float (&s)[MT][NT][4], int k_first, bool has_agents, const uint64_t* key_bits) const {
    if (has_agents) {
      mask<true>(s, k_first, key_bits);
    } else {
      mask<false>(s, k_first, key_bits);
    }
  }
};

// The A fragment of the warp's rows from registers (when the kernel keeps them there) or from
// a shared tile.
template <typename T, int MT, int KSTEPS, bool IN_REGISTERS>
struct RowFragments {
  uint32_t frag[IN_REGISTERS ? MT : 1][IN_REGISTERS ? KSTEPS : 1][4];
  const T* rows;
  int ld;

  __device__ __forceinline__ RowFragments(const T* rows_, int ld_) : rows(rows_), ld(ld_) {
    if constexpr (IN_REGISTERS) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) load_a_fragment(frag[mt][kk], rows, ld, mt, kk);
      }
    }
  }

  __device__ __forceinline__ void operator()(int mt, int kk, uint32_t (&f)[4]) const {
    if constexpr (IN_REGISTERS) {
#pragma unroll
      for (int r = 0; r < 4; ++r) f[r] = frag[mt][kk][r];
    } else {
      load_a_fragment(f, rows, ld, mt, kk);
    }
  }
};

template <typename T, int HD, int BM, int BN, int WARPS, bool Q_IN_REGISTERS, int MIN_BLOCKS>
__global__ void __launch_bounds__(WARPS * 32, MIN_BLOCKS) forward_kernel(const ForwardArgs<T> args) {
  using Tile = ForwardTile<T, HD, BM, BN, WARPS>;
  constexpr int MT = Tile::kMT, NS = BN / 8, NO = HD / 8, LD = Tile::kLd, THREADS = Tile::kThreads;
  unsigned char* smem = dynamic_shared_memory();
  T* s_q = reinterpret_cast<T*>(smem + Tile::kQ);
  T* s_k = reinterpret_cast<T*>(smem + Tile::kK);
  T* s_v = reinterpret_cast<T*>(smem + Tile::kV);
  uint64_t* s_key_bits = reinterpret_cast<uint64_t*>(smem + Tile::kKeyBits);
  float* s_p = reinterpret_cast<float*>(smem + Tile::kP);

  const MaskParams& m = args.mask;
  const int bh = batch_head_of_block();
  if (bh >= m.batch * m.heads) return;  // uniform over the CTA, before any barrier
  const int b = bh / m.heads, h = bh % m.heads, kv_head = h / m.group;
  const int q_first = blockIdx.x * BM, q_count = min(BM, m.num_queries - q_first);
  const Visits visits(args.tiles, b, blockIdx.x, 1);
  const int warp = threadIdx.x / 32, lane = lane_id();
  const int warp_row0 = warp * MT * 16;

  const TileCopier<T, BN, HD, LD, THREADS> key_copier(args.head_dim);
  // K and V of the tile at `at`, and the keys' agent bits where that tile is partial (only
  // partial tiles apply the mask).
  const auto load_keys = [&](const VisitCursor<false>& at, int stage, bool maybe_partial) {
    const int k_first = at.tile(visits) * BN, k_valid = min(BN, m.num_keys - k_first);
    key_copier.copy(s_k + stage * BN * LD, args.k, b, kv_head, k_first, k_valid);
    key_copier.copy(s_v + stage * BN * LD, args.v, b, kv_head, k_first, k_valid);
    if (maybe_partial && m.has_agents && at.partial(visits)) {
      load_values<uint64_t, BN, THREADS>(s_key_bits + stage * BN, m.key_bits + static_cast<int64_t>(b) * m.sees_stride + k_first, k_valid);
    }
  };

  TileCopier<T, BM, HD, LD, THREADS>(args.head_dim).copy(s_q, args.q, b, h, q_first, q_count);
  VisitCursor<false> current(visits), upcoming(visits);  // the tile computed now, the next one to load
  if (visits.total > 0) {
    load_keys(upcoming, 0, true);
    upcoming.advance(visits);
  }
  cp_async_commit();
  const QueryRows<MT> rows(m, b, q_first, warp_row0);
  float row_max[MT][2], row_sum[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    row_max[mt][0] = row_max[mt][1] = -kInf;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }
  float o[MT][NO][4];
  zero(o);
  cp_async_wait<0>();
  __syncthreads();

  const T* q_warp = s_q + warp_row0 * LD;
  const RowFragments<T, MT, HD / 16, Tile::kTensorCores && Q_IN_REGISTERS> q_fragments(q_warp, LD);
  const float scale_log2 = args.scale * kLog2e;

  visit_tiles(visits, current, [&](int visit, auto partial_tile) {
    constexpr bool kPartial = decltype(partial_tile)::value;
    const int stage = visit & 1;
    if (visit > 0) {
      cp_async_wait<0>();  // this tile's copies (issued one iteration ago) have landed
      __syncthreads();     // ... for every thread; and the other stage is no longer read
    }
    if (visit + 1 < visits.total) {
      load_keys(upcoming, stage ^ 1, kPartial);  // a full tile is followed by full tiles only
      upcoming.advance(visits);
    }
    cp_async_commit();
    const T* k_tile = s_k + stage * BN * LD;
    const T* v_tile = s_v + stage * BN * LD;

    float s[MT][NS][4];
    zero(s);
    if constexpr (Tile::kTensorCores) {
      mma_abt<T, MT, NS, HD>(s, q_fragments, k_tile, LD);
    } else {
      simt_abt<MT, NS, HD>(s, q_warp, LD, k_tile, LD);
    }
    if constexpr (kPartial) rows.mask(s, current.tile(visits) * BN, m.has_agents, s_key_bits + stage * BN);

    // Online softmax: the 4 lanes of a quad share each row.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float tile_max = -kInf;
#pragma unroll
        for (int nt = 0; nt < NS; ++nt) tile_max = fmaxf(tile_max, fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]));
        tile_max = fmaxf(tile_max, shuffle_xor(tile_max, 1));
        tile_max = fmaxf(tile_max, shuffle_xor(tile_max, 2));
        const float new_max = fmaxf(row_max[mt][half], tile_max);
        // A row that has seen no key yet keeps max -inf: exponents are taken against 0 so
        // that exp2(-inf) = 0 and never exp2(-inf - -inf).
        const float base = new_max == -kInf ? 0.0f : new_max * scale_log2;
        const float correction = exp2_approx(row_max[mt][half] * scale_log2 - base);
        row_max[mt][half] = new_max;
        float tile_sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float p = exp2_approx(s[mt][nt][2 * half + e] * scale_log2 - base);
            s[mt][nt][2 * half + e] = p;
            tile_sum += p;
          }
        }
        row_sum[mt][half] = row_sum[mt][half] * correction + tile_sum;
#pragma unroll
        for (int nt = 0; nt < NO; ++nt) {
          o[mt][nt][2 * half] *= correction;
          o[mt][nt][2 * half + 1] *= correction;
        }
      }
    }

    if constexpr (Tile::kTensorCores) {
      mma_ab<T, MT, NO, BN / 16>(o, [&](int mt, int kk, uint32_t (&f)[4]) { accumulator_to_a<T, NS>(f, s[mt], kk); },
                                 v_tile, LD);
    } else {
      float* p_warp = s_p + warp_row0 * Tile::kLdP;
      store_accumulators(p_warp, Tile::kLdP, s);
      __syncwarp();
      simt_ab<MT, NO, BN>(o, p_warp, Tile::kLdP, v_tile, LD);
      __syncwarp();
    }
  });
  cp_async_wait<0>();  // the empty group of the last iteration

  float inv_sum[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float total = row_sum[mt][half];
      total += shuffle_xor(total, 1);
      total += shuffle_xor(total, 2);
      inv_sum[mt][half] = total > 0.0f ? 1.0f / total : 0.0f;  // rows with no key return 0
      const int r = warp_row0 + 16 * mt + lane / 4 + 8 * half;
      if (lane % 4 == 0 && r < q_count) {
        args.lse[static_cast<int64_t>(bh) * m.num_queries + q_first + r] =
            total > 0.0f ? row_max[mt][half] * args.scale + logf(total) : -kInf;
      }
    }
  }
  store_rows<T, MT, NO>(args.out, static_cast<int64_t>(bh) * m.num_queries + q_first + warp_row0, q_count - warp_row0,
                        args.head_dim, 0, o, inv_sum);
}

// ---------------------------------------------------------------------------------------
// Backward, dQ: warps own 16 query rows; K/V tiles stream through shared memory.

template <typename T, int HD, int BM, int BN, int WARPS>
struct DqTile {
  static constexpr bool kTensorCores = !std::is_same_v<T, float>;
  static constexpr int kThreads = WARPS * 32;
  static constexpr int kLd = HD + 16 / static_cast<int>(sizeof(T)), kLdP = BN + 4;
  static constexpr size_t kQ = 0;
  static constexpr size_t kdO = align128(kQ + sizeof(T) * BM * kLd);
  static constexpr size_t kK = align128(kdO + sizeof(T) * BM * kLd);             // 2 stages
  static constexpr size_t kV = align128(kK + 2 * sizeof(T) * BN * kLd);          // 2 stages
  static constexpr size_t kKeyBits = align128(kV + 2 * sizeof(T) * BN * kLd);    // 2 stages
  static constexpr size_t kdS = align128(kKeyBits + 2 * sizeof(uint64_t) * BN);  // fp32 only
  static constexpr size_t kBytes = align128(kdS + (kTensorCores ? 0 : sizeof(float) * BM * kLdP));
  static_assert(BM == 16 * WARPS && BN % 16 == 0 && HD % 16 == 0, "tile sizes");
};

template <typename T, int HD, int BM, int BN, int WARPS, bool IN_REGISTERS, int MIN_BLOCKS>
__global__ void __launch_bounds__(WARPS * 32, MIN_BLOCKS) dq_kernel(const BackwardArgs<T> args) {
  using Tile = DqTile<T, HD, BM, BN, WARPS>;
  constexpr int NS = BN / 8, NO = HD / 8, LD = Tile::kLd, THREADS = Tile::kThreads;
  unsigned char* smem = dynamic_shared_memory();
  T* s_q = reinterpret_cast<T*>(smem + Tile::kQ);
  T* s_do = reinterpret_cast<T*>(smem + Tile::kdO);
  T* s_k = reinterpret_cast<T*>(smem + Tile::kK);
  T* s_v = reinterpret_cast<T*>(smem + Tile::kV);
  uint64_t* s_key_bits = reinterpret_cast<uint64_t*>(smem + Tile::kKeyBits);
  float* s_ds = reinterpret_cast<float*>(smem + Tile::kdS);

  const MaskParams& m = args.mask;
  const int bh = batch_head_of_block();
  if (bh >= m.batch * m.heads) return;
  const int b = bh / m.heads, h = bh % m.heads, kv_head = h / m.group;
  const int q_first = blockIdx.x * BM, q_count = min(BM, m.num_queries - q_first);
  const Visits visits(args.query_tiles, b, blockIdx.x, 1);
  const int warp = threadIdx.x / 32, g = lane_id() / 4;
  const int warp_row0 = warp * 16;

  const TileCopier<T, BN, HD, LD, THREADS> key_copier(args.head_dim);
  const auto load_keys = [&](const VisitCursor<false>& at, int stage, bool maybe_partial) {
    const int k_first = at.tile(visits) * BN, k_valid = min(BN, m.num_keys - k_first);
    key_copier.copy(s_k + stage * BN * LD, args.k, b, kv_head, k_first, k_valid);
    key_copier.copy(s_v + stage * BN * LD, args.v, b, kv_head, k_first, k_valid);
    if (maybe_partial && m.has_agents && at.partial(visits)) {
      load_values<uint64_t, BN, THREADS>(s_key_bits + stage * BN, m.key_bits + static_cast<int64_t>(b) * m.sees_stride + k_first, k_valid);
    }
  };

  const TileCopier<T, BM, HD, LD, THREADS> query_copier(args.head_dim);
  query_copier.copy(s_q, args.q, b, h, q_first, q_count);
  query_copier.copy(s_do, args.grad_out, b, h, q_first, q_count);
  VisitCursor<false> current(visits), upcoming(visits);
  if (visits.total > 0) {
    load_keys(upcoming, 0, true);
    upcoming.advance(visits);
  }
  cp_async_commit();
  const QueryRows<1> rows(m, b, q_first, warp_row0);
  float lse_log2[2], delta[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = warp_row0 + g + 8 * half;
    const int64_t at = static_cast<int64_t>(bh) * args.row_stride + q_first + r;
    lse_log2[half] = r < q_count ? args.lse_log2[at] : kInf;  // padding rows: P = 0
    delta[half] = r < q_count ? args.delta[at] : 0.0f;
  }
  float dq[1][NO][4];
  zero(dq);
  cp_async_wait<0>();
  __syncthreads();

  const T* q_warp = s_q + warp_row0 * LD;
  const T* do_warp = s_do + warp_row0 * LD;
  const RowFragments<T, 1, HD / 16, Tile::kTensorCores && IN_REGISTERS> q_fragments(q_warp, LD);
  const RowFragments<T, 1, HD / 16, Tile::kTensorCores && IN_REGISTERS> do_fragments(do_warp, LD);
  const float scale_log2 = args.scale * kLog2e;

  visit_tiles(visits, current, [&](int visit, auto partial_tile) {
    constexpr bool kPartial = decltype(partial_tile)::value;
    const int stage = visit & 1;
    if (visit > 0) {
      cp_async_wait<0>();
      __syncthreads();
    }
    if (visit + 1 < visits.total) {
      load_keys(upcoming, stage ^ 1, kPartial);
      upcoming.advance(visits);
    }
    cp_async_commit();
    const T* k_tile = s_k + stage * BN * LD;
    const T* v_tile = s_v + stage * BN * LD;

    float s[1][NS][4], dp[1][NS][4];
    zero(s);
    zero(dp);
    if constexpr (Tile::kTensorCores) {
      mma_abt<T, 1, NS, HD>(s, q_fragments, k_tile, LD);
      mma_abt<T, 1, NS, HD>(dp, do_fragments, v_tile, LD);
    } else {
      simt_abt<1, NS, HD>(s, q_warp, LD, k_tile, LD);
      simt_abt<1, NS, HD>(dp, do_warp, LD, v_tile, LD);
    }
    if constexpr (kPartial) rows.mask(s, current.tile(visits) * BN, m.has_agents, s_key_bits + stage * BN);
    // dS = P (dP - delta), in place of dP.
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float p = exp2_approx(s[0][nt][i] * scale_log2 - lse_log2[i / 2]);
        dp[0][nt][i] = p * (dp[0][nt][i] - delta[i / 2]);
      }
    }
    if constexpr (Tile::kTensorCores) {
      mma_ab<T, 1, NO, BN / 16>(dq, [&](int, int kk, uint32_t (&f)[4]) { accumulator_to_a<T, NS>(f, dp[0], kk); }, k_tile,
                                LD);
    } else {
      float* ds_warp = s_ds + warp_row0 * Tile::kLdP;
      store_accumulators(ds_warp, Tile::kLdP, dp);
      __syncwarp();
      simt_ab<1, NO, BN>(dq, ds_warp, Tile::kLdP, k_tile, LD);
      __syncwarp();
    }
  });
  cp_async_wait<0>();

  const float factor[1][2] = {{args.scale, args.scale}};
  store_rows<T, 1, NO>(args.grad_q, static_cast<int64_t>(bh) * m.num_queries + q_first + warp_row0, q_count - warp_row0,
                       args.head_dim, 0, dq, factor);
}

// ---------------------------------------------------------------------------------------
// Backward, dK and dV: warps own 16 keys each; query tiles of every query head of the kv head
// stream through shared memory. Scores are formed transposed (keys x queries).

template <typename T, int HD, int BN, int BM, int WARPS, int SLICES>
struct DkvTile {
  static constexpr bool kTensorCores = !std::is_same_v<T, float>;
  static constexpr int kThreads = WARPS * 32, kSliceDim = HD / SLICES;
  static constexpr int kLd = HD + 16 / static_cast<int>(sizeof(T)), kLdP = BM + 4;
  static constexpr size_t kK = 0;
  static constexpr size_t kV = align128(kK + sizeof(T) * BN * kLd);
  static constexpr size_t kQ = align128(kV + sizeof(T) * BN * kLd);             // 2 stages
  static constexpr size_t kdO = align128(kQ + 2 * sizeof(T) * BM * kLd);        // 2 stages
  static constexpr size_t kLse = align128(kdO + 2 * sizeof(T) * BM * kLd);      // 2 stages
  static constexpr size_t kDelta = align128(kLse + 2 * sizeof(float) * BM);     // 2 stages
  static constexpr size_t kSees = align128(kDelta + 2 * sizeof(float) * BM);    // 2 stages
  static constexpr size_t kP = align128(kSees + 2 * sizeof(uint64_t) * BM);     // fp32 only
  static constexpr size_t kBytes = align128(kP + (kTensorCores ? 0 : sizeof(float) * BN * kLdP));
  static_assert(BN == 16 * WARPS && BM % 16 == 0 && HD % (16 * SLICES) == 0, "tile sizes");
};

// The lane's two keys (rows g and g + 8 of its warp's 16): whether each lies below seq_len and
// its one-hot agent bit.
struct KeyRows {
  int key[2];
  bool live[2];
  uint64_t bit[2];

  __device__ __forceinline__ KeyRows(const MaskParams& m, int b, int warp_key0) {
    const int g = lane_id() / 4, key_end = m.key_end(b);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      key[half] = warp_key0 + g + 8 * half;
      live[half] = key[half] < key_end;
      bit[half] = m.has_agents && key[half] < m.num_keys ? m.key_bits[static_cast<int64_t>(b) * m.sees_stride + key[half]] : 0;
    }
  }

  // P^T of the pairs mask_rule::allowed forbids becomes 0: queries [q_first, q_first + 8 NT),
  // their visibility rows in shared memory. Key j < key_limit(position p) is j < key_end and,
  // when causal, j <= p: for the lane's query columns 8 nt + 2t + e, a constant comparison.
  template <bool AGENTS, int NT>
  __device__ __forceinline__ void mask(float (&p)[1][NT][4], const MaskParams& m, int q_first, const uint64_t* sees) const {
    const int t = lane_id() % 4;
    int from[2];  // the first allowed column (8 nt + e), per key
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      from[half] = !live[half] ? (1 << 30) : (m.causal ? key[half] - m.offset - q_first - 2 * t : -(1 << 30));
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      uint64_t rows[2] = {0, 0};
      if constexpr (AGENTS) {
        rows[0] = sees[8 * nt + 2 * t];
        rows[1] = sees[8 * nt + 2 * t + 1];
      }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const bool ok = 8 * nt + e >= from[half] && (!AGENTS || mask_rule::sees_bit(rows[e], bit[half]));
          if (!ok) p[0][nt][2 * half + e] = 0.0f;
        }
      }
    }
  }
};

template <typename T, int HD, int BN, int BM, int WARPS, int SLICES, bool IN_REGISTERS, int MIN_BLOCKS>
__global__ void __launch_bounds__(WARPS * 32, MIN_BLOCKS) dkdv_kernel(const BackwardArgs<T> args) {
  using Tile = DkvTile<T, HD, BN, BM, WARPS, SLICES>;
  constexpr int NS = BM / 8, NA = Tile::kSliceDim / 8, LD = Tile::kLd, THREADS = Tile::kThreads;
  unsigned char* smem = dynamic_shared_memory();
  T* s_k = reinterpret_cast<T*>(smem + Tile::kK);
  T* s_v = reinterpret_cast<T*>(smem + Tile::kV);
  T* s_q = reinterpret_cast<T*>(smem + Tile::kQ);
  T* s_do = reinterpret_cast<T*>(smem + Tile::kdO);
  float* s_lse = reinterpret_cast<float*>(smem + Tile::kLse);
  float* s_delta = reinterpret_cast<float*>(smem + Tile::kDelta);
  uint64_t* s_sees = reinterpret_cast<uint64_t*>(smem + Tile::kSees);
  float* s_p = reinterpret_cast<float*>(smem + Tile::kP);

  const MaskParams& m = args.mask;
  const int bkv = batch_head_of_block();
  if (bkv >= m.batch * m.kv_heads) return;
  const int b = bkv / m.kv_heads, kv_head = bkv % m.kv_heads;
  const int key_tile = blockIdx.x / SLICES, slice = blockIdx.x % SLICES, col0 = slice * Tile::kSliceDim;
  const int k_first = key_tile * BN, k_count = min(BN, m.num_keys - k_first);
  // Every query head of the group, in a fixed order (the partial tiles of every head, then
  // the full ones): the sums over heads are deterministic.
  const Visits visits(args.key_tiles, b, key_tile, m.group);
  const int warp = threadIdx.x / 32, t = lane_id() % 4;
  const int warp_key0 = warp * 16;

  const TileCopier<T, BM, HD, LD, THREADS> query_copier(args.head_dim);
  const auto load_queries = [&](const VisitCursor<true>& at, int stage, bool maybe_partial) {
    const int h = kv_head * m.group + at.pass;
    const int q_first = at.tile(visits) * BM, q_valid = min(BM, m.num_queries - q_first);
    query_copier.copy(s_q + stage * BM * LD, args.q, b, h, q_first, q_valid);
    query_copier.copy(s_do + stage * BM * LD, args.grad_out, b, h, q_first, q_valid);
    const int64_t row = (static_cast<int64_t>(b) * m.heads + h) * args.row_stride + q_first;
    load_values<float, BM, THREADS>(s_lse + stage * BM, args.lse_log2 + row, q_valid);
    load_values<float, BM, THREADS>(s_delta + stage * BM, args.delta + row, q_valid);
    if (maybe_partial && m.has_agents && at.partial(visits)) {
      load_values<uint64_t, BM, THREADS>(s_sees + stage * BM, m.query_sees + static_cast<int64_t>(b) * m.sees_stride + q_first, q_valid);
    }
  };

  const TileCopier<T, BN, HD, LD, THREADS> key_copier(args.head_dim);
  key_copier.copy(s_k, args.k, b, kv_head, k_first, k_count);
  key_copier.copy(s_v, args.v, b, kv_head, k_first, k_count);
  VisitCursor<true> current(visits), upcoming(visits);
  if (visits.total > 0) {
    load_queries(upcoming, 0, true);
    upcoming.advance(visits);
  }
  cp_async_commit();
  const KeyRows keys(m, b, k_first + warp_key0);
  float dk[1][NA][4], dv[1][NA][4];
  zero(dk);
  zero(dv);
  cp_async_wait<0>();
  __syncthreads();

  const T* k_warp = s_k + warp_key0 * LD;
  const T* v_warp = s_v + warp_key0 * LD;
  const RowFragments<T, 1, HD / 16, Tile::kTensorCores && IN_REGISTERS> k_fragments(k_warp, LD);
  const RowFragments<T, 1, HD / 16, Tile::kTensorCores && IN_REGISTERS> v_fragments(v_warp, LD);
  const float scale_log2 = args.scale * kLog2e;

  visit_tiles(visits, current, [&](int visit, auto partial_tile) {
    constexpr bool kPartial = decltype(partial_tile)::value;
    const int stage = visit & 1;
    if (visit > 0) {
      cp_async_wait<0>();
      __syncthreads();
    }
    if (visit + 1 < visits.total) {
      load_queries(upcoming, stage ^ 1, kPartial);
      upcoming.advance(visits);
    }
    cp_async_commit();
    const T* q_tile = s_q + stage * BM * LD;
    const T* do_tile = s_do + stage * BM * LD;
    const float* lse_tile = s_lse + stage * BM;
    const float* delta_tile = s_delta + stage * BM;

    float st[1][NS][4], dpt[1][NS][4];
    zero(st);
    zero(dpt);
    if constexpr (Tile::kTensorCores) {
      mma_abt<T, 1, NS, HD>(st, k_fragments, q_tile, LD);
      mma_abt<T, 1, NS, HD>(dpt, v_fragments, do_tile, LD);
    } else {
      simt_abt<1, NS, HD>(st, k_warp, LD, q_tile, LD);
      simt_abt<1, NS, HD>(dpt, v_warp, LD, do_tile, LD);
    }
    // P^T, with the rule applied on partial tiles. Padding query columns have zero Q and dO
    // (and lse, delta 0), so they add nothing below.
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float lse_col = lse_tile[8 * nt + 2 * t + e];
#pragma unroll
        for (int half = 0; half < 2; ++half) st[0][nt][2 * half + e] = exp2_approx(st[0][nt][2 * half + e] * scale_log2 - lse_col);
      }
    }
    if constexpr (kPartial) {
      const int q_first = current.tile(visits) * BM;
      if (m.has_agents) {
        keys.mask<true>(st, m, q_first, s_sees + stage * BM);
      } else {
        keys.mask<false>(st, m, q_first, nullptr);
      }
    }
    // dS^T = P^T (dP^T - delta), in place of dP^T.
#pragma unroll
    for (int nt = 0; nt < NS; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float delta_col = delta_tile[8 * nt + 2 * t + e];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          dpt[0][nt][2 * half + e] = st[0][nt][2 * half + e] * (dpt[0][nt][2 * half + e] - delta_col);
        }
      }
    }
    if constexpr (Tile::kTensorCores) {
      mma_ab<T, 1, NA, BM / 16>(dv, [&](int, int kk, uint32_t (&f)[4]) { accumulator_to_a<T, NS>(f, st[0], kk); },
                                do_tile + col0, LD);
      mma_ab<T, 1, NA, BM / 16>(dk, [&](int, int kk, uint32_t (&f)[4]) { accumulator_to_a<T, NS>(f, dpt[0], kk); },
                                q_tile + col0, LD);
    } else {
      float* p_warp = s_p + warp_key0 * Tile::kLdP;
      store_accumulators(p_warp, Tile::kLdP, st);
      __syncwarp();
      simt_ab<1, NA, BM>(dv, p_warp, Tile::kLdP, do_tile + col0, LD);
      __syncwarp();
      store_accumulators(p_warp, Tile::kLdP, dpt);
      __syncwarp();
      simt_ab<1, NA, BM>(dk, p_warp, Tile::kLdP, q_tile + col0, LD);
      __syncwarp();
    }
  });
  cp_async_wait<0>();

  // Keys past seq_len or seen by no query were never touched: their gradients are 0.
  const int64_t row0 = static_cast<int64_t>(bkv) * m.num_keys + k_first + warp_key0;
  const float dk_factor[1][2] = {{args.scale, args.scale}}, dv_factor[1][2] = {{1.0f, 1.0f}};
  store_rows<T, 1, NA>(args.grad_k, row0, k_count - warp_key0, args.head_dim, col0, dk, dk_factor);
  store_rows<T, 1, NA>(args.grad_v, row0, k_count - warp_key0, args.head_dim, col0, dv, dv_factor);
}

// ---------------------------------------------------------------------------------------
// Host side: everything but the device checks, the stream and the launch itself, which the
// Launcher brings.

// Tile shapes per dtype family and head-dim bucket. fp16/bf16: FlashAttention-2's shapes for
// sm_80/sm_90 within the registers each warp's accumulators need; fp32 keeps every kernel
// within 163 KiB of shared memory (A100; H100 allows 227 KiB).
template <bool TENSOR_CORES, int HD>
struct Config;
// Fields: forward BM x BN tiles, warps, Q fragments in registers, the blocks per SM its register
// budget is set for (__launch_bounds__); dQ the same with warps = BM / 16; dK/dV BN keys x BM
// queries per tile, warps = BN / 16, and head-dim slices.
#define AGENTFAST_CONFIG(TC, HD, FM, FN, FW, FQ, FB, QM, QN, QR, QB, KN, KM, KS, KR, KB)                              \
  template <>                                                                                                       \
  struct Config<TC, HD> {                                                                                           \
    static constexpr int kFwdM = FM, kFwdN = FN, kFwdWarps = FW, kFwdMinBlocks = FB;                                 \
    static constexpr bool kFwdQInRegisters = FQ;                                                                    \
    static constexpr int kDqM = QM, kDqN = QN, kDqMinBlocks = QB;                                                   \
    static constexpr bool kDqInRegisters = QR;                                                                      \
    static constexpr int kKvN = KN, kKvM = KM, kKvSlices = KS, kKvMinBlocks = KB;                                   \
    static constexpr bool kKvInRegisters = KR;                                                                      \
  };
//               TC     HD   forward               dQ                    dK/dV
AGENTFAST_CONFIG(true,  64,  128, 64, 4, false, 2,  64, 64, true,  2,  64, 64, 1, true,  2)
AGENTFAST_CONFIG(true,  128, 64,  64, 4, true,  2,  64, 32, true,  2,  64, 32, 1, false, 2)
AGENTFAST_CONFIG(true,  256, 64,  32, 4, false, 1,  64, 32, false, 1,  64, 32, 2, false, 1)
AGENTFAST_CONFIG(false, 64,  64,  64, 4, false, 1,  64, 32, false, 1,  64, 32, 1, false, 1)
AGENTFAST_CONFIG(false, 128, 64,  32, 4, false, 1,  32, 32, false, 1,  32, 32, 2, false, 1)
AGENTFAST_CONFIG(false, 256, 32,  16, 2, false, 1,  32, 16, false, 1,  32, 16, 4, false, 1)
#undef AGENTFAST_CONFIG

template <typename T, int HD>
using ConfigOf = Config<!std::is_same_v<T, float>, HD>;

template <typename T, int HD>
using ForwardTileOf = ForwardTile<T, HD, ConfigOf<T, HD>::kFwdM, ConfigOf<T, HD>::kFwdN, ConfigOf<T, HD>::kFwdWarps>;
template <typename T, int HD>
using DqTileOf = DqTile<T, HD, ConfigOf<T, HD>::kDqM, ConfigOf<T, HD>::kDqN, ConfigOf<T, HD>::kDqM / 16>;
template <typename T, int HD>
using DkvTileOf = DkvTile<T, HD, ConfigOf<T, HD>::kKvN, ConfigOf<T, HD>::kKvM, ConfigOf<T, HD>::kKvN / 16,
                          ConfigOf<T, HD>::kKvSlices>;

int64_t round_up(int64_t x, int64_t multiple) { return (x + multiple - 1) / multiple * multiple; }

// Owns the mask tensors the kernels read, so they live until the launches are queued.
struct MaskTensors {
  Tensor seq_lens, agent_ids, bitmask, query_sees, key_bits, key_agents, query_any, query_all;
  MaskParams params{};
  SummaryArrays summaries{};
};

template <typename Launcher>
MaskTensors prepare_mask(const Launcher& launch, const AttentionShape& shape, bool causal,
                         const OptionalTensor& seq_lens, const OptionalTensor& agent_ids,
                         const OptionalTensor& agent_bitmask, const at::TensorOptions& device) {
  MaskTensors t;
  MaskParams& p = t.params;
  p.batch = static_cast<int>(shape.batch);
  p.heads = static_cast<int>(shape.heads);
  p.kv_heads = static_cast<int>(shape.kv_heads);
  p.group = static_cast<int>(shape.heads / shape.kv_heads);
  p.num_queries = static_cast<int>(shape.num_queries);
  p.num_keys = static_cast<int>(shape.num_keys);
  p.offset = static_cast<int>(shape.query_offset());
  p.causal = causal;
  if (seq_lens.has_value()) {
    t.seq_lens = seq_lens->to(at::kLong).contiguous();
    p.seq_lens = t.seq_lens.data_ptr<int64_t>();
  }
  if (!agent_ids.has_value()) return t;
  p.has_agents = true;
  // Rows padded to 16 bytes, so tiles of them move by cp.async.
  p.agent_stride = static_cast<int>(round_up(shape.num_keys, 4));
  p.sees_stride = static_cast<int>(round_up(std::max(shape.num_queries, shape.num_keys), 2));
  t.agent_ids = at::zeros({shape.batch, p.agent_stride}, device.dtype(at::kInt));
  // Ids are validated upstream; clamping keeps a bad one from shifting by 64 or more.
  t.agent_ids.narrow(1, 0, shape.num_keys).copy_(agent_ids->clamp(0, shape.num_agents - 1));
  t.bitmask = agent_bitmask->contiguous();
  t.query_sees = at::zeros({shape.batch, p.sees_stride}, device.dtype(at::kLong));
  t.key_bits = at::zeros({shape.batch, p.sees_stride}, device.dtype(at::kLong));
  p.agent_ids = t.agent_ids.data_ptr<int32_t>();
  p.query_sees = reinterpret_cast<const uint64_t*>(t.query_sees.data_ptr<int64_t>());
  p.key_bits = reinterpret_cast<const uint64_t*>(t.key_bits.data_ptr<int64_t>());

  SummaryArrays& s = t.summaries;
  s.num_agents = static_cast<int>(shape.num_agents);
  s.key_granules = static_cast<int>((shape.num_keys + kGranule - 1) / kGranule);
  s.query_granules = static_cast<int>((shape.num_queries + kGranule - 1) / kGranule);
  t.key_agents = at::empty({shape.batch, s.key_granules}, device.dtype(at::kLong));
  t.query_any = at::empty({shape.batch, s.query_granules}, device.dtype(at::kLong));
  t.query_all = at::empty({shape.batch, s.query_granules}, device.dtype(at::kLong));
  s.key_agents = reinterpret_cast<uint64_t*>(t.key_agents.data_ptr<int64_t>());
  s.query_any = reinterpret_cast<uint64_t*>(t.query_any.data_ptr<int64_t>());
  s.query_all = reinterpret_cast<uint64_t*>(t.query_all.data_ptr<int64_t>());
  s.query_sees = reinterpret_cast<uint64_t*>(t.query_sees.data_ptr<int64_t>());
  s.key_bits = reinterpret_cast<uint64_t*>(t.key_bits.data_ptr<int64_t>());
  s.bitmask = t.bitmask.data_ptr<int64_t>();
  const int64_t entries = shape.batch * (s.key_granules + s.query_granules);
  if (entries > 0) {
    const int threads = 256;
    launch(tile_summaries_kernel, dim3(static_cast<unsigned>((entries + threads - 1) / threads)), threads, 0, p, s);
  }
  return t;
}

// A tile list and the tensors behind it.
struct TileListTensors {
  Tensor counts, indices;
  TileList list{};
};

template <typename Launcher>
TileListTensors build_tile_list(const Launcher& launch, const MaskTensors& mask, bool rows_are_queries, int row_tile,
                                int col_tile, const at::TensorOptions& device) {
  const MaskParams& m = mask.params;
  const int row_count = rows_are_queries ? m.num_queries : m.num_keys;
  const int col_count = rows_are_queries ? m.num_keys : m.num_queries;
  TileListSpec spec{rows_are_queries, row_tile, col_tile, (row_count + row_tile - 1) / row_tile,
                    (col_count + col_tile - 1) / col_tile};
  TileListTensors t;
  t.counts = at::empty({m.batch, spec.rows, 2}, device.dtype(at::kInt));
  t.indices = at::empty({m.batch, spec.rows, std::max(spec.cols, 1)}, device.dtype(at::kInt));
  t.list = {t.counts.data_ptr<int32_t>(), t.indices.data_ptr<int32_t>(), spec.rows, std::max(spec.cols, 1)};
  const int64_t entries = static_cast<int64_t>(m.batch) * spec.rows;
  if (entries > 0) {
    const int threads = 128;
    launch(tile_list_kernel, dim3(static_cast<unsigned>((entries + threads - 1) / threads)), threads, 0, m,
           mask.summaries, spec, t.counts.data_ptr<int32_t>(), t.indices.data_ptr<int32_t>());
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

// Whether the rows of `t` can move in 16-byte cp.async chunks: a contiguous head dim that is a
// whole number of chunks, and every row starting 16-byte aligned.
bool moves_in_chunks(const Tensor& t) {
  const int64_t per_chunk = 16 / static_cast<int64_t>(t.element_size());
  if ((t.size(3) > 1 && t.stride(3) != 1) || t.size(3) % per_chunk != 0) return false;
  for (int dim = 0; dim < 3; ++dim) {
    if (t.size(dim) > 1 && t.stride(dim) % per_chunk != 0) return false;
  }
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

template <typename T>
InputTensor<T> input_of(const Tensor& t) {
  return {reinterpret_cast<const T*>(t.data_ptr()), {t.stride(0), t.stride(1), t.stride(2), t.stride(3)},
          moves_in_chunks(t)};
}

template <typename T, int HD, typename Launcher>
void run_forward(const Launcher& launch, ForwardArgs<T> args, const MaskTensors& mask, const at::TensorOptions& device) {
  using C = ConfigOf<T, HD>;
  using Tile = ForwardTileOf<T, HD>;
  const TileListTensors tiles = build_tile_list(launch, mask, true, C::kFwdM, C::kFwdN, device);
  args.tiles = tiles.list;
  const dim3 grid = grid_of((args.mask.num_queries + C::kFwdM - 1) / C::kFwdM,
                            static_cast<int64_t>(args.mask.batch) * args.mask.heads);
  launch(forward_kernel<T, HD, C::kFwdM, C::kFwdN, C::kFwdWarps, C::kFwdQInRegisters, C::kFwdMinBlocks>, grid,
         Tile::kThreads, Tile::kBytes, args);
}

template <typename T, int HD, typename Launcher>
void run_backward(const Launcher& launch, BackwardArgs<T> args, const MaskTensors& mask, const at::TensorOptions& device) {
  using C = ConfigOf<T, HD>;
  using Dq = DqTileOf<T, HD>;
  using Kv = DkvTileOf<T, HD>;
  const TileListTensors query_tiles = build_tile_list(launch, mask, true, C::kDqM, C::kDqN, device);
  const TileListTensors key_tiles = build_tile_list(launch, mask, false, C::kKvN, C::kKvM, device);
  args.query_tiles = query_tiles.list;
  args.key_tiles = key_tiles.list;
  const MaskParams& m = args.mask;
  const dim3 dq_grid = grid_of((m.num_queries + C::kDqM - 1) / C::kDqM, static_cast<int64_t>(m.batch) * m.heads);
  launch(dq_kernel<T, HD, C::kDqM, C::kDqN, C::kDqM / 16, C::kDqInRegisters, C::kDqMinBlocks>, dq_grid, Dq::kThreads,
         Dq::kBytes, args);
  const dim3 kv_grid = grid_of((m.num_keys + C::kKvN - 1) / C::kKvN * C::kKvSlices, static_cast<int64_t>(m.batch) * m.kv_heads);
  launch(dkdv_kernel<T, HD, C::kKvN, C::kKvM, C::kKvN / 16, C::kKvSlices, C::kKvInRegisters, C::kKvMinBlocks>, kv_grid,
         Kv::kThreads, Kv::kBytes, args);
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
  const MaskTensors mask = prepare_mask(launch, shape, causal, seq_lens, agent_ids, agent_bitmask, q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_attention_cuda", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      using T = typename DeviceType<scalar_t>::type;
      ForwardArgs<T> args{};
      args.q = input_of<T>(q);
      args.k = input_of<T>(k);
      args.v = input_of<T>(v);
      args.out = reinterpret_cast<T*>(out.data_ptr<scalar_t>());
      args.lse = lse.data_ptr<float>();
      args.head_dim = static_cast<int>(shape.head_dim);
      args.scale = static_cast<float>(scale);
      args.mask = mask.params;
      dispatch_head_dim(shape.head_dim, [&](auto hd) { run_forward<T, decltype(hd)::value>(launch, args, mask, q.options()); });
    }
  });
  return {out, lse};
}

// [B * H, Nq] float rows padded to 16 bytes, so tiles of them move by cp.async.
Tensor padded_rows(const Tensor& values, const AttentionShape& shape, int64_t stride) {
  Tensor padded = at::zeros({shape.batch * shape.heads, stride}, values.options().dtype(at::kFloat));
  padded.narrow(1, 0, shape.num_queries).copy_(values.reshape({shape.batch * shape.heads, shape.num_queries}));
  return padded;
}

// (dq, dk, dv) of validated inputs; delta = rowsum(dO * O) - grad_lse.
template <typename Launcher>
std::tuple<Tensor, Tensor, Tensor> launch_backward(const Launcher& launch, const Tensor& grad_out, const Tensor& q,
                                                   const Tensor& k, const Tensor& v, const Tensor& lse,
                                                   const Tensor& delta, const AttentionShape& shape,
                                                   const OptionalTensor& seq_lens, const OptionalTensor& agent_ids,
                                                   const OptionalTensor& agent_bitmask, bool causal, double scale) {
  BackwardOutputs grads = allocate_backward_outputs(shape, q, k, v);
  if (grads.done) return grads.tuple();
  const MaskTensors mask = prepare_mask(launch, shape, causal, seq_lens, agent_ids, agent_bitmask, q.options());
  // exp2(s * scale * log2(e) - lse * log2(e)) = P; rows that see no key get +inf, so P = 0.
  const Tensor lse_float = lse.to(at::kFloat);
  const int64_t row_stride = round_up(shape.num_queries, 4);
  const Tensor lse_log2 = padded_rows(
      at::where(at::isinf(lse_float) & (lse_float < 0), at::full({}, kInf, lse_float.options()), lse_float * kLog2e), shape,
      row_stride);
  const Tensor delta_rows = padded_rows(delta.to(at::kFloat), shape, row_stride);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_attention_backward_cuda", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      using T = typename DeviceType<scalar_t>::type;
      BackwardArgs<T> args{};
      args.q = input_of<T>(q);
      args.k = input_of<T>(k);
      args.v = input_of<T>(v);
      args.grad_out = input_of<T>(grad_out);
      args.lse_log2 = lse_log2.data_ptr<float>();
      args.delta = delta_rows.data_ptr<float>();
      args.row_stride = static_cast<int>(row_stride);
      args.grad_q = reinterpret_cast<T*>(grads.grad_q.data_ptr<scalar_t>());
      args.grad_k = reinterpret_cast<T*>(grads.grad_k.data_ptr<scalar_t>());
      args.grad_v = reinterpret_cast<T*>(grads.grad_v.data_ptr<scalar_t>());
      args.head_dim = static_cast<int>(shape.head_dim);
      args.scale = static_cast<float>(scale);
      args.mask = mask.params;
      dispatch_head_dim(shape.head_dim, [&](auto hd) { run_backward<T, decltype(hd)::value>(launch, args, mask, q.options()); });
    }
  });
  return grads.tuple();
}

}  // namespace
}  // namespace agentfast
