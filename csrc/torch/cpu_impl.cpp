// CPU kernels of the egovlpv2 ops on the LibTorch stable ABI: validate (op_checks.h), allocate,
// fill the framework-free params (csrc/cpu/attention.h) and run them on torch's thread pool.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

#include "../cpu/attention.h"
#include "op_checks.h"

namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;
namespace kcpu = egovlpv2::cpu;

namespace checks = egovlpv2::op_checks;
using checks::CrossShape;
using checks::SpaceTimeShape;

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

ScalarType lse_dtype(ScalarType t) {
  return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// What the CPU kernels accept (checks in op_checks.h): float32 and float64, any head dim.
const checks::Backend kCpu{
    "CPU",
    [](const Tensor& t) { return t.is_cpu(); },
    [](ScalarType t) { return t == ScalarType::Float || t == ScalarType::Double; },
    "float32 or float64",
    lse_dtype,
    /*gate_may_be_float32=*/false,
    /*several_devices=*/false,
    /*max_count=*/INT64_MAX,
    /*max_head_dim=*/0,
};

Tensor new_empty(std::initializer_list<int64_t> sizes, ScalarType dtype, const Tensor& like) {
  return torch::stable::empty(torch::headeronly::IntHeaderOnlyArrayRef(sizes), dtype, std::nullopt,
                              like.device());
}

// ----- divided space-time attention ------------------------------------------------------------

template <typename T>
void run_space_time_forward(const Tensor& qkv, const SpaceTimeShape& s, bool temporal, double scale,
                            Tensor& out, Tensor& lse) {
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
  check_status(kcpu::space_time_attention_forward(p), checks::kSpaceTime);
}

std::tuple<Tensor, Tensor> space_time_forward(const Tensor& qkv, int64_t num_heads,
                                              int64_t num_frames, bool temporal, double scale) {
  const SpaceTimeShape s = checks::space_time(kCpu, qkv, num_heads, num_frames);
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
  check_status(kcpu::space_time_attention_backward(p), checks::kSpaceTimeBackward);
}

Tensor space_time_backward(const Tensor& grad_out, const Tensor& qkv, const Tensor& out,
                           const Tensor& softmax_lse, int64_t num_heads, int64_t num_frames,
                           bool temporal, double scale) {
  const SpaceTimeShape s =
      checks::space_time_backward(kCpu, grad_out, qkv, out, softmax_lse, num_heads, num_frames);
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
  check_status(kcpu::cross_attention_forward(p), checks::kCross);
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

std::tuple<Tensor, Tensor, Tensor> cross_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 const std::optional<Tensor>& key_mask,
                                                 const Tensor& proj_weight,
                                                 const std::optional<Tensor>& proj_bias,
                                                 const Tensor& gate, const Tensor& residual,
                                                 int64_t num_heads, double scale) {
  const CrossShape s = checks::cross(kCpu, q, k, v, key_mask, num_heads, checks::kCross);
  const int64_t out_dim = checks::gated_cross(kCpu, s, q, proj_weight, proj_bias, gate, residual);

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
void run_cross_backward(const Tensor& grad_attn, const Tensor& q, const Tensor& k, const Tensor& v,
                        const std::optional<Tensor>& key_mask, const Tensor& attn,
                        const Tensor& lse, const CrossShape& s, double scale, Tensor& grad_q,
                        Tensor& grad_k, Tensor& grad_v) {
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
  check_status(kcpu::cross_attention_backward(p), checks::kCrossBackward);
}

std::tuple<Tensor, Tensor, Tensor> cross_backward(const Tensor& grad_attn, const Tensor& q,
                                                  const Tensor& k, const Tensor& v,
                                                  const std::optional<Tensor>& key_mask,
                                                  const Tensor& attn, const Tensor& softmax_lse,
                                                  int64_t num_heads, double scale) {
  const CrossShape s =
      checks::cross_backward(kCpu, grad_attn, q, k, v, key_mask, attn, softmax_lse, num_heads);
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
      run_cross_backward<float>(grad_attn, q, k, v, key_mask, attn, lse, s, scale, grad_q, grad_k,
                                grad_v);
    else
      run_cross_backward<double>(grad_attn, q, k, v, key_mask, attn, lse, s, scale, grad_q, grad_k,
                                 grad_v);
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
