// Tensor-core attention kernels (float16 / bfloat16, head dim 32, 64 or 128, fp32 accumulation).
//
// Flash-attention style: a CTA of 4 warps owns a tile of 64 rows (16 per warp) and streams the
// partner list in blocks of 32 through shared memory. Scores never leave registers: the m16n8k16
// accumulator layout of S is exactly the A-operand layout needed for the next product (P V, dS K,
// P^T dO, dS^T Q), so P and dS are repacked to 16 bits in registers. Row statistics (running max
// and sum, lse, delta) live in registers of the 4 lanes that own a row. All shared-memory tiles
// are row-major with 8 elements of padding per row, which makes every fragment read below free
// of bank conflicts (row pitch = 4 banks mod 32). Tiles are filled with 16-byte loads; rows past
// the end of the partner list are zero-filled so that 0 * garbage can never produce a NaN.
//
// Kernels:
//   mma_forward_kernel  rows = queries: O, lse (online softmax)
//   mma_dq_kernel       rows = queries: dQ from the saved lse and delta
//   mma_dkv_kernel      rows = keys, partners = the queries that attend them: dK, dV
#pragma once

#include <climits>
#include <cmath>

#include "attention_launch.h"

namespace egovlpv2 {
namespace kernels {
namespace detail {

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kBlockM = 64;  // rows per CTA
constexpr int kBlockN = 32;  // partners per step

template <int DH>
struct MmaShape {
  static constexpr int LD = DH + 8;                 // padded smem row, elements
  static constexpr int KS = DH / 16;                // k-steps of a product over the head dim
  static constexpr int NT = DH / 8;                 // n-tiles of an output over the head dim
  static constexpr int kStages = DH <= 64 ? 2 : 1;  // partner blocks in flight
};

// Starts copying `valid` rows of DH elements into a [R][LD] shared tile (cp.async, 16 bytes per
// copy); rows in [valid, R) are zero-filled. row_ptr(r) gives the global address of row r.
template <class T, int DH, int R, class RowPtr>
__device__ __forceinline__ void load_tile_async(T* tile, const RowPtr& row_ptr, int valid) {
  constexpr int LD = MmaShape<DH>::LD;
  constexpr int CH = DH / 8;
  for (int c = threadIdx.x; c < R * CH; c += kMmaThreads) {
    const int r = c / CH;
    const int cc = c - r * CH;
    const bool ok = r < valid;
    cp_async16(tile + r * LD + cc * 8, row_ptr(ok ? r : 0) + cc * 8, ok);
  }
}

// Writes the first `valid` rows of a [kBlockM][LD] shared tile to global memory.
template <class T, int DH, class RowPtr>
__device__ __forceinline__ void store_tile(const T* tile, const RowPtr& row_ptr, int valid) {
  constexpr int LD = MmaShape<DH>::LD;
  constexpr int CH = DH / 8;
  for (int c = threadIdx.x; c < kBlockM * CH; c += kMmaThreads) {
    const int r = c / CH;
    const int cc = c - r * CH;
    if (r < valid) {
      *reinterpret_cast<uint4*>(row_ptr(r) + cc * 8) =
          *reinterpret_cast<const uint4*>(tile + r * LD + cc * 8);
    }
  }
}

// A-operand fragments of the warp's 16 rows of a row-major [.][LD] tile, all k-steps.
template <class T, int DH>
__device__ __forceinline__ void load_a_frags(uint32_t (&f)[MmaShape<DH>::KS][4], const T* tile,
                                             int warp, int gq, int tq) {
  constexpr int LD = MmaShape<DH>::LD;
#pragma unroll
  for (int ks = 0; ks < MmaShape<DH>::KS; ++ks) {
    const T* p = tile + (warp * 16 + gq) * LD + ks * 16 + tq * 2;
    f[ks][0] = ld32(p);
    f[ks][1] = ld32(p + 8 * LD);
    f[ks][2] = ld32(p + 8);
    f[ks][3] = ld32(p + 8 * LD + 8);
  }
}

// acc[nt] += A (16 x DH, fragments) * X^T for the 32 rows of tile X ([32][LD], row = partner):
// the score-like products S = Q K^T, dP = dO V^T, S^T = K Q^T, dP^T = V dO^T.
template <class T, int DH>
__device__ __forceinline__ void mma_rows_xt(float (&acc)[4][4],
                                            const uint32_t (&a)[MmaShape<DH>::KS][4], const T* x,
                                            int gq, int tq) {
  constexpr int LD = MmaShape<DH>::LD;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;
  }
#pragma unroll
  for (int ks = 0; ks < MmaShape<DH>::KS; ++ks) {
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const T* p = x + (nt * 8 + gq) * LD + ks * 16 + tq * 2;
      mma16816<T>(acc[nt], a[ks], ld32(p), ld32(p + 8));
    }
  }
}

// out[nt] += W (16 x 32, given as the fp32 accumulator tiles of a score-like product, repacked to
// 16 bits) * X (32 x DH, the partner tile [32][LD]): P V, dS K, P^T dO, dS^T Q.
template <class T, int DH>
__device__ __forceinline__ void mma_w_x(float (&out)[MmaShape<DH>::NT][4], const float (&w)[4][4],
                                        const T* x, int gq, int tq) {
  constexpr int LD = MmaShape<DH>::LD;
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    const uint32_t a[4] = {
        pack2<T>(w[2 * kk][0], w[2 * kk][1]), pack2<T>(w[2 * kk][2], w[2 * kk][3]),
        pack2<T>(w[2 * kk + 1][0], w[2 * kk + 1][1]), pack2<T>(w[2 * kk + 1][2], w[2 * kk + 1][3])};
#pragma unroll
    for (int nt = 0; nt < MmaShape<DH>::NT; ++nt) {
      const T* p = x + (kk * 16 + tq * 2) * LD + nt * 8 + gq;
      mma16816<T>(out[nt], a, pack_raw(p[0], p[LD]), pack_raw(p[8 * LD], p[9 * LD]));
    }
  }
}

// Puts the warp's 16 x DH fp32 tile (scaled per row) into a [.][LD] shared tile as T.
template <class T, int DH>
__device__ __forceinline__ void stage_rows(T* tile, const float (&acc)[MmaShape<DH>::NT][4],
                                           float s0, float s1, int warp, int gq, int tq) {
  constexpr int LD = MmaShape<DH>::LD;
#pragma unroll
  for (int nt = 0; nt < MmaShape<DH>::NT; ++nt) {
    T* p = tile + (warp * 16 + gq) * LD + nt * 8 + tq * 2;
    st32(p, pack2<T>(acc[nt][0] * s0, acc[nt][1] * s0));
    st32(p + 8 * LD, pack2<T>(acc[nt][2] * s1, acc[nt][3] * s1));
  }
}

// Block coordinates of a tensor-core CTA: (batch, group, head, row tile), row tile fastest so
// that the CTAs sharing one partner list run close together and find it in L2.
struct MmaBlock {
  int64_t b, g, tile;
  int h;
};

__device__ __forceinline__ MmaBlock mma_block(const AttnArgs& a, const Groups& G) {
  MmaBlock blk;
  int64_t idx = blockIdx.x;
  const int64_t tiles = ceil_div(G.rows, kBlockM);
  blk.tile = idx % tiles;
  idx /= tiles;
  blk.h = int(idx % a.heads);
  idx /= a.heads;
  blk.g = idx % G.groups;
  blk.b = idx / G.groups;
  return blk;
}

