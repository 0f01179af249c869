// The epilogue of the gated cross-attention: out = residual + gate * y.
// Part of the CPU kernels compiled once per instruction-set variant (see base.h).
#pragma once

#include <stdint.h>

#include "../attention.h"
#include "base.h"

namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA {

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
