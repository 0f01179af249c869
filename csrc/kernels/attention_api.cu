// Entry points of egovlpv2_kernels.h: plan (attention_plan.cu), then launch the plan's steps in
// order. The launch side makes no choice of its own; it maps each step to its launcher. Host
// code only; no synchronisation and no allocation, so every entry point can be captured in a
// CUDA graph.
#include <atomic>
#include <type_traits>

#include "attention_launch.h"

namespace egovlpv2 {
namespace kernels {

// mma.sync with bf16 needs sm_80; cached per device (cudaGetDevice and attribute queries are
// legal during stream capture).
DeviceFacts current_device_facts() {
  static std::atomic<int> cache[64];
  DeviceFacts facts;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return facts;
  int v = cache[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      return facts;
    }
    v = major >= 8 ? 1 : 2;
    cache[dev].store(v, std::memory_order_relaxed);
  }
  facts.has_mma = v == 1;
  return facts;
}

namespace {

using detail::AttnArgs;

template <class F>
cudaError_t by_dtype(DType t, F&& f) {
  switch (t) {
    case DType::kFloat32:
      return f(float{});
    case DType::kFloat16:
      return f(__half{});
    case DType::kBFloat16:
      return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

int simt_kind(StepPass pass) {
  if (pass == StepPass::kDq) return detail::kSimtDq;
  return pass == StepPass::kDkv ? detail::kSimtDkv : detail::kSimtForward;
}

int mma_kind(StepPass pass) {
  if (pass == StepPass::kDq) return detail::kMmaDq;
  return pass == StepPass::kDkv ? detail::kMmaDkv : detail::kMmaForward;
}

// The steps whose kernels exist for 16-bit dtypes only.
template <class T>
cudaError_t launch_step16(const PlanStep& s, const AttnArgs& a, const ClsGrid& grid, float* ws,
                          cudaStream_t stream) {
  if (s.kernel == StepKernel::kTensorCores) {
    return detail::launch_mma<T>(mma_kind(s.pass), a, stream);
  }
  if (s.kernel == StepKernel::kVecColumnsCls) {
    return detail::launch_cls_vec<T>(true, a, grid, ws, stream);
  }
  if (s.pass == StepPass::kForward) return detail::launch_cls_vec<T>(false, a, grid, ws, stream);
  return detail::launch_cls_backward<T>(a, grid, ws, stream);
}

// One step: the kernel, rows, split and loads the plan chose, with the plan's CLS grid and the
// caller's workspace.
template <class T>
cudaError_t launch_step(const PlanStep& s, AttnArgs a, const ClsGrid& grid, float* ws,
                        cudaStream_t stream) {
  switch (s.kernel) {
    case StepKernel::kNone:
    case StepKernel::kFused:
      return cudaSuccess;
    case StepKernel::kRows:
      a.row_begin = s.row_begin;
      a.row_count = s.row_count;
      a.split = s.split;
      a.vec_ok = s.vec;
      return detail::launch_simt<T>(simt_kind(s.pass), a, stream);
    case StepKernel::kColumns:
      a.vec_ok = s.vec;
      return detail::launch_time_columns<T>(s.pass != StepPass::kForward, a, stream);
    case StepKernel::kDeltaRows:
    case StepKernel::kDeltaHeads:
      return detail::launch_delta<T>(a, s.chunks, stream);
    case StepKernel::kTensorCores:
    case StepKernel::kVecColumnsCls:
    case StepKernel::kClsPartials:
      if constexpr (std::is_same<T, float>::value) {
        return cudaErrorInvalidValue;  // never planned for float32
      } else {
        return launch_step16<T>(s, a, grid, ws, stream);
      }
  }
  return cudaErrorInvalidValue;
}

// Every step of `plan` in launch order, stopping at the first error. The divided ops' plans
// carry a CLS grid and their params a workspace; the cross ops have neither. The params are read
// only once the planner has validated them (the argument block divides by frames).
template <class Plan, class Params>
cudaError_t launch_plan(const Plan& plan, const Params& p, const ClsGrid& grid, float* ws,
                        cudaStream_t stream) {
  if (!plan.valid) return cudaErrorInvalidValue;
  const AttnArgs a = detail::attn_args(p);
  return by_dtype(p.dtype, [&](auto tag) -> cudaError_t {
    cudaError_t err = cudaSuccess;
    for_each_step(plan, [&](const char*, const PlanStep& s) {
      if (err == cudaSuccess) err = launch_step<decltype(tag)>(s, a, grid, ws, stream);
    });
    return err;
  });
}

}  // namespace

cudaError_t divided_forward(const DividedForwardParams& p, cudaStream_t stream) {
  const DividedForwardPlan plan = plan_divided_forward(p, current_device_facts());
  return launch_plan(plan, p, plan.cls_grid, p.workspace, stream);
}

cudaError_t divided_backward(const DividedBackwardParams& p, cudaStream_t stream) {
  const DividedBackwardPlan plan = plan_divided_backward(p, current_device_facts());
  return launch_plan(plan, p, plan.cls_grid, p.workspace, stream);
}

cudaError_t cross_forward(const CrossForwardParams& p, cudaStream_t stream) {
  const CrossForwardPlan plan = plan_cross_forward(p, current_device_facts());
  return launch_plan(plan, p, ClsGrid{}, nullptr, stream);
}

cudaError_t cross_backward(const CrossBackwardParams& p, cudaStream_t stream) {
  const CrossBackwardPlan plan = plan_cross_backward(p, current_device_facts());
  return launch_plan(plan, p, ClsGrid{}, nullptr, stream);
}

}  // namespace kernels
}  // namespace egovlpv2