// ---------------------------------------------------------------------------------------------
template <class T, int DH>
__global__ void __launch_bounds__(kMmaThreads) mma_forward_kernel(const AttnArgs a) {
  using S = MmaShape<DH>;
  constexpr int LD = S::LD;
  constexpr int NS = S::kStages;
  EGO_DYNAMIC_SMEM(T, smem);
  T* sQ = smem;  // [64][LD]; reused to stage the output
  auto sK = [&](int st) { return smem + (kBlockM + (2 * st) * kBlockN) * LD; };      // [32][LD]
  auto sV = [&](int st) { return smem + (kBlockM + (2 * st + 1) * kBlockN) * LD; };  // [32][LD]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
  const Groups G = mma_groups(a, false);
  const MmaBlock blk = mma_block(a, G);
  const int64_t row0 = blk.tile * kBlockM;
  const int valid_rows = int(imin(kBlockM, G.rows - row0));
  const int64_t tok0 = G.row_base + blk.g * G.row_gstride + row0;  // token of tile row 0
  const T* Q = static_cast<const T*>(a.q) + blk.b * a.q_sb + int64_t(blk.h) * DH;
  const T* K = static_cast<const T*>(a.k) + blk.b * a.k_sb + int64_t(blk.h) * DH;
  const T* V = static_cast<const T*>(a.v) + blk.b * a.v_sb + int64_t(blk.h) * DH;
  const T* M = a.mask ? static_cast<const T*>(a.mask) + blk.b * a.mask_sb : nullptr;
  const int64_t n_part = G.prefix + G.parts;
  const int64_t n_blocks = ceil_div(n_part, kBlockN);
  const int64_t pbase = G.part_base + blk.g * G.part_gstride;
  auto tok_of = [&](int64_t j) -> int64_t { return j < G.prefix ? 0 : pbase + (j - G.prefix); };
  auto issue = [&](int64_t nb, int st) {
    const int64_t n0 = nb * kBlockN;
    const int valid = int(imin(kBlockN, n_part - n0));
    load_tile_async<T, DH, kBlockN>(
        sK(st), [&](int r) { return K + tok_of(n0 + r) * a.k_st; }, valid);
    load_tile_async<T, DH, kBlockN>(
        sV(st), [&](int r) { return V + tok_of(n0 + r) * a.v_st; }, valid);
    cp_async_commit();
  };

  load_tile_async<T, DH, kBlockM>(sQ, [&](int r) { return Q + (tok0 + r) * a.q_st; }, valid_rows);
  cp_async_commit();
  issue(0, 0);
  cp_async_wait<1>();  // the Q tile has landed (block 0 may still be in flight)
  __syncthreads();
  uint32_t qf[S::KS][4];
  load_a_frags<T, DH>(qf, sQ, warp, gq, tq);

  float o[S::NT][4];
#pragma unroll
  for (int nt = 0; nt < S::NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) o[nt][i] = 0.f;
  }
  float m0 = -INFINITY, m1 = -INFINITY;  // running max (log2 units) of rows gq and gq + 8
  float l0 = 0.f, l1 = 0.f;              // this lane's share of the running sums
  const float sl2 = a.scale * kLog2e;

  for (int64_t nb = 0; nb < n_blocks; ++nb) {
    const int st = NS == 2 ? int(nb & 1) : 0;
    if (NS == 1 && nb > 0) issue(nb, 0);
    if (NS == 2 && nb + 1 < n_blocks) {
      issue(nb + 1, st ^ 1);  // its buffer was released by the barrier ending iteration nb - 1
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // block nb is visible to every warp
    const int64_t n0 = nb * kBlockN;
    const int valid = int(imin(kBlockN, n_part - n0));

    float s[4][4];
    mma_rows_xt<T, DH>(s, qf, sK(st), gq, tq);
    float mx0 = m0, mx1 = m1;
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int r = nt * 8 + tq * 2 + c;
        if (r < valid) {
          const float add = M ? to_f(M[tok_of(n0 + r)]) * kLog2e : 0.f;
          s[nt][c] = s[nt][c] * sl2 + add;
          s[nt][2 + c] = s[nt][2 + c] * sl2 + add;
        } else {
          s[nt][c] = -INFINITY;
          s[nt][2 + c] = -INFINITY;
        }
        mx0 = fmaxf(mx0, s[nt][c]);
        mx1 = fmaxf(mx1, s[nt][2 + c]);
      }
    }
    mx0 = quad_max(mx0);
    mx1 = quad_max(mx1);
    const float mu0 = mx0 == -INFINITY ? 0.f : mx0;
    const float mu1 = mx1 == -INFINITY ? 0.f : mx1;
    const float al0 = exp2f(m0 - mu0), al1 = exp2f(m1 - mu1);
    m0 = mx0;
    m1 = mx1;
    l0 *= al0;
    l1 *= al1;
#pragma unroll
    for (int nt = 0; nt < S::NT; ++nt) {
      o[nt][0] *= al0;
      o[nt][1] *= al0;
      o[nt][2] *= al1;
      o[nt][3] *= al1;
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      s[nt][0] = exp2f(s[nt][0] - mu0);
      s[nt][1] = exp2f(s[nt][1] - mu0);
      s[nt][2] = exp2f(s[nt][2] - mu1);
      s[nt][3] = exp2f(s[nt][3] - mu1);
      l0 += s[nt][0] + s[nt][1];
      l1 += s[nt][2] + s[nt][3];
    }
    mma_w_x<T, DH>(o, s, sV(st), gq, tq);
    __syncthreads();  // every warp is done with buffer st before it is refilled
  }

  l0 = quad_sum(l0);
  l1 = quad_sum(l1);
  // sQ rows of this warp were read only by this warp (its fragments), long before.
  stage_rows<T, DH>(sQ, o, 1.f / l0, 1.f / l1, warp, gq, tq);
  if (tq == 0) {
    float* L = a.lse + (blk.b * a.heads + blk.h) * a.q_rows + tok0;
    const int r = warp * 16 + gq;
    if (r < valid_rows) L[r] = (m0 + log2f(l0)) * kLn2;
    if (r + 8 < valid_rows) L[r + 8] = (m1 + log2f(l1)) * kLn2;
  }
  __syncthreads();
  T* O = static_cast<T*>(a.o) + blk.b * a.o_sb + int64_t(blk.h) * DH;
  store_tile<T, DH>(sQ, [&](int r) { return O + (tok0 + r) * a.o_st; }, valid_rows);
}

// ---------------------------------------------------------------------------------------------
template <class T, int DH>
__global__ void __launch_bounds__(kMmaThreads) mma_dq_kernel(const AttnArgs a) {
  using S = MmaShape<DH>;
  constexpr int LD = S::LD;
  constexpr int NS = S::kStages;
  EGO_DYNAMIC_SMEM(T, smem);
  T* sR = smem;  // [64][LD]: Q, then dO, then the staged dQ
  auto sK = [&](int st) { return smem + (kBlockM + (2 * st) * kBlockN) * LD; };
  auto sV = [&](int st) { return smem + (kBlockM + (2 * st + 1) * kBlockN) * LD; };
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
  const Groups G = mma_groups(a, false);
  const MmaBlock blk = mma_block(a, G);
  const int64_t row0 = blk.tile * kBlockM;
  const int valid_rows = int(imin(kBlockM, G.rows - row0));
  const int64_t tok0 = G.row_base + blk.g * G.row_gstride + row0;
  const T* Q = static_cast<const T*>(a.q) + blk.b * a.q_sb + int64_t(blk.h) * DH;
  const T* GO = static_cast<const T*>(a.dout) + blk.b * a.do_sb + int64_t(blk.h) * DH;
  const T* K = static_cast<const T*>(a.k) + blk.b * a.k_sb + int64_t(blk.h) * DH;
  const T* V = static_cast<const T*>(a.v) + blk.b * a.v_sb + int64_t(blk.h) * DH;
  const T* M = a.mask ? static_cast<const T*>(a.mask) + blk.b * a.mask_sb : nullptr;
  const int64_t n_part = G.prefix + G.parts;
  const int64_t n_blocks = ceil_div(n_part, kBlockN);
  const int64_t pbase = G.part_base + blk.g * G.part_gstride;
  auto tok_of = [&](int64_t j) -> int64_t { return j < G.prefix ? 0 : pbase + (j - G.prefix); };
  auto issue = [&](int64_t nb, int st) {
    const int64_t n0 = nb * kBlockN;
    const int valid = int(imin(kBlockN, n_part - n0));
    load_tile_async<T, DH, kBlockN>(
        sK(st), [&](int r) { return K + tok_of(n0 + r) * a.k_st; }, valid);
    load_tile_async<T, DH, kBlockN>(
        sV(st), [&](int r) { return V + tok_of(n0 + r) * a.v_st; }, valid);
    cp_async_commit();
  };

  uint32_t qf[S::KS][4], gf[S::KS][4];
  load_tile_async<T, DH, kBlockM>(sR, [&](int r) { return Q + (tok0 + r) * a.q_st; }, valid_rows);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  load_a_frags<T, DH>(qf, sR, warp, gq, tq);
  __syncthreads();  // every warp has its Q fragments before sR is overwritten
  load_tile_async<T, DH, kBlockM>(sR, [&](int r) { return GO + (tok0 + r) * a.do_st; }, valid_rows);
  cp_async_commit();
  issue(0, 0);
  cp_async_wait<1>();
  __syncthreads();
  load_a_frags<T, DH>(gf, sR, warp, gq, tq);

  const int r_lo = warp * 16 + gq;
  const int64_t li = (blk.b * a.heads + blk.h) * a.q_rows + tok0;
  const float lse0 = r_lo < valid_rows ? a.lse[li + r_lo] * kLog2e : 0.f;
  const float lse1 = r_lo + 8 < valid_rows ? a.lse[li + r_lo + 8] * kLog2e : 0.f;
  const float dl0 = r_lo < valid_rows ? a.delta[li + r_lo] : 0.f;
  const float dl1 = r_lo + 8 < valid_rows ? a.delta[li + r_lo + 8] : 0.f;

  float dq[S::NT][4];
#pragma unroll
  for (int nt = 0; nt < S::NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) dq[nt][i] = 0.f;
  }
  const float sl2 = a.scale * kLog2e;

  for (int64_t nb = 0; nb < n_blocks; ++nb) {
    const int st = NS == 2 ? int(nb & 1) : 0;
    if (NS == 1 && nb > 0) issue(nb, 0);
    if (NS == 2 && nb + 1 < n_blocks) {
      issue(nb + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int64_t n0 = nb * kBlockN;
    const int valid = int(imin(kBlockN, n_part - n0));

    float s[4][4], dp[4][4];
    mma_rows_xt<T, DH>(s, qf, sK(st), gq, tq);
    mma_rows_xt<T, DH>(dp, gf, sV(st), gq, tq);
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int r = nt * 8 + tq * 2 + c;
        float p0 = 0.f, p1 = 0.f;
        if (r < valid) {
          const float add = M ? to_f(M[tok_of(n0 + r)]) * kLog2e : 0.f;
          p0 = exp2f(s[nt][c] * sl2 + add - lse0);
          p1 = exp2f(s[nt][2 + c] * sl2 + add - lse1);
        }
        s[nt][c] = p0 * (dp[nt][c] - dl0);  // dS
        s[nt][2 + c] = p1 * (dp[nt][2 + c] - dl1);
      }
    }
    mma_w_x<T, DH>(dq, s, sK(st), gq, tq);
    __syncthreads();
  }

  // sR rows of this warp were read only by this warp (its dO fragments).
  stage_rows<T, DH>(sR, dq, a.scale, a.scale, warp, gq, tq);
  __syncthreads();
  T* O = static_cast<T*>(a.o) + blk.b * a.o_sb + int64_t(blk.h) * DH;
  store_tile<T, DH>(sR, [&](int r) { return O + (tok0 + r) * a.o_st; }, valid_rows);
}

// ---------------------------------------------------------------------------------------------
template <class T, int DH>
__global__ void __launch_bounds__(kMmaThreads) mma_dkv_kernel(const AttnArgs a) {
  using S = MmaShape<DH>;
  constexpr int LD = S::LD;
  constexpr int NS = S::kStages;
  EGO_DYNAMIC_SMEM(T, smem);
  T* sR = smem;  // [64][LD]: K, then V, then the staged dK and dV
  auto sQ = [&](int st) { return smem + (kBlockM + (2 * st) * kBlockN) * LD; };      // [32][LD]
  auto sG = [&](int st) { return smem + (kBlockM + (2 * st + 1) * kBlockN) * LD; };  // dO
  float* fbase = reinterpret_cast<float*>(smem + (kBlockM + 2 * NS * kBlockN) * LD);
  auto sL = [&](int st) { return fbase + st * 2 * kBlockN; };            // [32] lse (log2 units)
  auto sD = [&](int st) { return fbase + st * 2 * kBlockN + kBlockN; };  // [32] delta
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
  const Groups G = mma_groups(a, true);
  const MmaBlock blk = mma_block(a, G);
  const int64_t row0 = blk.tile * kBlockM;
  const int valid_rows = int(imin(kBlockM, G.rows - row0));
  const int64_t tok0 = G.row_base + blk.g * G.row_gstride + row0;  // key token of tile row 0
  const T* K = static_cast<const T*>(a.k) + blk.b * a.k_sb + int64_t(blk.h) * DH;
  const T* V = static_cast<const T*>(a.v) + blk.b * a.v_sb + int64_t(blk.h) * DH;
  const T* Q = static_cast<const T*>(a.q) + blk.b * a.q_sb + int64_t(blk.h) * DH;
  const T* GO = static_cast<const T*>(a.dout) + blk.b * a.do_sb + int64_t(blk.h) * DH;
  const float* Lg = a.lse + (blk.b * a.heads + blk.h) * a.q_rows;
  const float* Dg = a.delta + (blk.b * a.heads + blk.h) * a.q_rows;
  const int64_t n_part = G.prefix + G.parts;
  const int64_t n_blocks = ceil_div(n_part, kBlockN);
  const int64_t pbase = G.part_base + blk.g * G.part_gstride;
  auto tok_of = [&](int64_t j) -> int64_t { return j < G.prefix ? 0 : pbase + (j - G.prefix); };
  auto issue = [&](int64_t nb, int st) {
    const int64_t n0 = nb * kBlockN;
    const int valid = int(imin(kBlockN, n_part - n0));
    load_tile_async<T, DH, kBlockN>(
        sQ(st), [&](int r) { return Q + tok_of(n0 + r) * a.q_st; }, valid);
    load_tile_async<T, DH, kBlockN>(
        sG(st), [&](int r) { return GO + tok_of(n0 + r) * a.do_st; }, valid);
    cp_async_commit();
    if (threadIdx.x < kBlockN) {  // plain loads: visible after the next __syncthreads
      const int r = threadIdx.x;
      const int64_t tk = tok_of(n0 + (r < valid ? r : 0));
      sL(st)[r] = r < valid ? Lg[tk] * kLog2e : 0.f;
      sD(st)[r] = r < valid ? Dg[tk] : 0.f;
    }
  };

  uint32_t kf[S::KS][4], vf[S::KS][4];
  load_tile_async<T, DH, kBlockM>(sR, [&](int r) { return K + (tok0 + r) * a.k_st; }, valid_rows);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  load_a_frags<T, DH>(kf, sR, warp, gq, tq);
  __syncthreads();  // every warp has its K fragments before sR is overwritten
  load_tile_async<T, DH, kBlockM>(sR, [&](int r) { return V + (tok0 + r) * a.v_st; }, valid_rows);
  cp_async_commit();
  issue(0, 0);
  cp_async_wait<1>();
  __syncthreads();
  load_a_frags<T, DH>(vf, sR, warp, gq, tq);

  // The key mask belongs to the key (this CTA's rows): one additive term per row.
  const int r_lo = warp * 16 + gq;
  float mk0 = 0.f, mk1 = 0.f;
  if (a.mask) {
    const T* M = static_cast<const T*>(a.mask) + blk.b * a.mask_sb + tok0;
    if (r_lo < valid_rows) mk0 = to_f(M[r_lo]) * kLog2e;
    if (r_lo + 8 < valid_rows) mk1 = to_f(M[r_lo + 8]) * kLog2e;
  }

  float dk[S::NT][4], dv[S::NT][4];
#pragma unroll
  for (int nt = 0; nt < S::NT; ++nt) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      dk[nt][i] = 0.f;
      dv[nt][i] = 0.f;
    }
  }
  const float sl2 = a.scale * kLog2e;

  for (int64_t nb = 0; nb < n_blocks; ++nb) {
    const int st = NS == 2 ? int(nb & 1) : 0;
    if (NS == 1 && nb > 0) issue(nb, 0);
    if (NS == 2 && nb + 1 < n_blocks) {
      issue(nb + 1, st ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int64_t n0 = nb * kBlockN;
    const int valid = int(imin(kBlockN, n_part - n0));
    const float* L = sL(st);
    const float* D = sD(st);

    float sT[4][4], dpT[4][4];
    mma_rows_xt<T, DH>(sT, kf, sQ(st), gq, tq);   // S^T  = K Q^T
    mma_rows_xt<T, DH>(dpT, vf, sG(st), gq, tq);  // dP^T = V dO^T
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int r = nt * 8 + tq * 2 + c;  // partner (query) index within the block
        float p0 = 0.f, p1 = 0.f;
        if (r < valid) {
          p0 = exp2f(sT[nt][c] * sl2 + mk0 - L[r]);
          p1 = exp2f(sT[nt][2 + c] * sl2 + mk1 - L[r]);
        }
        sT[nt][c] = p0;
        sT[nt][2 + c] = p1;
        dpT[nt][c] = p0 * (dpT[nt][c] - D[r]);  // dS^T
        dpT[nt][2 + c] = p1 * (dpT[nt][2 + c] - D[r]);
      }
    }
    mma_w_x<T, DH>(dv, sT, sG(st), gq, tq);   // dV += P^T dO
    mma_w_x<T, DH>(dk, dpT, sQ(st), gq, tq);  // dK += dS^T Q
    __syncthreads();
  }

  T* DK = static_cast<T*>(a.dk) + blk.b * a.dk_sb + int64_t(blk.h) * DH;
  T* DV = static_cast<T*>(a.dv) + blk.b * a.dv_sb + int64_t(blk.h) * DH;
  stage_rows<T, DH>(sR, dk, a.scale, a.scale, warp, gq, tq);
  __syncthreads();
  store_tile<T, DH>(sR, [&](int r) { return DK + (tok0 + r) * a.dk_st; }, valid_rows);
  __syncthreads();
  stage_rows<T, DH>(sR, dv, 1.f, 1.f, warp, gq, tq);
  __syncthreads();
  store_tile<T, DH>(sR, [&](int r) { return DV + (tok0 + r) * a.dv_st; }, valid_rows);
}

// ---------------------------------------------------------------------------------------------
// Host launchers.

template <class T, int DH>
size_t mma_smem_bytes(int kind) {
  constexpr int NS = MmaShape<DH>::kStages;
  const size_t tiles = size_t(kBlockM + 2 * NS * kBlockN) * MmaShape<DH>::LD * sizeof(T);
  return kind == kMmaDkv ? tiles + size_t(2 * NS * kBlockN) * sizeof(float) : tiles;
}

template <class T, int DH, int KIND>
cudaError_t launch_mma_dh(const AttnArgs& a, cudaStream_t stream) {
  const Groups G = mma_groups(a, KIND == kMmaDkv);
  const int64_t ctas = a.batch * G.groups * a.heads * ceil_div(G.rows, kBlockM);
  if (ctas == 0) return cudaSuccess;
  if (ctas > INT_MAX) return cudaErrorInvalidValue;
  const size_t smem = mma_smem_bytes<T, DH>(KIND);
  const dim3 grid(static_cast<unsigned>(ctas));
  const dim3 block(kMmaThreads);
  if constexpr (KIND == kMmaForward) {
    auto fn = &mma_forward_kernel<T, DH>;
    EGO_LAUNCH(fn, grid, block, smem, stream, a);
  } else if constexpr (KIND == kMmaDq) {
    auto fn = &mma_dq_kernel<T, DH>;
    EGO_LAUNCH(fn, grid, block, smem, stream, a);
  } else {
    auto fn = &mma_dkv_kernel<T, DH>;
    EGO_LAUNCH(fn, grid, block, smem, stream, a);
  }
  return cudaGetLastError();
}

template <class T, int KIND>
cudaError_t launch_mma_kind(const AttnArgs& a, cudaStream_t stream) {
  if (a.head_dim == 32) return launch_mma_dh<T, 32, KIND>(a, stream);
  if (a.head_dim == 64) return launch_mma_dh<T, 64, KIND>(a, stream);
  if constexpr (KIND != kMmaDkv) {
    if (a.head_dim == 128) return launch_mma_dh<T, 128, KIND>(a, stream);
  }
  return cudaErrorInvalidValue;
}

template <class T>
cudaError_t launch_mma(int kind, const AttnArgs& a, cudaStream_t stream) {
  if (kind == kMmaForward) return launch_mma_kind<T, kMmaForward>(a, stream);
  if (kind == kMmaDq) return launch_mma_kind<T, kMmaDq>(a, stream);
  return launch_mma_kind<T, kMmaDkv>(a, stream);
}

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
