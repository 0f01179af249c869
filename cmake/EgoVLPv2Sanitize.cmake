# EGOVLPV2_SANITIZE: build the project's C++ (the CPU kernels, _ops_cpu and _C) with the GCC/Clang
# sanitizers named, e.g. -DEGOVLPV2_SANITIZE=address,undefined ("" = off, the default). Used by
# scripts/sanitize_ops.sh (`make sanitize`), which builds into build/sanitize/ and runs the CPU op
# tests with the ASan runtime preloaded into Python.
#
# -fno-sanitize-recover=undefined makes every UBSan finding abort (by default UBSan prints and
# goes on, so a test would still pass); -fno-omit-frame-pointer gives full stacks in reports.
# Only CXX compiles and links are touched: host code compiled by nvcc is not instrumented.
set(EGOVLPV2_SANITIZE "" CACHE STRING
    "Sanitizers for the C++ code, as for -fsanitize= (e.g. address,undefined); empty = none")
if(EGOVLPV2_SANITIZE)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "EGOVLPV2_SANITIZE needs GCC or Clang, not ${CMAKE_CXX_COMPILER_ID}")
  endif()
  set(_egovlpv2_sanitize_flags -fsanitize=${EGOVLPV2_SANITIZE} -fno-omit-frame-pointer)
  if(EGOVLPV2_SANITIZE MATCHES "undefined")
    list(APPEND _egovlpv2_sanitize_flags -fno-sanitize-recover=undefined)
  endif()
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:${_egovlpv2_sanitize_flags}>")
  add_link_options("$<$<LINK_LANGUAGE:CXX>:${_egovlpv2_sanitize_flags}>")
  message(STATUS "egovlpv2: sanitizers ${EGOVLPV2_SANITIZE} (${_egovlpv2_sanitize_flags})")
endif()
