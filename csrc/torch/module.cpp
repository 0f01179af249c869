// egovlpv2_rt._C: facts about the build. The ops themselves live in plain shared libraries
// (_ops_cpu, _ops_cuda) on the LibTorch stable ABI, loaded by egovlpv2_rt._extension; this
// module does not link torch, so it never ties the package to one torch version.
#include <pybind11/pybind11.h>

#include "../cpu/cpu_features.h"
#include "egovlpv2_build_info.h"

namespace py = pybind11;

namespace {

py::object or_none(const char* s) {
  if (s == nullptr || *s == '\0') return py::none();
  return py::str(s);
}

py::dict build_info() {
  namespace cpu = egovlpv2::cpu;
  py::dict d;
  d["version"] = EGOVLPV2_VERSION;
  d["cuda"] = static_cast<bool>(EGOVLPV2_BUILD_CUDA);
  d["cuda_architectures"] = or_none(EGOVLPV2_CUDA_ARCHITECTURES);
  d["cuda_compiler"] = or_none(EGOVLPV2_CUDA_COMPILER);
  d["torch_built_against"] = EGOVLPV2_TORCH_VERSION;
  d["torch_cuda_built_against"] = or_none(EGOVLPV2_TORCH_CUDA_VERSION);
  d["torch_target_version"] = EGOVLPV2_TORCH_TARGET_VERSION_STR;
  d["torch_target_version_hex"] = EGOVLPV2_TORCH_TARGET_VERSION_HEX;
  d["compiler"] = EGOVLPV2_CXX_COMPILER;
  d["build_type"] = EGOVLPV2_BUILD_TYPE;
  d["system_processor"] = EGOVLPV2_SYSTEM_PROCESSOR;
  d["cpu_isas_compiled"] = cpu::compiled_isas();
  d["cpu_isa"] = cpu::isa_name(cpu::active_isa());
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Build facts of egovlpv2-rt's compiled extension.";
  m.def("build_info", &build_info,
        "Facts fixed at build time (versions, CUDA on/off, architectures, compiler) and the "
        "CPU kernel variant selected on this machine.");
  m.attr("__version__") = EGOVLPV2_VERSION;
}
