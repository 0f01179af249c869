// One instruction-set variant of the CPU kernels. Compiled once per variant, each time with
// its own target flags and -DEGOVLPV2_CPU_ISA=<namespace> (see cmake/EgoVLPv2CpuKernels.cmake);
// the kernels are the headers of isa/ (base.h says why they live in that namespace).
#include "isa/cross.h"
#include "isa/gate_residual.h"
#include "isa/space_time.h"

namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA {

#define EGOVLPV2_DEFINE(T)                                                                      \
  Status space_time_attention_forward(const SpaceTimeAttentionParams<T>& p) {                   \
    return space_time_forward(p);                                                               \
  }                                                                                             \
  Status space_time_attention_backward(const SpaceTimeAttentionGradParams<T>& p) {              \
    return space_time_backward(p);                                                              \
  }                                                                                             \
  Status cross_attention_forward(const CrossAttentionParams<T>& p) { return cross_forward(p); } \
  Status cross_attention_backward(const CrossAttentionGradParams<T>& p) {                       \
    return cross_backward(p);                                                                   \
  }                                                                                             \
  void gate_residual(const GateResidualParams<T>& p) { gate_residual_impl(p); }

EGOVLPV2_DEFINE(float)
EGOVLPV2_DEFINE(double)

#undef EGOVLPV2_DEFINE

}  // namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA
