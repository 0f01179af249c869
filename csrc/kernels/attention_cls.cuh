// Vectorised divided-attention forward pieces that fold the CLS query into per-CTA partials.
//
// The CLS query attends all 1 + F*N keys. Run as its own few-row kernel it re-reads every K and
// V row with little parallelism and serialises after the patch kernel. Instead each CTA leaves
// one flash-decoding partial per (batch, head) in a float32 workspace `[B, h, chunks, DH + 2]`
// (running max in log2 units, sum, unnormalised accumulator), and `cls_combine_kernel` merges
// them with the CLS key's own term.
// * temporal: `time_vec_forward_kernel` already holds the column's keys and values in registers
//   for its patch queries, so the CLS partial costs no extra memory traffic;
// * spatial: `cls_partial_kernel` streams the keys split over many CTAs (the patch queries run
//   on the tensor-core kernel).
// Layout: a "slot" of L = DH/8 lanes owns one head of one column/token and reads 16 bytes per
// lane, so the H slots of a token read its contiguous q/k/v rows as whole 128-byte lines, and
// a dot product reduces with log2(L) shuffles. 16-bit dtypes only (8 elements per 16 bytes).
#pragma once

#include "attention_launch.h"
#include "attention_simt.cuh"

namespace egovlpv2 {
namespace kernels {
namespace detail {

constexpr float kNegBig = -1e30f;  // finite "minus infinity": exp2f(kNegBig - m) == 0, no NaN

// A 16-bit value from its bits (low half of `w`) to float.
template <class T>
__device__ __forceinline__ float bits_to_f(uint32_t w);
template <>
__device__ __forceinline__ float bits_to_f<__nv_bfloat16>(uint32_t w) {
  const uint32_t u = w << 16;  // bfloat16 is the top half of a float32
  float f;
  memcpy(&f, &u, 4);
  return f;
}
template <>
__device__ __forceinline__ float bits_to_f<__half>(uint32_t w) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xffffu)));
}

template <class T>
__device__ __forceinline__ void cvt8(float (&x)[8], const uint4& r) {
  const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    x[2 * i] = bits_to_f<T>(w[i]);
    x[2 * i + 1] = bits_to_f<T>(w[i] >> 16);
  }
}

template <class T>
__device__ __forceinline__ void ld8(float (&x)[8], const T* p) {
  cvt8<T>(x, *reinterpret_cast<const uint4*>(p));
}

template <class T>
__device__ __forceinline__ void st8(T* p, const float (&x)[8]) {
  uint4 r;
  r.x = pack2<T>(x[0], x[1]);
  r.y = pack2<T>(x[2], x[3]);
  r.z = pack2<T>(x[4], x[5]);
  r.w = pack2<T>(x[6], x[7]);
  *reinterpret_cast<uint4*>(p) = r;
}

__device__ __forceinline__ float dot8(const float (&a)[8], const float (&b)[8]) {
  float s = 0.f;
#pragma unroll
  for (int e = 0; e < 8; ++e) s = fmaf(a[e], b[e], s);
  return s;
}

// Sum over the L lanes of a slot (L a power of two <= 32; slots are L-aligned in the warp).
template <int L>
__device__ __forceinline__ float slot_sum(float x) {
#pragma unroll
  for (int o = 1; o < L; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Merges the C partials of each head in the CTA (shared memory) and writes one partial per
// (batch, head) for this CTA. Every thread of the block must call it (it has a barrier).
template <int DH>
__device__ __forceinline__ void cta_partial_store(const AttnArgs& a, float* ws, int64_t chunks,
                                                  int cols, float m, float l,
                                                  const float (&acc)[8]) {
  constexpr int L = DH / 8;
  EGO_DYNAMIC_SMEM(float, sm);
  const int tid = threadIdx.x, slot = tid / L, sub = tid % L;
  const int H = a.heads;
  float* sm_ml = sm + blockDim.x * 8;
#pragma unroll
  for (int e = 0; e < 8; ++e) sm[tid * 8 + e] = acc[e];
  if (sub == 0) {
    sm_ml[2 * slot] = m;
    sm_ml[2 * slot + 1] = l;
  }
  __syncthreads();
  if (slot < H) {  // c == 0: this slot merges the head's C slots
    float mx = kNegBig;
    for (int c = 0; c < cols; ++c) mx = fmaxf(mx, sm_ml[2 * (c * H + slot)]);
    float lt = 0.f, at[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) at[e] = 0.f;
    for (int c = 0; c < cols; ++c) {
      const int s = c * H + slot;
      const float w = exp2f(sm_ml[2 * s] - mx);
      lt = fmaf(sm_ml[2 * s + 1], w, lt);
#pragma unroll
      for (int e = 0; e < 8; ++e) at[e] = fmaf(sm[(s * L + sub) * 8 + e], w, at[e]);
    }
    float* P = ws + ((int64_t(blockIdx.y) * H + slot) * chunks + blockIdx.x) * (DH + 2);
    if (sub == 0) {
      P[0] = mx;
      P[1] = lt;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) P[2 + sub * 8 + e] = at[e];
  }
}

// Online-softmax update of a partial with up to N new log2-scaled scores (p == 0 where invalid).
template <int N>
__device__ __forceinline__ void partial_update(float& m, float& l, float (&acc)[8],
                                               const float (&s)[N], unsigned ok,
                                               const float (&v)[N][8]) {
  float mx = m;
#pragma unroll
  for (int j = 0; j < N; ++j) mx = (ok >> j) & 1u ? fmaxf(mx, s[j]) : mx;
  const float alpha = exp2f(m - mx);
  l *= alpha;
#pragma unroll
  for (int e = 0; e < 8; ++e) acc[e] *= alpha;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const float p = (ok >> j) & 1u ? exp2f(s[j] - mx) : 0.f;
    l += p;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] = fmaf(p, v[j][e], acc[e]);
  }
  m = mx;
}

// Temporal forward: outputs and lse of every patch token, plus the CLS partials.
// grid (chunks, batch), block ClsGrid::threads; slot = c * H + h, column n = chunk*C*I + it*C + c.
template <class T, int DH, int FMAX>
__global__ void __launch_bounds__(256)
    time_vec_forward_kernel(const AttnArgs a, float* ws, int cols, int iters, int64_t chunks) {
  constexpr int L = DH / 8;
  const int tid = threadIdx.x, slot = tid / L, sub = tid % L, d0 = sub * 8;
  const int H = a.heads, F = a.frames;
  const int c = slot / H;
  const bool slot_ok = c < cols;
  const int h = slot_ok ? slot % H : 0;  // idle slots read head 0 and write nothing
  const int64_t b = blockIdx.y, N = a.patches;
  const int64_t hd = int64_t(h) * DH + d0;
  const T* Q = static_cast<const T*>(a.q) + b * a.q_sb + hd;
  const T* K = static_cast<const T*>(a.k) + b * a.k_sb + hd;
  const T* V = static_cast<const T*>(a.v) + b * a.v_sb + hd;
  T* O = static_cast<T*>(a.o) + b * a.o_sb + hd;
  float* lse = a.lse + (b * H + h) * a.q_rows;
  float qc[8], kc[8], vc[8];
  ld8<T>(qc, Q);
  ld8<T>(kc, K);
  ld8<T>(vc, V);
#pragma unroll
  for (int e = 0; e < 8; ++e) qc[e] *= a.scale;  // q is scaled first, as in the model
  float cm = kNegBig, cl = 0.f, cacc[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) cacc[e] = 0.f;

  for (int it = 0; it < iters; ++it) {
    const int64_t n = int64_t(blockIdx.x) * cols * iters + int64_t(it) * cols + c;
    const bool act = slot_ok && n < N;
    const int64_t nn = act ? n : 0;  // inactive slots load column 0 (valid memory)
    uint4 qr[FMAX];
    float k[FMAX][8], v[FMAX][8];
#pragma unroll
    for (int f = 0; f < FMAX; ++f) {
      if (f < F) {
        const int64_t tok = 1 + f * N + nn;
        qr[f] = *reinterpret_cast<const uint4*>(Q + tok * a.q_st);
        ld8<T>(k[f], K + tok * a.k_st);
        ld8<T>(v[f], V + tok * a.v_st);
      } else {
        qr[f] = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
        for (int e = 0; e < 8; ++e) k[f][e] = v[f][e] = 0.f;
      }
    }
    // The CLS query against this column's keys.
    {
      float s[FMAX];
      unsigned ok = 0u;  // bit j: key j of the column exists
#pragma unroll
      for (int j = 0; j < FMAX; ++j) {
        s[j] = slot_sum<L>(dot8(qc, k[j])) * kLog2e;
        ok |= (act && j < F) ? 1u << j : 0u;
      }
      partial_update<FMAX>(cm, cl, cacc, s, ok, v);
    }
    // The column's own queries: keys are the CLS key (j = 0) and the column's keys.
#pragma unroll
    for (int f = 0; f < FMAX; ++f) {
      if (f < F) {
        float q[8];
        cvt8<T>(q, qr[f]);
#pragma unroll
        for (int e = 0; e < 8; ++e) q[e] *= a.scale;
        float s[FMAX + 1];
        s[0] = slot_sum<L>(dot8(q, kc)) * kLog2e;
#pragma unroll
        for (int j = 0; j < FMAX; ++j) s[j + 1] = slot_sum<L>(dot8(q, k[j])) * kLog2e;
        float mx = s[0];
#pragma unroll
        for (int j = 0; j < FMAX; ++j) mx = j < F ? fmaxf(mx, s[j + 1]) : mx;
        float p0 = exp2f(s[0] - mx), l = p0, acc[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] = p0 * vc[e];
#pragma unroll
        for (int j = 0; j < FMAX; ++j) {
          const float p = j < F ? exp2f(s[j + 1] - mx) : 0.f;
          l += p;
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[e] = fmaf(p, v[j][e], acc[e]);
        }
        const float inv = 1.f / l;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] *= inv;
        if (act) {
          const int64_t tok = 1 + f * N + n;
          st8<T>(O + tok * a.o_st, acc);
          if (sub == 0) lse[tok] = (mx + log2f(l)) * kLn2;
        }
      }
    }
  }
  cta_partial_store<DH>(a, ws, chunks, cols, cm, cl, cacc);
}

// Spatial CLS row: partials of the CLS query over the patch tokens, U tokens per slot per step.
// grid (chunks, batch); token t = 1 + chunk*C*I*U + (it*C + c)*U + u.
template <class T, int DH, int U>
__global__ void __launch_bounds__(256, 1)
    cls_partial_kernel(const AttnArgs a, float* ws, int cols, int iters, int64_t chunks) {
  constexpr int L = DH / 8;
  const int tid = threadIdx.x, slot = tid / L, sub = tid % L, d0 = sub * 8;
  const int H = a.heads;
  const int c = slot / H;
  const bool slot_ok = c < cols;
  const int h = slot_ok ? slot % H : 0;
  const int64_t b = blockIdx.y, last = a.tokens - 1;
  const int64_t hd = int64_t(h) * DH + d0;
  const T* K = static_cast<const T*>(a.k) + b * a.k_sb + hd;
  const T* V = static_cast<const T*>(a.v) + b * a.v_sb + hd;
  float qc[8];
  ld8<T>(qc, static_cast<const T*>(a.q) + b * a.q_sb + hd);
#pragma unroll
  for (int e = 0; e < 8; ++e) qc[e] *= a.scale;
  float cm = kNegBig, cl = 0.f, cacc[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) cacc[e] = 0.f;
  for (int it = 0; it < iters; ++it) {
    const int64_t t0 = 1 + int64_t(blockIdx.x) * cols * iters * U + (int64_t(it) * cols + c) * U;
    float k[U][8], v[U][8], s[U];
    unsigned ok = 0u;  // bit u: token t0 + u exists
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const bool valid = slot_ok && t0 + u <= last;
      ok |= valid ? 1u << u : 0u;
      const int64_t t = valid ? t0 + u : 1;
      ld8<T>(k[u], K + t * a.k_st);
      ld8<T>(v[u], V + t * a.v_st);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) s[u] = slot_sum<L>(dot8(qc, k[u])) * kLog2e;
    partial_update<U>(cm, cl, cacc, s, ok, v);
  }
  cta_partial_store<DH>(a, ws, chunks, cols, cm, cl, cacc);
}

// Row 0 (the CLS query) of every (batch, head): its own key's term merged with the partials.
// One CTA per (batch, head): the max over all partials first (so the merge has no loop-carried
// rescaling and every warp's loads can be in flight at once), then warp w sums chunks w, w+8,
// ..., and the 8 warp sums meet in shared memory. A lane owns DH/32 elements.
template <class T, int DH>
__global__ void __launch_bounds__(kSimtThreads)
    cls_combine_kernel(const AttnArgs a, const float* ws, int64_t chunks) {
  constexpr int E = DH / 32;
  EGO_DYNAMIC_SMEM(float, sm);  // [kSimtWarps][DH] sums, then [kSimtWarps] denominators
  const int64_t task = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, d0 = lane * E;
  const int64_t b = task / a.heads;
  const int h = int(task % a.heads);
  const int64_t hd = int64_t(h) * DH + d0;
  const T* Q = static_cast<const T*>(a.q) + b * a.q_sb + hd;
  const T* K = static_cast<const T*>(a.k) + b * a.k_sb + hd;
  const T* V = static_cast<const T*>(a.v) + b * a.v_sb + hd;
  float s = 0.f, vc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    s = fmaf(to_f<T>(Q[e]) * a.scale, to_f<T>(K[e]), s);
    vc[e] = to_f<T>(V[e]);
  }
  const float s0 = warp_sum(s) * kLog2e;
  const float* P0 = ws + task * chunks * (DH + 2);
  float mx = s0;
  for (int64_t ch = lane; ch < chunks; ch += 32) mx = fmaxf(mx, P0[ch * (DH + 2)]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float l = 0.f, acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.f;
  if (warp == 0) {
    l = exp2f(s0 - mx);
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = l * vc[e];
  }
#pragma unroll 4
  for (int64_t ch = warp; ch < chunks; ch += kSimtWarps) {
    const float* P = P0 + ch * (DH + 2);
    const float w = exp2f(P[0] - mx);
    l = fmaf(P[1], w, l);
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = fmaf(P[2 + d0 + e], w, acc[e]);
  }
#pragma unroll
  for (int e = 0; e < E; ++e) sm[warp * DH + d0 + e] = acc[e];
  if (lane == 0) sm[kSimtWarps * DH + warp] = l;
  __syncthreads();
  if (warp != 0) return;  // no barrier after this point
  float lt = 0.f;
#pragma unroll
  for (int w = 0; w < kSimtWarps; ++w) lt += sm[kSimtWarps * DH + w];
  const float inv = 1.f / lt;
  T* O = static_cast<T*>(a.o) + b * a.o_sb + hd;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < kSimtWarps; ++w) t += sm[w * DH + d0 + e];
    O[e] = from_f<T>(t * inv);
  }
  if (lane == 0) a.lse[(b * a.heads + h) * a.q_rows] = (mx + log2f(lt)) * kLn2;
}

template <class T, int DH>
cudaError_t launch_cls_combine_dh(const AttnArgs& a, const float* ws, int64_t chunks,
                                  cudaStream_t stream) {
  const int64_t ctas = a.batch * a.heads;
  if (ctas > INT_MAX) return cudaErrorInvalidValue;
  const size_t smem = (size_t(kSimtWarps) * DH + kSimtWarps) * sizeof(float);
  auto fn = &cls_combine_kernel<T, DH>;
  EGO_LAUNCH(fn, dim3(static_cast<unsigned>(ctas)), dim3(kSimtThreads), smem, stream, a, ws,
             chunks);
  return cudaGetLastError();
}

// Backward of the CLS row and the CLS key, split over many CTAs. Every token i is both a key of
// the CLS query (dQ_0 += dS_0i k_i) and a query of the CLS key (dK_0 += dS_i0 q_i,
// dV_0 += P_i0 dO_i), token 0 included. Each CTA writes, per head, the plain sums of its tokens
// (`[B, h, chunks, 3, DH]`, scale not yet applied); cls_backward_combine_kernel adds them up.
// grid (chunks, batch); token t = chunk*C*I*U + (it*C + c)*U + u.
template <class T, int DH, int U>
__global__ void __launch_bounds__(256, 1)
    cls_backward_partial_kernel(const AttnArgs a, float* ws, int cols, int iters, int64_t chunks) {
  constexpr int L = DH / 8;
  const int tid = threadIdx.x, slot = tid / L, sub = tid % L, d0 = sub * 8;
  const int H = a.heads;
  const int c = slot / H;
  const bool slot_ok = c < cols;
  const int h = slot_ok ? slot % H : 0;
  const int64_t b = blockIdx.y, T_ = a.tokens;
  const int64_t hd = int64_t(h) * DH + d0;
  const T* Q = static_cast<const T*>(a.q) + b * a.q_sb + hd;
  const T* K = static_cast<const T*>(a.k) + b * a.k_sb + hd;
  const T* V = static_cast<const T*>(a.v) + b * a.v_sb + hd;
  const T* G = static_cast<const T*>(a.dout) + b * a.do_sb + hd;
  const float* Lse = a.lse + (b * H + h) * a.q_rows;
  const float* Dl = a.delta + (b * H + h) * a.q_rows;
  const float sl2 = a.scale * kLog2e;
  float q0[8], k0[8], v0[8], g0[8];
  ld8<T>(q0, Q);
  ld8<T>(k0, K);
  ld8<T>(v0, V);
  ld8<T>(g0, G);
  const float lse0 = Lse[0] * kLog2e, dl0 = Dl[0];
  float dq[8], dk[8], dv[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) dq[e] = dk[e] = dv[e] = 0.f;
  for (int it = 0; it < iters; ++it) {
    const int64_t t0 = int64_t(blockIdx.x) * cols * iters * U + (int64_t(it) * cols + c) * U;
    float q[U][8], k[U][8], v[U][8], g[U][8], lse[U], dl[U];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      ok[u] = slot_ok && t0 + u < T_;
      const int64_t t = ok[u] ? t0 + u : 0;
      ld8<T>(q[u], Q + t * a.q_st);
      ld8<T>(k[u], K + t * a.k_st);
      ld8<T>(v[u], V + t * a.v_st);
      ld8<T>(g[u], G + t * a.do_st);
      lse[u] = Lse[t] * kLog2e;
      dl[u] = Dl[t];
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const float sa = slot_sum<L>(dot8(q0, k[u]));  // CLS query . key t
      const float dpa = slot_sum<L>(dot8(g0, v[u]));
      const float sb = slot_sum<L>(dot8(q[u], k0));  // query t . CLS key
      const float dpb = slot_sum<L>(dot8(g[u], v0));
      const float pa = ok[u] ? exp2f(sa * sl2 - lse0) : 0.f;
      const float pb = ok[u] ? exp2f(sb * sl2 - lse[u]) : 0.f;
      const float dsa = pa * (dpa - dl0), dsb = pb * (dpb - dl[u]);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        dq[e] = fmaf(dsa, k[u][e], dq[e]);
        dk[e] = fmaf(dsb, q[u][e], dk[e]);
        dv[e] = fmaf(pb, g[u][e], dv[e]);
      }
    }
  }
  // Sum the C slots of each head through shared memory; slot c == 0 writes the CTA's sums.
  EGO_DYNAMIC_SMEM(float, sm);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    sm[(tid * 3 + 0) * 8 + e] = dq[e];
    sm[(tid * 3 + 1) * 8 + e] = dk[e];
    sm[(tid * 3 + 2) * 8 + e] = dv[e];
  }
  __syncthreads();
  if (slot < H) {
    float* P = ws + ((b * H + slot) * chunks + blockIdx.x) * (3 * DH);
#pragma unroll
    for (int x = 0; x < 3; ++x) {
      float acc[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[e] = 0.f;
      for (int cc = 0; cc < cols; ++cc) {
        const int t = (cc * H + slot) * L + sub;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] += sm[(t * 3 + x) * 8 + e];
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) P[x * DH + d0 + e] = acc[e];
    }
  }
}

// dQ, dK, dV of token 0: the sums of all chunks, scaled. One CTA per (batch, head).
template <class T, int DH>
__global__ void __launch_bounds__(kSimtThreads)
    cls_backward_combine_kernel(const AttnArgs a, const float* ws, int64_t chunks) {
  constexpr int E = DH / 32;
  EGO_DYNAMIC_SMEM(float, sm);  // [kSimtWarps][3][DH]
  const int64_t task = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, d0 = lane * E;
  const int64_t b = task / a.heads;
  const int h = int(task % a.heads);
  const float* P0 = ws + task * chunks * (3 * DH);
  float acc[3][E];
#pragma unroll
  for (int x = 0; x < 3; ++x) {
#pragma unroll
    for (int e = 0; e < E; ++e) acc[x][e] = 0.f;
  }
#pragma unroll 4
  for (int64_t ch = warp; ch < chunks; ch += kSimtWarps) {
    const float* P = P0 + ch * (3 * DH);
#pragma unroll
    for (int x = 0; x < 3; ++x) {
#pragma unroll
      for (int e = 0; e < E; ++e) acc[x][e] += P[x * DH + d0 + e];
    }
  }
#pragma unroll
  for (int x = 0; x < 3; ++x) {
#pragma unroll
    for (int e = 0; e < E; ++e) sm[(warp * 3 + x) * DH + d0 + e] = acc[x][e];
  }
  __syncthreads();
  if (warp != 0) return;  // no barrier after this point
  const int64_t hd = int64_t(h) * DH + d0;
  T* out[3] = {static_cast<T*>(a.o) + b * a.o_sb + hd, static_cast<T*>(a.dk) + b * a.dk_sb + hd,
               static_cast<T*>(a.dv) + b * a.dv_sb + hd};
#pragma unroll
  for (int x = 0; x < 3; ++x) {
    const float f = x < 2 ? a.scale : 1.f;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      float t = 0.f;
#pragma unroll
      for (int w = 0; w < kSimtWarps; ++w) t += sm[(w * 3 + x) * DH + d0 + e];
      out[x][e] = from_f<T>(t * f);
    }
  }
}

template <class T, int DH>
cudaError_t launch_cls_backward_dh(const AttnArgs& a, const ClsGrid& g, float* ws,
                                   cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(g.chunks), static_cast<unsigned>(a.batch));
  const size_t smem = size_t(g.threads) * 24 * sizeof(float);
  auto fn = &cls_backward_partial_kernel<T, DH, 2>;
  EGO_LAUNCH(fn, grid, dim3(g.threads), smem, stream, a, ws, g.cols, g.iters, g.chunks);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t ctas = a.batch * a.heads;
  if (ctas > INT_MAX) return cudaErrorInvalidValue;
  const size_t smem2 = size_t(kSimtWarps) * 3 * DH * sizeof(float);
  auto fn2 = &cls_backward_combine_kernel<T, DH>;
  EGO_LAUNCH(fn2, dim3(static_cast<unsigned>(ctas)), dim3(kSimtThreads), smem2, stream, a,
             static_cast<const float*>(ws), g.chunks);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_cls_backward(const AttnArgs& a, const ClsGrid& g, float* ws,
                                cudaStream_t stream) {
  if (!g.ok || a.batch > 65535) return cudaErrorInvalidValue;
  if (a.head_dim == 32) return launch_cls_backward_dh<T, 32>(a, g, ws, stream);
  if (a.head_dim == 64) return launch_cls_backward_dh<T, 64>(a, g, ws, stream);
  return launch_cls_backward_dh<T, 128>(a, g, ws, stream);
}

template <class T>
cudaError_t launch_cls_vec(bool fused_time, const AttnArgs& a, const ClsGrid& g, float* ws,
                           cudaStream_t stream) {
  if (!g.ok || a.batch > 65535 ||
      (fused_time && (!a.temporal || !time_vec_supported(a.frames, a.head_dim)))) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>(g.chunks), static_cast<unsigned>(a.batch));
  const dim3 block(g.threads);
  const size_t smem = cls_smem_bytes(g);
  if (fused_time) {
    if (a.head_dim == 32) {
      auto fn = &time_vec_forward_kernel<T, 32, 4>;
      EGO_LAUNCH(fn, grid, block, smem, stream, a, ws, g.cols, g.iters, g.chunks);
    } else {
      auto fn = &time_vec_forward_kernel<T, 64, 4>;
      EGO_LAUNCH(fn, grid, block, smem, stream, a, ws, g.cols, g.iters, g.chunks);
    }
  } else {
    if (a.head_dim == 32) {
      auto fn = &cls_partial_kernel<T, 32, 4>;
      EGO_LAUNCH(fn, grid, block, smem, stream, a, ws, g.cols, g.iters, g.chunks);
    } else if (a.head_dim == 64) {
      auto fn = &cls_partial_kernel<T, 64, 4>;
      EGO_LAUNCH(fn, grid, block, smem, stream, a, ws, g.cols, g.iters, g.chunks);
    } else {
      auto fn = &cls_partial_kernel<T, 128, 4>;
      EGO_LAUNCH(fn, grid, block, smem, stream, a, ws, g.cols, g.iters, g.chunks);
    }
  }
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  if (a.head_dim == 32) return launch_cls_combine_dh<T, 32>(a, ws, g.chunks, stream);
  if (a.head_dim == 64) return launch_cls_combine_dh<T, 64>(a, ws, g.chunks, stream);
  return launch_cls_combine_dh<T, 128>(a, ws, g.chunks, stream);
}

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
