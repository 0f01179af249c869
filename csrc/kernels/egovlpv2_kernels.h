// Framework-free entry points of the egovlpv2 CUDA kernels (contract: docs/OPS.md).
//
// Every function takes a plain struct of raw pointers, sizes and element strides and enqueues
// its kernels on the given stream. Nothing here allocates, synchronises with the host or touches
// a framework: the PyTorch registration (csrc/torch/cuda_impl.cu) and a TensorRT plugin can
// both call these. Errors are returned as cudaError_t (cudaErrorInvalidValue for arguments
// outside the supported range: the callers validate inputs first and report them by name).
//
// Layout conventions shared by all entry points:
// * strides are in elements, not bytes; the last dimension of every tensor is contiguous;
// * `D = heads * head_dim`; head `j` uses columns `j*head_dim : (j+1)*head_dim`;
// * softmax_lse / delta buffers are float32 `[batch, heads, rows]`, contiguous.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace egovlpv2 {
namespace kernels {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

constexpr int kMaxHeadDim = 128;
constexpr int kMaxFrames = 32;

// Divided space-time attention over the packed qkv projection.
struct DividedForwardParams {
  DType dtype = DType::kFloat32;
  const void* qkv = nullptr;  // [batch, tokens, 3*D], strides below, last dim contiguous
  int64_t qkv_stride_b = 0;
  int64_t qkv_stride_t = 0;
  int64_t batch = 0;
  int64_t tokens = 0;  // 1 + frames * patches
  int heads = 0;
  int head_dim = 0;
  int frames = 0;
  bool temporal = false;
  float scale = 1.f;
  void* out = nullptr;   // [batch, tokens, D] contiguous, dtype
  float* lse = nullptr;  // [batch, heads, tokens]
  // Optional float32 scratch for the CLS row's split softmax (divided_forward_workspace_bytes);
  // without it (null or too small) the CLS row runs as one row split over a CTA's warps.
  float* workspace = nullptr;
  size_t workspace_bytes = 0;
};

struct DividedBackwardParams {
  DType dtype = DType::kFloat32;
  const void* grad_out = nullptr;  // [batch, tokens, D] contiguous
  const void* qkv = nullptr;       // as in the forward
  int64_t qkv_stride_b = 0;
  int64_t qkv_stride_t = 0;
  const void* out = nullptr;   // [batch, tokens, D] contiguous (the forward output)
  const float* lse = nullptr;  // [batch, heads, tokens]
  int64_t batch = 0;
  int64_t tokens = 0;
  int heads = 0;
  int head_dim = 0;
  int frames = 0;
  bool temporal = false;
  float scale = 1.f;
  float* delta = nullptr;    // scratch [batch, heads, tokens]: rowsum(grad_out * out)
  void* grad_qkv = nullptr;  // [batch, tokens, 3*D] contiguous; every element is written
  // Optional float32 scratch for the CLS row/key gradients split over many CTAs
  // (divided_backward_workspace_bytes); without it they run as one row split over a CTA.
  float* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Attention core of the gated cross-attention: attn = softmax(q*scale k^T + key_mask) v.
struct CrossForwardParams {
  DType dtype = DType::kFloat32;
  const void* q = nullptr;  // [batch, len_q, D]
  int64_t q_stride_b = 0, q_stride_t = 0;
  const void* k = nullptr;  // [batch, len_k, D]
  int64_t k_stride_b = 0, k_stride_t = 0;
  const void* v = nullptr;  // [batch, len_k, D]
  int64_t v_stride_b = 0, v_stride_t = 0;
  const void* key_mask = nullptr;  // optional [batch, len_k], dtype, contiguous along keys
  int64_t mask_stride_b = 0;
  int64_t batch = 0;
  int64_t len_q = 0;
  int64_t len_k = 0;
  int heads = 0;
  int head_dim = 0;
  float scale = 1.f;
  void* attn = nullptr;  // [batch, len_q, D] contiguous
  float* lse = nullptr;  // [batch, heads, len_q]
};

struct CrossBackwardParams {
  DType dtype = DType::kFloat32;
  const void* grad_attn = nullptr;  // [batch, len_q, D] contiguous
  const void* q = nullptr;
  int64_t q_stride_b = 0, q_stride_t = 0;
  const void* k = nullptr;
  int64_t k_stride_b = 0, k_stride_t = 0;
  const void* v = nullptr;
  int64_t v_stride_b = 0, v_stride_t = 0;
  const void* key_mask = nullptr;
  int64_t mask_stride_b = 0;
  const void* attn = nullptr;  // [batch, len_q, D] contiguous (the forward output)
  const float* lse = nullptr;  // [batch, heads, len_q]
  int64_t batch = 0;
  int64_t len_q = 0;
  int64_t len_k = 0;
  int heads = 0;
  int head_dim = 0;
  float scale = 1.f;
  float* delta = nullptr;  // scratch [batch, heads, len_q]
  void* grad_q = nullptr;  // [batch, len_q, D] contiguous
  void* grad_k = nullptr;  // [batch, len_k, D] contiguous
  void* grad_v = nullptr;  // [batch, len_k, D] contiguous
};

// out = residual + gate * lin, elementwise over `numel` contiguous elements. `gate` is one
// element in device memory (dtype, or float32 when gate_is_float32), read by the kernel.
struct GateResidualParams {
  DType dtype = DType::kFloat32;
  const void* residual = nullptr;
  const void* lin = nullptr;
  const void* gate = nullptr;
  bool gate_is_float32 = false;
  void* out = nullptr;
  int64_t numel = 0;
};

// Bytes of DividedForwardParams::workspace that divided_forward can use for these shapes and
// dtype (0: no use). Depends only on dtype, batch, tokens, heads, head_dim, frames, temporal.
size_t divided_forward_workspace_bytes(const DividedForwardParams& p);
cudaError_t divided_forward(const DividedForwardParams& p, cudaStream_t stream);
// Bytes of DividedBackwardParams::workspace that divided_backward can use (0: no use). Depends
// only on dtype, batch, tokens, heads, head_dim, frames.
size_t divided_backward_workspace_bytes(const DividedBackwardParams& p);
cudaError_t divided_backward(const DividedBackwardParams& p, cudaStream_t stream);
cudaError_t cross_forward(const CrossForwardParams& p, cudaStream_t stream);
cudaError_t cross_backward(const CrossBackwardParams& p, cudaStream_t stream);
cudaError_t gate_residual(const GateResidualParams& p, cudaStream_t stream);

}  // namespace kernels
}  // namespace egovlpv2
