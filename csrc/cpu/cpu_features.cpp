#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace egovlpv2::cpu {
namespace {

bool cpu_supports(Isa isa) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // libgcc's checks include the OS support for the wider registers (XCR0).
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma");
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kBaseline:
      return true;
  }
  return false;
#else
  return isa == Isa::kBaseline;
#endif
}

bool compiled(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
#ifdef EGOVLPV2_CPU_HAVE_AVX512
      return true;
#else
      return false;
#endif
    case Isa::kAvx2:
#ifdef EGOVLPV2_CPU_HAVE_AVX2
      return true;
#else
      return false;
#endif
    case Isa::kBaseline:
      return true;
  }
  return false;
}

Isa requested_cap() {
  const char* env = std::getenv("EGOVLPV2_CPU_ISA");
  if (env == nullptr || *env == '\0') return Isa::kAvx512;
  if (std::strcmp(env, "baseline") == 0) return Isa::kBaseline;
  if (std::strcmp(env, "avx2") == 0) return Isa::kAvx2;
  return Isa::kAvx512;  // "avx512" or anything unknown: no cap
}

Isa select_isa() {
  const int cap = static_cast<int>(requested_cap());
  for (int i = cap; i > 0; --i) {
    const Isa isa = static_cast<Isa>(i);
    if (compiled(isa) && cpu_supports(isa)) return isa;
  }
  return Isa::kBaseline;
}

}  // namespace

Isa active_isa() {
  static const Isa isa = select_isa();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kBaseline:
      return "baseline";
  }
  return "baseline";
}

const char* compiled_isas() {
#if defined(EGOVLPV2_CPU_HAVE_AVX512) && defined(EGOVLPV2_CPU_HAVE_AVX2)
  return "avx512,avx2,baseline";
#elif defined(EGOVLPV2_CPU_HAVE_AVX512)
  return "avx512,baseline";
#elif defined(EGOVLPV2_CPU_HAVE_AVX2)
  return "avx2,baseline";
#else
  return "baseline";
#endif
}

}  // namespace egovlpv2::cpu
