// One-row-per-warp attention kernels (CUDA cores, any dtype, any head dim <= 128).
//
// Used for: temporal attention (F+1 partners per row: too few for a tensor-core tile), the CLS
// query and the CLS key of divided attention (all T tokens as partners: several warps split the
// partner list and combine through shared memory), float32 inputs, and head dims the tensor-core
// kernels do not cover. A lane owns E = DH/32 consecutive elements of the head dim, so a row read
// by a warp is one contiguous, coalesced segment; dot products are reduced with warp shuffles.
// The softmax is online (running max and sum in registers), so no score row is ever stored.
#pragma once

#include <climits>
#include <cmath>

#include "attention_launch.h"

namespace egovlpv2 {
namespace kernels {
namespace detail {

constexpr int kSimtWarps = 8;
constexpr int kSimtThreads = kSimtWarps * 32;

template <int BYTES>
struct VecOf;
template <>
struct VecOf<2> {
  using type = unsigned short;
};
template <>
struct VecOf<4> {
  using type = unsigned int;
};
template <>
struct VecOf<8> {
  using type = uint2;
};
template <>
struct VecOf<16> {
  using type = uint4;
};

// Reads the lane's E elements [d0, d0+E) of a head row (zeros past head_dim). `vec` says the
// caller checked that the chunk is aligned for one vector load.
template <class T, int E>
__device__ __forceinline__ void load_chunk(float (&x)[E], const T* row, int d0, int dh, bool vec) {
  if (vec && d0 + E <= dh) {
    using V = typename VecOf<E * sizeof(T)>::type;
    const V raw = *reinterpret_cast<const V*>(row + d0);
    T tmp[E];
    memcpy(static_cast<void*>(tmp), &raw, sizeof(V));
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = to_f(tmp[e]);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) x[e] = (d0 + e < dh) ? to_f(row[d0 + e]) : 0.f;
  }
}

template <class T, int E>
__device__ __forceinline__ void store_chunk(T* row, const float (&x)[E], int d0, int dh, bool vec) {
  if (vec && d0 + E <= dh) {
    using V = typename VecOf<E * sizeof(T)>::type;
    T tmp[E];
#pragma unroll
    for (int e = 0; e < E; ++e) tmp[e] = from_f<T>(x[e]);
    V raw;
    memcpy(&raw, tmp, sizeof(V));
    *reinterpret_cast<V*>(row + d0) = raw;
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      if (d0 + e < dh) row[d0 + e] = from_f<T>(x[e]);
    }
  }
}

template <class T, int E>
__device__ __forceinline__ float dot_chunk(const float (&x)[E], const float (&y)[E]) {
  float s = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) s = fmaf(x[e], y[e], s);
  return s;
}

// Which row a warp works on, and which slice of its partner list.
struct SimtTask {
  bool active;
  int part;
  int slot;
  int64_t b;
  int h;
  int64_t row;
};

__device__ __forceinline__ SimtTask simt_task(const AttnArgs& a) {
  SimtTask t;
  const int warp = threadIdx.x >> 5;
  t.slot = warp / a.split;
  t.part = warp - t.slot * a.split;
  const int64_t task = int64_t(blockIdx.x) * (kSimtWarps / a.split) + t.slot;
  t.active = task < a.batch * a.heads * a.row_count;
  t.row = a.row_begin + task % a.row_count;
  const int64_t bh = task / a.row_count;
  t.h = int(bh % a.heads);
  t.b = bh / a.heads;
  return t;
}

// ---------------------------------------------------------------------------------------------
// Forward: out = softmax(q*scale . k + mask) v, lse = logsumexp of the scaled scores.
template <class T, int DH>
__global__ void __launch_bounds__(kSimtThreads) simt_forward_kernel(const AttnArgs a) {
  constexpr int E = DH / 32;
  // Partners in flight per step: independent loads and shuffles overlap. Two when a lane's chunk
  // is already a 16-byte vector (float32, head dim 128): four would spill on sm_90.
  constexpr int kU = E * sizeof(T) >= 16 ? 2 : 4;
  EGO_DYNAMIC_SMEM(float, red);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const SimtTask t = simt_task(a);
  const int dh = a.head_dim;
  const int d0 = lane * E;
  float m = -INFINITY;
  float l = 0.f;
  float acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.f;

  if (t.active) {
    const T* Q = static_cast<const T*>(a.q) + t.b * a.q_sb + t.row * a.q_st + int64_t(t.h) * dh;
    const T* K = static_cast<const T*>(a.k) + t.b * a.k_sb + int64_t(t.h) * dh;
    const T* V = static_cast<const T*>(a.v) + t.b * a.v_sb + int64_t(t.h) * dh;
    const T* M = a.mask ? static_cast<const T*>(a.mask) + t.b * a.mask_sb : nullptr;
    float q[E];
    load_chunk<T, E>(q, Q, d0, dh, a.vec_ok);
    // q is scaled before the product, as in the original model.
#pragma unroll
    for (int e = 0; e < E; ++e) q[e] *= a.scale;
    const Span sp = partner_span(a, t.row, false);
    const int64_t n_part = sp.prefix + sp.count;
    const int64_t chunk = ceil_div(n_part, a.split);
    const int64_t j_end = imin(n_part, (t.part + 1) * chunk);
    int64_t j = t.part * chunk;
    for (; j + kU <= j_end; j += kU) {
      int64_t tok[kU];
      float s[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        tok[u] = span_token(sp, j + u);
        float kv[E];
        load_chunk<T, E>(kv, K + tok[u] * a.k_st, d0, dh, a.vec_ok);
        s[u] = dot_chunk<T, E>(q, kv);
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
        for (int u = 0; u < kU; ++u) s[u] += __shfl_xor_sync(0xffffffffu, s[u], o);
      }
      float mx = m;
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (M) s[u] += to_f(M[tok[u]]);
        s[u] *= kLog2e;
        mx = fmaxf(mx, s[u]);
      }
      const float mu = mx == -INFINITY ? 0.f : mx;  // all partners so far masked with -inf
      const float alpha = exp2f(m - mu);
      l *= alpha;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] *= alpha;
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const float p = exp2f(s[u] - mu);
        l += p;
        float vv[E];
        load_chunk<T, E>(vv, V + tok[u] * a.v_st, d0, dh, a.vec_ok);
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] = fmaf(p, vv[e], acc[e]);
      }
      m = mx;
    }
    for (; j < j_end; ++j) {
      const int64_t tok = span_token(sp, j);
      float kv[E];
      load_chunk<T, E>(kv, K + tok * a.k_st, d0, dh, a.vec_ok);
      float s = warp_sum(dot_chunk<T, E>(q, kv));
      if (M) s += to_f(M[tok]);
      s *= kLog2e;
      const float mx = fmaxf(m, s);
      const float mu = mx == -INFINITY ? 0.f : mx;
      const float alpha = exp2f(m - mu);
      const float p = exp2f(s - mu);
      l = l * alpha + p;
      float vv[E];
      load_chunk<T, E>(vv, V + tok * a.v_st, d0, dh, a.vec_ok);
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] = fmaf(p, vv[e], acc[e] * alpha);
      m = mx;
    }
  }

  if (a.split > 1) {  // uniform over the block
    float* mine = red + (warp * 32 + lane) * (E + 2);
#pragma unroll
    for (int e = 0; e < E; ++e) mine[e] = acc[e];
    mine[E] = m;
    mine[E + 1] = l;
    __syncthreads();
    if (t.active && t.part == 0) {
      float mx = -INFINITY;
      for (int w = 0; w < a.split; ++w) {
        mx = fmaxf(mx, red[((t.slot * a.split + w) * 32 + lane) * (E + 2) + E]);
      }
      const float mu = mx == -INFINITY ? 0.f : mx;
      float lsum = 0.f;
      float o[E];
#pragma unroll
      for (int e = 0; e < E; ++e) o[e] = 0.f;
      for (int w = 0; w < a.split; ++w) {
        const float* src = red + ((t.slot * a.split + w) * 32 + lane) * (E + 2);
        const float wgt = exp2f(src[E] - mu);
        lsum += src[E + 1] * wgt;
#pragma unroll
        for (int e = 0; e < E; ++e) o[e] += src[e] * wgt;
      }
      m = mx;
      l = lsum;
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] = o[e];
    }
  }

  if (t.active && t.part == 0) {
    const float inv = 1.f / l;
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] *= inv;
    T* O = static_cast<T*>(a.o) + t.b * a.o_sb + t.row * a.o_st + int64_t(t.h) * dh;
    store_chunk<T, E>(O, acc, d0, dh, a.vec_ok);
    if (lane == 0) {
      a.lse[(t.b * a.heads + t.h) * a.q_rows + t.row] = (m + log2f(l)) * kLn2;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// dQ pass, one query row per warp: dq = scale * sum_j P_ij (dP_ij - delta_i) k_j,
// P_ij recomputed from the saved lse, dP_ij = dO_i . v_j.
template <class T, int DH>
__global__ void __launch_bounds__(kSimtThreads) simt_dq_kernel(const AttnArgs a) {
  constexpr int E = DH / 32;
  constexpr int kU = 2;
  EGO_DYNAMIC_SMEM(float, red);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const SimtTask t = simt_task(a);
  const int dh = a.head_dim;
  const int d0 = lane * E;
  float acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.f;

  if (t.active) {
    const T* Q = static_cast<const T*>(a.q) + t.b * a.q_sb + t.row * a.q_st + int64_t(t.h) * dh;
    const T* G =
        static_cast<const T*>(a.dout) + t.b * a.do_sb + t.row * a.do_st + int64_t(t.h) * dh;
    const T* K = static_cast<const T*>(a.k) + t.b * a.k_sb + int64_t(t.h) * dh;
    const T* V = static_cast<const T*>(a.v) + t.b * a.v_sb + int64_t(t.h) * dh;
    const T* M = a.mask ? static_cast<const T*>(a.mask) + t.b * a.mask_sb : nullptr;
    float q[E], g[E];
    load_chunk<T, E>(q, Q, d0, dh, a.vec_ok);
    load_chunk<T, E>(g, G, d0, dh, a.vec_ok);
    const int64_t li = (t.b * a.heads + t.h) * a.q_rows + t.row;
    const float lse2 = a.lse[li] * kLog2e;
    const float dlt = a.delta[li];
    const float sl2 = a.scale * kLog2e;
    const Span sp = partner_span(a, t.row, false);
    const int64_t n_part = sp.prefix + sp.count;
    const int64_t chunk = ceil_div(n_part, a.split);
    const int64_t j_end = imin(n_part, (t.part + 1) * chunk);
    int64_t j = t.part * chunk;
    for (; j < j_end; j += kU) {
      const int nu = int(imin(kU, j_end - j));  // warp-uniform
      int64_t tok[kU];
      float kv[kU][E];
      float s[kU], dp[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        tok[u] = span_token(sp, j + (u < nu ? u : 0));
        float vv[E];
        load_chunk<T, E>(kv[u], K + tok[u] * a.k_st, d0, dh, a.vec_ok);
        load_chunk<T, E>(vv, V + tok[u] * a.v_st, d0, dh, a.vec_ok);
        s[u] = dot_chunk<T, E>(q, kv[u]);
        dp[u] = dot_chunk<T, E>(g, vv);
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          s[u] += __shfl_xor_sync(0xffffffffu, s[u], o);
          dp[u] += __shfl_xor_sync(0xffffffffu, dp[u], o);
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (u < nu) {
          float x = s[u] * sl2;
          if (M) x += to_f(M[tok[u]]) * kLog2e;
          const float p = exp2f(x - lse2);
          const float ds = p * (dp[u] - dlt);
#pragma unroll
          for (int e = 0; e < E; ++e) acc[e] = fmaf(ds, kv[u][e], acc[e]);
        }
      }
    }
  }

  if (a.split > 1) {
    float* mine = red + (warp * 32 + lane) * E;
#pragma unroll
    for (int e = 0; e < E; ++e) mine[e] = acc[e];
    __syncthreads();
    if (t.active && t.part == 0) {
      for (int w = 1; w < a.split; ++w) {
        const float* src = red + ((t.slot * a.split + w) * 32 + lane) * E;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[e] += src[e];
      }
    }
  }

  if (t.active && t.part == 0) {
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] *= a.scale;
    T* O = static_cast<T*>(a.o) + t.b * a.o_sb + t.row * a.o_st + int64_t(t.h) * dh;
    store_chunk<T, E>(O, acc, d0, dh, a.vec_ok);
  }
}

// ---------------------------------------------------------------------------------------------
// dK/dV pass, one key row per warp, iterating over the queries that attend it:
// dv_j = sum_i P_ij dO_i, dk_j = scale * sum_i P_ij (dP_ij - delta_i) q_i.
template <class T, int DH>
__global__ void __launch_bounds__(kSimtThreads) simt_dkv_kernel(const AttnArgs a) {
  constexpr int E = DH / 32;
  constexpr int kU = 2;
  EGO_DYNAMIC_SMEM(float, red);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const SimtTask t = simt_task(a);
  const int dh = a.head_dim;
  const int d0 = lane * E;
  float dk[E], dv[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    dk[e] = 0.f;
    dv[e] = 0.f;
  }

  if (t.active) {
    const T* Krow = static_cast<const T*>(a.k) + t.b * a.k_sb + t.row * a.k_st + int64_t(t.h) * dh;
    const T* Vrow = static_cast<const T*>(a.v) + t.b * a.v_sb + t.row * a.v_st + int64_t(t.h) * dh;
    const T* Q = static_cast<const T*>(a.q) + t.b * a.q_sb + int64_t(t.h) * dh;
    const T* G = static_cast<const T*>(a.dout) + t.b * a.do_sb + int64_t(t.h) * dh;
    const float* L = a.lse + (t.b * a.heads + t.h) * a.q_rows;
    const float* Dl = a.delta + (t.b * a.heads + t.h) * a.q_rows;
    // The key mask is a property of this key: the same additive term for every query.
    const float mrow =
        a.mask ? to_f(static_cast<const T*>(a.mask)[t.b * a.mask_sb + t.row]) * kLog2e : 0.f;
    float kr[E], vr[E];
    load_chunk<T, E>(kr, Krow, d0, dh, a.vec_ok);
    load_chunk<T, E>(vr, Vrow, d0, dh, a.vec_ok);
    const float sl2 = a.scale * kLog2e;
    const Span sp = partner_span(a, t.row, true);
    const int64_t n_part = sp.prefix + sp.count;
    const int64_t chunk = ceil_div(n_part, a.split);
    const int64_t j_end = imin(n_part, (t.part + 1) * chunk);
    int64_t j = t.part * chunk;
    for (; j < j_end; j += kU) {
      const int nu = int(imin(kU, j_end - j));
      int64_t tok[kU];
      float qv[kU][E], gv[kU][E];
      float s[kU], dp[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        tok[u] = span_token(sp, j + (u < nu ? u : 0));
        load_chunk<T, E>(qv[u], Q + tok[u] * a.q_st, d0, dh, a.vec_ok);
        load_chunk<T, E>(gv[u], G + tok[u] * a.do_st, d0, dh, a.vec_ok);
        s[u] = dot_chunk<T, E>(qv[u], kr);
        dp[u] = dot_chunk<T, E>(gv[u], vr);
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          s[u] += __shfl_xor_sync(0xffffffffu, s[u], o);
          dp[u] += __shfl_xor_sync(0xffffffffu, dp[u], o);
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (u < nu) {
          const float p = exp2f(s[u] * sl2 + mrow - L[tok[u]] * kLog2e);
          const float ds = p * (dp[u] - Dl[tok[u]]);
#pragma unroll
          for (int e = 0; e < E; ++e) {
            dv[e] = fmaf(p, gv[u][e], dv[e]);
            dk[e] = fmaf(ds, qv[u][e], dk[e]);
          }
        }
      }
    }
  }

  if (a.split > 1) {
    float* mine = red + (warp * 32 + lane) * (2 * E);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      mine[e] = dk[e];
      mine[E + e] = dv[e];
    }
    __syncthreads();
    if (t.active && t.part == 0) {
      for (int w = 1; w < a.split; ++w) {
        const float* src = red + ((t.slot * a.split + w) * 32 + lane) * (2 * E);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          dk[e] += src[e];
          dv[e] += src[E + e];
        }
      }
    }
  }

  if (t.active && t.part == 0) {
#pragma unroll
    for (int e = 0; e < E; ++e) dk[e] *= a.scale;
    T* DK = static_cast<T*>(a.dk) + t.b * a.dk_sb + t.row * a.dk_st + int64_t(t.h) * dh;
    T* DV = static_cast<T*>(a.dv) + t.b * a.dv_sb + t.row * a.dv_st + int64_t(t.h) * dh;
    store_chunk<T, E>(DK, dk, d0, dh, a.vec_ok);
    store_chunk<T, E>(DV, dv, d0, dh, a.vec_ok);
  }
}

// ---------------------------------------------------------------------------------------------
// delta_i = dO_i . O_i per (batch, head, query row), float32; one warp per row and head. The
// general path (any head dim, any 2-byte alignment).
template <class T>
__global__ void __launch_bounds__(kSimtThreads) delta_kernel(const AttnArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t task = int64_t(blockIdx.x) * kSimtWarps + (threadIdx.x >> 5);
  if (task >= a.batch * a.q_rows * a.heads) return;  // warp-uniform; no barrier in this kernel
  const int h = int(task % a.heads);
  const int64_t br = task / a.heads;
  const int64_t row = br % a.q_rows;
  const int64_t b = br / a.q_rows;
  const int dh = a.head_dim;
  const T* G = static_cast<const T*>(a.dout) + b * a.do_sb + row * a.do_st + int64_t(h) * dh;
  const T* O = static_cast<const T*>(a.fwd_out) + b * a.fo_sb + row * a.fo_st + int64_t(h) * dh;
  float s = 0.f;
  for (int d = lane; d < dh; d += 32) s = fmaf(to_f(G[d]), to_f(O[d]), s);
  s = warp_sum(s);
  if (lane == 0) a.delta[(b * a.heads + h) * a.q_rows + row] = s;
}

// The same with one warp per (batch, row) over all heads, in 16-byte chunks: a head of 64
// bfloat16 values is 8 chunks, so 8 neighbouring lanes hold one head and a 3-step shuffle sums
// it. One warp per row and head moved 128 bytes per tensor per warp and ran at a third of the
// copy bandwidth on an H100 (bench/RESULTS.md, i2t profile); this reads whole rows.
// Needs: chunks per head C = head_dim / (16 / sizeof(T)) a power of two <= 32, and 16-byte
// aligned rows of dout and fwd_out (the planner's kDeltaRows step).
template <class T>
__global__ void __launch_bounds__(kSimtThreads) delta_rows_kernel(const AttnArgs a, int chunks) {
  constexpr int V = 16 / sizeof(T);
  const int lane = threadIdx.x & 31;
  const int64_t task = int64_t(blockIdx.x) * kSimtWarps + (threadIdx.x >> 5);
  if (task >= a.batch * a.q_rows) return;  // warp-uniform
  const int64_t row = task % a.q_rows;
  const int64_t b = task / a.q_rows;
  const uint4* G =
      reinterpret_cast<const uint4*>(static_cast<const T*>(a.dout) + b * a.do_sb + row * a.do_st);
  const uint4* O = reinterpret_cast<const uint4*>(static_cast<const T*>(a.fwd_out) + b * a.fo_sb +
                                                  row * a.fo_st);
  const int total = a.heads * chunks;
  for (int base = 0; base < total; base += 32) {
    const int c = base + lane;
    float s = 0.f;
    if (c < total) {
      const uint4 gv = G[c];
      const uint4 ov = O[c];
      T g[V], o[V];
      memcpy(g, &gv, 16);
      memcpy(o, &ov, 16);
#pragma unroll
      for (int e = 0; e < V; ++e) s = fmaf(to_f(g[e]), to_f(o[e]), s);
    }
    // Lanes c .. c + chunks - 1 (chunks divides 32 and base) hold one head.
    for (int off = chunks >> 1; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (c < total && (lane & (chunks - 1)) == 0) {
      a.delta[(b * a.heads + c / chunks) * a.q_rows + row] = s;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host launchers.

template <class T, int DH>
cudaError_t launch_simt_bucket(int kind, const AttnArgs& a, cudaStream_t stream) {
  const int64_t tasks = a.batch * a.heads * a.row_count;
  if (tasks == 0) return cudaSuccess;
  if (a.split != 1 && a.split != 2 && a.split != 4 && a.split != 8) return cudaErrorInvalidValue;
  const int64_t ctas = ceil_div(tasks, kSimtWarps / a.split);
  if (ctas > INT_MAX) return cudaErrorInvalidValue;
  constexpr int E = DH / 32;
  const size_t smem = size_t(kSimtWarps) * 32 * (2 * E + 2) * sizeof(float);
  const dim3 grid(static_cast<unsigned>(ctas));
  const dim3 block(kSimtThreads);
  if (kind == kSimtForward) {
    auto fn = &simt_forward_kernel<T, DH>;
    EGO_LAUNCH(fn, grid, block, smem, stream, a);
  } else if (kind == kSimtDq) {
    auto fn = &simt_dq_kernel<T, DH>;
    EGO_LAUNCH(fn, grid, block, smem, stream, a);
  } else {
    auto fn = &simt_dkv_kernel<T, DH>;
    EGO_LAUNCH(fn, grid, block, smem, stream, a);
  }
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_simt(int kind, const AttnArgs& a, cudaStream_t stream) {
  if (a.head_dim <= 32) return launch_simt_bucket<T, 32>(kind, a, stream);
  if (a.head_dim <= 64) return launch_simt_bucket<T, 64>(kind, a, stream);
  if (a.head_dim <= 128) return launch_simt_bucket<T, 128>(kind, a, stream);
  return cudaErrorInvalidValue;
}

template <class T>
cudaError_t launch_delta(const AttnArgs& a, int row_chunks, cudaStream_t stream) {
  if (row_chunks > 0) {
    const int64_t rows = a.batch * a.q_rows;
    if (rows == 0) return cudaSuccess;
    const int64_t ctas = ceil_div(rows, kSimtWarps);
    if (ctas > INT_MAX) return cudaErrorInvalidValue;
    auto fn = &delta_rows_kernel<T>;
    EGO_LAUNCH(fn, dim3(unsigned(ctas)), dim3(kSimtThreads), 0, stream, a, row_chunks);
    return cudaGetLastError();
  }
  const int64_t tasks = a.batch * a.q_rows * a.heads;
  if (tasks == 0) return cudaSuccess;
  const int64_t ctas = ceil_div(tasks, kSimtWarps);
  if (ctas > INT_MAX) return cudaErrorInvalidValue;
  auto fn = &delta_kernel<T>;
  EGO_LAUNCH(fn, dim3(unsigned(ctas)), dim3(kSimtThreads), 0, stream, a);
  return cudaGetLastError();
}

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
