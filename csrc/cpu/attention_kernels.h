// CPU attention kernels, compiled once per instruction-set variant.
//
// Included only by attention_isa.cpp, which is compiled several times with different target
// flags and a different EGOVLPV2_CPU_ISA namespace. Everything here therefore lives in that
// namespace and uses only C library calls (logf, memcpy, aligned_alloc): an inline function
// shared between the variants (std::vector, std::max, ...) could be emitted by the AVX-512
// object and picked by the linker for the baseline one.
//
// Scheme. Every query set that shares one key set is handled together, so its keys and values
// are read once:
//   * space attention: the N patch queries of frame f share {CLS, patches of f};
//   * time attention: the F queries at spatial position n share {CLS, position n of each frame};
//   * the CLS query has all T keys: its partial softmax {max, sum, sum of p v} over each
//     patch key set is taken while that set is in cache, and the partials plus the CLS key
//     are merged at the end (the backward handles it in a second pass instead);
//   * cross-attention: all queries of a (batch, head) share Lk keys.
// Large sets go through the "dense" engine: keys packed transposed, queries in blocks of
// kQueryBlock, scores and P.V as register-tiled GEMMs (kMR rows x kNR columns). Small sets go
// through the "row" engine: one query at a time, dot products and axpys over the head dim.
// Softmax keeps the row max and the logsumexp; the backward recomputes P from the saved lse and
// renormalises each row (P then sums to one even where the lse absorbed a -1e38 mask).
#pragma once

#ifndef EGOVLPV2_CPU_ISA
#error "define EGOVLPV2_CPU_ISA, the namespace of this instruction-set variant"
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"

namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA {

#if defined(__AVX512F__)
constexpr int64_t kVecBytes = 64;
#elif defined(__AVX__)
constexpr int64_t kVecBytes = 32;
#else
constexpr int64_t kVecBytes = 16;
#endif

// Elements of one vector register.
template <typename T>
constexpr int64_t kLanes = kVecBytes / static_cast<int64_t>(sizeof(T));
// GEMM tile: kMR rows by kNR<T> columns (two vector registers) of accumulators; AVX-512 has
// 32 registers, so 8 rows (16 accumulators), else 4 rows (8 accumulators).
constexpr int64_t kMR = kVecBytes == 64 ? 8 : 4;
template <typename T>
constexpr int64_t kNR = 2 * kLanes<T>;
// Packed rows are padded to a whole number of vectors.
template <typename T>
inline int64_t padded(int64_t n) {
  return (n + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
}
// Queries per block of the dense engine (keeps the score block in L1/L2).
constexpr int64_t kQueryBlock = 64;
// A key set with at least this many queries goes through the dense engine.
constexpr int64_t kDenseMin = 2;
// Work items of the divided attention hold about this many queries (time attention groups
// have only F queries, so several groups make one item).
constexpr int64_t kQueriesPerItem = 64;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// exp for the softmax, written so that loops over it vectorise (libm's expf / exp are scalar
// calls that GCC vectorises only under -ffast-math; in the scalar form they took most of the
// time of the forward). Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a Taylor
// polynomial of r (degree 7 for float, 13 for double) times 2^n built in the exponent bits.
// Max relative error against libm over [-87, 88] / [-708, 709]: 7.5e-8 (float, under one
// float ulp) and 2.3e-16 (double). Below the range the result is 0 (exp underflows there
// anyway); NaN stays NaN. The inputs of the softmax are <= 0 (scores minus their max).
inline float exp_t(float x) {
  const float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float t = xc * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23: rounds to an integer
  const float n = t - 12582912.0f;
  uint32_t t_bits;  // unsigned: wraps (NaN input) without undefined behaviour
  memcpy(&t_bits, &t, sizeof t_bits);
  float r = xc - n * 0.693359375f;  // ln2 split in two; n * hi is exact
  r = r - n * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t scale_bits = (t_bits - 0x4B400000u + 127u) << 23;  // 2^n
  float scale;
  memcpy(&scale, &scale_bits, sizeof scale);
  const float y = p * scale;
  return x < -87.0f ? 0.0f : y;
}

inline double exp_t(double x) {
  const double xc = x < -708.0 ? -708.0 : (x > 709.0 ? 709.0 : x);
  const double t = xc * 1.4426950408889634 + 6755399441055744.0;  // 1.5 * 2^52
  const double n = t - 6755399441055744.0;
  uint64_t t_bits;
  memcpy(&t_bits, &t, sizeof t_bits);
  double r = xc - n * 6.93147180369123816490e-01;
  r = r - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const uint64_t scale_bits = (t_bits - 0x4338000000000000ull + 1023u) << 52;
  double scale;
  memcpy(&scale, &scale_bits, sizeof scale);
  const double y = p * scale;
  return x < -708.0 ? 0.0 : y;
}

inline float log_t(float x) { return logf(x); }
inline double log_t(double x) { return log(x); }

// ---------------------------------------------------------------------------------------------
// Scratch memory: one aligned block per parallel chunk, carved into buffers.

class Block {
 public:
  explicit Block(int64_t bytes)
      : base_(static_cast<char*>(aligned_alloc(64, static_cast<size_t>(round_up(max64(bytes, 64), 64))))) {}
  ~Block() { free(base_); }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  char* get() const { return base_; }

 private:
  char* base_;
};

// Hands out consecutive 64-byte aligned buffers from a block (or just counts their size when
// the block is null, so the same code computes the workspace size).
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* take(int64_t n) {
    T* p = base_ ? reinterpret_cast<T*>(base_ + used_) : nullptr;
    used_ += round_up(max64(n, 1) * static_cast<int64_t>(sizeof(T)), 64);
    return p;
  }
  int64_t used() const { return used_; }

 private:
  char* base_;
  int64_t used_ = 0;
};

// Software prefetch of [p, p + bytes): the next head's column slices of the same token rows
// are 9 KB apart (one per row), too scattered for the hardware prefetchers.
inline void prefetch(const void* p, int64_t bytes, bool write) {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) {
    if (write)
      __builtin_prefetch(c + off, 1, 3);
    else
      __builtin_prefetch(c + off, 0, 3);
  }
#else
  (void)p;
  (void)bytes;
  (void)write;
#endif
}

// ---------------------------------------------------------------------------------------------
// Row primitives (vectorised over the head dim).

// Sum / max of the L partial results of a lane-split loop, as a tree (a chain of L scalar
// operations would cost L latencies per row).
template <typename T, int64_t L>
inline T lanes_sum(T* part) {
  for (int64_t w = L / 2; w >= 1; w /= 2)
    for (int64_t l = 0; l < w; ++l) part[l] += part[l + w];
  return part[0];
}

