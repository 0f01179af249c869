// Tensor-core attention kernels for __half (see attention_mma.cuh).
#include "attention_mma.cuh"

namespace egovlpv2 {
namespace kernels {
namespace detail {

template cudaError_t launch_mma<__half>(int kind, const AttnArgs& a, cudaStream_t stream);

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
