// Host-side launchers of the attention kernels, one explicit instantiation per dtype in
// simt_*.cu / mma_*.cu (so that the dtype units compile in parallel and the dispatcher in
// attention_api.cu sees only declarations).
#pragma once

#include "attention_common.cuh"

namespace egovlpv2 {
namespace kernels {
namespace detail {

enum SimtKind : int { kSimtForward = 0, kSimtDq = 1, kSimtDkv = 2 };
enum MmaKind : int { kMmaForward = 0, kMmaDq = 1, kMmaDkv = 2 };

// Head dims with a tensor-core kernel for the given pass (the dK/dV kernel keeps K, V, dK and dV
// of 16 rows in registers, which would spill at 128).
inline bool mma_supports(int kind, int head_dim) {
  if (kind == kMmaDkv) return head_dim == 32 || head_dim == 64;
  return head_dim == 32 || head_dim == 64 || head_dim == 128;
}

// One row per warp; rows [a.row_begin, a.row_begin + a.row_count), `a.split` warps per row.
template <class T>
cudaError_t launch_simt(int kind, const AttnArgs& a, cudaStream_t stream);

// delta = rowsum(dout * fwd_out) for every (batch, head, query row).
template <class T>
cudaError_t launch_delta(const AttnArgs& a, cudaStream_t stream);

// Temporal attention, one warp per (batch, patch position, head) column: the outputs (forward)
// or dQ, dK, dV (backward) of every patch token; the CLS row and key are not touched.
inline bool time_columns_supported(int frames, int head_dim) {
  return frames >= 1 && frames <= 8 && head_dim <= 64;
}
template <class T>
cudaError_t launch_time_columns(bool backward, const AttnArgs& a, cudaStream_t stream);

// Vectorised temporal forward with the CLS query folded in (attention_cls.cuh): 16-bit dtypes,
// F <= 4, head dim 32 or 64, 16-byte aligned rows.
inline bool time_vec_supported(int frames, int head_dim) {
  return frames >= 1 && frames <= 4 && (head_dim == 32 || head_dim == 64);
}

// Host and device agree on the CTA shape through this plan.
struct ClsPlan {
  bool ok = false;
  int lanes = 0;        // L: lanes per slot
  int cols = 0;         // C: slots per head in a CTA (columns or tokens processed side by side)
  int threads = 0;      // C * H * L rounded up to a warp
  int iters = 0;        // I: steps of C columns per CTA
  int unroll = 1;       // U: tokens per slot per step (spatial CLS partials)
  int64_t per_cta = 0;  // C * I * U items per CTA
  int64_t chunks = 0;   // CTAs per batch element = partials per (batch, head)
};

// items: patch columns N (temporal) or patch tokens F*N (spatial CLS row).
inline ClsPlan cls_plan(int heads, int head_dim, int64_t items, int unroll, int steps = 4) {
  ClsPlan p;
  if (head_dim != 32 && head_dim != 64 && head_dim != 128) return p;
  p.lanes = head_dim / 8;
  const int64_t slot_threads = int64_t(heads) * p.lanes;
  if (heads < 1 || slot_threads > 256 || items < 1) return p;
  p.cols = int(256 / slot_threads);
  p.threads = int((int64_t(p.cols) * slot_threads + 31) / 32 * 32);
  // About `steps` columns (or steps of U tokens) per slot position: enough CTAs for even waves
  // on a large GPU, few enough partials (forward: B*h*chunks*(DH+2) floats, 5 MB at B=32,
  // 12 heads, N=196).
  p.iters = p.cols >= steps ? 1 : steps / p.cols;
  p.unroll = unroll;
  p.per_cta = int64_t(p.cols) * p.iters * p.unroll;
  p.chunks = ceil_div(items, p.per_cta);
  p.ok = p.chunks <= 65535 * 16;
  return p;
}

inline size_t cls_smem_bytes(const ClsPlan& p) {
  return (size_t(p.threads) * 8 + size_t(p.threads / p.lanes) * 2) * sizeof(float);
}

// CLS row of the divided forward from per-CTA partials in `ws` (cls_plan(...).chunks per
// (batch, head), DH + 2 floats each): fused_time runs time_vec_forward_kernel (every patch
// token's output as well; temporal mode, time_vec_supported), otherwise cls_partial_kernel (the
// CLS row only, either mode); then the combine kernel.
template <class T>
cudaError_t launch_cls_vec(bool fused_time, const AttnArgs& a, float* ws, cudaStream_t stream);

// dQ of the CLS query and dK, dV of the CLS key (row 0) from per-CTA sums in `ws`
// (cls_plan(heads, head_dim, tokens, 2, kClsBackwardSteps).chunks per (batch, head), 3 * DH
// floats each: 15 MB at B=32, 12 heads, 785 tokens).
constexpr int kClsBackwardSteps = 8;
template <class T>
cudaError_t launch_cls_backward(const AttnArgs& a, float* ws, cudaStream_t stream);

// Tensor-core tiles over the groups of mma_groups(); T is __half or __nv_bfloat16.
template <class T>
cudaError_t launch_mma(int kind, const AttnArgs& a, cudaStream_t stream);

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