template <typename T, int64_t L>
inline T lanes_max(T* part) {
  for (int64_t w = L / 2; w >= 1; w /= 2)
    for (int64_t l = 0; l < w; ++l) part[l] = part[l + w] > part[l] ? part[l + w] : part[l];
  return part[0];
}

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  constexpr int64_t L = kLanes<T>;
  T part[L];
  for (int64_t l = 0; l < L; ++l) part[l] = T(0);
  int64_t d = 0;
  for (; d + L <= n; d += L)
    for (int64_t l = 0; l < L; ++l) part[l] += a[d + l] * b[d + l];
  T s = lanes_sum<T, L>(part);
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

template <typename T>
inline T dot_strided(const T* a, int64_t a_stride, const T* b, int64_t b_stride, int64_t n) {
  if (a_stride == 1 && b_stride == 1) return dot(a, b, n);
  T s = T(0);
  for (int64_t d = 0; d < n; ++d) s += a[d * a_stride] * b[d * b_stride];
  return s;
}

// y += alpha * x
template <typename T>
inline void axpy(T alpha, const T* __restrict x, T* __restrict y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += alpha * x[d];
}

// dst[0:n] = alpha * src[0:n*stride:stride]; dst[n:n_pad] = 0.
template <typename T>
inline void load_row(const T* src, int64_t stride, int64_t n, int64_t n_pad, T alpha,
                     T* __restrict dst) {
  if (stride == 1) {
    for (int64_t d = 0; d < n; ++d) dst[d] = alpha * src[d];
  } else {
    for (int64_t d = 0; d < n; ++d) dst[d] = alpha * src[d * stride];
  }
  for (int64_t d = n; d < n_pad; ++d) dst[d] = T(0);
}

template <typename T>
inline void copy_row(const T* src, int64_t stride, int64_t n, int64_t n_pad, T* __restrict dst) {
  if (stride == 1) {
    memcpy(dst, src, static_cast<size_t>(n) * sizeof(T));
  } else {
    for (int64_t d = 0; d < n; ++d) dst[d] = src[d * stride];
  }
  for (int64_t d = n; d < n_pad; ++d) dst[d] = T(0);
}

// Max of s[0:n] (n >= 1), in lanes so that it vectorises. NaN entries are skipped here and
// propagate through the exp.
template <typename T>
inline T row_max(const T* __restrict s, int64_t n) {
  constexpr int64_t L = kLanes<T>;
  T m = s[0];
  int64_t j = 0;
  if (n >= L) {
    T part[L];
    for (int64_t l = 0; l < L; ++l) part[l] = s[l];
    for (j = L; j + L <= n; j += L)
      for (int64_t l = 0; l < L; ++l) part[l] = s[j + l] > part[l] ? s[j + l] : part[l];
    m = lanes_max<T, L>(part);
  }
  for (; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

// s[j] = exp(s[j] - shift) in place; returns the sum.
template <typename T>
inline T exp_shift_sum(T* __restrict s, int64_t n, T shift) {
  constexpr int64_t L = kLanes<T>;
  T part[L];
  for (int64_t l = 0; l < L; ++l) part[l] = T(0);
  int64_t j = 0;
  for (; j + L <= n; j += L)
    for (int64_t l = 0; l < L; ++l) {
      const T e = exp_t(s[j + l] - shift);
      s[j + l] = e;
      part[l] += e;
    }
  T sum = lanes_sum<T, L>(part);
  for (; j < n; ++j) {
    const T e = exp_t(s[j] - shift);
    s[j] = e;
    sum += e;
  }
  return sum;
}

template <typename T>
inline void scale_row(T* __restrict s, int64_t n, T alpha) {
  for (int64_t j = 0; j < n; ++j) s[j] *= alpha;
}

// ---------------------------------------------------------------------------------------------
// Register-tiled GEMM: C[m, n] (+)= A[m, k] B[k, n], row-major, n a multiple of kLanes<T>.
// The tile keeps MR x NV vectors of accumulators in registers. With GCC / Clang it is written
// with their generic vector types (plain C++ otherwise compiles to whatever instruction set the
// file is built for), because plain loops let the vectoriser pick shapes that spill or shuffle.

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
inline void gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                 int64_t ldb, T* c, int64_t ldc) {
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

// ---------------------------------------------------------------------------------------------
// Key sets. A set is described by arrays of row pointers (one per query / key), each row
// holding the dh elements of one head, `stride` elements apart.

template <typename T>
struct Rows {
  const T* const* ptr = nullptr;
  int64_t stride = 1;
};

// Rows with unit stride: the input itself when it already has one, else packed copies.
template <typename T>
inline Rows<T> unit_rows(Rows<T> in, int64_t n, int64_t dh, T* pack, const T** ptrs) {
  if (in.stride == 1) return in;
  for (int64_t r = 0; r < n; ++r) {
    copy_row(in.ptr[r], in.stride, dh, dh, pack + r * dh);
    ptrs[r] = pack + r * dh;
  }
  return Rows<T>{ptrs, 1};
}

template <typename T>
struct ForwardIo {
  Rows<T> q, k, v;
  const T* mask = nullptr;  // [nk] contiguous, or null
  T* const* out = nullptr;  // out rows, dh contiguous elements each
  T* const* lse = nullptr;  // one pointer per query
};

template <typename T>
struct BackwardIo {
  Rows<T> q, k, v, grad_out, out;
  const T* mask = nullptr;
  const T* const* lse = nullptr;
  T* const* grad_q = nullptr;  // rows written (not accumulated)
  T* grad_k = nullptr;         // [nk, ld_grad] accumulated
  T* grad_v = nullptr;         // [nk, ld_grad] accumulated
  int64_t ld_grad = 0;
};

// ----- dense engine --------------------------------------------------------------------------

template <typename T>
struct DenseForward {
  int64_t nk, dh, nk_pad, dh_pad;
  T *kt, *v, *qs, *s, *o, *inv;

  DenseForward(Carver& c, int64_t nk_, int64_t dh_)
      : nk(nk_), dh(dh_), nk_pad(padded<T>(nk_)), dh_pad(padded<T>(dh_)) {
    kt = c.take<T>(dh * nk_pad);
    v = c.take<T>(nk * dh_pad);
    qs = c.take<T>(kQueryBlock * dh);
    s = c.take<T>(kQueryBlock * nk_pad);
    o = c.take<T>(kQueryBlock * dh_pad);
    inv = c.take<T>(kQueryBlock);
  }

  // Zero the padding columns of the packed keys once; run() only writes the real ones, so
  // one engine serves any number of key sets of this size.
  void clear() { memset(kt, 0, static_cast<size_t>(dh * nk_pad) * sizeof(T)); }

  void run(int64_t nq, T scale, const ForwardIo<T>& io) {
    for (int64_t j = 0; j < nk; ++j) {
      const T* kr = io.k.ptr[j];
      for (int64_t d = 0; d < dh; ++d) kt[d * nk_pad + j] = kr[d * io.k.stride];
      copy_row(io.v.ptr[j], io.v.stride, dh, dh_pad, v + j * dh_pad);
    }
    for (int64_t q0 = 0; q0 < nq; q0 += kQueryBlock) {
      const int64_t qb = min64(kQueryBlock, nq - q0);
      for (int64_t i = 0; i < qb; ++i) load_row(io.q.ptr[q0 + i], io.q.stride, dh, dh, scale, qs + i * dh);
      gemm<T, false>(qb, nk_pad, dh, qs, dh, kt, nk_pad, s, nk_pad);
      for (int64_t i = 0; i < qb; ++i) {
        T* row = s + i * nk_pad;
        if (io.mask)
          for (int64_t j = 0; j < nk; ++j) row[j] += io.mask[j];
        // Padding columns get exp(-inf) = 0, so the row is processed in whole vectors.
        for (int64_t j = nk; j < nk_pad; ++j) row[j] = -static_cast<T>(HUGE_VAL);
        const T m = row_max(row, nk_pad);
        const T sum = exp_shift_sum(row, nk_pad, m);
        inv[i] = T(1) / sum;
        *io.lse[q0 + i] = m + log_t(sum);
      }
      gemm<T, false>(qb, dh_pad, nk, s, nk_pad, v, dh_pad, o, dh_pad);
      for (int64_t i = 0; i < qb; ++i) {
        T* __restrict dst = io.out[q0 + i];
        const T* __restrict src = o + i * dh_pad;
        const T f = inv[i];
        for (int64_t d = 0; d < dh; ++d) dst[d] = src[d] * f;
      }
    }
  }

  // One more query (already scaled, dh elements) against the keys packed by the last run(),
  // leaving out key 0: its partial softmax state {max, sum of exp, sum of exp * v} goes to
  // state[0], state[1], state[2 : 2 + dh]. The divided attention's CLS query is assembled from
  // these (plus the CLS key itself) while each key set is still in cache.
  void partial(const T* qs_row, T* state) {
    gemm<T, false>(1, nk_pad, dh, qs_row, dh, kt, nk_pad, s, nk_pad);
    s[0] = -static_cast<T>(HUGE_VAL);
    for (int64_t j = nk; j < nk_pad; ++j) s[j] = -static_cast<T>(HUGE_VAL);
    const T m = row_max(s, nk_pad);
    const T sum = exp_shift_sum(s, nk_pad, m);
    gemm<T, false>(1, dh_pad, nk, s, nk_pad, v, dh_pad, o, dh_pad);
    state[0] = m;
    state[1] = sum;
    memcpy(state + 2, o, static_cast<size_t>(dh) * sizeof(T));
  }
};

template <typename T>
struct DenseBackward {
  int64_t nk, dh, nk_pad, dh_pad;
  T *kt, *kr, *vt, *qs, *go, *s, *dp, *dq, *pt, *dst, *delta;

  DenseBackward(Carver& c, int64_t nk_, int64_t dh_)
      : nk(nk_), dh(dh_), nk_pad(padded<T>(nk_)), dh_pad(padded<T>(dh_)) {
    kt = c.take<T>(dh * nk_pad);
    kr = c.take<T>(nk * dh_pad);
    vt = c.take<T>(dh * nk_pad);
    qs = c.take<T>(kQueryBlock * dh_pad);
    go = c.take<T>(kQueryBlock * dh_pad);
    s = c.take<T>(kQueryBlock * nk_pad);
    dp = c.take<T>(kQueryBlock * nk_pad);
    dq = c.take<T>(kQueryBlock * dh_pad);
    pt = c.take<T>(nk * kQueryBlock);
    dst = c.take<T>(nk * kQueryBlock);
    delta = c.take<T>(kQueryBlock);
  }

  void clear() {
    memset(kt, 0, static_cast<size_t>(dh * nk_pad) * sizeof(T));
    memset(vt, 0, static_cast<size_t>(dh * nk_pad) * sizeof(T));
  }

  // grad_k / grad_v: [nk, dh_pad] accumulators (io.ld_grad must equal dh_pad).
  void run(int64_t nq, T scale, const BackwardIo<T>& io) {
    for (int64_t j = 0; j < nk; ++j) {
      const T* krow = io.k.ptr[j];
      const T* vrow = io.v.ptr[j];
      for (int64_t d = 0; d < dh; ++d) {
        kt[d * nk_pad + j] = krow[d * io.k.stride];
        vt[d * nk_pad + j] = vrow[d * io.v.stride];
      }
      copy_row(krow, io.k.stride, dh, dh_pad, kr + j * dh_pad);
    }
    for (int64_t q0 = 0; q0 < nq; q0 += kQueryBlock) {
      const int64_t qb = min64(kQueryBlock, nq - q0);
      for (int64_t i = 0; i < qb; ++i) {
        load_row(io.q.ptr[q0 + i], io.q.stride, dh, dh_pad, scale, qs + i * dh_pad);
        copy_row(io.grad_out.ptr[q0 + i], io.grad_out.stride, dh, dh_pad, go + i * dh_pad);
        delta[i] = dot_strided<T>(go + i * dh_pad, 1, io.out.ptr[q0 + i], io.out.stride, dh);
      }
      // P = softmax recomputed from the saved logsumexp, dP = dO V^T.
      gemm<T, false>(qb, nk_pad, dh, qs, dh_pad, kt, nk_pad, s, nk_pad);
      gemm<T, false>(qb, nk_pad, dh, go, dh_pad, vt, nk_pad, dp, nk_pad);
      for (int64_t i = 0; i < qb; ++i) {
        T* row = s + i * nk_pad;
        T* drow = dp + i * nk_pad;
        if (io.mask)
          for (int64_t j = 0; j < nk; ++j) row[j] += io.mask[j];
        for (int64_t j = nk; j < nk_pad; ++j) row[j] = -static_cast<T>(HUGE_VAL);
        const T sum = exp_shift_sum(row, nk_pad, *io.lse[q0 + i]);
        scale_row(row, nk_pad, T(1) / sum);
        const T di = delta[i];
        // dS = P * (dP - rowsum(dO * O)), kept in dp.
        for (int64_t j = 0; j < nk_pad; ++j) drow[j] = row[j] * (drow[j] - di);
      }
      // dQ = scale * dS K.
      gemm<T, false>(qb, dh_pad, nk, dp, nk_pad, kr, dh_pad, dq, dh_pad);
      for (int64_t i = 0; i < qb; ++i) {
        T* __restrict out = io.grad_q[q0 + i];
        const T* __restrict src = dq + i * dh_pad;
        for (int64_t d = 0; d < dh; ++d) out[d] = scale * src[d];
      }
      // dV += P^T dO, dK += dS^T (q * scale).
      transpose(s, nk_pad, qb, nk, pt, kQueryBlock);
      transpose(dp, nk_pad, qb, nk, dst, kQueryBlock);
      gemm<T, true>(nk, dh_pad, qb, pt, kQueryBlock, go, dh_pad, io.grad_v, io.ld_grad);
      gemm<T, true>(nk, dh_pad, qb, dst, kQueryBlock, qs, dh_pad, io.grad_k, io.ld_grad);
    }
  }
};

// ----- row engine ----------------------------------------------------------------------------

template <typename T>
struct RowForward {
  int64_t nk, dh;
  T *qs, *s, *acc, *kpack, *vpack;
  const T **kptr, **vptr;

  RowForward(Carver& c, int64_t nk_, int64_t dh_) : nk(nk_), dh(dh_) {
    qs = c.take<T>(dh);
    s = c.take<T>(nk);
    acc = c.take<T>(dh);
    kpack = c.take<T>(nk * dh);
    vpack = c.take<T>(nk * dh);
    kptr = c.take<const T*>(nk);
    vptr = c.take<const T*>(nk);
  }

  void clear() {}

  void run(int64_t nq, T scale, const ForwardIo<T>& io) {
    const Rows<T> k = last_k = unit_rows(io.k, nk, dh, kpack, kptr);
    const Rows<T> v = last_v = unit_rows(io.v, nk, dh, vpack, vptr);
    for (int64_t i = 0; i < nq; ++i) {
      load_row(io.q.ptr[i], io.q.stride, dh, dh, scale, qs);
      for (int64_t j = 0; j < nk; ++j) s[j] = dot(qs, k.ptr[j], dh);
      if (io.mask)
        for (int64_t j = 0; j < nk; ++j) s[j] += io.mask[j];
      const T m = row_max(s, nk);
      const T sum = exp_shift_sum(s, nk, m);
      for (int64_t d = 0; d < dh; ++d) acc[d] = T(0);
      for (int64_t j = 0; j < nk; ++j) axpy(s[j], v.ptr[j], acc, dh);
      const T f = T(1) / sum;
      T* __restrict dst = io.out[i];
      for (int64_t d = 0; d < dh; ++d) dst[d] = acc[d] * f;
      *io.lse[i] = m + log_t(sum);
    }
  }

  // See DenseForward::partial (no mask).
  void partial(const T* qs_row, T* state) {
    for (int64_t j = 1; j < nk; ++j) s[j] = dot(qs_row, last_k.ptr[j], dh);
    const T m = row_max(s + 1, nk - 1);
    const T sum = exp_shift_sum(s + 1, nk - 1, m);
    T* acc_out = state + 2;
    for (int64_t d = 0; d < dh; ++d) acc_out[d] = T(0);
    for (int64_t j = 1; j < nk; ++j) axpy(s[j], last_v.ptr[j], acc_out, dh);
    state[0] = m;
    state[1] = sum;
  }

 private:
  Rows<T> last_k, last_v;
};

template <typename T>
struct RowBackward {
  int64_t nk, dh;
  T *qs, *go, *s, *dp, *acc, *kpack, *vpack;
  const T **kptr, **vptr;

  RowBackward(Carver& c, int64_t nk_, int64_t dh_) : nk(nk_), dh(dh_) {
    qs = c.take<T>(dh);
    go = c.take<T>(dh);
    s = c.take<T>(nk);
    dp = c.take<T>(nk);
    acc = c.take<T>(dh);
    kpack = c.take<T>(nk * dh);
    vpack = c.take<T>(nk * dh);
    kptr = c.take<const T*>(nk);
    vptr = c.take<const T*>(nk);
  }

  void clear() {}

  // Per query: dS and P over the key set, then the query's gradient is written and
  // `key_grad(j, ds_j, p_j, qs, go)` receives each key's share (to add to its dK / dV).
  template <typename KeyGrad>
  void run(int64_t nq, T scale, const BackwardIo<T>& io, const KeyGrad& key_grad) {
    const Rows<T> k = unit_rows(io.k, nk, dh, kpack, kptr);
    const Rows<T> v = unit_rows(io.v, nk, dh, vpack, vptr);
    for (int64_t i = 0; i < nq; ++i) {
      load_row(io.q.ptr[i], io.q.stride, dh, dh, scale, qs);
      copy_row(io.grad_out.ptr[i], io.grad_out.stride, dh, dh, go);
      const T di = dot_strided<T>(go, 1, io.out.ptr[i], io.out.stride, dh);
      for (int64_t j = 0; j < nk; ++j) s[j] = dot(qs, k.ptr[j], dh);
      if (io.mask)
        for (int64_t j = 0; j < nk; ++j) s[j] += io.mask[j];
      const T sum = exp_shift_sum(s, nk, *io.lse[i]);
      scale_row(s, nk, T(1) / sum);
      for (int64_t j = 0; j < nk; ++j) dp[j] = s[j] * (dot(go, v.ptr[j], dh) - di);
      for (int64_t d = 0; d < dh; ++d) acc[d] = T(0);
      for (int64_t j = 0; j < nk; ++j) axpy(dp[j], k.ptr[j], acc, dh);
      T* __restrict gq = io.grad_q[i];
      for (int64_t d = 0; d < dh; ++d) gq[d] = scale * acc[d];
      for (int64_t j = 0; j < nk; ++j) key_grad(j, dp[j], s[j], qs, go);
    }
  }
};


// Row pointers of one key set: queries, keys, values, gradient and output rows, lse slots.
template <typename T>
struct RowTable {
  const T **q, **k, **v, **go, **o, **lse_r;
  T **out, **lse_w;

  RowTable(Carver& c, int64_t n) {
    q = c.take<const T*>(n);
    k = c.take<const T*>(n);
    v = c.take<const T*>(n);
    go = c.take<const T*>(n);
    o = c.take<const T*>(n);
    lse_r = c.take<const T*>(n);
    out = c.take<T*>(n);
    lse_w = c.take<T*>(n);
  }

  static int64_t bytes(int64_t n) {
    Carver c(nullptr);
    RowTable t(c, n);
    (void)t;
    return c.used();
  }
};

// ---------------------------------------------------------------------------------------------
// Divided space-time attention.

struct SpaceTimeGeometry {
  int64_t batch, tokens, heads, dh, dim, frames, patches;
  int64_t group_size;   // queries per key set (N for space, F for time)
  int64_t groups;       // key sets per (batch, head), CLS query excluded
  int64_t group_step;   // token offset between consecutive groups
  int64_t member_step;  // token offset between consecutive members of a group
  int64_t groups_per_item;
  int64_t chunks;  // blocks of groups per batch element
  bool dense;      // engine of the patch groups
  int64_t heads_per_block, head_blocks;  // a work item is (batch, chunk, block of heads)

  template <typename P>
  explicit SpaceTimeGeometry(const P& p)
      : batch(p.batch),
        tokens(p.tokens),
        heads(p.num_heads),
        dh(p.head_dim),
        dim(p.num_heads * p.head_dim),
        frames(p.num_frames),
        patches((p.tokens - 1) / p.num_frames) {
    if (p.temporal) {
      group_size = frames;
      groups = patches;
      group_step = 1;
      member_step = patches;
    } else {
      group_size = patches;
      groups = frames;
      group_step = patches;
      member_step = 1;
    }
    groups_per_item = max64(1, kQueriesPerItem / group_size);
    chunks = ceil_div(groups, groups_per_item);
    dense = group_size >= kDenseMin;
    // Split the heads into blocks only as far as needed for about 4 items per thread.
    const int64_t target_items = 4 * max64(1, p.num_threads);
    const int64_t wanted_blocks = min64(heads, max64(1, ceil_div(target_items, batch * chunks)));
    heads_per_block = ceil_div(heads, wanted_blocks);
    head_blocks = ceil_div(heads, heads_per_block);
  }

  int64_t token(int64_t group, int64_t member) const {
    return 1 + group * group_step + member * member_step;
  }
};

#define EGOVLPV2_FAIL_AND_RETURN(ctx)                  \
  do {                                                 \
    __atomic_store_n(&(ctx).failed, 1, __ATOMIC_RELAXED); \
    return;                                            \
  } while (0)

template <typename T>
struct SpaceTimeForwardCtx {
  const SpaceTimeAttentionParams<T>* p;
  const SpaceTimeGeometry* g;
  T* cls_states;  // [B, H, groups, 2 + dh]: the CLS query's partial softmax per key set
  int failed;
};

// Work items [begin, end) of the divided attention forward, key sets through `Engine`.
template <typename T, typename Engine>
void space_time_forward_range(SpaceTimeForwardCtx<T>& c, int64_t begin, int64_t end) {
  const SpaceTimeAttentionParams<T>& p = *c.p;
  const SpaceTimeGeometry& g = *c.g;
  const int64_t nk = g.group_size + 1;
  Carver sizing(nullptr);
  {
    RowTable<T> r(sizing, nk);
    Engine e(sizing, nk, g.dh);
    sizing.take<T>(g.dh);
  }
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  RowTable<T> rows(cv, nk);
  Engine engine(cv, nk, g.dh);
  T* cls_q = cv.take<T>(g.dh);
  engine.clear();

  const int64_t sc = p.qkv.stride_c;
  ForwardIo<T> io;
  io.q = Rows<T>{rows.q, sc};
  io.k = Rows<T>{rows.k, sc};
  io.v = Rows<T>{rows.v, sc};
  io.out = rows.out;
  io.lse = rows.lse_w;

  for (int64_t item = begin; item < end; ++item) {
    // Key sets of one batch element and a block of heads, all heads of a set in a row: its
    // token rows are then read whole and in order (heads are consecutive column slices).
    const int64_t b = item / (g.chunks * g.head_blocks);
    const int64_t chunk = (item / g.head_blocks) % g.chunks;
    const int64_t h_begin = (item % g.head_blocks) * g.heads_per_block;
    const int64_t h_end = min64(g.heads, h_begin + g.heads_per_block);
    const int64_t group_end = min64(g.groups, (chunk + 1) * g.groups_per_item);
    for (int64_t grp = chunk * g.groups_per_item; grp < group_end; ++grp) {
      for (int64_t h = h_begin; h < h_end; ++h) {
        const int64_t qc = h * g.dh, kc = g.dim + h * g.dh, vc = 2 * g.dim + h * g.dh;
        T* out_bh = p.out + b * g.tokens * g.dim + h * g.dh;
        T* lse_bh = p.lse + (b * g.heads + h) * g.tokens;
        rows.k[0] = p.qkv.at(b, 0, kc);
        rows.v[0] = p.qkv.at(b, 0, vc);
        for (int64_t i = 0; i < g.group_size; ++i) {
          const int64_t t = g.token(grp, i);
          rows.q[i] = p.qkv.at(b, t, qc);
          rows.k[1 + i] = p.qkv.at(b, t, kc);
          rows.v[1 + i] = p.qkv.at(b, t, vc);
          rows.out[i] = out_bh + t * g.dim;
          rows.lse_w[i] = lse_bh + t;
        }
        // Fetch the next (key set, head)'s rows while this one computes.
        const int64_t next_h = h + 1 < h_end ? h + 1 : h_begin;
        const int64_t next_grp = h + 1 < h_end ? grp : grp + 1;
        if (sc == 1 && next_grp < group_end) {
          const int64_t bytes = g.dh * static_cast<int64_t>(sizeof(T));
          for (int64_t i = 0; i < g.group_size; ++i) {
            const int64_t t = g.token(next_grp, i);
            const T* row = p.qkv.at(b, t, next_h * g.dh);
            prefetch(row, bytes, false);
            prefetch(row + g.dim, bytes, false);
            prefetch(row + 2 * g.dim, bytes, false);
            prefetch(p.out + (b * g.tokens + t) * g.dim + next_h * g.dh, bytes, true);
          }
        }
        engine.run(g.group_size, p.scale, io);
        // The CLS query's share of this key set, while it is in cache (merged later).
        load_row(p.qkv.at(b, 0, qc), sc, g.dh, g.dh, p.scale, cls_q);
        engine.partial(cls_q, c.cls_states + ((b * g.heads + h) * g.groups + grp) * (g.dh + 2));
      }
    }
  }
}

// The CLS query of (b, h) for b * heads + h in [begin, end): its softmax over all T keys from
// the partial states of the key sets (each holds every patch key once) and the CLS key.
template <typename T>
void space_time_forward_cls(SpaceTimeForwardCtx<T>& c, int64_t begin, int64_t end) {
  const SpaceTimeAttentionParams<T>& p = *c.p;
  const SpaceTimeGeometry& g = *c.g;
  const int64_t dh = g.dh;
  Carver sizing(nullptr);
  sizing.take<T>(dh);
  sizing.take<T>(dh);
  sizing.take<T>(dh);
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  T* qs = cv.take<T>(dh);
  T* k0 = cv.take<T>(dh);
  T* acc = cv.take<T>(dh);
  const int64_t sc = p.qkv.stride_c;
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / g.heads;
    const int64_t h = bh % g.heads;
    load_row(p.qkv.at(b, 0, h * dh), sc, dh, dh, p.scale, qs);
    copy_row(p.qkv.at(b, 0, g.dim + h * dh), sc, dh, dh, k0);
    const T s0 = dot(qs, k0, dh);
    const T* states = c.cls_states + bh * g.groups * (dh + 2);
    T m = s0;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const T mg = states[grp * (dh + 2)];
      m = mg > m ? mg : m;
    }
    const T w0 = exp_t(s0 - m);
    T sum = w0;
    copy_row(p.qkv.at(b, 0, 2 * g.dim + h * dh), sc, dh, dh, acc);
    scale_row(acc, dh, w0);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const T* st = states + grp * (dh + 2);
      const T w = exp_t(st[0] - m);
      sum += w * st[1];
      axpy(w, st + 2, acc, dh);
    }
    T* out = p.out + b * g.tokens * g.dim + h * dh;
    const T f = T(1) / sum;
    for (int64_t d = 0; d < dh; ++d) out[d] = acc[d] * f;
    p.lse[bh * g.tokens] = m + log_t(sum);
  }
}

