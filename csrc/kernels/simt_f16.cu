// One-row-per-warp attention kernels for __half (see attention_simt.cuh and
// attention_time.cuh).
#include "attention_cls.cuh"
#include "attention_time.cuh"

namespace egovlpv2 {
namespace kernels {
namespace detail {

template cudaError_t launch_simt<__half>(int kind, const AttnArgs& a, cudaStream_t stream);
template cudaError_t launch_delta<__half>(const AttnArgs& a, int row_chunks, cudaStream_t stream);
template cudaError_t launch_time_columns<__half>(bool backward, const AttnArgs& a,
                                                 cudaStream_t stream);
template cudaError_t launch_cls_vec<__half>(bool fused_time, const AttnArgs& a, const ClsGrid& g,
                                            float* ws, cudaStream_t stream);
template cudaError_t launch_cls_backward<__half>(const AttnArgs& a, const ClsGrid& g, float* ws,
                                                 cudaStream_t stream);

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
