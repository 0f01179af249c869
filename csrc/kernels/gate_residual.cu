// out = residual + gate * lin: the epilogue of the gated cross-attention. The gate (the learned
// alpha) is read from device memory by every thread, so the op never waits on the host.
#include <climits>

#include "attention_common.cuh"

namespace egovlpv2 {
namespace kernels {
namespace detail {

template <class T>
__global__ void __launch_bounds__(256)
    gate_residual_kernel(const T* __restrict__ residual, const T* __restrict__ lin,
                         const void* __restrict__ gate, bool gate_is_float32, T* __restrict__ out,
                         int64_t numel) {
  const float g =
      gate_is_float32 ? *static_cast<const float*>(gate) : to_f(*static_cast<const T*>(gate));
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += stride) {
    out[i] = from_f<T>(fmaf(g, to_f(lin[i]), to_f(residual[i])));
  }
}

// The same over 16-byte chunks (8 half-precision or 4 float32 values), then the tail element by
// element; for 16-byte aligned tensors. 2-byte loads reached ~2 TB/s on an H100 (the i2t
// profile in bench/RESULTS.md), short of the copy's 3 TB/s.
template <class T>
__global__ void __launch_bounds__(256)
    gate_residual_vec_kernel(const T* __restrict__ residual, const T* __restrict__ lin,
                             const void* __restrict__ gate, bool gate_is_float32,
                             T* __restrict__ out, int64_t numel) {
  constexpr int V = 16 / sizeof(T);
  const float g =
      gate_is_float32 ? *static_cast<const float*>(gate) : to_f(*static_cast<const T*>(gate));
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chunks = numel / V;
  for (int64_t i = first; i < chunks; i += stride) {
    const uint4 rv = reinterpret_cast<const uint4*>(residual)[i];
    const uint4 lv = reinterpret_cast<const uint4*>(lin)[i];
    T r[V], l[V], o[V];
    memcpy(r, &rv, 16);
    memcpy(l, &lv, 16);
#pragma unroll
    for (int e = 0; e < V; ++e) o[e] = from_f<T>(fmaf(g, to_f(l[e]), to_f(r[e])));
    uint4 ov;
    memcpy(&ov, o, 16);
    reinterpret_cast<uint4*>(out)[i] = ov;
  }
  for (int64_t i = chunks * V + first; i < numel; i += stride) {
    out[i] = from_f<T>(fmaf(g, to_f(lin[i]), to_f(residual[i])));
  }
}

template <class T>
cudaError_t launch_gate_residual(const GateResidualParams& p, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const auto aligned = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  if (aligned(p.residual) && aligned(p.lin) && aligned(p.out)) {
    constexpr int V = 16 / sizeof(T);
    const int64_t chunk_blocks = imin(ceil_div(p.numel / V, kThreads), 16384);
    const int64_t blocks = chunk_blocks > 0 ? chunk_blocks : 1;  // numel < V: the tail alone
    auto vec = &gate_residual_vec_kernel<T>;
    EGO_LAUNCH(vec, dim3(unsigned(blocks)), dim3(kThreads), 0, stream,
               static_cast<const T*>(p.residual), static_cast<const T*>(p.lin), p.gate,
               p.gate_is_float32, static_cast<T*>(p.out), p.numel);
    return cudaGetLastError();
  }
  const int64_t blocks = imin(ceil_div(p.numel, kThreads), 16384);
  auto fn = &gate_residual_kernel<T>;
  EGO_LAUNCH(fn, dim3(unsigned(blocks)), dim3(kThreads), 0, stream,
             static_cast<const T*>(p.residual), static_cast<const T*>(p.lin), p.gate,
             p.gate_is_float32, static_cast<T*>(p.out), p.numel);
  return cudaGetLastError();
}

}  // namespace detail

cudaError_t gate_residual(const GateResidualParams& p, cudaStream_t stream) {
  if (p.numel < 0) return cudaErrorInvalidValue;
  if (p.numel == 0) return cudaSuccess;
  switch (p.dtype) {
    case DType::kFloat32:
      return detail::launch_gate_residual<float>(p, stream);
    case DType::kFloat16:
      return detail::launch_gate_residual<__half>(p, stream);
    case DType::kBFloat16:
      return detail::launch_gate_residual<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kernels
}  // namespace egovlpv2
