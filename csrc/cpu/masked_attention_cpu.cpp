// CPU kernels of agentfast::masked_attention: blocked online softmax (FlashAttention-2 style).
//
// Forward: one task per (batch, head, block of kBlockM queries), handed out to the threads.
// Each task walks the key blocks its queries can see, keeping a running row max, row sum and
// an fp32 output accumulator, so extra memory is O(block * D) per thread, never N x N.
// Backward: one task per (batch, kv head, chunk of key blocks); it walks key blocks (outer) and
// the query blocks of every query head reading that kv head (inner), accumulating dK/dV per key
// block and dQ in a [group, Nq, D] buffer per task, summed in chunk order when there are several
// chunks (no atomics, no cross-thread races). Grouped-query attention reads the shared K/V rows
// in place, never a repeated copy.
// Scores are recomputed from the saved log-sum-exp.
//
// Whole key blocks are skipped when the mask empties them: beyond seq_len, after the last
// query (causal), or holding no agent that any query of the block can see (per-block agent
// presence bitmasks). Blocks every query fully sees skip the per-element mask.
//
// The block matrix products go to the BLAS that libtorch links (sgemm_/dgemm_, found at
// load time through weak symbols), with a plain-loop fallback. Element-wise loops (mask,
// exp, rescale) are written for the compiler's auto-vectoriser (-O3 -march=x86-64-v3).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "mask_rule.h"
#include "masked_attention.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define AGENTFAST_AVX2 1
#else
#define AGENTFAST_AVX2 0
#endif

// Fortran BLAS entry points. libtorch_cpu exports them on x86 builds (MKL); weak so the
// extension still loads, and falls back to loops, where a build does not.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace agentfast {
namespace {

constexpr int64_t kBlockM = 128;  // queries per block
constexpr int64_t kBlockN = 128;  // keys per block; also the agent-presence granularity

template <typename T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// ---------------------------------------------------------------------------------------
// Block matrix products, row-major: C[m, n] = alpha * op(A)[m, k] @ op(B)[k, n] + beta * C.
// op(A) = A^T when trans_a (A stored [k, m]); op(B) = B^T when trans_b (B stored [n, k]).

template <typename acc_t>
void gemm_loops(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, acc_t alpha,
                const acc_t* a, int64_t lda, const acc_t* b, int64_t ldb, acc_t beta, acc_t* c,
                int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    acc_t* __restrict__ c_row = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) c_row[j] = beta == acc_t(0) ? acc_t(0) : beta * c_row[j];
    for (int64_t p = 0; p < k; ++p) {
      const acc_t a_ip = alpha * (trans_a ? a[p * lda + i] : a[i * lda + p]);
      if (trans_b) {
        for (int64_t j = 0; j < n; ++j) c_row[j] += a_ip * b[j * ldb + p];
      } else {
        const acc_t* __restrict__ b_row = b + p * ldb;
        for (int64_t j = 0; j < n; ++j) c_row[j] += a_ip * b_row[j];
      }
    }
  }
}

// Row-major C = A B is column-major C^T = B^T A^T: swap the operands for Fortran BLAS.
template <typename acc_t, typename Fn>
bool call_blas(Fn fn, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, acc_t alpha,
               const acc_t* a, int64_t lda, const acc_t* b, int64_t ldb, acc_t beta, acc_t* c,
               int64_t ldc) {
  if (fn == nullptr) return false;
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int lda_i = static_cast<int>(lda), ldb_i = static_cast<int>(ldb), ldc_i = static_cast<int>(ldc);
  fn(&tb, &ta, &ni, &mi, &ki, &alpha, b, &ldb_i, a, &lda_i, &beta, c, &ldc_i);
  return true;
}

template <typename acc_t>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, acc_t alpha, const acc_t* a,
          int64_t lda, const acc_t* b, int64_t ldb, acc_t beta, acc_t* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  bool done;
  if constexpr (std::is_same_v<acc_t, float>) {
    done = call_blas<float>(sgemm_, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  } else {
    done = call_blas<double>(dgemm_, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  if (!done) gemm_loops(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// ---------------------------------------------------------------------------------------
// Row kernels: exp, max, the dS product. The float versions use AVX2 + FMA intrinsics when the
// build targets them (x86-64-v3): GCC does not vectorise the max reduction or the exp loop
// on its own (IEEE max semantics, the float reduction order), and these loops otherwise cost
// more than the block matrix products. Lane order and the final horizontal sums are fixed,
// so results stay bitwise reproducible run to run.

// exp: a branch-free Cephes-style expf (about 1 ulp), scalar form; the AVX2 form below is the
// same polynomial. exp(-inf) and anything below -87 give exactly 0, which is how masked
// scores vanish.
inline float exp_scalar(float x) {
  const float clamped = std::min(std::max(x, -87.0f), 88.0f);
  float n = std::nearbyint(clamped * 1.44269504088896341f);
  float r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const float exp_r = poly * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_to_n;
  std::memcpy(&two_to_n, &bits, sizeof(float));
  return x < -87.0f ? 0.0f : exp_r * two_to_n;
}

#if AGENTFAST_AVX2
inline __m256 exp_avx2(__m256 x) {
  const __m256 low = _mm256_set1_ps(-87.0f);
  const __m256 clamped = _mm256_min_ps(_mm256_max_ps(x, low), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(clamped, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), clamped);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 poly = _mm256_set1_ps(1.9875691500e-4f);
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.3981999507e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(8.3334519073e-3f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(4.1665795894e-2f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.6666665459e-1f));
  poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 exp_r = _mm256_fmadd_ps(poly, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 result = _mm256_mul_ps(exp_r, _mm256_castsi256_ps(bits));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, low, _CMP_LT_OQ), result);
}

// Lanes [0, count) set, for the ragged end of a row.
inline __m256i tail_mask(int64_t count) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(count)), lanes);
}

inline float horizontal_sum(__m256 v) {
  const __m128 pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
  return _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)));
}

inline float horizontal_max(__m256 v) {
  const __m128 pair = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quad = _mm_max_ps(pair, _mm_movehl_ps(pair, pair));
  return _mm_cvtss_f32(_mm_max_ss(quad, _mm_shuffle_ps(quad, quad, 1)));
}
#endif

// x[j] = exp(x[j] - shift); returns the sum. Masked entries (-inf) become 0.
inline float exp_shifted_sum(float* __restrict__ x, int64_t n, float shift) {
#if AGENTFAST_AVX2
  const __m256 shift_v = _mm256_set1_ps(shift);
  __m256 sum0 = _mm256_setzero_ps(), sum1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 e0 = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + j), shift_v));
    const __m256 e1 = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), shift_v));
    _mm256_storeu_ps(x + j, e0);
    _mm256_storeu_ps(x + j + 8, e1);
    sum0 = _mm256_add_ps(sum0, e0);
    sum1 = _mm256_add_ps(sum1, e1);
  }
  for (; j < n; j += 8) {
    const __m256i lanes = tail_mask(n - j);
    const __m256 e = _mm256_and_ps(exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(x + j, lanes), shift_v)),
                                   _mm256_castsi256_ps(lanes));
    _mm256_maskstore_ps(x + j, lanes, e);
    sum0 = _mm256_add_ps(sum0, e);
  }
  return horizontal_sum(_mm256_add_ps(sum0, sum1));
#else
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_scalar(x[j] - shift);
    x[j] = e;
    sum += e;
  }
  return sum;
#endif
}

inline double exp_shifted_sum(double* __restrict__ x, int64_t n, double shift) {
  double sum = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double e = x[j] == kNegInf<double> ? 0.0 : std::exp(x[j] - shift);
    x[j] = e;
    sum += e;
  }
  return sum;
}

inline float row_max(const float* __restrict__ x, int64_t n) {
#if AGENTFAST_AVX2
  const __m256 neg_inf = _mm256_set1_ps(kNegInf<float>);
  __m256 m0 = neg_inf, m1 = neg_inf;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + j));
    m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + j + 8));
  }
  for (; j < n; j += 8) {
    const __m256i lanes = tail_mask(n - j);
    m0 = _mm256_max_ps(m0, _mm256_blendv_ps(neg_inf, _mm256_maskload_ps(x + j, lanes), _mm256_castsi256_ps(lanes)));
  }
  return horizontal_max(_mm256_max_ps(m0, m1));
#else
  float m = kNegInf<float>;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
#endif
}

