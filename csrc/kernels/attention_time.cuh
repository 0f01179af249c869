// Temporal attention, one warp per column: the F patch tokens at one spatial position (b, n, h).
//
// In temporal mode the patch queries of a column attend exactly to the CLS key and the column's
// own F keys, and the column's patch keys are attended exactly by the CLS query and the column's
// own F queries. So a warp that loads the column once (q, k, v of F tokens, plus the CLS row,
// which stays in L1/L2 for every column) can produce the outputs of all F queries, and in the
// backward the dQ of all F queries and the dK/dV of all F keys, with every global load issued up
// front and no partial results leaving registers. Rows involving the CLS token as query (forward,
// dQ) or as key (dK/dV) are left to the one-row-per-warp kernels.
//
// FMAX bounds F at compile time (register arrays indexed by unrolled constants); F > 8 and head
// dims above 64 use the one-row-per-warp kernels instead.
#pragma once

#include "attention_simt.cuh"

namespace egovlpv2 {
namespace kernels {
namespace detail {

struct ColumnTask {
  bool active;
  int64_t b, n;
  int h;
};

__device__ __forceinline__ ColumnTask column_task(const AttnArgs& a) {
  ColumnTask c;
  const int64_t task = int64_t(blockIdx.x) * kSimtWarps + (threadIdx.x >> 5);
  c.active = task < a.batch * a.heads * a.patches;
  c.n = task % a.patches;
  const int64_t bh = task / a.patches;
  c.h = int(bh % a.heads);
  c.b = bh / a.heads;
  return c;
}

template <class T, int DH, int FMAX>
__global__ void __launch_bounds__(kSimtThreads) time_forward_kernel(const AttnArgs a) {
  constexpr int E = DH / 32;
  const ColumnTask c = column_task(a);
  if (!c.active) return;  // warp-uniform; this kernel has no block barrier
  const int lane = threadIdx.x & 31;
  const int dh = a.head_dim, d0 = lane * E, F = a.frames;
  const int64_t hd = int64_t(c.h) * dh;
  const T* Q = static_cast<const T*>(a.q) + c.b * a.q_sb + hd;
  const T* K = static_cast<const T*>(a.k) + c.b * a.k_sb + hd;
  const T* V = static_cast<const T*>(a.v) + c.b * a.v_sb + hd;
  float kc[E], vc[E], q[FMAX][E], k[FMAX][E], v[FMAX][E];
  load_chunk<T, E>(kc, K, d0, dh, a.vec_ok);
  load_chunk<T, E>(vc, V, d0, dh, a.vec_ok);
#pragma unroll
  for (int f = 0; f < FMAX; ++f) {
    if (f < F) {
      const int64_t tok = 1 + f * a.patches + c.n;
      load_chunk<T, E>(q[f], Q + tok * a.q_st, d0, dh, a.vec_ok);
      load_chunk<T, E>(k[f], K + tok * a.k_st, d0, dh, a.vec_ok);
      load_chunk<T, E>(v[f], V + tok * a.v_st, d0, dh, a.vec_ok);
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) q[f][e] = k[f][e] = v[f][e] = 0.f;
    }
  }
#pragma unroll
  for (int f = 0; f < FMAX; ++f) {
    if (f < F) {
#pragma unroll
      for (int e = 0; e < E; ++e) q[f][e] *= a.scale;  // q is scaled first, as in the model
      float s[FMAX + 1];
      s[0] = dot_chunk<T, E>(q[f], kc);
#pragma unroll
      for (int j = 0; j < FMAX; ++j) s[j + 1] = dot_chunk<T, E>(q[f], k[j]);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
        for (int j = 0; j <= FMAX; ++j) s[j] += __shfl_xor_sync(0xffffffffu, s[j], o);
      }
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j <= FMAX; ++j) {
        s[j] = j <= F ? s[j] * kLog2e : -INFINITY;
        mx = fmaxf(mx, s[j]);
      }
      float l = 0.f, acc[E];
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] = 0.f;
#pragma unroll
      for (int j = 0; j <= FMAX; ++j) {
        const float p = exp2f(s[j] - mx);
        l += p;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] = fmaf(p, j == 0 ? vc[e] : v[j - 1][e], acc[e]);
      }
      const float inv = 1.f / l;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] *= inv;
      const int64_t tok = 1 + f * a.patches + c.n;
      T* O = static_cast<T*>(a.o) + c.b * a.o_sb + tok * a.o_st + hd;
      store_chunk<T, E>(O, acc, d0, dh, a.vec_ok);
      if (lane == 0) a.lse[(c.b * a.heads + c.h) * a.q_rows + tok] = (mx + log2f(l)) * kLn2;
    }
  }
}

// dQ of the column's F queries and dK/dV of its F keys (the CLS query's share included).
template <class T, int DH, int FMAX>
__global__ void __launch_bounds__(kSimtThreads, 1) time_backward_kernel(const AttnArgs a) {
  constexpr int E = DH / 32;
  const ColumnTask c = column_task(a);
  if (!c.active) return;  // warp-uniform; this kernel has no block barrier
  const int lane = threadIdx.x & 31;
  const int dh = a.head_dim, d0 = lane * E, F = a.frames;
  const int64_t hd = int64_t(c.h) * dh;
  const T* Q = static_cast<const T*>(a.q) + c.b * a.q_sb + hd;
  const T* K = static_cast<const T*>(a.k) + c.b * a.k_sb + hd;
  const T* V = static_cast<const T*>(a.v) + c.b * a.v_sb + hd;
  const T* G = static_cast<const T*>(a.dout) + c.b * a.do_sb + hd;
  const float* L = a.lse + (c.b * a.heads + c.h) * a.q_rows;
  const float* Dl = a.delta + (c.b * a.heads + c.h) * a.q_rows;
  const float sl2 = a.scale * kLog2e;

  float qc[E], kc[E], vc[E], gc[E];
  float q[FMAX][E], k[FMAX][E], v[FMAX][E], g[FMAX][E], lse2[FMAX], dl[FMAX];
  load_chunk<T, E>(qc, Q, d0, dh, a.vec_ok);
  load_chunk<T, E>(kc, K, d0, dh, a.vec_ok);
  load_chunk<T, E>(vc, V, d0, dh, a.vec_ok);
  load_chunk<T, E>(gc, G, d0, dh, a.vec_ok);
  const float lse2c = L[0] * kLog2e, dlc = Dl[0];
#pragma unroll
  for (int f = 0; f < FMAX; ++f) {
    if (f < F) {
      const int64_t tok = 1 + f * a.patches + c.n;
      load_chunk<T, E>(q[f], Q + tok * a.q_st, d0, dh, a.vec_ok);
      load_chunk<T, E>(k[f], K + tok * a.k_st, d0, dh, a.vec_ok);
      load_chunk<T, E>(v[f], V + tok * a.v_st, d0, dh, a.vec_ok);
      load_chunk<T, E>(g[f], G + tok * a.do_st, d0, dh, a.vec_ok);
      lse2[f] = L[tok] * kLog2e;
      dl[f] = Dl[tok];
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) q[f][e] = k[f][e] = v[f][e] = g[f][e] = 0.f;
      lse2[f] = 0.f;
      dl[f] = 0.f;
    }
  }
  float dk[FMAX][E], dv[FMAX][E];
#pragma unroll
  for (int j = 0; j < FMAX; ++j) {
#pragma unroll
    for (int e = 0; e < E; ++e) dk[j][e] = dv[j][e] = 0.f;
  }

  // The CLS query (row 0) attends every key of the column.
  {
    float s[FMAX], dp[FMAX];
#pragma unroll
    for (int j = 0; j < FMAX; ++j) {
      s[j] = dot_chunk<T, E>(qc, k[j]);
      dp[j] = dot_chunk<T, E>(gc, v[j]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
      for (int j = 0; j < FMAX; ++j) {
        s[j] += __shfl_xor_sync(0xffffffffu, s[j], o);
        dp[j] += __shfl_xor_sync(0xffffffffu, dp[j], o);
      }
    }
#pragma unroll
    for (int j = 0; j < FMAX; ++j) {
      if (j < F) {
        const float p = exp2f(s[j] * sl2 - lse2c);
        const float ds = p * (dp[j] - dlc);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          dv[j][e] = fmaf(p, gc[e], dv[j][e]);
          dk[j][e] = fmaf(ds, qc[e], dk[j][e]);
        }
      }
    }
  }

  // The column's own queries: keys are the CLS key (j = 0) and the column's keys.
