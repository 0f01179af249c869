// One-row-per-warp attention kernels for __nv_bfloat16 (see attention_simt.cuh and
// attention_time.cuh).
#include "attention_cls.cuh"
#include "attention_time.cuh"

namespace egovlpv2 {
namespace kernels {
namespace detail {

template cudaError_t launch_simt<__nv_bfloat16>(int kind, const AttnArgs& a, cudaStream_t stream);
template cudaError_t launch_delta<__nv_bfloat16>(const AttnArgs& a, int row_chunks,
                                                 cudaStream_t stream);
template cudaError_t launch_time_columns<__nv_bfloat16>(bool backward, const AttnArgs& a,
                                                        cudaStream_t stream);
template cudaError_t launch_cls_vec<__nv_bfloat16>(bool fused_time, const AttnArgs& a,
                                                   const ClsGrid& g, float* ws,
                                                   cudaStream_t stream);
template cudaError_t launch_cls_backward<__nv_bfloat16>(const AttnArgs& a, const ClsGrid& g,
                                                        float* ws, cudaStream_t stream);

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
