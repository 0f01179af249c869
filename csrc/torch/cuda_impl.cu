// CUDA kernels of the egovlpv2 ops on the LibTorch stable ABI (schemas in schema.cpp, contract
// in docs/OPS.md): validate (op_checks.h), allocate through torch's caching allocator, fill the
// framework-free params of csrc/kernels/egovlpv2_kernels.h and enqueue on torch's current
// stream. Nothing here synchronises with the host, so the ops can be captured in CUDA graphs and
// traced by torch.compile (their fake kernels live in Python).
#include <cuda_runtime_api.h>

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <array>
#include <climits>
#include <optional>
#include <tuple>

#include "../kernels/egovlpv2_kernels.h"
#include "op_checks.h"

namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
namespace kern = egovlpv2::kernels;

namespace checks = egovlpv2::op_checks;
using checks::CrossShape;
using checks::SpaceTimeShape;

// What the CUDA kernels accept (checks in op_checks.h): float32, float16, bfloat16 on one
// device, softmax_lse in float32, head dims up to kMaxHeadDim, sizes in int fields.
const checks::Backend kCuda{
    "CUDA",
    [](const Tensor& t) { return t.is_cuda(); },
    [](ScalarType t) {
      return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
    },
    "float32, float16 or bfloat16",
    [](ScalarType) { return ScalarType::Float; },
    /*gate_may_be_float32=*/true,
    /*several_devices=*/true,
    /*max_count=*/INT_MAX,
    /*max_head_dim=*/kern::kMaxHeadDim,
};

kern::DType kernel_dtype(ScalarType t) {
  if (t == ScalarType::Half) return kern::DType::kFloat16;
  if (t == ScalarType::BFloat16) return kern::DType::kBFloat16;
  return kern::DType::kFloat32;
}

// The kernels read rows by stride but need each row's elements contiguous.
Tensor rows_contiguous(const Tensor& t) {
  if (t.dim() == 0 || t.size(t.dim() - 1) <= 1 || t.stride(t.dim() - 1) == 1) return t;
  return torch::stable::contiguous(t);
}

Tensor new_empty(std::initializer_list<int64_t> sizes, ScalarType dtype, const Tensor& like) {
  return torch::stable::empty(torch::headeronly::IntHeaderOnlyArrayRef(sizes), dtype, std::nullopt,
                              like.device());
}

cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

void check_launch(cudaError_t err, const char* op) {
  STD_TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel failed to launch: ", cudaGetErrorName(err),
                  " (", cudaGetErrorString(err), ")");
}

// ----- divided space-time attention ------------------------------------------------------------

std::tuple<Tensor, Tensor> space_time_forward(const Tensor& qkv_in, int64_t num_heads,
                                              int64_t num_frames, bool temporal, double scale) {
  const char* op = checks::kSpaceTime;
  const SpaceTimeShape s = checks::space_time(kCuda, qkv_in, num_heads, num_frames);
  torch::stable::accelerator::DeviceGuard guard(qkv_in.get_device_index());
  const Tensor qkv = rows_contiguous(qkv_in);
  const ScalarType dtype = qkv.scalar_type();
  Tensor out = new_empty({s.batch, s.tokens, s.dim}, dtype, qkv);
  Tensor lse = new_empty({s.batch, s.heads, s.tokens}, ScalarType::Float, qkv);
  if (s.batch == 0) return {out, lse};
  kern::DividedForwardParams p;
  p.dtype = kernel_dtype(dtype);
  p.qkv = qkv.const_data_ptr();
  p.qkv_stride_b = qkv.stride(0);
  p.qkv_stride_t = qkv.stride(1);
  p.batch = s.batch;
  p.tokens = s.tokens;
  p.heads = int(s.heads);
  p.head_dim = int(s.head_dim);
  p.frames = int(s.frames);
  p.temporal = temporal;
  p.scale = float(scale);
  p.out = out.mutable_data_ptr();
  p.lse = static_cast<float*>(lse.mutable_data_ptr());
  // Scratch for the CLS row's split softmax (a few MB at B=32); the caching allocator keeps it
  // stream-ordered, so freeing it right after the launch is safe and graph-capturable.
  std::optional<Tensor> workspace;
  const size_t ws_bytes = kern::divided_forward_workspace_bytes(p);
  if (ws_bytes > 0) {
    workspace = new_empty({int64_t(ws_bytes / sizeof(float))}, ScalarType::Float, qkv);
    p.workspace = static_cast<float*>(workspace->mutable_data_ptr());
    p.workspace_bytes = ws_bytes;
  }
  check_launch(kern::divided_forward(p, current_stream(qkv)), op);
  return {out, lse};
}

