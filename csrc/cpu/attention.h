// Framework-free CPU kernels of the two attention ops (contract: docs/OPS.md).
//
// Everything here is plain C++17 on raw pointers and element strides: no torch header. The
// PyTorch binding (csrc/torch/cpu_impl.cpp) fills the params structs and supplies the parallel
// loop; another runtime (a TensorRT plugin, a test harness) can do the same.
//
// Layout conventions, with B batch, H heads, dh head dim, D = H * dh:
//   * inputs are read through View3 (a [B, L, C] tensor given by its element strides, any of
//     them may be zero or non-unit), so packed or sliced projections need no copy;
//   * outputs are written contiguous and row-major.
#pragma once

#include <cstdint>

namespace egovlpv2::cpu {

// A parallel loop supplied by the host: it calls body(b, e, ctx) on disjoint sub-ranges that
// together cover [begin, end), possibly from several threads at once.
using ParallelBody = void (*)(int64_t begin, int64_t end, void* ctx);
using ParallelFor = void (*)(int64_t begin, int64_t end, int64_t grain_size, ParallelBody body,
                             void* ctx);

// The default ParallelFor: one call over the whole range on the calling thread.
void serial_for(int64_t begin, int64_t end, int64_t grain_size, ParallelBody body, void* ctx);

// A read-only [B, L, C] tensor given by its element strides.
template <typename T>
struct View3 {
  const T* data = nullptr;
  int64_t stride_b = 0;
  int64_t stride_l = 0;
  int64_t stride_c = 0;

  const T* at(int64_t b, int64_t l, int64_t c) const {
    return data + b * stride_b + l * stride_l + c * stride_c;
  }
};

// Divided space-time attention forward. qkv: [B, T, 3*D] with T = 1 + F*N.
template <typename T>
struct SpaceTimeAttentionParams {
  View3<T> qkv;
  int64_t batch = 0;
  int64_t tokens = 0;      // T
  int64_t num_heads = 0;   // H
  int64_t head_dim = 0;    // dh
  int64_t num_frames = 0;  // F
  bool temporal = false;   // key set: time (true) or space (false)
  T scale = T(1);          // q is multiplied by scale before the dot products
  T* out = nullptr;        // [B, T, D] contiguous
  T* lse = nullptr;        // [B, H, T] contiguous, natural-log logsumexp of the scaled scores
  ParallelFor parallel_for = serial_for;
  int64_t num_threads = 1;  // threads behind parallel_for (sizes the work split)
};

// Divided space-time attention backward: grad_qkv from grad_out and the forward's out and lse.
template <typename T>
struct SpaceTimeAttentionGradParams {
  View3<T> grad_out;       // [B, T, D]
  View3<T> qkv;            // [B, T, 3*D]
  View3<T> out;            // [B, T, D], the forward output
  const T* lse = nullptr;  // [B, H, T] contiguous
  int64_t batch = 0;
  int64_t tokens = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  int64_t num_frames = 0;
  bool temporal = false;
  T scale = T(1);
  T* grad_qkv = nullptr;  // [B, T, 3*D] contiguous, fully written
  ParallelFor parallel_for = serial_for;
  int64_t num_threads = 1;
};

// Cross-attention core: attn = softmax((q*scale) k^T + key_mask) v, heads merged.
template <typename T>
struct CrossAttentionParams {
  View3<T> q;                   // [B, Lq, D]
  View3<T> k;                   // [B, Lk, D]
  View3<T> v;                   // [B, Lk, D]
  const T* key_mask = nullptr;  // optional additive mask [B, Lk]
  int64_t mask_stride_b = 0;
  int64_t mask_stride_l = 0;
  int64_t batch = 0;
  int64_t q_len = 0;
  int64_t k_len = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  T scale = T(1);
  T* attn = nullptr;  // [B, Lq, D] contiguous
  T* lse = nullptr;   // [B, H, Lq] contiguous
  ParallelFor parallel_for = serial_for;
};

// Cross-attention core backward: grad_q, grad_k, grad_v from grad_attn.
template <typename T>
struct CrossAttentionGradParams {
  View3<T> grad_attn;  // [B, Lq, D]
  View3<T> q;
  View3<T> k;
  View3<T> v;
  const T* key_mask = nullptr;
  int64_t mask_stride_b = 0;
  int64_t mask_stride_l = 0;
  View3<T> attn;           // [B, Lq, D], the forward output
  const T* lse = nullptr;  // [B, H, Lq] contiguous
  int64_t batch = 0;
  int64_t q_len = 0;
  int64_t k_len = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  T scale = T(1);
  T* grad_q = nullptr;  // [B, Lq, D] contiguous
  T* grad_k = nullptr;  // [B, Lk, D] contiguous
  T* grad_v = nullptr;  // [B, Lk, D] contiguous
  ParallelFor parallel_for = serial_for;
};

// Epilogue of the gated cross-attention: out = residual + gate * y.
template <typename T>
struct GateResidualParams {
  const T* y = nullptr;     // [B, L, C] contiguous (the projection output)
  View3<T> residual;        // [B, L, C]
  const T* gate = nullptr;  // one element
  int64_t batch = 0;
  int64_t len = 0;
  int64_t channels = 0;
  T* out = nullptr;  // [B, L, C] contiguous
  ParallelFor parallel_for = serial_for;
};

enum class Status : int { kOk = 0, kOutOfMemory = 1 };

Status space_time_attention_forward(const SpaceTimeAttentionParams<float>& p);
Status space_time_attention_forward(const SpaceTimeAttentionParams<double>& p);
Status space_time_attention_backward(const SpaceTimeAttentionGradParams<float>& p);
Status space_time_attention_backward(const SpaceTimeAttentionGradParams<double>& p);
Status cross_attention_forward(const CrossAttentionParams<float>& p);
Status cross_attention_forward(const CrossAttentionParams<double>& p);
Status cross_attention_backward(const CrossAttentionGradParams<float>& p);
Status cross_attention_backward(const CrossAttentionGradParams<double>& p);
void gate_residual(const GateResidualParams<float>& p);
void gate_residual(const GateResidualParams<double>& p);

}  // namespace egovlpv2::cpu
