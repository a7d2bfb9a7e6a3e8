// agentfast::masked_attention: shared declarations of the CPU and CUDA implementations.
//
// The mask rule (docs/attention-contract.md, "The rule"; mask_rule.h): query i sits at key
// position p = Nk - Nq + i and may attend key j iff (!causal || j <= p) && j < seq_lens[b] &&
// (agent_bitmask[b, agent_ids[b, p]] >> agent_ids[b, j]) & 1. A row with no allowed key returns 0
// and has lse = -inf.
// q is [B, H, Nq, D]; k and v are [B, Hkv, Nk, D] with H a multiple of Hkv (grouped-query and
// multi-query attention): query head h reads kv head h / (H / Hkv).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <tuple>

namespace agentfast {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kMaxAgents = 64;

// Sizes of one call, read off the validated inputs.
struct AttentionShape {
  int64_t batch = 0;
  int64_t heads = 0;     // query heads
  int64_t kv_heads = 0;  // key/value heads: query head h reads kv head h / (heads / kv_heads)
  int64_t num_queries = 0;
  int64_t num_keys = 0;
  int64_t head_dim = 0;
  int64_t num_agents = 0;  // 0 when there is no agent mask
  int64_t query_offset() const { return num_keys - num_queries; }  // bottom-right alignment
  int64_t group() const { return kv_heads > 0 ? heads / kv_heads : 1; }  // query heads per kv head
};

// Checks q/k/v and the optional mask tensors against the contract and returns the sizes.
// Errors name the argument and what was wrong with it.
AttentionShape check_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v,
                                      const OptionalTensor& seq_lens,
                                      const OptionalTensor& agent_ids,
                                      const OptionalTensor& agent_bitmask);

// Checks the extra tensors of the backward (grad_out, out, lse, grad_lse) against the shape.
void check_backward_inputs(const AttentionShape& shape, const Tensor& q, const Tensor& grad_out,
                           const Tensor& out, const Tensor& lse, const OptionalTensor& grad_lse);

// The gradients of q, k, v, allocated; ``done`` when the call needs no kernel: no (batch, head),
// or no query (dK = dV = 0).
struct BackwardOutputs {
  Tensor grad_q, grad_k, grad_v;
  bool done = false;

  std::tuple<Tensor, Tensor, Tensor> tuple() const { return {grad_q, grad_k, grad_v}; }
};

inline BackwardOutputs allocate_backward_outputs(const AttentionShape& shape, const Tensor& q, const Tensor& k,
                                                 const Tensor& v) {
  BackwardOutputs grads{at::empty(q.sizes(), q.options()), at::empty(k.sizes(), k.options()),
                        at::empty(v.sizes(), v.options())};
  if (shape.batch * shape.heads == 0) {
    grads.done = true;
  } else if (shape.num_queries == 0) {
    grads.grad_k.zero_();
    grads.grad_v.zero_();
    grads.done = true;
  }
  return grads;
}

// delta[b, h, i] = sum_d grad_out * out - grad_lse: the row term of dS = P * (dP - delta).
// Folding grad_lse in makes the lse output differentiable at no extra cost
// (d lse_i / d s_ij = P_ij).
Tensor backward_row_delta(const Tensor& grad_out, const Tensor& out, const OptionalTensor& grad_lse,
                          at::ScalarType accumulate_type);

std::tuple<Tensor, Tensor> masked_attention_cpu(const Tensor& q, const Tensor& k, const Tensor& v,
                                                const OptionalTensor& seq_lens,
                                                const OptionalTensor& agent_ids,
                                                const OptionalTensor& agent_bitmask, bool causal,
                                                double scale);

std::tuple<Tensor, Tensor, Tensor> masked_attention_backward_cpu(
    const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
    const Tensor& lse, const OptionalTensor& grad_lse, const OptionalTensor& seq_lens,
    const OptionalTensor& agent_ids, const OptionalTensor& agent_bitmask, bool causal,
    double scale);

#ifdef AGENTFAST_WITH_CUDA
// Shared memory per block that the largest CUDA kernel needs for this dtype (fp32, or
// fp16/bf16) and head dim: the forward's, or with ``backward`` the largest of forward, dq and
// dk/dv. Devices that allow less cannot run it.
int64_t cuda_shared_memory_bytes(bool fp32, int64_t head_dim, bool backward);
#endif

}  // namespace agentfast
