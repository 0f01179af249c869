// Argument checks of the four egovlpv2 ops, shared by the CPU (cpu_impl.cpp) and CUDA
// (cuda_impl.cu) registrations: every check and its error message exists once, here. What differs
// between the backends (device, dtypes, the kernels' size limits, the dtype of softmax_lse and
// of the gate) is a Backend value each registration defines. Stable-ABI headers only: nvcc
// compiles this for cuda_impl.cu.
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>

namespace egovlpv2::op_checks {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// The four op names, as they appear in the schemas and in every error message.
inline constexpr const char* kSpaceTime = "egovlpv2::divided_space_time_attention";
inline constexpr const char* kSpaceTimeBackward = "egovlpv2::divided_space_time_attention_backward";
inline constexpr const char* kCross = "egovlpv2::gated_cross_attention";
inline constexpr const char* kCrossBackward = "egovlpv2::gated_cross_attention_backward";

// What one backend's kernels accept.
struct Backend {
  const char* device;                   // "CPU", "CUDA"
  bool (*on_device)(const Tensor&);     // t.is_cpu(), t.is_cuda()
  bool (*input_dtype)(ScalarType);      // dtypes of q, k, v, qkv, outputs
  const char* input_dtypes;             // "float32 or float64"
  ScalarType (*lse_dtype)(ScalarType);  // of softmax_lse, from the input dtype
  bool gate_may_be_float32;             // besides the input dtype
  bool several_devices;                 // every tensor must be on the device of the first
  int64_t max_count;                    // num_heads, num_frames (the kernels' int fields)
  int64_t max_head_dim;                 // 0: any
};

// "[2, 785, 2304]"
inline std::string shape_of(const Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t d = 0; d < t.dim(); ++d) s << (d ? ", " : "") << t.size(d);
  s << "]";
  return s.str();
}

inline const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float:
      return "float32";
    case ScalarType::Double:
      return "float64";
    case ScalarType::Half:
      return "float16";
    case ScalarType::BFloat16:
      return "bfloat16";
    default:
      return "a non-floating dtype";
  }
}

// ----- one tensor ------------------------------------------------------------------------------

// `t` is on the backend's device, and on the device of `ref` when there are several.
inline void check_device(const Backend& be, const Tensor& t, const char* op, const char* name,
                         const Tensor* ref = nullptr, const char* ref_name = nullptr) {
  STD_TORCH_CHECK(be.on_device(t), op, ": ", name, " must be a ", be.device, " tensor for the ",
                  be.device, " kernel");
  if (ref != nullptr && be.several_devices) {
    STD_TORCH_CHECK(t.get_device_index() == ref->get_device_index(), op, ": ", name,
                    " is on cuda:", t.get_device_index(), " but ", ref_name,
                    " is on cuda:", ref->get_device_index());
  }
}

inline void check_dims(const Tensor& t, const char* op, const char* name, int64_t dims,
                       const char* expected_shape) {
  STD_TORCH_CHECK(t.dim() == dims, op, ": ", name, " must have shape ", expected_shape, " (", dims,
                  " dims), got ", shape_of(t));
}

// An input of the backend's device and dtypes, with `dims` dimensions.
inline void check_input(const Backend& be, const Tensor& t, const char* op, const char* name,
                        int64_t dims, const char* expected_shape, const Tensor* ref = nullptr,
                        const char* ref_name = nullptr) {
  check_device(be, t, op, name, ref, ref_name);
  STD_TORCH_CHECK(be.input_dtype(t.scalar_type()), op, ": ", name, " must be ", be.input_dtypes,
                  " on ", be.device, ", got ", dtype_name(t.scalar_type()));
  check_dims(t, op, name, dims, expected_shape);
}

inline void check_same_dtype(const Tensor& t, const Tensor& ref, const char* op, const char* name,
                             const char* ref_name) {
  STD_TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
                  ref_name, " (", dtype_name(ref.scalar_type()), "), got ",
                  dtype_name(t.scalar_type()));
}

inline void check_shape(const Tensor& t, std::initializer_list<int64_t> expected, const char* op,
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
  STD_TORCH_CHECK(false, op, ": ", name, " must have shape ", meaning, " = ", want.str(), ", got ",
                  shape_of(t));
}

inline void check_count(const Backend& be, int64_t n, const char* op, const char* name) {
  STD_TORCH_CHECK(n > 0 && n <= be.max_count, op, ": ", name, " must be positive, got ", n);
}

inline void check_head_dim(const Backend& be, int64_t head_dim, const char* op) {
  STD_TORCH_CHECK(be.max_head_dim == 0 || head_dim <= be.max_head_dim, op,
                  ": head_dim = ", head_dim, " is larger than the ", be.device,
                  " kernels support (", be.max_head_dim, ")");
}

// ----- the ops ---------------------------------------------------------------------------------

struct SpaceTimeShape {
  int64_t batch, tokens, dim, heads, head_dim, frames;
};

struct CrossShape {
  int64_t batch, q_len, k_len, dim, heads, head_dim;
};

// qkv [B, T, 3*D] with T = 1 + num_frames * N.
inline SpaceTimeShape space_time(const Backend& be, const Tensor& qkv, int64_t num_heads,
                                 int64_t num_frames, const char* op = kSpaceTime) {
  check_input(be, qkv, op, "qkv", 3, "[B, T, 3*D]");
  check_count(be, num_heads, op, "num_heads");
  check_count(be, num_frames, op, "num_frames");
  const int64_t c = qkv.size(2);
  STD_TORCH_CHECK(c > 0 && c % (3 * num_heads) == 0, op, ": qkv's last dim (", c,
                  ") must be 3 * num_heads * head_dim with num_heads = ", num_heads);
  const int64_t t = qkv.size(1);
  STD_TORCH_CHECK(t > 1 && (t - 1) % num_frames == 0, op, ": qkv has ", t,
                  " tokens; expected 1 + num_frames * N with num_frames = ", num_frames,
                  " and N >= 1");
  check_head_dim(be, c / (3 * num_heads), op);
  return SpaceTimeShape{qkv.size(0), t, c / 3, num_heads, c / (3 * num_heads), num_frames};
}

// What a backward op reads of its forward: the output's gradient and the output itself
// ([B, L, D], the dtype of `input`) and softmax_lse ([B, heads, L], the backend's lse dtype).
inline void check_saved_forward(const Backend& be, const char* op, const Tensor& input,
                                const char* input_name, const Tensor& grad, const char* grad_name,
                                const Tensor& out, const char* out_name, const Tensor& lse,
                                std::initializer_list<int64_t> rows, const char* rows_shape,
                                std::initializer_list<int64_t> lse_sizes, const char* lse_shape) {
  check_input(be, grad, op, grad_name, 3, rows_shape, &input, input_name);
  check_input(be, out, op, out_name, 3, rows_shape, &input, input_name);
  check_device(be, lse, op, "softmax_lse");
  check_dims(lse, op, "softmax_lse", 3, lse_shape);
  check_same_dtype(grad, input, op, grad_name, input_name);
  check_same_dtype(out, input, op, out_name, input_name);
  const ScalarType lse_dtype = be.lse_dtype(input.scalar_type());
  STD_TORCH_CHECK(lse.scalar_type() == lse_dtype, op, ": softmax_lse must be ",
                  dtype_name(lse_dtype), ", got ", dtype_name(lse.scalar_type()));
  check_shape(grad, rows, op, grad_name, rows_shape);
  check_shape(out, rows, op, out_name, rows_shape);
  check_shape(lse, lse_sizes, op, "softmax_lse", lse_shape);
}

inline SpaceTimeShape space_time_backward(const Backend& be, const Tensor& grad_out,
                                          const Tensor& qkv, const Tensor& out,
                                          const Tensor& softmax_lse, int64_t num_heads,
                                          int64_t num_frames) {
  const char* op = kSpaceTimeBackward;
  const SpaceTimeShape s = space_time(be, qkv, num_heads, num_frames, op);
  check_saved_forward(be, op, qkv, "qkv", grad_out, "grad_out", out, "out", softmax_lse,
                      {s.batch, s.tokens, s.dim}, "[B, T, D]", {s.batch, s.heads, s.tokens},
                      "[B, num_heads, T]");
  return s;
}

// q [B, Lq, D]; k, v [B, Lk, D] (Lk >= 1); key_mask [B, Lk] or none.
inline CrossShape cross(const Backend& be, const Tensor& q, const Tensor& k, const Tensor& v,
                        const std::optional<Tensor>& key_mask, int64_t num_heads, const char* op) {
  check_input(be, q, op, "q", 3, "[B, Lq, D]");
  check_input(be, k, op, "k", 3, "[B, Lk, D]", &q, "q");
  check_input(be, v, op, "v", 3, "[B, Lk, D]", &q, "q");
  check_same_dtype(k, q, op, "k", "q");
  check_same_dtype(v, q, op, "v", "q");
  check_count(be, num_heads, op, "num_heads");
  const int64_t b = q.size(0), lq = q.size(1), d = q.size(2), lk = k.size(1);
  STD_TORCH_CHECK(d > 0 && d % num_heads == 0, op, ": q's last dim (", d,
                  ") must be num_heads * head_dim with num_heads = ", num_heads);
  STD_TORCH_CHECK(lk > 0, op, ": k must have at least one key, got ", shape_of(k));
  check_shape(k, {b, lk, d}, op, "k", "[B, Lk, D]");
  check_shape(v, {b, lk, d}, op, "v", "[B, Lk, D]");
  if (key_mask.has_value()) {
    const Tensor& m = *key_mask;
    check_input(be, m, op, "key_mask", 2, "[B, Lk]", &q, "q");
    check_same_dtype(m, q, op, "key_mask", "q");
    check_shape(m, {b, lk}, op, "key_mask", "[B, Lk]");
  }
  check_head_dim(be, d / num_heads, op);
  return CrossShape{b, lq, lk, d, num_heads, d / num_heads};
}

// The attention core's arguments, then the epilogue's: proj_weight [Dout, D], proj_bias [Dout]
// or none, a one-element gate, residual [B, Lq, Dout]. Returns Dout.
inline int64_t gated_cross(const Backend& be, const CrossShape& s, const Tensor& q,
                           const Tensor& proj_weight, const std::optional<Tensor>& proj_bias,
                           const Tensor& gate, const Tensor& residual) {
  const char* op = kCross;
  check_input(be, proj_weight, op, "proj_weight", 2, "[Dout, D]", &q, "q");
  check_same_dtype(proj_weight, q, op, "proj_weight", "q");
  const int64_t out_dim = proj_weight.size(0);
  check_shape(proj_weight, {out_dim, s.dim}, op, "proj_weight", "[Dout, D]");
  if (proj_bias.has_value()) {
    check_input(be, *proj_bias, op, "proj_bias", 1, "[Dout]", &q, "q");
    check_same_dtype(*proj_bias, q, op, "proj_bias", "q");
    check_shape(*proj_bias, {out_dim}, op, "proj_bias", "[Dout]");
  }
  check_device(be, gate, op, "gate", &q, "q");
  if (be.gate_may_be_float32) {
    const ScalarType g = gate.scalar_type();
    STD_TORCH_CHECK(g == q.scalar_type() || g == ScalarType::Float, op, ": gate must be ",
                    dtype_name(q.scalar_type()), " (the dtype of q) or float32, got ",
                    dtype_name(g));
  } else {
    check_same_dtype(gate, q, op, "gate", "q");
  }
  STD_TORCH_CHECK(gate.numel() == 1, op, ": gate must hold one element, got shape ",
                  shape_of(gate));
  check_input(be, residual, op, "residual", 3, "[B, Lq, Dout]", &q, "q");
  check_same_dtype(residual, q, op, "residual", "q");
  check_shape(residual, {s.batch, s.q_len, out_dim}, op, "residual", "[B, Lq, Dout]");
  return out_dim;
}

inline CrossShape cross_backward(const Backend& be, const Tensor& grad_attn, const Tensor& q,
                                 const Tensor& k, const Tensor& v,
                                 const std::optional<Tensor>& key_mask, const Tensor& attn,
                                 const Tensor& softmax_lse, int64_t num_heads) {
  const char* op = kCrossBackward;
  const CrossShape s = cross(be, q, k, v, key_mask, num_heads, op);
  check_saved_forward(be, op, q, "q", grad_attn, "grad_attn", attn, "attn", softmax_lse,
                      {s.batch, s.q_len, s.dim}, "[B, Lq, D]", {s.batch, s.heads, s.q_len},
                      "[B, num_heads, Lq]");
  return s;
}

}  // namespace egovlpv2::op_checks
