// Entry points of one instruction-set variant of the CPU kernels (see cpu_features.h).
#pragma once

#include "attention.h"

#define EGOVLPV2_DECLARE_CPU_VARIANT(ns)                                               \
  namespace egovlpv2::cpu::ns {                                                        \
  Status space_time_attention_forward(const SpaceTimeAttentionParams<float>& p);       \
  Status space_time_attention_forward(const SpaceTimeAttentionParams<double>& p);      \
  Status space_time_attention_backward(const SpaceTimeAttentionGradParams<float>& p);  \
  Status space_time_attention_backward(const SpaceTimeAttentionGradParams<double>& p); \
  Status cross_attention_forward(const CrossAttentionParams<float>& p);                \
  Status cross_attention_forward(const CrossAttentionParams<double>& p);               \
  Status cross_attention_backward(const CrossAttentionGradParams<float>& p);           \
  Status cross_attention_backward(const CrossAttentionGradParams<double>& p);          \
  void gate_residual(const GateResidualParams<float>& p);                              \
  void gate_residual(const GateResidualParams<double>& p);                             \
  }

EGOVLPV2_DECLARE_CPU_VARIANT(baseline)
#ifdef EGOVLPV2_CPU_HAVE_AVX2
EGOVLPV2_DECLARE_CPU_VARIANT(avx2)
#endif
#ifdef EGOVLPV2_CPU_HAVE_AVX512
EGOVLPV2_DECLARE_CPU_VARIANT(avx512)
#endif