inline double row_max(const double* __restrict__ x, int64_t n) {
  double m = kNegInf<double>;
  for (int64_t j = 0; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// Backward, one row: p[j] = exp(p[j] - lse) (the probabilities, from the scores) and
// dp[j] = p[j] * (dp[j] - delta) (dS, from dP), in one pass over both rows.
inline void softmax_grad_row(float* __restrict__ p, float* __restrict__ dp, int64_t n, float lse, float delta) {
#if AGENTFAST_AVX2
  const __m256 lse_v = _mm256_set1_ps(lse), delta_v = _mm256_set1_ps(delta);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(p + j), lse_v));
    _mm256_storeu_ps(p + j, e);
    _mm256_storeu_ps(dp + j, _mm256_mul_ps(e, _mm256_sub_ps(_mm256_loadu_ps(dp + j), delta_v)));
  }
  if (j < n) {
    const __m256i lanes = tail_mask(n - j);
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_maskload_ps(p + j, lanes), lse_v));
    _mm256_maskstore_ps(p + j, lanes, e);
    _mm256_maskstore_ps(dp + j, lanes, _mm256_mul_ps(e, _mm256_sub_ps(_mm256_maskload_ps(dp + j, lanes), delta_v)));
  }
#else
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_scalar(p[j] - lse);
    p[j] = e;
    dp[j] = e * (dp[j] - delta);
  }
#endif
}

inline void softmax_grad_row(double* __restrict__ p, double* __restrict__ dp, int64_t n, double lse, double delta) {
  for (int64_t j = 0; j < n; ++j) {
    const double e = p[j] == kNegInf<double> ? 0.0 : std::exp(p[j] - lse);
    p[j] = e;
    dp[j] = e * (dp[j] - delta);
  }
}

template <typename acc_t>
void scale_row(acc_t* __restrict__ x, int64_t n, acc_t factor) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) x[j] *= factor;
}

// ---------------------------------------------------------------------------------------
// The mask, per call: per-query agent rows and per-block agent presence / union / intersection.

struct MaskInfo {
  int64_t num_queries = 0, num_keys = 0, offset = 0;
  int64_t num_query_blocks = 0, num_key_blocks = 0;
  bool causal = false;
  bool has_agents = false;
  std::vector<int64_t> seq_len;                          // [B], clamped to [0, Nk]
  std::vector<int32_t> agent_of_key;                     // [B, Nk]
  std::vector<uint64_t> query_sees;                      // [B, Nq]: visibility row of each query's agent
  std::vector<uint64_t> key_block_agents;                // [B, key blocks]: agents present in the block
  std::vector<mask_rule::QuerySummary> query_summaries;  // [B, query blocks]

  // Keys [0, key_end) may be visible to some query of block [q_first, q_last].
  int64_t key_end(int64_t b, int64_t q_last) const {
    return mask_rule::key_limit(causal, offset + q_last, seq_len[b]);
  }
};

MaskInfo build_mask_info(const AttentionShape& shape, bool causal, const OptionalTensor& seq_lens,
                         const OptionalTensor& agent_ids, const OptionalTensor& agent_bitmask) {
  MaskInfo info;
  const int64_t batch = shape.batch, nq = shape.num_queries, nk = shape.num_keys;
  info.num_queries = nq;
  info.num_keys = nk;
  info.offset = shape.query_offset();
  info.causal = causal;
  info.num_query_blocks = (nq + kBlockM - 1) / kBlockM;
  info.num_key_blocks = (nk + kBlockN - 1) / kBlockN;
  info.seq_len.assign(batch, nk);
  if (seq_lens.has_value()) {
    const Tensor lens = seq_lens->to(at::kLong).contiguous();
    const int64_t* data = lens.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) info.seq_len[b] = std::clamp<int64_t>(data[b], 0, nk);
  }
  if (!agent_ids.has_value()) return info;

  info.has_agents = true;
  const int64_t num_agents = shape.num_agents;
  const Tensor ids = agent_ids->to(at::kLong).contiguous();
  const Tensor rows = agent_bitmask->contiguous();
  const int64_t* id_data = ids.data_ptr<int64_t>();
  const int64_t* row_data = rows.data_ptr<int64_t>();
  info.agent_of_key.assign(id_data, id_data + batch * nk);  // checked to be in [0, 64) below
  for (int64_t idx = 0; idx < batch * nk; ++idx) {
    TORCH_CHECK(id_data[idx] >= 0 && id_data[idx] < num_agents, "agentfast::masked_attention: agent_ids[",
                idx / nk, ", ", idx % nk, "] = ", id_data[idx], " is outside [0, ", num_agents, ")");
  }
  info.query_sees.resize(batch * nq);
  info.key_block_agents.assign(batch * info.num_key_blocks, 0);
  info.query_summaries.assign(batch * info.num_query_blocks, mask_rule::QuerySummary{});
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < nk; ++j) {
      info.key_block_agents[b * info.num_key_blocks + j / kBlockN] |= mask_rule::agent_bit(id_data[b * nk + j]);
    }
    for (int64_t i = 0; i < nq; ++i) {
      const uint64_t sees = static_cast<uint64_t>(row_data[b * num_agents + id_data[b * nk + info.offset + i]]);
      info.query_sees[b * nq + i] = sees;
      mask_rule::add_query(info.query_summaries[b * info.num_query_blocks + i / kBlockM], sees);
    }
  }
  return info;
}

// How a (query block, key block) pair is treated: keys [k_first, k_first + k_count) lie below
// the queries' key_end, so only causality and agents decide.
mask_rule::TileKind classify_block(const MaskInfo& info, int64_t b, int64_t query_block, int64_t q_first,
                                   int64_t q_count, int64_t key_block, int64_t k_first, int64_t k_count) {
  const bool agents = info.has_agents;
  return mask_rule::classify_tile(info.causal, info.offset + q_first, info.offset + q_first + q_count - 1, k_first,
                                  k_first + k_count - 1, info.seq_len[b], agents,
                                  agents ? info.key_block_agents[b * info.num_key_blocks + key_block] : 0,
                                  agents ? info.query_summaries[b * info.num_query_blocks + query_block]
                                         : mask_rule::QuerySummary{});
}

// Sets the disallowed scores of one query row to -inf (keys [k_first, k_first + n), all below
// seq_len).
template <typename acc_t>
void mask_row(acc_t* __restrict__ s, int64_t n, int64_t b, int64_t query, int64_t k_first,
              const MaskInfo& info) {
  const int64_t limit = mask_rule::key_limit(info.causal, info.offset + query, info.seq_len[b]);
  const int64_t allowed = std::clamp<int64_t>(limit - k_first, 0, n);
  for (int64_t j = allowed; j < n; ++j) s[j] = kNegInf<acc_t>;
  if (!info.has_agents) return;
  const uint64_t sees = info.query_sees[b * info.num_queries + query];
  const int32_t* __restrict__ agents = info.agent_of_key.data() + b * info.num_keys + k_first;
#if AGENTFAST_AVX2
  if constexpr (std::is_same_v<acc_t, float>) {
    // mask_rule::agent_sees, eight keys at a time: bit `agent` of the 64-bit row, from two 32-bit
    // halves: a variable shift by 32 or more (a - 32 wraps to a huge count for a < 32) gives 0,
    // so exactly one half contributes.
    const __m256i low = _mm256_set1_epi32(static_cast<int32_t>(sees & 0xffffffffu));
    const __m256i high = _mm256_set1_epi32(static_cast<int32_t>(sees >> 32));
    const __m256i one = _mm256_set1_epi32(1), thirty_two = _mm256_set1_epi32(32);
    const __m256 neg_inf = _mm256_set1_ps(kNegInf<float>);
    for (int64_t j = 0; j < allowed; j += 8) {
      const __m256i lanes = tail_mask(allowed - j);
      const __m256i agent = _mm256_maskload_epi32(agents + j, lanes);
      const __m256i bit = _mm256_and_si256(
          _mm256_or_si256(_mm256_srlv_epi32(low, agent), _mm256_srlv_epi32(high, _mm256_sub_epi32(agent, thirty_two))),
          one);
      const __m256 visible = _mm256_castsi256_ps(_mm256_cmpeq_epi32(bit, one));
      const __m256 row = _mm256_maskload_ps(s + j, lanes);
      _mm256_maskstore_ps(s + j, lanes, _mm256_blendv_ps(neg_inf, row, visible));
    }
    return;
  }
#endif
  for (int64_t j = 0; j < allowed; ++j) {
    s[j] = mask_rule::agent_sees(sees, agents[j]) ? s[j] : kNegInf<acc_t>;
  }
}

// ---------------------------------------------------------------------------------------
// Strided [rows, D] slices as contiguous acc_t blocks: a view when the layout already is one,
// a converted copy into `buffer` otherwise.

struct TensorAccess {
  const void* data;
  int64_t stride_b, stride_h, stride_n, stride_d;
};

TensorAccess access(const Tensor& t) {
  return {t.data_ptr(), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename scalar_t, typename acc_t>
const acc_t* rows_as_acc(const TensorAccess& t, int64_t b, int64_t h, int64_t first_row,
                         int64_t rows, int64_t head_dim, acc_t* buffer, int64_t& ld) {
  const scalar_t* base = static_cast<const scalar_t*>(t.data) + b * t.stride_b + h * t.stride_h +
                         first_row * t.stride_n;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (t.stride_d == 1 && (rows == 1 || t.stride_n >= head_dim)) {
      ld = rows > 1 ? t.stride_n : head_dim;
      return base;
    }
  }
  ld = head_dim;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* src = base + r * t.stride_n;
    acc_t* dst = buffer + r * head_dim;
    for (int64_t d = 0; d < head_dim; ++d) dst[d] = static_cast<acc_t>(src[d * t.stride_d]);
  }
  return buffer;
}

// ---------------------------------------------------------------------------------------
// Work distribution. Each worker (one per thread) sets up its scratch buffers once and then
// pulls tasks from a shared atomic counter until none are left. Unlike a static split, a
// thread that other processes slow down simply takes fewer tasks instead of holding up the
// call. Every task writes its own outputs and sums in a fixed order whichever thread runs
// it, so results stay bitwise deterministic.
template <typename Worker>
void run_workers(int64_t tasks, const Worker& worker) {
  const int64_t workers = std::min<int64_t>(tasks, at::get_num_threads());
  // Inside an outer parallel region this runs inline as a single worker, which still takes
  // every task.
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    if (begin < end) worker();
  });
}

// ---------------------------------------------------------------------------------------
// Forward.