#pragma unroll
  for (int f = 0; f < FMAX; ++f) {
    if (f < F) {
      float s[FMAX + 1], dp[FMAX + 1];
      s[0] = dot_chunk<T, E>(q[f], kc);
      dp[0] = dot_chunk<T, E>(g[f], vc);
#pragma unroll
      for (int j = 0; j < FMAX; ++j) {
        s[j + 1] = dot_chunk<T, E>(q[f], k[j]);
        dp[j + 1] = dot_chunk<T, E>(g[f], v[j]);
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
        for (int j = 0; j <= FMAX; ++j) {
          s[j] += __shfl_xor_sync(0xffffffffu, s[j], o);
          dp[j] += __shfl_xor_sync(0xffffffffu, dp[j], o);
        }
      }
      float dq[E];
#pragma unroll
      for (int e = 0; e < E; ++e) dq[e] = 0.f;
#pragma unroll
      for (int j = 0; j <= FMAX; ++j) {
        if (j <= F) {
          const float p = exp2f(s[j] * sl2 - lse2[f]);
          const float ds = p * (dp[j] - dl[f]);
#pragma unroll
          for (int e = 0; e < E; ++e) dq[e] = fmaf(ds, j == 0 ? kc[e] : k[j - 1][e], dq[e]);
          if (j > 0) {
#pragma unroll
            for (int e = 0; e < E; ++e) {
              dv[j - 1][e] = fmaf(p, g[f][e], dv[j - 1][e]);
              dk[j - 1][e] = fmaf(ds, q[f][e], dk[j - 1][e]);
            }
          }
        }
      }
#pragma unroll
      for (int e = 0; e < E; ++e) dq[e] *= a.scale;
      const int64_t tok = 1 + f * a.patches + c.n;
      store_chunk<T, E>(static_cast<T*>(a.o) + c.b * a.o_sb + tok * a.o_st + hd, dq, d0, dh,
                        a.vec_ok);
    }
  }

#pragma unroll
  for (int j = 0; j < FMAX; ++j) {
    if (j < F) {
#pragma unroll
      for (int e = 0; e < E; ++e) dk[j][e] *= a.scale;
      const int64_t tok = 1 + j * a.patches + c.n;
      store_chunk<T, E>(static_cast<T*>(a.dk) + c.b * a.dk_sb + tok * a.dk_st + hd, dk[j], d0, dh,
                        a.vec_ok);
      store_chunk<T, E>(static_cast<T*>(a.dv) + c.b * a.dv_sb + tok * a.dv_st + hd, dv[j], d0, dh,
                        a.vec_ok);
    }
  }
}

template <class T, int DH, int FMAX>
cudaError_t launch_time_bucket(bool backward, const AttnArgs& a, cudaStream_t stream) {
  const int64_t tasks = a.batch * a.heads * a.patches;
  if (tasks == 0) return cudaSuccess;
  const int64_t ctas = ceil_div(tasks, kSimtWarps);
  if (ctas > INT_MAX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(ctas));
  const dim3 block(kSimtThreads);
  if (backward) {
    auto fn = &time_backward_kernel<T, DH, FMAX>;
    EGO_LAUNCH(fn, grid, block, 0, stream, a);
  } else {
    auto fn = &time_forward_kernel<T, DH, FMAX>;
    EGO_LAUNCH(fn, grid, block, 0, stream, a);
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_time_columns(bool backward, const AttnArgs& a, cudaStream_t stream) {
  if (!time_columns_supported(a.frames, a.head_dim)) return cudaErrorInvalidValue;
  if (a.head_dim <= 32) {
    return a.frames <= 4 ? launch_time_bucket<T, 32, 4>(backward, a, stream)
                         : launch_time_bucket<T, 32, 8>(backward, a, stream);
  }
  return a.frames <= 4 ? launch_time_bucket<T, 64, 4>(backward, a, stream)
                       : launch_time_bucket<T, 64, 8>(backward, a, stream);
}

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
