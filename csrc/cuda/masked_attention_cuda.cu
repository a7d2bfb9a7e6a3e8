// CUDA entry points of agentfast::masked_attention: device checks, device guard, current
// stream, and the real launch of the kernels in masked_attention_kernels.cuh. Nothing
// synchronises with the host.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "masked_attention.h"

namespace agentfast {
namespace {
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
  extern __shared__ __align__(128) unsigned char smem[];
  return smem;
}
}  // namespace
}  // namespace agentfast

#include "masked_attention_kernels.cuh"

namespace agentfast {
namespace {

// Launches on one stream, after raising the kernel's dynamic shared memory limit.
struct CudaLauncher {
  cudaStream_t stream;

  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, dim3 grid, int threads, size_t smem_bytes, const Args&... args) const {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    if (smem_bytes > 48 * 1024) {
      int device = 0, max_smem = 0;
      C10_CUDA_CHECK(cudaGetDevice(&device));
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
      TORCH_CHECK(smem_bytes <= static_cast<size_t>(max_smem), "agentfast::masked_attention (CUDA): a kernel needs ",
                  smem_bytes, " bytes of shared memory per block but this device allows ", max_smem);
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes)));
    }
    kernel<<<grid, threads, smem_bytes, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

void check_cuda_inputs(const Tensor& q, const AttentionShape& shape) {
  TORCH_CHECK(q.is_cuda(), "agentfast::masked_attention (CUDA kernel) got tensors on ", q.device());
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "agentfast::masked_attention on CUDA supports float32, float16 and bfloat16, got ", dtype);
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.get_device()));
  TORCH_CHECK(dtype == at::kFloat || major >= 8, "agentfast::masked_attention on CUDA needs compute capability ",
              "8.0+ for float16/bfloat16 (tensor-core path), this device has major version ", major);
  // (batch, head) and row indices are int in the kernels; element offsets are int64.
  TORCH_CHECK(shape.batch * shape.heads < (int64_t(1) << 31),
              "agentfast::masked_attention on CUDA supports B * H < 2^31, got ", shape.batch * shape.heads);
  TORCH_CHECK(shape.num_keys < (int64_t(1) << 31), "agentfast::masked_attention on CUDA supports < 2^31 keys");
}

CudaLauncher launcher_for(const Tensor& q) { return {c10::cuda::getCurrentCUDAStream(q.get_device()).stream()}; }

std::tuple<Tensor, Tensor> masked_attention_cuda(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 const OptionalTensor& seq_lens, const OptionalTensor& agent_ids,
                                                 const OptionalTensor& agent_bitmask, bool causal, double scale) {
  const AttentionShape shape = check_attention_inputs(q, k, v, seq_lens, agent_ids, agent_bitmask);
  const c10::cuda::CUDAGuard guard(q.device());
  check_cuda_inputs(q, shape);
  return launch_forward(launcher_for(q), q, k, v, shape, seq_lens, agent_ids, agent_bitmask, causal, scale);
}

std::tuple<Tensor, Tensor, Tensor> masked_attention_backward_cuda(
    const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
    const OptionalTensor& grad_lse, const OptionalTensor& seq_lens, const OptionalTensor& agent_ids,
    const OptionalTensor& agent_bitmask, bool causal, double scale) {
  const AttentionShape shape = check_attention_inputs(q, k, v, seq_lens, agent_ids, agent_bitmask);
  const c10::cuda::CUDAGuard guard(q.device());
  check_cuda_inputs(q, shape);
  check_backward_inputs(shape, q, grad_out, out, lse, grad_lse);
  const Tensor delta = backward_row_delta(grad_out, out, grad_lse, at::kFloat);
  return launch_backward(launcher_for(q), grad_out, q, k, v, lse.to(at::kFloat).contiguous(), delta, shape,
                         seq_lens, agent_ids, agent_bitmask, causal, scale);
}

}  // namespace

int64_t cuda_shared_memory_bytes(bool fp32, int64_t head_dim, bool backward) {
  int64_t bytes = 0;
  const auto largest_tile = [&](auto element) {
    using T = decltype(element);
    dispatch_head_dim(head_dim, [&](auto hd) {
      constexpr int HD = decltype(hd)::value;
      bytes = static_cast<int64_t>(ForwardTileOf<T, HD>::kBytes);
      if (backward) {
        bytes = std::max<int64_t>({bytes, static_cast<int64_t>(DqTileOf<T, HD>::kBytes),
                                   static_cast<int64_t>(DkvTileOf<T, HD>::kBytes)});
      }
    });
  };
  if (fp32) {
    largest_tile(float{});
  } else {
    largest_tile(__half{});  // bf16 tiles have the same layout
  }
  return bytes;
}

}  // namespace agentfast

TORCH_LIBRARY_IMPL(agentfast, CUDA, m) {
  m.impl("masked_attention", &agentfast::masked_attention_cuda);
  m.impl("masked_attention_backward", &agentfast::masked_attention_backward_cuda);
}