template <typename scalar_t>
void forward_kernel(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                    const AttentionShape& shape, const MaskInfo& info, double scale_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(scale_d);
  const int64_t heads = shape.heads, nq = shape.num_queries, head_dim = shape.head_dim;
  const TensorAccess qa = access(q), ka = access(k), va = access(v);
  scalar_t* out_data = out.data_ptr<scalar_t>();
  acc_t* lse_data = lse.data_ptr<acc_t>();
  const int64_t tasks = shape.batch * heads * info.num_query_blocks;

  std::atomic<int64_t> next_task{0};
  run_workers(tasks, [&] {
    std::vector<acc_t> q_buf(kBlockM * head_dim), k_buf(kBlockN * head_dim), v_buf(kBlockN * head_dim);
    std::vector<acc_t> scores(kBlockM * kBlockN), acc(kBlockM * head_dim);
    std::vector<acc_t> run_max(kBlockM), run_sum(kBlockM);
    const int64_t bh_count = shape.batch * heads;
    for (int64_t task; (task = next_task.fetch_add(1)) < tasks;) {
      // Last query blocks first: under causal masking they see the most keys, and handing out
      // the long tasks first leaves short ones to even out the threads at the end.
      const int64_t query_block = info.num_query_blocks - 1 - task / bh_count;
      const int64_t bh = task % bh_count, b = bh / heads, h = bh % heads, kv_head = h / shape.group();
      const int64_t q_first = query_block * kBlockM, m = std::min(kBlockM, nq - q_first);
      int64_t ldq, ldk, ldv;
      const acc_t* q_rows = rows_as_acc<scalar_t, acc_t>(qa, b, h, q_first, m, head_dim, q_buf.data(), ldq);
      std::fill(acc.begin(), acc.begin() + m * head_dim, acc_t(0));
      std::fill(run_max.begin(), run_max.end(), kNegInf<acc_t>);
      std::fill(run_sum.begin(), run_sum.end(), acc_t(0));

      const int64_t key_end = info.key_end(b, q_first + m - 1);
      for (int64_t k_first = 0, key_block = 0; k_first < key_end; k_first += kBlockN, ++key_block) {
        const int64_t n = std::min(kBlockN, key_end - k_first);
        const mask_rule::TileKind kind = classify_block(info, b, query_block, q_first, m, key_block, k_first, n);
        if (kind == mask_rule::TileKind::kEmpty) continue;
        const acc_t* k_rows = rows_as_acc<scalar_t, acc_t>(ka, b, kv_head, k_first, n, head_dim, k_buf.data(), ldk);
        const acc_t* v_rows = rows_as_acc<scalar_t, acc_t>(va, b, kv_head, k_first, n, head_dim, v_buf.data(), ldv);
        gemm<acc_t>(false, true, m, n, head_dim, scale, q_rows, ldq, k_rows, ldk, acc_t(0), scores.data(), kBlockN);
        for (int64_t i = 0; i < m; ++i) {
          acc_t* s = scores.data() + i * kBlockN;
          if (kind == mask_rule::TileKind::kPartial) mask_row(s, n, b, q_first + i, k_first, info);
          const acc_t block_max = row_max(s, n);
          if (block_max == kNegInf<acc_t>) {  // nothing visible to this row here
            std::fill(s, s + n, acc_t(0));
            continue;
          }
          const acc_t new_max = std::max(run_max[i], block_max);
          const acc_t correction = run_max[i] == kNegInf<acc_t> ? acc_t(0) : std::exp(run_max[i] - new_max);
          run_sum[i] = run_sum[i] * correction + exp_shifted_sum(s, n, new_max);
          run_max[i] = new_max;
          if (correction != acc_t(1)) scale_row(acc.data() + i * head_dim, head_dim, correction);
        }
        gemm<acc_t>(false, false, m, head_dim, n, acc_t(1), scores.data(), kBlockN, v_rows, ldv, acc_t(1),
                    acc.data(), head_dim);
      }

      for (int64_t i = 0; i < m; ++i) {
        const int64_t row = bh * nq + q_first + i;
        const bool empty = run_sum[i] == acc_t(0);
        const acc_t inv_sum = empty ? acc_t(0) : acc_t(1) / run_sum[i];
        scalar_t* dst = out_data + row * head_dim;
        const acc_t* src = acc.data() + i * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) dst[d] = static_cast<scalar_t>(src[d] * inv_sum);
        lse_data[row] = empty ? kNegInf<acc_t> : run_max[i] + std::log(run_sum[i]);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Backward.

template <typename acc_t, typename scalar_t>
void store_rows(const acc_t* src, int64_t count, scalar_t* dst) {
  for (int64_t idx = 0; idx < count; ++idx) dst[idx] = static_cast<scalar_t>(src[idx]);
}

// dQ[task] = sum over chunks of the shares [task, chunk, rows, D], added in chunk order.
template <typename acc_t, typename scalar_t>
void sum_dq_shares(const acc_t* shares, int64_t chunks, int64_t tasks, int64_t rows, int64_t head_dim,
                   scalar_t* dq) {
  at::parallel_for(0, tasks * rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total(head_dim);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t task = row / rows, i = row % rows;
      const acc_t* share = shares + (task * chunks * rows + i) * head_dim;
      std::copy(share, share + head_dim, total.begin());
      for (int64_t chunk = 1; chunk < chunks; ++chunk) {
        const acc_t* next = share + chunk * rows * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) total[d] += next[d];
      }
      store_rows(total.data(), head_dim, dq + row * head_dim);
    }
  });
}

// Backward tasks are (batch x head, chunk of key blocks). With at least as many batch x head
// rows as threads a chunk is every key block, and dQ builds up in a per-task buffer. With
// fewer, the key blocks are dealt round-robin into chunks (so that under causal masking every
// chunk gets early and late keys alike), two tasks per thread; each task adds its share of dQ
// into a buffer of its own and a second pass sums the shares in chunk order. The split depends
// on the shape and the thread count only, never on scheduling, so results are bitwise
// reproducible for a given thread count.
constexpr int64_t kMaxKeyChunks = 16;             // at most 16 dQ shares per (batch, head)
constexpr int64_t kMaxShareBytes = int64_t(256) << 20;  // and at most 256 MiB of them in all

int64_t backward_key_chunks(int64_t bh_count, int64_t key_blocks, int64_t share_bytes) {
  const int64_t threads = at::get_num_threads();
  if (bh_count >= threads) return 1;
  const int64_t room = std::max<int64_t>(1, kMaxShareBytes / std::max<int64_t>(1, bh_count * share_bytes));
  const int64_t wanted = (2 * threads + bh_count - 1) / bh_count;
  return std::clamp<int64_t>(wanted, 1, std::min({key_blocks, kMaxKeyChunks, room}));
}

template <typename scalar_t>
void backward_kernel(const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& lse, const Tensor& delta, Tensor& grad_q, Tensor& grad_k,
                     Tensor& grad_v, const AttentionShape& shape, const MaskInfo& info,
                     double scale_d) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t scale = static_cast<acc_t>(scale_d);
  const int64_t heads = shape.heads, nq = shape.num_queries, nk = shape.num_keys, head_dim = shape.head_dim;
  const int64_t kv_heads = shape.kv_heads, group = shape.group();
  const TensorAccess qa = access(q), ka = access(k), va = access(v), ga = access(grad_out);
  const acc_t* lse_data = lse.data_ptr<acc_t>();
  const acc_t* delta_data = delta.data_ptr<acc_t>();
  scalar_t* dq_data = grad_q.data_ptr<scalar_t>();
  scalar_t* dk_data = grad_k.data_ptr<scalar_t>();
  scalar_t* dv_data = grad_v.data_ptr<scalar_t>();

  // A task owns one (batch, kv head): dK/dV sum over the query heads of its group in order, and
  // its dQ covers those heads, [group, Nq, D] (grouped-query attention; group = 1 otherwise).
  const int64_t bkv_count = shape.batch * kv_heads;
  const int64_t task_dq = group * nq * head_dim;
  const int64_t chunks = backward_key_chunks(bkv_count, info.num_key_blocks,
                                             task_dq * static_cast<int64_t>(sizeof(acc_t)));
  const bool shared_dq = chunks > 1;
  std::vector<acc_t> dq_shares(shared_dq ? bkv_count * chunks * task_dq : 0);
  const int64_t tasks = bkv_count * chunks;

  std::atomic<int64_t> next_task{0};
  run_workers(tasks, [&] {
    std::vector<acc_t> q_buf(kBlockM * head_dim), g_buf(kBlockM * head_dim);
    std::vector<acc_t> k_buf(kBlockN * head_dim), v_buf(kBlockN * head_dim);
    std::vector<acc_t> probs(kBlockM * kBlockN), dprobs(kBlockM * kBlockN);
    std::vector<acc_t> dk_acc(kBlockN * head_dim), dv_acc(kBlockN * head_dim);
    std::vector<acc_t> dq_own(shared_dq ? 0 : task_dq);
    for (int64_t task; (task = next_task.fetch_add(1)) < tasks;) {
      const int64_t chunk = task / bkv_count, bkv = task % bkv_count, b = bkv / kv_heads, kv_head = bkv % kv_heads;
      acc_t* dq_task = shared_dq ? dq_shares.data() + (bkv * chunks + chunk) * task_dq : dq_own.data();
      std::fill(dq_task, dq_task + task_dq, acc_t(0));
      const int64_t key_end = info.key_end(b, nq - 1);
      for (int64_t key_block = chunk; key_block < info.num_key_blocks; key_block += chunks) {
        const int64_t k_first = key_block * kBlockN;
        scalar_t* dk_dst = dk_data + (bkv * nk + k_first) * head_dim;
        scalar_t* dv_dst = dv_data + (bkv * nk + k_first) * head_dim;
        // Keys past key_end (seq_len, or after the last query under causal) get zero gradient.
        const int64_t rows = std::min(kBlockN, nk - k_first);
        if (k_first >= key_end) {
          std::fill(dk_dst, dk_dst + rows * head_dim, scalar_t(0));
          std::fill(dv_dst, dv_dst + rows * head_dim, scalar_t(0));
          continue;
        }
        const int64_t n = std::min(kBlockN, key_end - k_first);
        int64_t ldk, ldv, ldq, ldg;
        const acc_t* k_rows = rows_as_acc<scalar_t, acc_t>(ka, b, kv_head, k_first, n, head_dim, k_buf.data(), ldk);
        const acc_t* v_rows = rows_as_acc<scalar_t, acc_t>(va, b, kv_head, k_first, n, head_dim, v_buf.data(), ldv);
        std::fill(dk_acc.begin(), dk_acc.begin() + rows * head_dim, acc_t(0));
        std::fill(dv_acc.begin(), dv_acc.begin() + rows * head_dim, acc_t(0));
        // Causal: queries before position k_first see none of these keys.
        const int64_t first_query = info.causal ? std::max<int64_t>(0, k_first - info.offset) : 0;
        for (int64_t member = 0; member < group; ++member) {
          const int64_t h = kv_head * group + member, bh = b * heads + h;
          acc_t* dq_acc = dq_task + member * nq * head_dim;
          for (int64_t query_block = first_query / kBlockM; query_block < info.num_query_blocks; ++query_block) {
            const int64_t q_first = query_block * kBlockM, m = std::min(kBlockM, nq - q_first);
            const mask_rule::TileKind kind = classify_block(info, b, query_block, q_first, m, key_block, k_first, n);
            if (kind == mask_rule::TileKind::kEmpty) continue;
            const acc_t* q_rows = rows_as_acc<scalar_t, acc_t>(qa, b, h, q_first, m, head_dim, q_buf.data(), ldq);
            const acc_t* g_rows = rows_as_acc<scalar_t, acc_t>(ga, b, h, q_first, m, head_dim, g_buf.data(), ldg);
            gemm<acc_t>(false, true, m, n, head_dim, scale, q_rows, ldq, k_rows, ldk, acc_t(0), probs.data(), kBlockN);
            gemm<acc_t>(false, true, m, n, head_dim, acc_t(1), g_rows, ldg, v_rows, ldv, acc_t(0), dprobs.data(), kBlockN);
            for (int64_t i = 0; i < m; ++i) {
              const int64_t row = bh * nq + q_first + i;
              acc_t* p = probs.data() + i * kBlockN;
              acc_t* dp = dprobs.data() + i * kBlockN;
              if (kind == mask_rule::TileKind::kPartial) mask_row(p, n, b, q_first + i, k_first, info);
              const acc_t row_lse = lse_data[row];
              if (row_lse == kNegInf<acc_t>) {  // a row with no visible key passes no gradient
                std::fill(p, p + n, acc_t(0));
                std::fill(dp, dp + n, acc_t(0));
                continue;
              }
              softmax_grad_row(p, dp, n, row_lse, delta_data[row]);  // P and dS
            }
            gemm<acc_t>(true, false, n, head_dim, m, acc_t(1), probs.data(), kBlockN, g_rows, ldg, acc_t(1),
                        dv_acc.data(), head_dim);
            gemm<acc_t>(true, false, n, head_dim, m, scale, dprobs.data(), kBlockN, q_rows, ldq, acc_t(1),
                        dk_acc.data(), head_dim);
            gemm<acc_t>(false, false, m, head_dim, n, scale, dprobs.data(), kBlockN, k_rows, ldk, acc_t(1),
                        dq_acc + q_first * head_dim, head_dim);
          }
        }
        store_rows(dk_acc.data(), rows * head_dim, dk_dst);
        store_rows(dv_acc.data(), rows * head_dim, dv_dst);
      }
      // The group's query heads are consecutive: its dQ is one [group * Nq, D] block.
      if (!shared_dq) store_rows(dq_task, task_dq, dq_data + bkv * task_dq);
    }
  });
  if (shared_dq) sum_dq_shares(dq_shares.data(), chunks, bkv_count, group * nq, head_dim, dq_data);
}

void check_cpu(const Tensor& q) {
  TORCH_CHECK(q.device().is_cpu(), "agentfast::masked_attention (CPU kernel) got tensors on ", q.device());
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "agentfast::masked_attention on CPU supports float32, float64, float16 and bfloat16, got ", dtype);
}

at::ScalarType accumulate_type(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

std::tuple<Tensor, Tensor> masked_attention_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                                const OptionalTensor& seq_lens,
                                                const OptionalTensor& agent_ids,
                                                const OptionalTensor& agent_bitmask, bool causal,
                                                double scale) {
  const AttentionShape shape = check_attention_inputs(q, k, v, seq_lens, agent_ids, agent_bitmask);
  check_cpu(q);
  Tensor out = at::empty(q.sizes(), q.options());
  Tensor lse = at::empty({shape.batch, shape.heads, shape.num_queries}, q.options().dtype(accumulate_type(q.scalar_type())));
  if (shape.num_queries == 0 || shape.batch * shape.heads == 0) return {out, lse};
  const MaskInfo info = build_mask_info(shape, causal, seq_lens, agent_ids, agent_bitmask);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_attention_cpu", [&] {
    forward_kernel<scalar_t>(q, k, v, out, lse, shape, info, scale);
  });
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor> masked_attention_backward_cpu(
    const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
    const Tensor& lse, const OptionalTensor& grad_lse, const OptionalTensor& seq_lens,
    const OptionalTensor& agent_ids, const OptionalTensor& agent_bitmask, bool causal,
    double scale) {
  const AttentionShape shape = check_attention_inputs(q, k, v, seq_lens, agent_ids, agent_bitmask);
  check_cpu(q);
  check_backward_inputs(shape, q, grad_out, out, lse, grad_lse);
  const at::ScalarType acc_type = accumulate_type(q.scalar_type());
  BackwardOutputs grads = allocate_backward_outputs(shape, q, k, v);
  if (grads.done) return grads.tuple();
  const Tensor delta = backward_row_delta(grad_out, out, grad_lse, acc_type);
  const Tensor lse_acc = lse.to(acc_type).contiguous();
  const MaskInfo info = build_mask_info(shape, causal, seq_lens, agent_ids, agent_bitmask);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "masked_attention_backward_cpu", [&] {
    backward_kernel<scalar_t>(grad_out, q, k, v, lse_acc, delta, grads.grad_q, grads.grad_k, grads.grad_v, shape,
                              info, scale);
  });
  return grads.tuple();
}

}  // namespace agentfast
