// Softmax arithmetic and row primitives, vectorised over the head dim.
// Part of the CPU kernels compiled once per instruction-set variant (see base.h).
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "base.h"

namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA {

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

}  // namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA
