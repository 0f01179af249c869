// CUDA kernels of the egovlpv2 ops on the LibTorch stable ABI (schemas in schema.cpp, contract
// in docs/OPS.md): validate, allocate through torch's caching allocator, fill the framework-free
// params of csrc/kernels/egovlpv2_kernels.h and enqueue on torch's current stream. Nothing here
// synchronises with the host, so the ops can be captured in CUDA graphs and traced by
// torch.compile (their fake kernels live in Python).
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
#include <sstream>
#include <string>
#include <tuple>

#include "../kernels/egovlpv2_kernels.h"
#include "op_messages.h"

namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
namespace kern = egovlpv2::kernels;

using namespace egovlpv2::op_messages;  // op names, shape_of, dtype_name

// ----- validation ----------------------------------------------------------------------------

bool supported_dtype(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16;
}

kern::DType kernel_dtype(ScalarType t) {
  if (t == ScalarType::Half) return kern::DType::kFloat16;
  if (t == ScalarType::BFloat16) return kern::DType::kBFloat16;
  return kern::DType::kFloat32;
}

// `t` is a CUDA float32/float16/bfloat16 tensor of `dims` dimensions on the device of `ref`.
void check_input(const Tensor& t, const char* op, const char* name, int64_t dims,
                 const char* expected_shape, const Tensor* ref = nullptr,
                 const char* ref_name = nullptr) {
  STD_TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor for the CUDA kernel");
  STD_TORCH_CHECK(supported_dtype(t.scalar_type()), op, ": ", name,
                  " must be float32, float16 or bfloat16 on CUDA, got ",
                  dtype_name(t.scalar_type()));
  STD_TORCH_CHECK(t.dim() == dims, op, ": ", name, " must have shape ", expected_shape, " (",
                  dims, " dims), got ", shape_of(t));
  if (ref != nullptr) {
    STD_TORCH_CHECK(t.get_device_index() == ref->get_device_index(), op, ": ", name,
                    " is on cuda:", t.get_device_index(), " but ", ref_name, " is on cuda:",
                    ref->get_device_index());
  }
}

void check_same_dtype(const Tensor& t, const Tensor& ref, const char* op, const char* name,
                      const char* ref_name) {
  STD_TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
                  ref_name, " (", dtype_name(ref.scalar_type()), "), got ",
                  dtype_name(t.scalar_type()));
}

void check_shape(const Tensor& t, std::initializer_list<int64_t> expected, const char* op,
                 const char* name, const char* meaning) {
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  int64_t d = 0;
  for (int64_t e : expected) ok = ok && t.size(d++) == e;
  if (ok) return;
  std::ostringstream want;
  want << "[";
  d = 0;
  for (int64_t e : expected) want << (d++ ? ", " : "") << e;
  want << "]";
  STD_TORCH_CHECK(false, op, ": ", name, " must have shape ", meaning, " = ", want.str(),
                  ", got ", shape_of(t));
}

void check_head_dim(int64_t head_dim, const char* op) {
  STD_TORCH_CHECK(head_dim <= kern::kMaxHeadDim, op, ": head_dim = ", head_dim,
                  " is larger than the CUDA kernels support (", kern::kMaxHeadDim, ")");
}

// The kernels read rows by stride but need each row's elements contiguous.
Tensor rows_contiguous(const Tensor& t) {
  if (t.dim() == 0 || t.size(t.dim() - 1) <= 1 || t.stride(t.dim() - 1) == 1) return t;
  return torch::stable::contiguous(t);
}

Tensor new_empty(std::initializer_list<int64_t> sizes, ScalarType dtype, const Tensor& like) {
  return torch::stable::empty(torch::headeronly::IntHeaderOnlyArrayRef(sizes), dtype,
                              std::nullopt, like.device());
}

cudaStream_t current_stream(const Tensor& t) {
  void* stream = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<cudaStream_t>(stream);
}

void check_launch(cudaError_t err, const char* op) {
  STD_TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel failed to launch: ",
                  cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
}

// ----- divided space-time attention ------------------------------------------------------------

struct SpaceTimeShape {
  int64_t batch, tokens, dim, heads, head_dim, frames;
};

SpaceTimeShape space_time_shape(const Tensor& qkv, int64_t num_heads, int64_t num_frames,
                                const char* op) {
  check_input(qkv, op, "qkv", 3, "[B, T, 3*D]");
  STD_TORCH_CHECK(num_heads > 0 && num_heads <= INT_MAX, op,
                  ": num_heads must be positive, got ", num_heads);
  STD_TORCH_CHECK(num_frames > 0 && num_frames <= INT_MAX, op,
                  ": num_frames must be positive, got ", num_frames);
  const int64_t c = qkv.size(2);
  STD_TORCH_CHECK(c > 0 && c % (3 * num_heads) == 0, op, ": qkv's last dim (", c,
                  ") must be 3 * num_heads * head_dim with num_heads = ", num_heads);
  const int64_t t = qkv.size(1);
  STD_TORCH_CHECK(t > 1 && (t - 1) % num_frames == 0, op, ": qkv has ", t,
                  " tokens; expected 1 + num_frames * N with num_frames = ", num_frames,
                  " and N >= 1");
  check_head_dim(c / (3 * num_heads), op);
  return SpaceTimeShape{qkv.size(0), t, c / 3, num_heads, c / (3 * num_heads), num_frames};
}

std::tuple<Tensor, Tensor> space_time_forward(const Tensor& qkv_in, int64_t num_heads,
                                              int64_t num_frames, bool temporal, double scale) {
  const char* op = kSpaceTime;
  const SpaceTimeShape s = space_time_shape(qkv_in, num_heads, num_frames, op);
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
  const char* op = kSpaceTimeBackward;
  const SpaceTimeShape s = space_time_shape(qkv_in, num_heads, num_frames, op);
  check_input(grad_out_in, op, "grad_out", 3, "[B, T, D]", &qkv_in, "qkv");
  check_input(out_in, op, "out", 3, "[B, T, D]", &qkv_in, "qkv");
  STD_TORCH_CHECK(softmax_lse.is_cuda() && softmax_lse.scalar_type() == ScalarType::Float, op,
                  ": softmax_lse must be a float32 CUDA tensor, got ",
                  dtype_name(softmax_lse.scalar_type()),
                  softmax_lse.is_cuda() ? "" : " (not on CUDA)");
  check_same_dtype(grad_out_in, qkv_in, op, "grad_out", "qkv");
  check_same_dtype(out_in, qkv_in, op, "out", "qkv");
  check_shape(grad_out_in, {s.batch, s.tokens, s.dim}, op, "grad_out", "[B, T, D]");
  check_shape(out_in, {s.batch, s.tokens, s.dim}, op, "out", "[B, T, D]");
  check_shape(softmax_lse, {s.batch, s.heads, s.tokens}, op, "softmax_lse", "[B, num_heads, T]");
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

struct CrossShape {
  int64_t batch, q_len, k_len, dim, heads, head_dim;
};

CrossShape cross_shape(const Tensor& q, const Tensor& k, const Tensor& v,
                       const std::optional<Tensor>& key_mask, int64_t num_heads,
                       const char* op) {
  check_input(q, op, "q", 3, "[B, Lq, D]");
  check_input(k, op, "k", 3, "[B, Lk, D]", &q, "q");
  check_input(v, op, "v", 3, "[B, Lk, D]", &q, "q");
  check_same_dtype(k, q, op, "k", "q");
  check_same_dtype(v, q, op, "v", "q");
  STD_TORCH_CHECK(num_heads > 0 && num_heads <= INT_MAX, op,
                  ": num_heads must be positive, got ", num_heads);
  const int64_t b = q.size(0), lq = q.size(1), d = q.size(2), lk = k.size(1);
  STD_TORCH_CHECK(d > 0 && d % num_heads == 0, op, ": q's last dim (", d,
                  ") must be num_heads * head_dim with num_heads = ", num_heads);
  STD_TORCH_CHECK(lk > 0, op, ": k must have at least one key, got ", shape_of(k));
  check_shape(k, {b, lk, d}, op, "k", "[B, Lk, D]");
  check_shape(v, {b, lk, d}, op, "v", "[B, Lk, D]");
  if (key_mask.has_value()) {
    const Tensor& m = *key_mask;
    check_input(m, op, "key_mask", 2, "[B, Lk]", &q, "q");
    check_same_dtype(m, q, op, "key_mask", "q");
    check_shape(m, {b, lk}, op, "key_mask", "[B, Lk]");
  }
  check_head_dim(d / num_heads, op);
  return CrossShape{b, lq, lk, d, num_heads, d / num_heads};
}

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
                                                 const Tensor& gate_in,
                                                 const Tensor& residual_in, int64_t num_heads,
                                                 double scale) {
  const char* op = kCross;
  const CrossShape s = cross_shape(q_in, k_in, v_in, key_mask_in, num_heads, op);
  check_input(proj_weight, op, "proj_weight", 2, "[Dout, D]", &q_in, "q");
  check_same_dtype(proj_weight, q_in, op, "proj_weight", "q");
  const int64_t out_dim = proj_weight.size(0);
  check_shape(proj_weight, {out_dim, s.dim}, op, "proj_weight", "[Dout, D]");
  if (proj_bias.has_value()) {
    check_input(*proj_bias, op, "proj_bias", 1, "[Dout]", &q_in, "q");
    check_same_dtype(*proj_bias, q_in, op, "proj_bias", "q");
    check_shape(*proj_bias, {out_dim}, op, "proj_bias", "[Dout]");
  }
  STD_TORCH_CHECK(gate_in.is_cuda() && gate_in.get_device_index() == q_in.get_device_index(), op,
                  ": gate must be on the device of q (cuda:", q_in.get_device_index(), ")");
  STD_TORCH_CHECK(gate_in.scalar_type() == q_in.scalar_type() ||
                      gate_in.scalar_type() == ScalarType::Float,
                  op, ": gate must be ", dtype_name(q_in.scalar_type()),
                  " (the dtype of q) or float32, got ", dtype_name(gate_in.scalar_type()));
  STD_TORCH_CHECK(gate_in.numel() == 1, op, ": gate must hold one element, got shape ",
                  shape_of(gate_in));
  check_input(residual_in, op, "residual", 3, "[B, Lq, Dout]", &q_in, "q");
  check_same_dtype(residual_in, q_in, op, "residual", "q");
  check_shape(residual_in, {s.batch, s.q_len, out_dim}, op, "residual", "[B, Lq, Dout]");

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
                                                  const Tensor& attn_in,
                                                  const Tensor& softmax_lse, int64_t num_heads,
                                                  double scale) {
  const char* op = kCrossBackward;
  const CrossShape s = cross_shape(q_in, k_in, v_in, key_mask_in, num_heads, op);
  check_input(grad_attn_in, op, "grad_attn", 3, "[B, Lq, D]", &q_in, "q");
  check_input(attn_in, op, "attn", 3, "[B, Lq, D]", &q_in, "q");
  STD_TORCH_CHECK(softmax_lse.is_cuda() && softmax_lse.scalar_type() == ScalarType::Float, op,
                  ": softmax_lse must be a float32 CUDA tensor, got ",
                  dtype_name(softmax_lse.scalar_type()),
                  softmax_lse.is_cuda() ? "" : " (not on CUDA)");
  check_same_dtype(grad_attn_in, q_in, op, "grad_attn", "q");
  check_same_dtype(attn_in, q_in, op, "attn", "q");
  check_shape(grad_attn_in, {s.batch, s.q_len, s.dim}, op, "grad_attn", "[B, Lq, D]");
  check_shape(attn_in, {s.batch, s.q_len, s.dim}, op, "attn", "[B, Lq, D]");
  check_shape(softmax_lse, {s.batch, s.heads, s.q_len}, op, "softmax_lse", "[B, num_heads, Lq]");

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
