# Torch discovery for the op libraries, without find_package(Torch) (its CUDA checks fail on
# the default PyPI wheel; see docs/ARCHITECTURE.md). Only the stable-ABI headers and
# libtorch_cpu (which holds every C shim) are needed.
#
# Sets: TORCH_ROOT, TORCH_INCLUDE_DIR, TORCH_CPU_LIBRARY, TORCH_CUDA_LIBRARY (or -NOTFOUND),
#       EGOVLPV2_TORCH_VERSION, EGOVLPV2_TORCH_CUDA_VERSION ("" for a CPU torch),
#       EGOVLPV2_TORCH_TARGET_VERSION (cache, hex) and EGOVLPV2_TORCH_TARGET_VERSION_STR ("2.11").

# The torch of the Python that runs the build; torch/version.py is read without importing
# torch (a full import costs seconds).
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c
    "import importlib.util as u, os, runpy; r = u.find_spec('torch').submodule_search_locations[0]; v = runpy.run_path(os.path.join(r, 'version.py')); print(r); print(v['__version__']); print(v.get('cuda') or 'none')"
  OUTPUT_VARIABLE _egovlpv2_torch_out
  OUTPUT_STRIP_TRAILING_WHITESPACE
  COMMAND_ERROR_IS_FATAL ANY)
string(REPLACE "\n" ";" _egovlpv2_torch_out "${_egovlpv2_torch_out}")
list(GET _egovlpv2_torch_out 0 TORCH_ROOT)
list(GET _egovlpv2_torch_out 1 EGOVLPV2_TORCH_VERSION)
list(GET _egovlpv2_torch_out 2 EGOVLPV2_TORCH_CUDA_VERSION)
if(EGOVLPV2_TORCH_CUDA_VERSION STREQUAL "none")
  set(EGOVLPV2_TORCH_CUDA_VERSION "")
endif()

set(TORCH_INCLUDE_DIR "${TORCH_ROOT}/include")
if(NOT EXISTS "${TORCH_INCLUDE_DIR}/torch/csrc/stable/library.h")
  message(FATAL_ERROR
    "torch ${EGOVLPV2_TORCH_VERSION} at ${TORCH_ROOT} has no stable-ABI headers "
    "(torch/csrc/stable/library.h); egovlpv2-rt needs torch >= 2.11")
endif()
find_library(TORCH_CPU_LIBRARY torch_cpu PATHS "${TORCH_ROOT}/lib" REQUIRED NO_DEFAULT_PATH)
find_library(TORCH_CUDA_LIBRARY torch_cuda PATHS "${TORCH_ROOT}/lib" NO_DEFAULT_PATH)

# The oldest torch the binaries load into: the headers hide every shim added after it.
# Layout [major][minor][patch][5-byte tag]; 0x020b... is 2.11.
set(EGOVLPV2_TORCH_TARGET_VERSION "0x020b000000000000" CACHE STRING
    "TORCH_TARGET_VERSION of the op libraries: the oldest torch they load into")
string(SUBSTRING "${EGOVLPV2_TORCH_TARGET_VERSION}" 2 2 _egovlpv2_major_hex)
string(SUBSTRING "${EGOVLPV2_TORCH_TARGET_VERSION}" 4 2 _egovlpv2_minor_hex)
math(EXPR _egovlpv2_major "0x${_egovlpv2_major_hex}")
math(EXPR _egovlpv2_minor "0x${_egovlpv2_minor_hex}")
set(EGOVLPV2_TORCH_TARGET_VERSION_STR "${_egovlpv2_major}.${_egovlpv2_minor}")

message(STATUS "egovlpv2: torch ${EGOVLPV2_TORCH_VERSION} at ${TORCH_ROOT}")
message(STATUS "egovlpv2: op libraries target torch >= ${EGOVLPV2_TORCH_TARGET_VERSION_STR}")
