// The two engines that run attention over one key set, and the row tables that describe a set.
// Large sets go through the "dense" engine: keys packed transposed, queries in blocks of
// kQueryBlock, scores and P.V as register-tiled GEMMs (kMR rows x kNR columns). Small sets go
// through the "row" engine: one query at a time, dot products and axpys over the head dim.
// Softmax keeps the row max and the logsumexp; the backward recomputes P from the saved lse and
// renormalises each row (P then sums to one even where the lse absorbed a -1e38 mask).
// Part of the CPU kernels compiled once per instruction-set variant (see base.h).
#pragma once

#include <stdint.h>
#include <string.h>

#include "base.h"
#include "gemm.h"
#include "row_math.h"

namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA {

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
      for (int64_t i = 0; i < qb; ++i)
        load_row(io.q.ptr[q0 + i], io.q.stride, dh, dh, scale, qs + i * dh);
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

}  // namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA
