// CPU kernels of the egovlpv2 ops on the LibTorch stable ABI: validate, allocate, fill the
// framework-free params (csrc/cpu/attention.h) and run them on torch's thread pool.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <array>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>

#include "../cpu/attention.h"
#include "op_messages.h"

namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
namespace kcpu = egovlpv2::cpu;

using namespace egovlpv2::op_messages;  // op names, shape_of, dtype_name

// ----- the host side of the framework-free kernels -------------------------------------------

void torch_parallel_for(int64_t begin, int64_t end, int64_t grain, kcpu::ParallelBody body,
                        void* ctx) {
  torch::stable::parallel_for(begin, end, grain,
                              [body, ctx](int64_t b, int64_t e) { body(b, e, ctx); });
}

template <typename T>
kcpu::View3<T> view3(const Tensor& t) {
  return kcpu::View3<T>{t.const_data_ptr<T>(), t.stride(0), t.stride(1), t.stride(2)};
}

void check_status(kcpu::Status status, const char* op) {
  STD_TORCH_CHECK(status == kcpu::Status::kOk, op, ": out of memory for the kernel workspace");
}

// ----- validation ----------------------------------------------------------------------------

// `t` is a CPU float32/float64 tensor of `dims` dimensions.
void check_input(const Tensor& t, const char* op, const char* name, int64_t dims,
                 const char* expected_shape) {
  STD_TORCH_CHECK(t.is_cpu(), op, ": ", name, " must be a CPU tensor for the CPU kernel");
  STD_TORCH_CHECK(t.scalar_type() == ScalarType::Float || t.scalar_type() == ScalarType::Double,
                  op, ": ", name, " must be float32 or float64 on CPU, got ",
                  dtype_name(t.scalar_type()));
  STD_TORCH_CHECK(t.dim() == dims, op, ": ", name, " must have shape ", expected_shape, " (",
                  dims, " dims), got ", shape_of(t));
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

Tensor new_empty(std::initializer_list<int64_t> sizes, ScalarType dtype, const Tensor& like) {
  return torch::stable::empty(torch::headeronly::IntHeaderOnlyArrayRef(sizes), dtype,
                              std::nullopt, like.device());
}

struct SpaceTimeShape {
  int64_t batch, tokens, dim, heads, head_dim, frames;
};

SpaceTimeShape space_time_shape(const Tensor& qkv, int64_t num_heads, int64_t num_frames,
                                const char* op) {
  check_input(qkv, op, "qkv", 3, "[B, T, 3*D]");
  STD_TORCH_CHECK(num_heads > 0, op, ": num_heads must be positive, got ", num_heads);
  STD_TORCH_CHECK(num_frames > 0, op, ": num_frames must be positive, got ", num_frames);
  const int64_t c = qkv.size(2);
  STD_TORCH_CHECK(c > 0 && c % (3 * num_heads) == 0, op, ": qkv's last dim (", c,
                  ") must be 3 * num_heads * head_dim with num_heads = ", num_heads);
  const int64_t t = qkv.size(1);
  STD_TORCH_CHECK(t > 1 && (t - 1) % num_frames == 0, op, ": qkv has ", t,
                  " tokens; expected 1 + num_frames * N with num_frames = ", num_frames,
                  " and N >= 1");
  return SpaceTimeShape{qkv.size(0), t, c / 3, num_heads, c / (3 * num_heads), num_frames};
}

ScalarType lse_dtype(ScalarType t) {
  return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// ----- divided space-time attention ------------------------------------------------------------

template <typename T>
void run_space_time_forward(const Tensor& qkv, const SpaceTimeShape& s, bool temporal,
                            double scale, Tensor& out, Tensor& lse) {
  kcpu::SpaceTimeAttentionParams<T> p;
  p.qkv = view3<T>(qkv);
  p.batch = s.batch;
  p.tokens = s.tokens;
  p.num_heads = s.heads;
  p.head_dim = s.head_dim;
  p.num_frames = s.frames;
  p.temporal = temporal;
  p.scale = static_cast<T>(scale);
  p.out = out.mutable_data_ptr<T>();
  p.lse = lse.mutable_data_ptr<T>();
  p.parallel_for = torch_parallel_for;
  p.num_threads = torch::stable::get_num_threads();
  check_status(kcpu::space_time_attention_forward(p), kSpaceTime);
}

std::tuple<Tensor, Tensor> space_time_forward(const Tensor& qkv, int64_t num_heads,
                                              int64_t num_frames, bool temporal, double scale) {
  const SpaceTimeShape s = space_time_shape(qkv, num_heads, num_frames, kSpaceTime);
  const ScalarType dtype = qkv.scalar_type();
  Tensor out = new_empty({s.batch, s.tokens, s.dim}, dtype, qkv);
  Tensor lse = new_empty({s.batch, s.heads, s.tokens}, lse_dtype(dtype), qkv);
  if (s.batch > 0) {
    if (dtype == ScalarType::Float)
      run_space_time_forward<float>(qkv, s, temporal, scale, out, lse);
    else
      run_space_time_forward<double>(qkv, s, temporal, scale, out, lse);
  }
  return {out, lse};
}

template <typename T>
void run_space_time_backward(const Tensor& grad_out, const Tensor& qkv, const Tensor& out,
                             const Tensor& lse, const SpaceTimeShape& s, bool temporal,
                             double scale, Tensor& grad_qkv) {
  kcpu::SpaceTimeAttentionGradParams<T> p;
  p.grad_out = view3<T>(grad_out);
  p.qkv = view3<T>(qkv);
  p.out = view3<T>(out);
  p.lse = lse.const_data_ptr<T>();
  p.batch = s.batch;
  p.tokens = s.tokens;
  p.num_heads = s.heads;
  p.head_dim = s.head_dim;
  p.num_frames = s.frames;
  p.temporal = temporal;
  p.scale = static_cast<T>(scale);
  p.grad_qkv = grad_qkv.mutable_data_ptr<T>();
  p.parallel_for = torch_parallel_for;
  p.num_threads = torch::stable::get_num_threads();
  check_status(kcpu::space_time_attention_backward(p), kSpaceTimeBackward);
}

Tensor space_time_backward(const Tensor& grad_out, const Tensor& qkv, const Tensor& out,
                           const Tensor& softmax_lse, int64_t num_heads, int64_t num_frames,
                           bool temporal, double scale) {
  const char* op = kSpaceTimeBackward;
  const SpaceTimeShape s = space_time_shape(qkv, num_heads, num_frames, op);
  check_input(grad_out, op, "grad_out", 3, "[B, T, D]");
  check_input(out, op, "out", 3, "[B, T, D]");
  check_input(softmax_lse, op, "softmax_lse", 3, "[B, num_heads, T]");
  check_same_dtype(grad_out, qkv, op, "grad_out", "qkv");
  check_same_dtype(out, qkv, op, "out", "qkv");
  STD_TORCH_CHECK(softmax_lse.scalar_type() == lse_dtype(qkv.scalar_type()), op,
                  ": softmax_lse must be ", dtype_name(lse_dtype(qkv.scalar_type())), ", got ",
                  dtype_name(softmax_lse.scalar_type()));
  check_shape(grad_out, {s.batch, s.tokens, s.dim}, op, "grad_out", "[B, T, D]");
  check_shape(out, {s.batch, s.tokens, s.dim}, op, "out", "[B, T, D]");
  check_shape(softmax_lse, {s.batch, s.heads, s.tokens}, op, "softmax_lse", "[B, num_heads, T]");
  const Tensor lse = torch::stable::contiguous(softmax_lse);
  Tensor grad_qkv = new_empty({s.batch, s.tokens, 3 * s.dim}, qkv.scalar_type(), qkv);
  if (s.batch > 0) {
    if (qkv.scalar_type() == ScalarType::Float)
      run_space_time_backward<float>(grad_out, qkv, out, lse, s, temporal, scale, grad_qkv);
    else
      run_space_time_backward<double>(grad_out, qkv, out, lse, s, temporal, scale, grad_qkv);
  }
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
  check_input(k, op, "k", 3, "[B, Lk, D]");
  check_input(v, op, "v", 3, "[B, Lk, D]");
  check_same_dtype(k, q, op, "k", "q");
  check_same_dtype(v, q, op, "v", "q");
  STD_TORCH_CHECK(num_heads > 0, op, ": num_heads must be positive, got ", num_heads);
  const int64_t b = q.size(0), lq = q.size(1), d = q.size(2), lk = k.size(1);
  STD_TORCH_CHECK(d > 0 && d % num_heads == 0, op, ": q's last dim (", d,
                  ") must be num_heads * head_dim with num_heads = ", num_heads);
  STD_TORCH_CHECK(lk > 0, op, ": k must have at least one key, got ", shape_of(k));
  check_shape(k, {b, lk, d}, op, "k", "[B, Lk, D]");
  check_shape(v, {b, lk, d}, op, "v", "[B, Lk, D]");
  if (key_mask.has_value()) {
    const Tensor& m = *key_mask;
    check_input(m, op, "key_mask", 2, "[B, Lk]");
    check_same_dtype(m, q, op, "key_mask", "q");
    check_shape(m, {b, lk}, op, "key_mask", "[B, Lk]");
  }
  return CrossShape{b, lq, lk, d, num_heads, d / num_heads};
}

template <typename T>
void fill_mask(const std::optional<Tensor>& key_mask, const T** mask, int64_t* sb, int64_t* sl) {
  if (!key_mask.has_value()) return;
  *mask = key_mask->const_data_ptr<T>();
  *sb = key_mask->stride(0);
  *sl = key_mask->stride(1);
}

template <typename T>
void run_cross_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                       const std::optional<Tensor>& key_mask, const CrossShape& s, double scale,
                       Tensor& attn, Tensor& lse) {
  kcpu::CrossAttentionParams<T> p;
  p.q = view3<T>(q);
  p.k = view3<T>(k);
  p.v = view3<T>(v);
  fill_mask<T>(key_mask, &p.key_mask, &p.mask_stride_b, &p.mask_stride_l);
  p.batch = s.batch;
  p.q_len = s.q_len;
  p.k_len = s.k_len;
  p.num_heads = s.heads;
  p.head_dim = s.head_dim;
  p.scale = static_cast<T>(scale);
  p.attn = attn.mutable_data_ptr<T>();
  p.lse = lse.mutable_data_ptr<T>();
  p.parallel_for = torch_parallel_for;
  check_status(kcpu::cross_attention_forward(p), kCross);
}

template <typename T>
void run_gate_residual(const Tensor& y, const Tensor& residual, const Tensor& gate,
                       const CrossShape& s, int64_t out_dim, Tensor& out) {
  kcpu::GateResidualParams<T> p;
  p.y = y.const_data_ptr<T>();
  p.residual = view3<T>(residual);
  p.gate = gate.const_data_ptr<T>();
  p.batch = s.batch;
  p.len = s.q_len;
  p.channels = out_dim;
  p.out = out.mutable_data_ptr<T>();
  p.parallel_for = torch_parallel_for;
  kcpu::gate_residual(p);
}

// y = attn @ proj_weight^T + proj_bias through ATen (the same GEMM as torch.nn.functional.linear).
Tensor linear(const Tensor& attn, const Tensor& weight, const std::optional<Tensor>& bias) {
  std::array<StableIValue, 3> stack{torch::stable::detail::from(attn),
                                    torch::stable::detail::from(weight),
                                    torch::stable::detail::from(bias)};
  TORCH_ERROR_CODE_CHECK(
      torch_call_dispatcher("aten::linear", "", stack.data(), TORCH_ABI_VERSION));
  return torch::stable::contiguous(torch::stable::detail::to<Tensor>(stack[0]));
}

std::tuple<Tensor, Tensor, Tensor> cross_forward(const Tensor& q, const Tensor& k,
                                                 const Tensor& v,
                                                 const std::optional<Tensor>& key_mask,
                                                 const Tensor& proj_weight,
                                                 const std::optional<Tensor>& proj_bias,
                                                 const Tensor& gate, const Tensor& residual,
                                                 int64_t num_heads, double scale) {
  const char* op = kCross;
  const CrossShape s = cross_shape(q, k, v, key_mask, num_heads, op);
  check_input(proj_weight, op, "proj_weight", 2, "[Dout, D]");
  check_same_dtype(proj_weight, q, op, "proj_weight", "q");
  const int64_t out_dim = proj_weight.size(0);
  check_shape(proj_weight, {out_dim, s.dim}, op, "proj_weight", "[Dout, D]");
  if (proj_bias.has_value()) {
    check_input(*proj_bias, op, "proj_bias", 1, "[Dout]");
    check_same_dtype(*proj_bias, q, op, "proj_bias", "q");
    check_shape(*proj_bias, {out_dim}, op, "proj_bias", "[Dout]");
  }
  STD_TORCH_CHECK(gate.is_cpu(), op, ": gate must be a CPU tensor for the CPU kernel");
  check_same_dtype(gate, q, op, "gate", "q");
  STD_TORCH_CHECK(gate.numel() == 1, op, ": gate must hold one element, got shape ",
                  shape_of(gate));
  check_input(residual, op, "residual", 3, "[B, Lq, Dout]");
  check_same_dtype(residual, q, op, "residual", "q");
  check_shape(residual, {s.batch, s.q_len, out_dim}, op, "residual", "[B, Lq, Dout]");

  const ScalarType dtype = q.scalar_type();
  Tensor attn = new_empty({s.batch, s.q_len, s.dim}, dtype, q);
  Tensor lse = new_empty({s.batch, s.heads, s.q_len}, lse_dtype(dtype), q);
  Tensor out = new_empty({s.batch, s.q_len, out_dim}, dtype, q);
  if (s.batch == 0 || s.q_len == 0) return {out, attn, lse};
  if (dtype == ScalarType::Float)
    run_cross_forward<float>(q, k, v, key_mask, s, scale, attn, lse);
  else
    run_cross_forward<double>(q, k, v, key_mask, s, scale, attn, lse);
  const Tensor y = linear(attn, proj_weight, proj_bias);
  if (dtype == ScalarType::Float)
    run_gate_residual<float>(y, residual, gate, s, out_dim, out);
  else
    run_gate_residual<double>(y, residual, gate, s, out_dim, out);
  return {out, attn, lse};
}

template <typename T>
void run_cross_backward(const Tensor& grad_attn, const Tensor& q, const Tensor& k,
                        const Tensor& v, const std::optional<Tensor>& key_mask,
                        const Tensor& attn, const Tensor& lse, const CrossShape& s, double scale,
                        Tensor& grad_q, Tensor& grad_k, Tensor& grad_v) {
  kcpu::CrossAttentionGradParams<T> p;
  p.grad_attn = view3<T>(grad_attn);
  p.q = view3<T>(q);
  p.k = view3<T>(k);
  p.v = view3<T>(v);
  fill_mask<T>(key_mask, &p.key_mask, &p.mask_stride_b, &p.mask_stride_l);
  p.attn = view3<T>(attn);
  p.lse = lse.const_data_ptr<T>();
  p.batch = s.batch;
  p.q_len = s.q_len;
  p.k_len = s.k_len;
  p.num_heads = s.heads;
  p.head_dim = s.head_dim;
  p.scale = static_cast<T>(scale);
  p.grad_q = grad_q.mutable_data_ptr<T>();
  p.grad_k = grad_k.mutable_data_ptr<T>();
  p.grad_v = grad_v.mutable_data_ptr<T>();
  p.parallel_for = torch_parallel_for;
  check_status(kcpu::cross_attention_backward(p), kCrossBackward);
}

std::tuple<Tensor, Tensor, Tensor> cross_backward(const Tensor& grad_attn, const Tensor& q,
                                                  const Tensor& k, const Tensor& v,
                                                  const std::optional<Tensor>& key_mask,
                                                  const Tensor& attn,
                                                  const Tensor& softmax_lse, int64_t num_heads,
                                                  double scale) {
  const char* op = kCrossBackward;
  const CrossShape s = cross_shape(q, k, v, key_mask, num_heads, op);
  check_input(grad_attn, op, "grad_attn", 3, "[B, Lq, D]");
  check_input(attn, op, "attn", 3, "[B, Lq, D]");
  check_input(softmax_lse, op, "softmax_lse", 3, "[B, num_heads, Lq]");
  check_same_dtype(grad_attn, q, op, "grad_attn", "q");
  check_same_dtype(attn, q, op, "attn", "q");
  STD_TORCH_CHECK(softmax_lse.scalar_type() == lse_dtype(q.scalar_type()), op,
                  ": softmax_lse must be ", dtype_name(lse_dtype(q.scalar_type())), ", got ",
                  dtype_name(softmax_lse.scalar_type()));
  check_shape(grad_attn, {s.batch, s.q_len, s.dim}, op, "grad_attn", "[B, Lq, D]");
  check_shape(attn, {s.batch, s.q_len, s.dim}, op, "attn", "[B, Lq, D]");
  check_shape(softmax_lse, {s.batch, s.heads, s.q_len}, op, "softmax_lse", "[B, num_heads, Lq]");
  const Tensor lse = torch::stable::contiguous(softmax_lse);
  const ScalarType dtype = q.scalar_type();
  Tensor grad_q = new_empty({s.batch, s.q_len, s.dim}, dtype, q);
  Tensor grad_k = new_empty({s.batch, s.k_len, s.dim}, dtype, q);
  Tensor grad_v = new_empty({s.batch, s.k_len, s.dim}, dtype, q);
  if (s.batch > 0 && s.q_len == 0) {
    torch::stable::zero_(grad_k);
    torch::stable::zero_(grad_v);
  } else if (s.batch > 0) {
    if (dtype == ScalarType::Float)
      run_cross_backward<float>(grad_attn, q, k, v, key_mask, attn, lse, s, scale, grad_q,
                                grad_k, grad_v);
    else
      run_cross_backward<double>(grad_attn, q, k, v, key_mask, attn, lse, s, scale, grad_q,
                                 grad_k, grad_v);
  }
  return {grad_q, grad_k, grad_v};
}

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(egovlpv2, CPU, m) {
  m.impl("divided_space_time_attention", TORCH_BOX(&space_time_forward));
  m.impl("divided_space_time_attention_backward", TORCH_BOX(&space_time_backward));
  m.impl("gated_cross_attention", TORCH_BOX(&cross_forward));
  m.impl("gated_cross_attention_backward", TORCH_BOX(&cross_backward));
}