Tensor space_time_backward(const Tensor& grad_out_in, const Tensor& qkv_in, const Tensor& out_in,
                           const Tensor& softmax_lse, int64_t num_heads, int64_t num_frames,
                           bool temporal, double scale) {
  const char* op = checks::kSpaceTimeBackward;
  const SpaceTimeShape s = checks::space_time_backward(kCuda, grad_out_in, qkv_in, out_in,
                                                       softmax_lse, num_heads, num_frames);
  torch::stable::accelerator::DeviceGuard guard(qkv_in.get_device_index());
  const Tensor qkv = rows_contiguous(qkv_in);
  const Tensor grad_out = torch::stable::contiguous(grad_out_in);
  const Tensor out = torch::stable::contiguous(out_in);
  const Tensor lse = torch::stable::contiguous(softmax_lse);
  Tensor grad_qkv = new_empty({s.batch, s.tokens, 3 * s.dim}, qkv.scalar_type(), qkv);
  if (s.batch == 0) return grad_qkv;
  Tensor delta = new_empty({s.batch, s.heads, s.tokens}, ScalarType::Float, qkv);
  kern::DividedBackwardParams p;
  p.dtype = kernel_dtype(qkv.scalar_type());
  p.grad_out = grad_out.const_data_ptr();
  p.qkv = qkv.const_data_ptr();
  p.qkv_stride_b = qkv.stride(0);
  p.qkv_stride_t = qkv.stride(1);
  p.out = out.const_data_ptr();
  p.lse = static_cast<const float*>(lse.const_data_ptr());
  p.batch = s.batch;
  p.tokens = s.tokens;
  p.heads = int(s.heads);
  p.head_dim = int(s.head_dim);
  p.frames = int(s.frames);
  p.temporal = temporal;
  p.scale = float(scale);
  p.delta = static_cast<float*>(delta.mutable_data_ptr());
  p.grad_qkv = grad_qkv.mutable_data_ptr();
  std::optional<Tensor> workspace;  // CLS row/key gradients split over many CTAs
  const size_t ws_bytes = kern::divided_backward_workspace_bytes(p);
  if (ws_bytes > 0) {
    workspace = new_empty({int64_t(ws_bytes / sizeof(float))}, ScalarType::Float, qkv);
    p.workspace = static_cast<float*>(workspace->mutable_data_ptr());
    p.workspace_bytes = ws_bytes;
  }
  check_launch(kern::divided_backward(p, current_stream(qkv)), op);
  return grad_qkv;
}

// ----- gated cross-attention -------------------------------------------------------------------

// y = attn @ proj_weight^T + proj_bias through ATen (cuBLAS, the same GEMM as F.linear).
Tensor linear(const Tensor& attn, const Tensor& weight, const std::optional<Tensor>& bias) {
  std::array<StableIValue, 3> stack{torch::stable::detail::from(attn),
                                    torch::stable::detail::from(weight),
                                    torch::stable::detail::from(bias)};
  TORCH_ERROR_CODE_CHECK(
      torch_call_dispatcher("aten::linear", "", stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

// Pointers and strides of q, k, v and the optional mask, shared by both cross params structs.
template <class P>
void fill_cross(P& p, const Tensor& q, const Tensor& k, const Tensor& v,
                const std::optional<Tensor>& mask, const CrossShape& s, double scale) {
  p.dtype = kernel_dtype(q.scalar_type());
  p.q = q.const_data_ptr();
  p.q_stride_b = q.stride(0);
  p.q_stride_t = q.stride(1);
  p.k = k.const_data_ptr();
  p.k_stride_b = k.stride(0);
  p.k_stride_t = k.stride(1);
  p.v = v.const_data_ptr();
  p.v_stride_b = v.stride(0);
  p.v_stride_t = v.stride(1);
  p.key_mask = mask.has_value() ? mask->const_data_ptr() : nullptr;
  p.mask_stride_b = mask.has_value() ? mask->stride(0) : 0;
  p.batch = s.batch;
  p.len_q = s.q_len;
  p.len_k = s.k_len;
  p.heads = int(s.heads);
  p.head_dim = int(s.head_dim);
  p.scale = float(scale);
}

std::tuple<Tensor, Tensor, Tensor> cross_forward(const Tensor& q_in, const Tensor& k_in,
                                                 const Tensor& v_in,
                                                 const std::optional<Tensor>& key_mask_in,
                                                 const Tensor& proj_weight,
                                                 const std::optional<Tensor>& proj_bias,
                                                 const Tensor& gate_in, const Tensor& residual_in,
                                                 int64_t num_heads, double scale) {
  const char* op = checks::kCross;
  const CrossShape s = checks::cross(kCuda, q_in, k_in, v_in, key_mask_in, num_heads, op);
  const int64_t out_dim =
      checks::gated_cross(kCuda, s, q_in, proj_weight, proj_bias, gate_in, residual_in);

  torch::stable::accelerator::DeviceGuard guard(q_in.get_device_index());
  const ScalarType dtype = q_in.scalar_type();
  Tensor attn = new_empty({s.batch, s.q_len, s.dim}, dtype, q_in);
  Tensor lse = new_empty({s.batch, s.heads, s.q_len}, ScalarType::Float, q_in);
  Tensor out = new_empty({s.batch, s.q_len, out_dim}, dtype, q_in);
  if (s.batch == 0 || s.q_len == 0) return {out, attn, lse};
  const Tensor q = rows_contiguous(q_in);
  const Tensor k = rows_contiguous(k_in);
  const Tensor v = rows_contiguous(v_in);
  std::optional<Tensor> key_mask;
  if (key_mask_in.has_value()) key_mask = rows_contiguous(*key_mask_in);
  const cudaStream_t stream = current_stream(q);

  kern::CrossForwardParams p;
  fill_cross(p, q, k, v, key_mask, s, scale);
  p.attn = attn.mutable_data_ptr();
  p.lse = static_cast<float*>(lse.mutable_data_ptr());
  check_launch(kern::cross_forward(p, stream), op);

  // Under autocast the nested linear may come back in another dtype: the op's output keeps q's.
  Tensor y = linear(attn, proj_weight, proj_bias);
  if (y.scalar_type() != dtype) y = torch::stable::to(y, dtype);
  y = torch::stable::contiguous(y);
  const Tensor residual = torch::stable::contiguous(residual_in);
  kern::GateResidualParams g;
  g.dtype = p.dtype;
  g.residual = residual.const_data_ptr();
  g.lin = y.const_data_ptr();
  g.gate = gate_in.const_data_ptr();
  g.gate_is_float32 = gate_in.scalar_type() == ScalarType::Float;
  g.out = out.mutable_data_ptr();
  g.numel = out.numel();
  check_launch(kern::gate_residual(g, stream), op);
  return {out, attn, lse};
}

std::tuple<Tensor, Tensor, Tensor> cross_backward(const Tensor& grad_attn_in, const Tensor& q_in,
                                                  const Tensor& k_in, const Tensor& v_in,
                                                  const std::optional<Tensor>& key_mask_in,
                                                  const Tensor& attn_in, const Tensor& softmax_lse,
                                                  int64_t num_heads, double scale) {
  const char* op = checks::kCrossBackward;
  const CrossShape s = checks::cross_backward(kCuda, grad_attn_in, q_in, k_in, v_in, key_mask_in,
                                              attn_in, softmax_lse, num_heads);

  torch::stable::accelerator::DeviceGuard guard(q_in.get_device_index());
  const ScalarType dtype = q_in.scalar_type();
  Tensor grad_q = new_empty({s.batch, s.q_len, s.dim}, dtype, q_in);
  Tensor grad_k = new_empty({s.batch, s.k_len, s.dim}, dtype, q_in);
  Tensor grad_v = new_empty({s.batch, s.k_len, s.dim}, dtype, q_in);
  if (s.batch == 0) return {grad_q, grad_k, grad_v};
  const Tensor q = rows_contiguous(q_in);
  const Tensor k = rows_contiguous(k_in);
  const Tensor v = rows_contiguous(v_in);
  std::optional<Tensor> key_mask;
  if (key_mask_in.has_value()) key_mask = rows_contiguous(*key_mask_in);
  const Tensor grad_attn = torch::stable::contiguous(grad_attn_in);
  const Tensor attn = torch::stable::contiguous(attn_in);
  const Tensor lse = torch::stable::contiguous(softmax_lse);
  Tensor delta = new_empty({s.batch, s.heads, s.q_len}, ScalarType::Float, q_in);

  kern::CrossBackwardParams p;
  fill_cross(p, q, k, v, key_mask, s, scale);
  p.grad_attn = grad_attn.const_data_ptr();
  p.attn = attn.const_data_ptr();
  p.lse = static_cast<const float*>(lse.const_data_ptr());
  p.delta = static_cast<float*>(delta.mutable_data_ptr());
  p.grad_q = grad_q.mutable_data_ptr();
  p.grad_k = grad_k.mutable_data_ptr();
  p.grad_v = grad_v.mutable_data_ptr();
  check_launch(kern::cross_backward(p, current_stream(q)), op);
  return {grad_q, grad_k, grad_v};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(egovlpv2, CUDA, m) {
  m.impl("divided_space_time_attention", TORCH_BOX(&space_time_forward));
  m.impl("divided_space_time_attention_backward", TORCH_BOX(&space_time_backward));
  m.impl("gated_cross_attention", TORCH_BOX(&cross_forward));
  m.impl("gated_cross_attention_backward", TORCH_BOX(&cross_backward));
}
