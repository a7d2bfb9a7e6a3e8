// Schema of the agentfast:: ops, input validation shared by the CPU and CUDA kernels, and the
// Python module entry point of agentfast._C. Fake (meta) kernels and autograd are registered
// from Python in agentfast/attention/backends/extension.py.
#include <Python.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "masked_attention.h"

namespace agentfast {
namespace {

bool is_integer_type(at::ScalarType type) {
  return at::isIntegralType(type, /*includeBool=*/false);
}

void check_index_tensor(const char* name, const Tensor& t, at::IntArrayRef expected_shape,
                        const Tensor& q) {
  TORCH_CHECK(is_integer_type(t.scalar_type()), "agentfast::masked_attention: ", name,
              " must be an integer tensor, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == expected_shape, "agentfast::masked_attention: ", name,
              " must have shape ", expected_shape, ", got ", t.sizes());
  TORCH_CHECK(t.device() == q.device(), "agentfast::masked_attention: ", name, " is on ",
              t.device(), " but q is on ", q.device());
}

}  // namespace

AttentionShape check_attention_inputs(const Tensor& q, const Tensor& k, const Tensor& v,
                                      const OptionalTensor& seq_lens,
                                      const OptionalTensor& agent_ids,
                                      const OptionalTensor& agent_bitmask) {
  for (const auto& [name, t] : {std::pair<const char*, const Tensor&>{"q", q}, {"k", k}, {"v", v}}) {
    TORCH_CHECK(t.dim() == 4, "agentfast::masked_attention: ", name,
                " must be 4-D [B, H, N, D], got shape ", t.sizes());
  }
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "agentfast::masked_attention: q, k, v must share a dtype, got ", q.scalar_type(),
              ", ", k.scalar_type(), ", ", v.scalar_type());
  TORCH_CHECK(q.device() == k.device() && q.device() == v.device(),
              "agentfast::masked_attention: q, k, v must be on one device, got ", q.device(), ", ",
              k.device(), ", ", v.device());
  TORCH_CHECK(k.sizes() == v.sizes(), "agentfast::masked_attention: k and v must have the same shape, got ",
              k.sizes(), " and ", v.sizes());
  AttentionShape shape;
  shape.batch = q.size(0);
  shape.heads = q.size(1);
  shape.num_queries = q.size(2);
  shape.head_dim = q.size(3);
  shape.num_keys = k.size(2);
  shape.kv_heads = k.size(1);
  TORCH_CHECK(k.size(0) == shape.batch && k.size(3) == shape.head_dim,
              "agentfast::masked_attention: k/v shape ", k.sizes(), " does not match q shape ",
              q.sizes(), " in batch or head dim");
  TORCH_CHECK(shape.kv_heads == 0 ? shape.heads == 0 : shape.heads % shape.kv_heads == 0,
              "agentfast::masked_attention: q has ", shape.heads, " heads and k/v ", shape.kv_heads,
              "; the query heads must be a multiple of the key/value heads");
  TORCH_CHECK(shape.num_queries <= shape.num_keys, "agentfast::masked_attention: q has ",
              shape.num_queries, " positions but k only ", shape.num_keys, "; Nq must be <= Nk");
  TORCH_CHECK(shape.head_dim >= 1 && shape.head_dim <= kMaxHeadDim,
              "agentfast::masked_attention: head dim must be in [1, ", kMaxHeadDim, "], got ",
              shape.head_dim);
  TORCH_CHECK(shape.num_keys >= 1, "agentfast::masked_attention: k must have at least one position");
  if (seq_lens.has_value()) {
    check_index_tensor("seq_lens", *seq_lens, {shape.batch}, q);
  }
  TORCH_CHECK(agent_ids.has_value() == agent_bitmask.has_value(),
              "agentfast::masked_attention: agent_ids and agent_bitmask must be given together");
  if (agent_ids.has_value()) {
    check_index_tensor("agent_ids", *agent_ids, {shape.batch, shape.num_keys}, q);
    const Tensor& bitmask = *agent_bitmask;
    TORCH_CHECK(bitmask.scalar_type() == at::kLong,
                "agentfast::masked_attention: agent_bitmask must be int64 [B, A], got ",
                bitmask.scalar_type());
    TORCH_CHECK(bitmask.dim() == 2 && bitmask.size(0) == shape.batch && bitmask.size(1) >= 1 &&
                    bitmask.size(1) <= kMaxAgents,
                "agentfast::masked_attention: agent_bitmask must be [B=", shape.batch,
                ", A] with 1 <= A <= ", kMaxAgents, ", got ", bitmask.sizes());
    TORCH_CHECK(bitmask.device() == q.device(), "agentfast::masked_attention: agent_bitmask is on ",
                bitmask.device(), " but q is on ", q.device());
    shape.num_agents = bitmask.size(1);
  }
  return shape;
}

void check_backward_inputs(const AttentionShape& shape, const Tensor& q, const Tensor& grad_out,
                           const Tensor& out, const Tensor& lse, const OptionalTensor& grad_lse) {
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(),
              "agentfast::masked_attention_backward: grad_out ", grad_out.sizes(), " and out ",
              out.sizes(), " must have q's shape ", q.sizes());
  TORCH_CHECK(grad_out.scalar_type() == q.scalar_type() && out.scalar_type() == q.scalar_type(),
              "agentfast::masked_attention_backward: grad_out and out must have q's dtype ",
              q.scalar_type());
  const std::vector<int64_t> lse_shape{shape.batch, shape.heads, shape.num_queries};
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(lse_shape),
              "agentfast::masked_attention_backward: lse must be [B, H, Nq] = ", lse_shape,
              ", got ", lse.sizes());
  if (grad_lse.has_value()) {
    TORCH_CHECK(grad_lse->sizes() == lse.sizes(),
                "agentfast::masked_attention_backward: grad_lse must have lse's shape");
  }
  for (const Tensor* t : {&grad_out, &out, &lse}) {
    TORCH_CHECK(t->device() == q.device(), "agentfast::masked_attention_backward: all tensors must be on ",
                q.device(), ", got one on ", t->device());
  }
}

Tensor backward_row_delta(const Tensor& grad_out, const Tensor& out, const OptionalTensor& grad_lse,
                          at::ScalarType accumulate_type) {
  Tensor delta = (grad_out.to(accumulate_type) * out.to(accumulate_type)).sum(-1);
  if (grad_lse.has_value()) {
    delta = delta - grad_lse->to(accumulate_type);
  }
  return delta.contiguous();
}

}  // namespace agentfast

TORCH_LIBRARY(agentfast, m) {
  // Fake kernels and autograd live in Python; load that module whenever torch needs them.
  m.set_python_module("agentfast.attention.backends.extension");
  m.def(
      "masked_attention(Tensor q, Tensor k, Tensor v, Tensor? seq_lens, Tensor? agent_ids, "
      "Tensor? agent_bitmask, bool causal, float scale) -> (Tensor out, Tensor lse)");
  m.def(
      "masked_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
      "Tensor lse, Tensor? grad_lse, Tensor? seq_lens, Tensor? agent_ids, Tensor? agent_bitmask, "
      "bool causal, float scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}

TORCH_LIBRARY_IMPL(agentfast, CPU, m) {
  m.impl("masked_attention", &agentfast::masked_attention_cpu);
  m.impl("masked_attention_backward", &agentfast::masked_attention_backward_cpu);
}

namespace {

PyObject* built_with_cuda(PyObject*, PyObject*) {
#ifdef AGENTFAST_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

#ifdef AGENTFAST_WITH_CUDA
PyObject* cuda_shared_memory_bytes(PyObject*, PyObject* args) {
  int fp32 = 0, backward = 1;
  long long head_dim = 0;
  if (!PyArg_ParseTuple(args, "pL|p", &fp32, &head_dim, &backward)) return nullptr;
  if (head_dim < 1 || head_dim > agentfast::kMaxHeadDim) {
    PyErr_Format(PyExc_ValueError, "head_dim must lie in [1, %d], got %lld", int(agentfast::kMaxHeadDim), head_dim);
    return nullptr;
  }
  return PyLong_FromLongLong(agentfast::cuda_shared_memory_bytes(fp32 != 0, head_dim, backward != 0));
}
#endif

PyMethodDef module_methods[] = {
    {"built_with_cuda", built_with_cuda, METH_NOARGS,
     "True if this build contains the CUDA kernels of agentfast::masked_attention."},
#ifdef AGENTFAST_WITH_CUDA
    {"cuda_shared_memory_bytes", cuda_shared_memory_bytes, METH_VARARGS,
     "cuda_shared_memory_bytes(fp32: bool, head_dim: int, backward: bool = True) -> int: shared "
     "memory per block the largest CUDA kernel needs (the forward's alone with backward=False)."},
#endif
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                          "Compiled kernels of agentfast; importing registers the agentfast:: ops.",
                          -1, module_methods};

}  // namespace

// Importing agentfast._C runs the static TORCH_LIBRARY registrations above.
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
