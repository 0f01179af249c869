# The framework-free CPU kernels (csrc/cpu), as the static library egovlpv2_cpu_kernels.
#
# csrc/cpu/attention_isa.cpp is compiled once per instruction-set variant (baseline, AVX2+FMA,
# AVX-512), each into its own C++ namespace, and dispatch.cpp picks the best one the CPU has at
# run time (cpu_features.cpp). One binary is then portable and still uses AVX-512 where it can.
# egovlpv2_cpu_config carries the EGOVLPV2_CPU_HAVE_* definitions to whoever needs them.
include(CheckCXXCompilerFlag)

set(EGOVLPV2_CPU_DIR "${PROJECT_SOURCE_DIR}/csrc/cpu")
add_library(egovlpv2_cpu_config INTERFACE)
add_library(egovlpv2_cpu_kernels STATIC
  "${EGOVLPV2_CPU_DIR}/dispatch.cpp"
  "${EGOVLPV2_CPU_DIR}/cpu_features.cpp")
target_link_libraries(egovlpv2_cpu_kernels PUBLIC egovlpv2_cpu_config)
target_include_directories(egovlpv2_cpu_kernels PUBLIC "${EGOVLPV2_CPU_DIR}")
set_target_properties(egovlpv2_cpu_kernels PROPERTIES
  POSITION_INDEPENDENT_CODE ON CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
egovlpv2_warnings(egovlpv2_cpu_kernels)

set(EGOVLPV2_CPU_ISAS "baseline")
function(egovlpv2_cpu_variant ns)
  add_library(egovlpv2_cpu_${ns} OBJECT "${EGOVLPV2_CPU_DIR}/attention_isa.cpp")
  target_compile_definitions(egovlpv2_cpu_${ns} PRIVATE EGOVLPV2_CPU_ISA=${ns})
  target_compile_options(egovlpv2_cpu_${ns} PRIVATE ${ARGN})
  set_target_properties(egovlpv2_cpu_${ns} PROPERTIES
    POSITION_INDEPENDENT_CODE ON CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  egovlpv2_warnings(egovlpv2_cpu_${ns})
  target_sources(egovlpv2_cpu_kernels PRIVATE $<TARGET_OBJECTS:egovlpv2_cpu_${ns}>)
endfunction()

egovlpv2_cpu_variant(baseline)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$"
   AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  set(_avx2_flags -mavx2 -mfma)
  set(_avx512_flags -mavx512f -mavx512cd -mavx512bw -mavx512dq -mavx512vl ${_avx2_flags}
      -mprefer-vector-width=512)
  string(REPLACE ";" " " _avx2_flag_str "${_avx2_flags}")
  string(REPLACE ";" " " _avx512_flag_str "${_avx512_flags}")
  check_cxx_compiler_flag("${_avx2_flag_str}" EGOVLPV2_CXX_HAS_AVX2)
  check_cxx_compiler_flag("${_avx512_flag_str}" EGOVLPV2_CXX_HAS_AVX512)
  if(EGOVLPV2_CXX_HAS_AVX2)
    egovlpv2_cpu_variant(avx2 ${_avx2_flags})
    target_compile_definitions(egovlpv2_cpu_config INTERFACE EGOVLPV2_CPU_HAVE_AVX2)
    list(PREPEND EGOVLPV2_CPU_ISAS "avx2")
  endif()
  if(EGOVLPV2_CXX_HAS_AVX512)
    egovlpv2_cpu_variant(avx512 ${_avx512_flags})
    target_compile_definitions(egovlpv2_cpu_config INTERFACE EGOVLPV2_CPU_HAVE_AVX512)
    list(PREPEND EGOVLPV2_CPU_ISAS "avx512")
  endif()
endif()
message(STATUS "egovlpv2: CPU kernel variants: ${EGOVLPV2_CPU_ISAS}")
