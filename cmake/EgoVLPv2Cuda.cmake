# The CUDA op library _ops_cuda: csrc/torch/cuda_impl.cu (STABLE_TORCH_LIBRARY_IMPL for CUDA)
# plus the framework-free kernels in csrc/kernels/*.cu.
#
# Included by the top-level CMakeLists.txt after it has enabled CUDA, found CUDAToolkit and
# defined TORCH_CUDA_LIBRARY and egovlpv2_ops(). Self-contained as well: when included with CUDA
# not yet enabled it checks for nvcc and a CUDA torch itself and skips quietly without them.
#
# Architectures: TORCH_CUDA_ARCH_LIST (environment or CMake variable, PyTorch's spelling:
# "8.0;9.0", "8.0 8.6+PTX", "9.0a") when set, else CMAKE_CUDA_ARCHITECTURES, else 80 and 90.
# "X.Y" builds SASS only (XY-real); "X.Y+PTX" adds PTX for later GPUs (XY).
#
# Sets (cache): EGOVLPV2_WITH_CUDA (ON/OFF) and EGOVLPV2_CUDA_ARCHS (the CMake list used), and
# leaves CMAKE_CUDA_ARCHITECTURES equal to that list for the build-info module.

set(EGOVLPV2_WITH_CUDA OFF CACHE BOOL "egovlpv2: the CUDA kernels are built" FORCE)
set(EGOVLPV2_CUDA_ARCHS "" CACHE STRING "egovlpv2: CUDA architectures of _ops_cuda" FORCE)

if(NOT CMAKE_CUDA_COMPILER)
  include(CheckLanguage)
  check_language(CUDA)
endif()
if(NOT CMAKE_CUDA_COMPILER OR NOT TORCH_CUDA_LIBRARY)
  message(STATUS "egovlpv2: _ops_cuda not built (nvcc found: ${CMAKE_CUDA_COMPILER}; "
                 "libtorch_cuda: ${TORCH_CUDA_LIBRARY})")
  return()
endif()

# "8.0;9.0+PTX" -> "80-real;90"
function(egovlpv2_torch_arch_list_to_cmake out_var arch_list)
  string(REPLACE " " ";" _entries "${arch_list}")
  set(_result "")
  foreach(_entry IN LISTS _entries)
    if(_entry STREQUAL "")
      continue()
    endif()
    if(NOT _entry MATCHES "^([0-9]+)\\.([0-9]+)([a-z]?)(\\+PTX)?$")
      message(FATAL_ERROR
        "egovlpv2: cannot read '${_entry}' in TORCH_CUDA_ARCH_LIST='${arch_list}'; expected "
        "entries like 8.0, 8.6+PTX or 9.0a")
    endif()
    set(_arch "${CMAKE_MATCH_1}${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
    if(CMAKE_MATCH_4)
      list(APPEND _result "${_arch}")
    else()
      list(APPEND _result "${_arch}-real")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES _result)
  if(NOT _result)
    message(FATAL_ERROR "egovlpv2: TORCH_CUDA_ARCH_LIST='${arch_list}' names no architecture")
  endif()
  set(${out_var} "${_result}" PARENT_SCOPE)
endfunction()

if(DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
  egovlpv2_torch_arch_list_to_cmake(_egovlpv2_archs "$ENV{TORCH_CUDA_ARCH_LIST}")
elseif(TORCH_CUDA_ARCH_LIST)
  egovlpv2_torch_arch_list_to_cmake(_egovlpv2_archs "${TORCH_CUDA_ARCH_LIST}")
elseif(CMAKE_CUDA_ARCHITECTURES)
  set(_egovlpv2_archs "${CMAKE_CUDA_ARCHITECTURES}")
else()
  set(_egovlpv2_archs "80-real;90")
endif()
# The tensor-core kernels use mma.sync with bfloat16 (sm_80 and newer).
foreach(_arch IN LISTS _egovlpv2_archs)
  string(REGEX MATCH "^[0-9]+" _num "${_arch}")
  if(_num AND _num LESS 80)
    message(WARNING "egovlpv2: CUDA architecture ${_arch} is older than sm_80; the kernels "
                    "fall back to CUDA cores there (float16/bfloat16 tensor cores need sm_80)")
  endif()
endforeach()
set(CMAKE_CUDA_ARCHITECTURES "${_egovlpv2_archs}")

if(NOT CMAKE_CUDA_COMPILER_LOADED)
  enable_language(CUDA)
endif()
if(NOT TARGET CUDA::cudart)
  find_package(CUDAToolkit REQUIRED)
endif()

file(GLOB _egovlpv2_kernel_sources CONFIGURE_DEPENDS
     "${PROJECT_SOURCE_DIR}/csrc/kernels/*.cu")
egovlpv2_ops(_ops_cuda "${PROJECT_SOURCE_DIR}/csrc/torch/cuda_impl.cu"
             ${_egovlpv2_kernel_sources})
set_target_properties(_ops_cuda PROPERTIES
  CUDA_ARCHITECTURES "${_egovlpv2_archs}"
  CUDA_STANDARD 17
  CUDA_STANDARD_REQUIRED ON
  CUDA_VISIBILITY_PRESET hidden
  CUDA_RUNTIME_LIBRARY Shared)
# USE_CUDA declares the CUDA shims (aoti_torch_get_current_cuda_stream); no c10/cuda header is
# included, C10_CUDA_NO_CMAKE_CONFIGURE_FILE keeps it that way should one ever be.
target_compile_definitions(_ops_cuda PRIVATE USE_CUDA C10_CUDA_NO_CMAKE_CONFIGURE_FILE)
target_compile_options(_ops_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall -Xcompiler=-Wextra
    -Xcompiler=-Wno-unused-parameter>)
target_link_libraries(_ops_cuda PRIVATE "${TORCH_CUDA_LIBRARY}" CUDA::cudart)

set(EGOVLPV2_WITH_CUDA ON CACHE BOOL "egovlpv2: the CUDA kernels are built" FORCE)
set(EGOVLPV2_CUDA_ARCHS "${_egovlpv2_archs}" CACHE STRING
    "egovlpv2: CUDA architectures of _ops_cuda" FORCE)
message(STATUS "egovlpv2: _ops_cuda for CUDA architectures ${_egovlpv2_archs}")
