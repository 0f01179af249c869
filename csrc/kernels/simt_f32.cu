// One-row-per-warp attention kernels for float (see attention_simt.cuh and
// attention_time.cuh).
#include "attention_time.cuh"

namespace egovlpv2 {
namespace kernels {
namespace detail {

template cudaError_t launch_simt<float>(int kind, const AttnArgs& a, cudaStream_t stream);
template cudaError_t launch_delta<float>(const AttnArgs& a, int row_chunks, cudaStream_t stream);
template cudaError_t launch_time_columns<float>(bool backward, const AttnArgs& a,
                                                cudaStream_t stream);

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
