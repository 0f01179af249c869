// Register-tiled GEMM: C[m, n] (+)= A[m, k] B[k, n], row-major, n a multiple of kLanes<T>.
// The tile keeps MR x NV vectors of accumulators in registers. With GCC / Clang it is written
// with their generic vector types (plain C++ otherwise compiles to whatever instruction set the
// file is built for), because plain loops let the vectoriser pick shapes that spill or shuffle.
// Part of the CPU kernels compiled once per instruction-set variant (see base.h).
#pragma once

#include <stdint.h>
#include <string.h>

#include "base.h"

namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA {

#if defined(__GNUC__)
#define EGOVLPV2_VECTOR_TYPES 1
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
inline typename VecOf<T>::type vload(const T* p) {
  typename VecOf<T>::type v;
  memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
inline void vstore(T* p, typename VecOf<T>::type v) {
  memcpy(p, &v, sizeof v);
}
#endif

// Independent accumulator sets of a tile: a small tile (few rows / one vector) would otherwise
// wait on one FMA chain per accumulator (latency ~4 cycles), so the k loop is split over up to
// 4 sets that are summed at the end.
template <int64_t MR, int64_t NV>
constexpr int64_t kSplitK = MR * NV >= 8 ? 1 : (MR * NV >= 4 ? 2 : 4);

template <typename T, int64_t MR, int64_t NV, bool kAccumulate>
inline void gemm_tile(int64_t k, const T* __restrict a, int64_t lda, const T* __restrict b,
                      int64_t ldb, T* __restrict c, int64_t ldc) {
  constexpr int64_t W = kLanes<T>;
  constexpr int64_t KS = kSplitK<MR, NV>;
#ifdef EGOVLPV2_VECTOR_TYPES
  using V = typename VecOf<T>::type;
  V acc[KS][MR][NV];
  for (int64_t s = 0; s < KS; ++s)
    for (int64_t i = 0; i < MR; ++i)
      for (int64_t v = 0; v < NV; ++v)
        acc[s][i][v] = (kAccumulate && s == 0) ? vload(c + i * ldc + v * W) : V{};
  int64_t p = 0;
  for (; p + KS <= k; p += KS) {
    for (int64_t s = 0; s < KS; ++s) {
      V bv[NV];
      for (int64_t v = 0; v < NV; ++v) bv[v] = vload(b + (p + s) * ldb + v * W);
      for (int64_t i = 0; i < MR; ++i) {
        const T ai = a[i * lda + p + s];
        for (int64_t v = 0; v < NV; ++v) acc[s][i][v] += ai * bv[v];
      }
    }
  }
  for (; p < k; ++p) {
    for (int64_t i = 0; i < MR; ++i) {
      const T ai = a[i * lda + p];
      for (int64_t v = 0; v < NV; ++v) acc[0][i][v] += ai * vload(b + p * ldb + v * W);
    }
  }
  for (int64_t s = 1; s < KS; ++s)
    for (int64_t i = 0; i < MR; ++i)
      for (int64_t v = 0; v < NV; ++v) acc[0][i][v] += acc[s][i][v];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t v = 0; v < NV; ++v) vstore(c + i * ldc + v * W, acc[0][i][v]);
#else
  constexpr int64_t NC = NV * W;
  T acc[KS][MR][NC];
  for (int64_t s = 0; s < KS; ++s)
    for (int64_t i = 0; i < MR; ++i)
      for (int64_t j = 0; j < NC; ++j)
        acc[s][i][j] = (kAccumulate && s == 0) ? c[i * ldc + j] : T(0);
  int64_t p = 0;
  for (; p + KS <= k; p += KS)
    for (int64_t s = 0; s < KS; ++s) {
      const T* __restrict bp = b + (p + s) * ldb;
      for (int64_t i = 0; i < MR; ++i) {
        const T ai = a[i * lda + p + s];
        for (int64_t j = 0; j < NC; ++j) acc[s][i][j] += ai * bp[j];
      }
    }
  for (; p < k; ++p) {
    const T* __restrict bp = b + p * ldb;
    for (int64_t i = 0; i < MR; ++i) {
      const T ai = a[i * lda + p];
      for (int64_t j = 0; j < NC; ++j) acc[0][i][j] += ai * bp[j];
    }
  }
  for (int64_t s = 1; s < KS; ++s)
    for (int64_t i = 0; i < MR; ++i)
      for (int64_t j = 0; j < NC; ++j) acc[0][i][j] += acc[s][i][j];
  for (int64_t i = 0; i < MR; ++i)
    for (int64_t j = 0; j < NC; ++j) c[i * ldc + j] = acc[0][i][j];
#endif
}

// Rows [0, rows) of one column block, rows < kMR, in tiles of the largest fitting height.
template <typename T, int64_t NV, bool kAccumulate, int64_t MR = kMR / 2>
inline void gemm_rest(int64_t rows, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                      T* c, int64_t ldc) {
  if (rows >= MR) {
    gemm_tile<T, MR, NV, kAccumulate>(k, a, lda, b, ldb, c, ldc);
    a += MR * lda;
    c += MR * ldc;
    rows -= MR;
  }
  if constexpr (MR > 1) {
    if (rows > 0) gemm_rest<T, NV, kAccumulate, MR / 2>(rows, k, a, lda, b, ldb, c, ldc);
  }
}

template <typename T, int64_t NV, bool kAccumulate>
inline void gemm_columns(int64_t m, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                         T* c, int64_t ldc) {
  const int64_t m_full = m - m % kMR;
  for (int64_t i0 = 0; i0 < m_full; i0 += kMR)
    gemm_tile<T, kMR, NV, kAccumulate>(k, a + i0 * lda, lda, b, ldb, c + i0 * ldc, ldc);
  if (m > m_full)
    gemm_rest<T, NV, kAccumulate>(m - m_full, k, a + m_full * lda, lda, b, ldb, c + m_full * ldc,
                                  ldc);
}

template <typename T, bool kAccumulate>
inline void gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                 T* c, int64_t ldc) {
  constexpr int64_t NR = kNR<T>;
  int64_t j0 = 0;
  for (; j0 + NR <= n; j0 += NR)
    gemm_columns<T, 2, kAccumulate>(m, k, a, lda, b + j0, ldb, c + j0, ldc);
  if (j0 < n) gemm_columns<T, 1, kAccumulate>(m, k, a, lda, b + j0, ldb, c + j0, ldc);
}

// dst[j, i] = src[i, j] for i < rows, j < cols.
template <typename T>
inline void transpose(const T* __restrict src, int64_t ld_src, int64_t rows, int64_t cols,
                      T* __restrict dst, int64_t ld_dst) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
}

}  // namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA
