// Shared pieces of the attention kernels: the key-set ("span") arithmetic of divided space-time
// attention, dtype conversions and warp primitives (the argument block: attention_args.h).
//
// The same sources compile three ways: with nvcc for the GPU, with nvcc's host pass, and with a
// plain host C++ compiler and EGO_EMULATE defined (csrc/kernels/emu/), which runs every CUDA
// thread as a fiber so that the kernels' indexing and synchronisation can be tested on a machine
// without a GPU. Device code therefore uses only: threadIdx/blockIdx/blockDim/gridDim,
// __syncthreads, __shfl_xor_sync, dynamic shared memory through EGO_DYNAMIC_SMEM, and the mma
// wrapper below.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "attention_args.h"

#if defined(EGO_EMULATE)
#include "emu/cuda_emu.h"
#define EGO_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::emu::dynamic_smem())
#define EGO_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ((void)(stream), ::emu::launch((grid), (block), (smem), [&]() { kernel(__VA_ARGS__); }))
#else
#define EGO_DYNAMIC_SMEM(type, name)                            \
  extern __shared__ __align__(16) unsigned char ego_smem_raw[]; \
  type* name = reinterpret_cast<type*>(ego_smem_raw)
#define EGO_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif

namespace egovlpv2 {
namespace kernels {
namespace detail {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// The partners of one row: `prefix` copies of token 0 first (the CLS token of divided attention),
// then `count` tokens start, start + step, ...
struct Span {
  int prefix;
  int64_t start;
  int64_t step;
  int64_t count;
};

// Divided attention is symmetric: the keys of query t are exactly the queries that attend key t,
// so one function serves the forward/dQ passes (rows = queries) and the dK/dV pass (rows = keys).
__host__ __device__ __forceinline__ Span partner_span(const AttnArgs& a, int64_t row,
                                                      bool kv_rows) {
  Span s;
  if (a.mode == kCross) {
    s.prefix = 0;
    s.start = 0;
    s.step = 1;
    s.count = kv_rows ? a.len_q : a.len_k;
    return s;
  }
  s.prefix = 1;
  if (row == 0) {
    s.start = 1;
    s.step = 1;
    s.count = a.tokens - 1;
    return s;
  }
  const int64_t p = row - 1;
  const int64_t f = p / a.patches;
  const int64_t n = p - f * a.patches;
  if (a.temporal) {
    s.start = 1 + n;
    s.step = a.patches;
    s.count = a.frames;
  } else {
    s.start = 1 + f * a.patches;
    s.step = 1;
    s.count = a.patches;
  }
  return s;
}

__host__ __device__ __forceinline__ int64_t span_token(const Span& s, int64_t j) {
  return j < s.prefix ? 0 : s.start + (j - s.prefix) * s.step;
}

// Groups for the tensor-core kernels: a group is a contiguous run of `rows` row tokens that share
// one partner list (optional token 0, then a contiguous run of `parts` tokens). Divided space
// attention: one group per frame; cross attention: one group per batch element.
struct Groups {
  int64_t groups;  // per batch element
  int64_t rows;
  int64_t row_base, row_gstride;
  int prefix;
  int64_t parts;
  int64_t part_base, part_gstride;
};

__host__ __device__ __forceinline__ Groups mma_groups(const AttnArgs& a, bool kv_rows) {
  Groups g;
  if (a.mode == kCross) {
    g.groups = 1;
    g.rows = kv_rows ? a.len_k : a.len_q;
    g.row_base = 0;
    g.row_gstride = 0;
    g.prefix = 0;
    g.parts = kv_rows ? a.len_q : a.len_k;
    g.part_base = 0;
    g.part_gstride = 0;
  } else {  // divided, spatial: patch rows of frame f, partners CLS + the frame's patches
    g.groups = a.frames;
    g.rows = a.patches;
    g.row_base = 1;
    g.row_gstride = a.patches;
    g.prefix = 1;
    g.parts = a.patches;
    g.part_base = 1;
    g.part_gstride = a.patches;
  }
  return g;
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
__host__ __device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// ---------------------------------------------------------------------------------------------
// dtype helpers (host versions exist too, for the emulator)

template <class T>
struct Cvt;
template <>
struct Cvt<float> {
  static __host__ __device__ __forceinline__ float to(float x) { return x; }
  static __host__ __device__ __forceinline__ float from(float x) { return x; }
};
template <>
struct Cvt<__half> {
  static __host__ __device__ __forceinline__ float to(__half x) { return __half2float(x); }
  static __host__ __device__ __forceinline__ __half from(float x) { return __float2half_rn(x); }
};
template <>
struct Cvt<__nv_bfloat16> {
  static __host__ __device__ __forceinline__ float to(__nv_bfloat16 x) {
    return __bfloat162float(x);
  }
  static __host__ __device__ __forceinline__ __nv_bfloat16 from(float x) {
    return __float2bfloat16_rn(x);
  }
};

template <class T>
__host__ __device__ __forceinline__ float to_f(T x) {
  return Cvt<T>::to(x);
}
template <class T>
__host__ __device__ __forceinline__ T from_f(float x) {
  return Cvt<T>::from(x);
}

template <class T>
__host__ __device__ __forceinline__ uint32_t bits16(T x) {
  static_assert(sizeof(T) == 2, "16-bit type expected");
  uint16_t u;
  memcpy(&u, &x, 2);
  return u;
}

// Two 16-bit values in one register, `lo` in the low half (the lower column / k index).
template <class T>
__host__ __device__ __forceinline__ uint32_t pack_raw(T lo, T hi) {
  return bits16(lo) | (bits16(hi) << 16);
}
template <class T>
__host__ __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  return pack_raw(from_f<T>(lo), from_f<T>(hi));
}

template <class T>
__device__ __forceinline__ uint32_t ld32(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}
template <class T>
__device__ __forceinline__ void st32(T* p, uint32_t v) {
  *reinterpret_cast<uint32_t*>(p) = v;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Reduction over the 4 lanes of a quad (lanes sharing lane >> 2): the lanes that hold one row
// of an mma accumulator tile.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  return x;
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  x += __shfl_xor_sync(0xffffffffu, x, 2);
  return x;
}

// 16-byte global -> shared copy that completes asynchronously (cp.async, sm_80+); `valid` false
// zero-fills the 16 bytes without reading global memory. Completion: cp_async_commit() closes a
// group, cp_async_wait<N>() waits until at most N groups are pending; a __syncthreads after the
// wait makes the data visible to the other threads.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#if defined(EGO_EMULATE)
  ::emu::cp_async16(smem, gmem, valid ? 16 : 0);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(n)
               : "memory");
#elif defined(__CUDA_ARCH__)
  uint4 v;
  v.x = v.y = v.z = v.w = 0u;
  if (valid) v = *reinterpret_cast<const uint4*>(gmem);
  *reinterpret_cast<uint4*>(smem) = v;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(EGO_EMULATE)
  ::emu::cp_async_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(EGO_EMULATE)
  ::emu::cp_async_wait(N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// D = A * B + D for one m16n8k16 tile, fp32 accumulation. Fragment layout (PTX ISA,
// "Matrix Fragments for mma.m16n8k16", g = lane >> 2, t = lane & 3):
//   a[0]: A[g][2t..2t+1]    a[1]: A[g+8][2t..2t+1]   a[2]: A[g][2t+8..]   a[3]: A[g+8][2t+8..]
//   b0:   B[2t..2t+1][g]    b1:   B[2t+8..2t+9][g]
//   d[0..1]: D[g][2t..2t+1] d[2..3]: D[g+8][2t..2t+1]
template <class T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
#if defined(EGO_EMULATE)
  ::emu::mma16816(d, a, b0, b1, std::is_same<T, __nv_bfloat16>::value);
#elif defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#else
  __trap();  // the tensor-core path is only dispatched on sm_80 and newer
#endif
#endif
}

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
