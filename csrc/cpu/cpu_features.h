// Which instruction-set variant of the CPU kernels runs on this machine.
//
// The kernels are compiled several times (baseline x86-64 or the host's default, AVX2+FMA,
// AVX-512) and the best one the CPU supports is picked at run time, so one binary is both
// portable and fast. EGOVLPV2_CPU_ISA=baseline|avx2|avx512 caps the choice (used by the tests
// to check every variant on one machine).
#pragma once

namespace egovlpv2::cpu {

enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The variant the kernels dispatch to (decided once per process).
Isa active_isa();

// "baseline", "avx2" or "avx512".
const char* isa_name(Isa isa);

// Comma-separated names of the variants compiled into this binary, best first.
const char* compiled_isas();

}  // namespace egovlpv2::cpu