template <typename T>
Status space_time_forward(const SpaceTimeAttentionParams<T>& p) {
  const SpaceTimeGeometry geo(p);
  Block states(geo.batch * geo.heads * geo.groups * (geo.dh + 2) *
               static_cast<int64_t>(sizeof(T)));
  if (!states.get()) return Status::kOutOfMemory;
  SpaceTimeForwardCtx<T> ctx{&p, &geo, reinterpret_cast<T*>(states.get()), 0};
  auto body = [](int64_t begin, int64_t end, void* raw) {
    auto& c = *static_cast<SpaceTimeForwardCtx<T>*>(raw);
    if (c.g->dense)
      space_time_forward_range<T, DenseForward<T>>(c, begin, end);
    else
      space_time_forward_range<T, RowForward<T>>(c, begin, end);
  };
  p.parallel_for(0, geo.batch * geo.chunks * geo.head_blocks, 1, body, &ctx);
  if (ctx.failed) return Status::kOutOfMemory;
  auto cls_body = [](int64_t begin, int64_t end, void* raw) {
    space_time_forward_cls(*static_cast<SpaceTimeForwardCtx<T>*>(raw), begin, end);
  };
  p.parallel_for(0, geo.batch * geo.heads, 4, cls_body, &ctx);
  return ctx.failed ? Status::kOutOfMemory : Status::kOk;
}

template <typename T>
struct SpaceTimeBackwardCtx {
  const SpaceTimeAttentionGradParams<T>* p;
  const SpaceTimeGeometry* g;
  T* partials;  // [B, H, chunks, 2, dh]: dK, dV of the CLS key from each item of pass 1
  int failed;
};

// Accumulates a key's share of the gradients into [nk, ld] buffers (row engine).
template <typename T>
struct KeyGradInto {
  T* dk;
  T* dv;
  int64_t ld, dh;
  void operator()(int64_t j, T ds, T pj, const T* qs, const T* go) const {
    axpy(ds, qs, dk + j * ld, dh);
    axpy(pj, go, dv + j * ld, dh);
  }
};

template <typename T>
inline void run_backward(DenseBackward<T>& e, int64_t nq, T scale, const BackwardIo<T>& io) {
  e.run(nq, scale, io);
}

template <typename T>
inline void run_backward(RowBackward<T>& e, int64_t nq, T scale, const BackwardIo<T>& io) {
  e.run(nq, scale, io, KeyGradInto<T>{io.grad_k, io.grad_v, io.ld_grad, e.dh});
}

// Pass 1 of the divided attention backward: the patch queries. Each patch key belongs to one
// key set (plus the CLS query's), so its rows of grad_qkv are written here by one item.
template <typename T, typename Engine>
void space_time_backward_range(SpaceTimeBackwardCtx<T>& c, int64_t begin, int64_t end) {
  const SpaceTimeAttentionGradParams<T>& p = *c.p;
  const SpaceTimeGeometry& g = *c.g;
  const int64_t nk = g.group_size + 1;
  const int64_t ld = padded<T>(g.dh);
  Carver sizing(nullptr);
  {
    RowTable<T> r(sizing, nk);
    sizing.take<T>(nk * ld);
    sizing.take<T>(nk * ld);
    Engine e(sizing, nk, g.dh);
  }
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  RowTable<T> rows(cv, nk);
  T* dk = cv.take<T>(nk * ld);
  T* dv = cv.take<T>(nk * ld);
  Engine engine(cv, nk, g.dh);
  engine.clear();
  const int64_t three_d = 3 * g.dim;

  BackwardIo<T> io;
  io.q = Rows<T>{rows.q, p.qkv.stride_c};
  io.k = Rows<T>{rows.k, p.qkv.stride_c};
  io.v = Rows<T>{rows.v, p.qkv.stride_c};
  io.grad_out = Rows<T>{rows.go, p.grad_out.stride_c};
  io.out = Rows<T>{rows.o, p.out.stride_c};
  io.lse = rows.lse_r;
  io.grad_q = rows.out;
  io.grad_k = dk;
  io.grad_v = dv;
  io.ld_grad = ld;

  for (int64_t item = begin; item < end; ++item) {
    // (batch, chunk, block of heads) as in the forward.
    const int64_t b = item / (g.chunks * g.head_blocks);
    const int64_t chunk = (item / g.head_blocks) % g.chunks;
    const int64_t h_begin = (item % g.head_blocks) * g.heads_per_block;
    const int64_t h_end = min64(g.heads, h_begin + g.heads_per_block);
    T* grad_b = p.grad_qkv + b * g.tokens * three_d;
    for (int64_t h = h_begin; h < h_end; ++h) {
      T* part = c.partials + ((b * g.heads + h) * g.chunks + chunk) * 2 * g.dh;
      for (int64_t d = 0; d < 2 * g.dh; ++d) part[d] = T(0);
    }
    const int64_t group_end = min64(g.groups, (chunk + 1) * g.groups_per_item);
    for (int64_t grp = chunk * g.groups_per_item; grp < group_end; ++grp) {
      for (int64_t h = h_begin; h < h_end; ++h) {
        const int64_t bh = b * g.heads + h;
        const int64_t qc = h * g.dh, kc = g.dim + h * g.dh, vc = 2 * g.dim + h * g.dh;
        rows.k[0] = p.qkv.at(b, 0, kc);
        rows.v[0] = p.qkv.at(b, 0, vc);
        for (int64_t i = 0; i < g.group_size; ++i) {
          const int64_t t = g.token(grp, i);
          rows.q[i] = p.qkv.at(b, t, qc);
          rows.k[1 + i] = p.qkv.at(b, t, kc);
          rows.v[1 + i] = p.qkv.at(b, t, vc);
          rows.go[i] = p.grad_out.at(b, t, qc);
          rows.o[i] = p.out.at(b, t, qc);
          rows.lse_r[i] = p.lse + bh * g.tokens + t;
          rows.out[i] = grad_b + t * three_d + qc;
        }
        // Fetch the next (key set, head)'s rows while this one computes (as in the forward).
        const int64_t next_h = h + 1 < h_end ? h + 1 : h_begin;
        const int64_t next_grp = h + 1 < h_end ? grp : grp + 1;
        if (p.qkv.stride_c == 1 && p.grad_out.stride_c == 1 && p.out.stride_c == 1 &&
            next_grp < group_end) {
          const int64_t bytes = g.dh * static_cast<int64_t>(sizeof(T));
          const int64_t nc = next_h * g.dh;
          for (int64_t i = 0; i < g.group_size; ++i) {
            const int64_t t = g.token(next_grp, i);
            const T* row = p.qkv.at(b, t, nc);
            prefetch(row, bytes, false);
            prefetch(row + g.dim, bytes, false);
            prefetch(row + 2 * g.dim, bytes, false);
            prefetch(p.grad_out.at(b, t, nc), bytes, false);
            prefetch(p.out.at(b, t, nc), bytes, false);
            T* grad_row = grad_b + t * three_d + nc;
            prefetch(grad_row, bytes, true);
            prefetch(grad_row + g.dim, bytes, true);
            prefetch(grad_row + 2 * g.dim, bytes, true);
          }
        }
        memset(dk, 0, static_cast<size_t>(nk * ld) * sizeof(T));
        memset(dv, 0, static_cast<size_t>(nk * ld) * sizeof(T));
        run_backward(engine, g.group_size, p.scale, io);
        for (int64_t i = 0; i < g.group_size; ++i) {
          T* row = grad_b + g.token(grp, i) * three_d;
          memcpy(row + kc, dk + (1 + i) * ld, static_cast<size_t>(g.dh) * sizeof(T));
          memcpy(row + vc, dv + (1 + i) * ld, static_cast<size_t>(g.dh) * sizeof(T));
        }
        T* part = c.partials + (bh * g.chunks + chunk) * 2 * g.dh;
        axpy(T(1), dk, part, g.dh);
        axpy(T(1), dv, part + g.dh, g.dh);
      }
    }
  }
}

// Pass 2: the CLS query of each (batch, head), which adds its share to every key row.
template <typename T>
void space_time_backward_cls(SpaceTimeBackwardCtx<T>& c, int64_t begin, int64_t end) {
  const SpaceTimeAttentionGradParams<T>& p = *c.p;
  const SpaceTimeGeometry& g = *c.g;
  Carver sizing(nullptr);
  {
    RowTable<T> r(sizing, g.tokens);
    sizing.take<T>(g.dh);
    sizing.take<T>(g.dh);
    RowBackward<T> e(sizing, g.tokens, g.dh);
  }
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  RowTable<T> rows(cv, g.tokens);
  T* gk0 = cv.take<T>(g.dh);
  T* gv0 = cv.take<T>(g.dh);
  RowBackward<T> engine(cv, g.tokens, g.dh);
  const int64_t three_d = 3 * g.dim;

  BackwardIo<T> io;
  io.q = Rows<T>{rows.q, p.qkv.stride_c};
  io.k = Rows<T>{rows.k, p.qkv.stride_c};
  io.v = Rows<T>{rows.v, p.qkv.stride_c};
  io.grad_out = Rows<T>{rows.go, p.grad_out.stride_c};
  io.out = Rows<T>{rows.o, p.out.stride_c};
  io.lse = rows.lse_r;
  io.grad_q = rows.out;

  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / g.heads;
    const int64_t h = bh % g.heads;
    const int64_t qc = h * g.dh, kc = g.dim + h * g.dh, vc = 2 * g.dim + h * g.dh;
    T* grad_b = p.grad_qkv + b * g.tokens * three_d;
    rows.q[0] = p.qkv.at(b, 0, qc);
    rows.go[0] = p.grad_out.at(b, 0, qc);
    rows.o[0] = p.out.at(b, 0, qc);
    rows.lse_r[0] = p.lse + bh * g.tokens;
    rows.out[0] = grad_b + qc;
    for (int64_t t = 0; t < g.tokens; ++t) {
      rows.k[t] = p.qkv.at(b, t, kc);
      rows.v[t] = p.qkv.at(b, t, vc);
    }
    for (int64_t d = 0; d < g.dh; ++d) gk0[d] = gv0[d] = T(0);
    for (int64_t chunk = 0; chunk < g.chunks; ++chunk) {
      const T* part = c.partials + (bh * g.chunks + chunk) * 2 * g.dh;
      axpy(T(1), part, gk0, g.dh);
      axpy(T(1), part + g.dh, gv0, g.dh);
    }
    const int64_t dh = g.dh;
    engine.run(1, p.scale, io, [&](int64_t j, T ds, T pj, const T* qs, const T* go) {
      T* gk = j == 0 ? gk0 : grad_b + j * three_d + kc;
      T* gv = j == 0 ? gv0 : grad_b + j * three_d + vc;
      axpy(ds, qs, gk, dh);
      axpy(pj, go, gv, dh);
    });
    memcpy(grad_b + kc, gk0, static_cast<size_t>(g.dh) * sizeof(T));
    memcpy(grad_b + vc, gv0, static_cast<size_t>(g.dh) * sizeof(T));
  }
}

