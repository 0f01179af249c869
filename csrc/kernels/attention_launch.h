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

// Tensor-core tiles over the groups of mma_groups(); T is __half or __nv_bfloat16.
template <class T>
cudaError_t launch_mma(int kind, const AttnArgs& a, cudaStream_t stream);

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
