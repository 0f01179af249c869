// Host-side launchers of the attention kernels, one explicit instantiation per dtype in
// simt_*.cu / mma_*.cu (so that the dtype units compile in parallel and attention_api.cu sees
// only declarations). They launch what a plan (attention_plan.h) says; the checks left here only
// keep a launch inside the template buckets it was compiled for.
#pragma once

#include "attention_common.cuh"
#include "attention_plan.h"

namespace egovlpv2 {
namespace kernels {
namespace detail {

enum SimtKind : int { kSimtForward = 0, kSimtDq = 1, kSimtDkv = 2 };
enum MmaKind : int { kMmaForward = 0, kMmaDq = 1, kMmaDkv = 2 };

// One row per warp; rows [a.row_begin, a.row_begin + a.row_count), `a.split` warps per row.
template <class T>
cudaError_t launch_simt(int kind, const AttnArgs& a, cudaStream_t stream);

// delta = rowsum(dout * fwd_out) for every (batch, head, query row): one warp per row over all
// heads in `row_chunks` 16-byte chunks per head (PlanStep::chunks), or, with 0, one warp per row
// and head.
template <class T>
cudaError_t launch_delta(const AttnArgs& a, int row_chunks, cudaStream_t stream);

// Temporal attention, one warp per (batch, patch position, head) column: the outputs (forward)
// or dQ, dK, dV (backward) of every patch token; the CLS row and key are not touched.
template <class T>
cudaError_t launch_time_columns(bool backward, const AttnArgs& a, cudaStream_t stream);

inline size_t cls_smem_bytes(const ClsGrid& g) {
  return (size_t(g.threads) * 8 + size_t(g.threads / g.lanes) * 2) * sizeof(float);
}

// CLS row of the divided forward from per-CTA partials in `ws` (g.chunks per (batch, head),
// DH + 2 floats each): fused_time runs time_vec_forward_kernel (every patch token's output as
// well; temporal mode, time_vec_supported), otherwise cls_partial_kernel (the CLS row only,
// either mode); then the combine kernel.
template <class T>
cudaError_t launch_cls_vec(bool fused_time, const AttnArgs& a, const ClsGrid& g, float* ws,
                           cudaStream_t stream);

// dQ of the CLS query and dK, dV of the CLS key (row 0) from per-CTA sums in `ws` (g.chunks per
// (batch, head), 3 * DH floats each: 15 MB at B=32, 12 heads, 785 tokens).
template <class T>
cudaError_t launch_cls_backward(const AttnArgs& a, const ClsGrid& g, float* ws,
                                cudaStream_t stream);

// Tensor-core tiles over the groups of mma_groups(); T is __half or __nv_bfloat16.
template <class T>
cudaError_t launch_mma(int kind, const AttnArgs& a, cudaStream_t stream);

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
