// Public entry points of the CPU kernels: forward to the variant chosen for this CPU.
#include "attention.h"
#include "attention_isa.h"
#include "cpu_features.h"

namespace egovlpv2::cpu {

void serial_for(int64_t begin, int64_t end, int64_t /*grain_size*/, ParallelBody body, void* ctx) {
  if (begin < end) body(begin, end, ctx);
}

#if defined(EGOVLPV2_CPU_HAVE_AVX512) && defined(EGOVLPV2_CPU_HAVE_AVX2)
#define EGOVLPV2_DISPATCH(fn, p) \
  switch (active_isa()) {        \
    case Isa::kAvx512:           \
      return avx512::fn(p);      \
    case Isa::kAvx2:             \
      return avx2::fn(p);        \
    default:                     \
      return baseline::fn(p);    \
  }
#elif defined(EGOVLPV2_CPU_HAVE_AVX2)
#define EGOVLPV2_DISPATCH(fn, p)                      \
  if (active_isa() == Isa::kAvx2) return avx2::fn(p); \
  return baseline::fn(p);
#else
#define EGOVLPV2_DISPATCH(fn, p) return baseline::fn(p);
#endif

// clang-format off: two one-line definitions read better than what the formatter makes of them.
#define EGOVLPV2_ENTRY(Ret, fn, Params) \
  Ret fn(const Params<float>& p) { EGOVLPV2_DISPATCH(fn, p) } \
  Ret fn(const Params<double>& p) { EGOVLPV2_DISPATCH(fn, p) }
// clang-format on

EGOVLPV2_ENTRY(Status, space_time_attention_forward, SpaceTimeAttentionParams)
EGOVLPV2_ENTRY(Status, space_time_attention_backward, SpaceTimeAttentionGradParams)
EGOVLPV2_ENTRY(Status, cross_attention_forward, CrossAttentionParams)
EGOVLPV2_ENTRY(Status, cross_attention_backward, CrossAttentionGradParams)
EGOVLPV2_ENTRY(void, gate_residual, GateResidualParams)

}  // namespace egovlpv2::cpu