template <typename T>
Status space_time_backward(const SpaceTimeAttentionGradParams<T>& p) {
  const SpaceTimeGeometry geo(p);
  Block partials(geo.batch * geo.heads * geo.chunks * 2 * geo.dh *
                 static_cast<int64_t>(sizeof(T)));
  if (!partials.get()) return Status::kOutOfMemory;
  SpaceTimeBackwardCtx<T> ctx{&p, &geo, reinterpret_cast<T*>(partials.get()), 0};
  auto groups_body = [](int64_t begin, int64_t end, void* raw) {
    auto& c = *static_cast<SpaceTimeBackwardCtx<T>*>(raw);
    if (c.g->dense)
      space_time_backward_range<T, DenseBackward<T>>(c, begin, end);
    else
      space_time_backward_range<T, RowBackward<T>>(c, begin, end);
  };
  p.parallel_for(0, geo.batch * geo.chunks * geo.head_blocks, 1, groups_body, &ctx);
  if (ctx.failed) return Status::kOutOfMemory;
  auto cls_body = [](int64_t begin, int64_t end, void* raw) {
    space_time_backward_cls(*static_cast<SpaceTimeBackwardCtx<T>*>(raw), begin, end);
  };
  p.parallel_for(0, geo.batch * geo.heads, 1, cls_body, &ctx);
  return ctx.failed ? Status::kOutOfMemory : Status::kOk;
}

// ---------------------------------------------------------------------------------------------
// Cross-attention core.

constexpr int64_t kCrossQueriesPerItem = 2 * kQueryBlock;

template <typename T>
struct CrossForwardCtx {
  const CrossAttentionParams<T>* p;
  int64_t chunks;
  int failed;
};

// Items are (batch, head, block of queries); the keys of (batch, head) are packed per item.
template <typename T, typename Engine>
void cross_forward_range(CrossForwardCtx<T>& c, int64_t begin, int64_t end) {
  const CrossAttentionParams<T>& p = *c.p;
  const int64_t nk = p.k_len, dh = p.head_dim, dim = p.num_heads * dh;
  const int64_t n_rows = max64(nk, kCrossQueriesPerItem);
  Carver sizing(nullptr);
  {
    RowTable<T> r(sizing, n_rows);
    sizing.take<T>(nk);
    Engine e(sizing, nk, dh);
  }
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  RowTable<T> rows(cv, n_rows);
  T* mask = cv.take<T>(nk);
  Engine engine(cv, nk, dh);
  engine.clear();

  ForwardIo<T> io;
  io.q = Rows<T>{rows.q, p.q.stride_c};
  io.k = Rows<T>{rows.k, p.k.stride_c};
  io.v = Rows<T>{rows.v, p.v.stride_c};
  io.mask = p.key_mask ? mask : nullptr;
  io.out = rows.out;
  io.lse = rows.lse_w;

  for (int64_t item = begin; item < end; ++item) {
    const int64_t bh = item / c.chunks;
    const int64_t q0 = (item % c.chunks) * kCrossQueriesPerItem;
    const int64_t nq = min64(kCrossQueriesPerItem, p.q_len - q0);
    const int64_t b = bh / p.num_heads;
    const int64_t hc = (bh % p.num_heads) * dh;
    for (int64_t j = 0; j < nk; ++j) {
      rows.k[j] = p.k.at(b, j, hc);
      rows.v[j] = p.v.at(b, j, hc);
    }
    if (p.key_mask)
      for (int64_t j = 0; j < nk; ++j)
        mask[j] = p.key_mask[b * p.mask_stride_b + j * p.mask_stride_l];
    for (int64_t i = 0; i < nq; ++i) {
      rows.q[i] = p.q.at(b, q0 + i, hc);
      rows.out[i] = p.attn + (b * p.q_len + q0 + i) * dim + hc;
      rows.lse_w[i] = p.lse + bh * p.q_len + q0 + i;
    }
    engine.run(nq, p.scale, io);
  }
}

template <typename T>
Status cross_forward(const CrossAttentionParams<T>& p) {
  CrossForwardCtx<T> ctx{&p, ceil_div(p.q_len, kCrossQueriesPerItem), 0};
  auto body = [](int64_t begin, int64_t end, void* raw) {
    auto& c = *static_cast<CrossForwardCtx<T>*>(raw);
    if (c.p->q_len >= kDenseMin)
      cross_forward_range<T, DenseForward<T>>(c, begin, end);
    else
      cross_forward_range<T, RowForward<T>>(c, begin, end);
  };
  p.parallel_for(0, p.batch * p.num_heads * ctx.chunks, 1, body, &ctx);
  return ctx.failed ? Status::kOutOfMemory : Status::kOk;
}

template <typename T>
struct CrossBackwardCtx {
  const CrossAttentionGradParams<T>* p;
  int failed;
};

// One item per (batch, head): every query of it shares the keys, whose gradients are summed
// here without races.
template <typename T, typename Engine>
void cross_backward_range(CrossBackwardCtx<T>& c, int64_t begin, int64_t end) {
  const CrossAttentionGradParams<T>& p = *c.p;
  const int64_t nq = p.q_len, nk = p.k_len, dh = p.head_dim;
  const int64_t dim = p.num_heads * dh;
  const int64_t ld = padded<T>(dh);
  Carver sizing(nullptr);
  {
    RowTable<T> r(sizing, max64(nq, nk));
    sizing.take<T>(nk);
    sizing.take<T>(nk * ld);
    sizing.take<T>(nk * ld);
    Engine e(sizing, nk, dh);
  }
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  RowTable<T> rows(cv, max64(nq, nk));
  T* mask = cv.take<T>(nk);
  T* dk = cv.take<T>(nk * ld);
  T* dv = cv.take<T>(nk * ld);
  Engine engine(cv, nk, dh);
  engine.clear();

  BackwardIo<T> io;
  io.q = Rows<T>{rows.q, p.q.stride_c};
  io.k = Rows<T>{rows.k, p.k.stride_c};
  io.v = Rows<T>{rows.v, p.v.stride_c};
  io.grad_out = Rows<T>{rows.go, p.grad_attn.stride_c};
  io.out = Rows<T>{rows.o, p.attn.stride_c};
  io.mask = p.key_mask ? mask : nullptr;
  io.lse = rows.lse_r;
  io.grad_q = rows.out;
  io.grad_k = dk;
  io.grad_v = dv;
  io.ld_grad = ld;

  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / p.num_heads;
    const int64_t hc = (bh % p.num_heads) * dh;
    for (int64_t j = 0; j < nk; ++j) {
      rows.k[j] = p.k.at(b, j, hc);
      rows.v[j] = p.v.at(b, j, hc);
    }
    if (p.key_mask)
      for (int64_t j = 0; j < nk; ++j)
        mask[j] = p.key_mask[b * p.mask_stride_b + j * p.mask_stride_l];
    for (int64_t i = 0; i < nq; ++i) {
      rows.q[i] = p.q.at(b, i, hc);
      rows.go[i] = p.grad_attn.at(b, i, hc);
      rows.o[i] = p.attn.at(b, i, hc);
      rows.lse_r[i] = p.lse + bh * nq + i;
      rows.out[i] = p.grad_q + (b * nq + i) * dim + hc;
    }
    memset(dk, 0, static_cast<size_t>(nk * ld) * sizeof(T));
    memset(dv, 0, static_cast<size_t>(nk * ld) * sizeof(T));
    run_backward(engine, nq, p.scale, io);
    for (int64_t j = 0; j < nk; ++j) {
      memcpy(p.grad_k + (b * nk + j) * dim + hc, dk + j * ld, static_cast<size_t>(dh) * sizeof(T));
      memcpy(p.grad_v + (b * nk + j) * dim + hc, dv + j * ld, static_cast<size_t>(dh) * sizeof(T));
    }
  }
}

template <typename T>
Status cross_backward(const CrossAttentionGradParams<T>& p) {
  CrossBackwardCtx<T> ctx{&p, 0};
  auto body = [](int64_t begin, int64_t end, void* raw) {
    auto& c = *static_cast<CrossBackwardCtx<T>*>(raw);
    if (c.p->q_len >= kDenseMin)
      cross_backward_range<T, DenseBackward<T>>(c, begin, end);
    else
      cross_backward_range<T, RowBackward<T>>(c, begin, end);
  };
  p.parallel_for(0, p.batch * p.num_heads, 1, body, &ctx);
  return ctx.failed ? Status::kOutOfMemory : Status::kOk;
}

#undef EGOVLPV2_FAIL_AND_RETURN

template <typename T>
void gate_residual_impl(const GateResidualParams<T>& p) {
  auto body = [](int64_t begin, int64_t end, void* raw) {
    const GateResidualParams<T>& p = *static_cast<const GateResidualParams<T>*>(raw);
    const T gate = *p.gate;
    const int64_t n = p.channels;
    for (int64_t r = begin; r < end; ++r) {
      const T* __restrict res = p.residual.at(r / p.len, r % p.len, 0);
      const T* __restrict y = p.y + r * n;
      T* __restrict out = p.out + r * n;
      if (p.residual.stride_c == 1) {
        for (int64_t c = 0; c < n; ++c) out[c] = res[c] + gate * y[c];
      } else {
        for (int64_t c = 0; c < n; ++c) out[c] = res[c * p.residual.stride_c] + gate * y[c];
      }
    }
  };
  const int64_t grain = max64(1, 16384 / max64(1, p.channels));
  p.parallel_for(0, p.batch * p.len, grain, body, const_cast<GateResidualParams<T>*>(&p));
}

}  // namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA
