// Names used in the op libraries' error messages (shared by the CPU and CUDA registrations).
#pragma once

#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cstdint>
#include <sstream>
#include <string>

namespace egovlpv2::op_messages {

// The four op names, as they appear in the schemas and in every error message.
inline constexpr const char* kSpaceTime = "egovlpv2::divided_space_time_attention";
inline constexpr const char* kSpaceTimeBackward =
    "egovlpv2::divided_space_time_attention_backward";
inline constexpr const char* kCross = "egovlpv2::gated_cross_attention";
inline constexpr const char* kCrossBackward = "egovlpv2::gated_cross_attention_backward";

// "[2, 785, 2304]"
inline std::string shape_of(const torch::stable::Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t d = 0; d < t.dim(); ++d) s << (d ? ", " : "") << t.size(d);
  s << "]";
  return s.str();
}

inline const char* dtype_name(torch::headeronly::ScalarType t) {
  using torch::headeronly::ScalarType;
  switch (t) {
    case ScalarType::Float:
      return "float32";
    case ScalarType::Double:
      return "float64";
    case ScalarType::Half:
      return "float16";
    case ScalarType::BFloat16:
      return "bfloat16";
    default:
      return "a non-floating dtype";
  }
}

}  // namespace egovlpv2::op_messages
