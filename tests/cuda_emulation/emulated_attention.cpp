// The CUDA kernels of agentfast::masked_attention, compiled for the CPU against the emulation
// in cuda_emulation.h and driven by the same host code as on a GPU (launch_forward and
// launch_backward of masked_attention_kernels.cuh), and the checks of the emulated vocabulary
// (vocabulary_checks.h). Built by tests/cuda_emulation/build.py for the tests.
#include <torch/extension.h>

#include "cuda_emulation.h"
#include "masked_attention_kernels.cuh"
#include "vocabulary_checks.h"

namespace {

// The sizes of inputs the Python side has already validated (the extension's
// check_attention_inputs lives in agentfast._C, which registers the ops this module must not).
agentfast::AttentionShape shape_of(const at::Tensor& q, const at::Tensor& k,
                                   const std::optional<at::Tensor>& agent_bitmask) {
  agentfast::AttentionShape shape;
  shape.batch = q.size(0);
  shape.heads = q.size(1);
  shape.kv_heads = k.size(1);
  shape.num_queries = q.size(2);
  shape.num_keys = k.size(2);
  shape.head_dim = q.size(3);
  shape.num_agents = agent_bitmask.has_value() ? agent_bitmask->size(1) : 0;
  return shape;
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const std::optional<at::Tensor>& seq_lens,
                                           const std::optional<at::Tensor>& agent_ids,
                                           const std::optional<at::Tensor>& agent_bitmask, bool causal,
                                           double scale) {
  return agentfast::launch_forward(cuda_emulation::Launcher{}, q, k, v, shape_of(q, k, agent_bitmask), seq_lens,
                                   agent_ids, agent_bitmask, causal, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& lse, const at::Tensor& delta, const std::optional<at::Tensor>& seq_lens,
    const std::optional<at::Tensor>& agent_ids, const std::optional<at::Tensor>& agent_bitmask, bool causal,
    double scale) {
  return agentfast::launch_backward(cuda_emulation::Launcher{}, grad_out, q, k, v, lse.to(at::kFloat).contiguous(),
                                    delta.to(at::kFloat).contiguous(), shape_of(q, k, agent_bitmask), seq_lens,
                                    agent_ids, agent_bitmask, causal, scale);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "agentfast's CUDA attention kernels run on the CPU by emulation (tests only)";
  m.def("forward", &forward, "(out, lse) of the CUDA forward kernels");
  m.def("backward", &backward, "(dq, dk, dv) of the CUDA backward kernels");
  vocabulary_checks::register_checks(m);
}
