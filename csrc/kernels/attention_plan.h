// Kernel plans of the attention entry points of egovlpv2_kernels.h.
//
// A planner looks at an op's params (shapes, dtype, pointer and stride alignment, workspace) and
// at facts about the device, and returns an immutable plan: for every step of the op, in launch
// order, which kernel runs over which rows, with how many warps per row, whether rows are read
// in lane chunks, and the CTA grid of the CLS partial kernels. attention_api.cu then launches
// exactly the plan, deciding nothing itself (the split that flash-attention keeps between
// hopper/heuristics.h, tile_size.h and its launchers). Planners are pure host functions: no CUDA
// call, no allocation. The "Which kernel runs" table of csrc/kernels/README.md is what they
// encode; tests/test_kernels_emulated.py asserts it through the emulator's C API.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "egovlpv2_kernels.h"

namespace egovlpv2 {
namespace kernels {

// What a plan needs to know about the device the op runs on.
struct DeviceFacts {
  bool has_mma = false;  // mma.sync with float16/bfloat16 inputs (sm_80 and newer)
};

// The facts of the current device (cudaGetDevice), cached per device; legal during stream
// capture. Defined with the entry points (attention_api.cu).
DeviceFacts current_device_facts();

enum class StepKernel : uint8_t {
  kNone,           // nothing to do: the step has no rows
  kFused,          // done by the kernel of another step of the same plan
  kRows,           // one row per warp (attention_simt.cuh) over [row_begin, row_begin + row_count)
  kTensorCores,    // mma.sync tiles (attention_mma.cuh)
  kColumns,        // temporal, one warp per column of F patch tokens (attention_time.cuh)
  kVecColumnsCls,  // vectorised temporal forward that leaves the CLS row's partials, + combine
  kClsPartials,    // row 0 from per-CTA partials in the workspace (attention_cls.cuh), + combine
  kDeltaRows,      // delta = rowsum(dO * O), one warp per row, `chunks` 16-byte chunks per head
  kDeltaHeads,     // delta, one warp per row and head
};

enum class StepPass : uint8_t { kForward, kDq, kDkv, kDelta };

// One step of a plan. Fields other than kernel and pass matter only for the kernels named.
struct PlanStep {
  StepKernel kernel = StepKernel::kNone;
  StepPass pass = StepPass::kForward;
  int64_t row_begin = 0;  // kRows
  int64_t row_count = 0;  // kRows
  int split = 1;          // kRows: warps per row (1, 2, 4 or 8)
  bool vec = false;       // kRows, kColumns: rows are read and written in lane chunks
  int chunks = 0;         // kDeltaRows
};

// CTA shape of the CLS partial kernels; host and device agree on it through this struct.
struct ClsGrid {
  bool ok = false;
  int lanes = 0;        // L: lanes per slot
  int cols = 0;         // C: slots per head in a CTA (columns or tokens processed side by side)
  int threads = 0;      // C * H * L rounded up to a warp
  int iters = 0;        // I: steps of C columns per CTA
  int unroll = 1;       // U: tokens per slot per step (spatial CLS partials)
  int64_t per_cta = 0;  // C * I * U items per CTA
  int64_t chunks = 0;   // CTAs per batch element = partials per (batch, head)
};

// valid == false: params out of range (the entry point returns cudaErrorInvalidValue). A valid
// plan of an empty op (batch 0, no query rows) has only kNone steps.
struct DividedForwardPlan {
  bool valid = false;
  PlanStep patches;  // rows 1 .. T-1 (kVecColumnsCls: and row 0)
  PlanStep cls;      // row 0, the CLS query
  ClsGrid cls_grid;  // when a step is kVecColumnsCls or kClsPartials
};

struct DividedBackwardPlan {
  bool valid = false;
  PlanStep delta;
  PlanStep dq_patches;  // kColumns: dK and dV of the patch keys as well
  PlanStep dq_cls;      // kFused: in dkv_cls's kClsPartials
  PlanStep dkv_patches;
  PlanStep dkv_cls;
  ClsGrid cls_grid;
};

struct CrossForwardPlan {
  bool valid = false;
  PlanStep forward;
};

struct CrossBackwardPlan {
  bool valid = false;
  PlanStep delta;
  PlanStep dq;
  PlanStep dkv;
};

DividedForwardPlan plan_divided_forward(const DividedForwardParams& p, const DeviceFacts& dev);
DividedBackwardPlan plan_divided_backward(const DividedBackwardParams& p, const DeviceFacts& dev);
CrossForwardPlan plan_cross_forward(const CrossForwardParams& p, const DeviceFacts& dev);
CrossBackwardPlan plan_cross_backward(const CrossBackwardParams& p, const DeviceFacts& dev);

// f(name, step) for every step, in launch order.
template <class F>
void for_each_step(const DividedForwardPlan& p, F&& f) {
  f("patches", p.patches);
  f("cls", p.cls);
}
template <class F>
void for_each_step(const DividedBackwardPlan& p, F&& f) {
  f("delta", p.delta);
  f("dq_patches", p.dq_patches);
  f("dq_cls", p.dq_cls);
  f("dkv_patches", p.dkv_patches);
  f("dkv_cls", p.dkv_cls);
}
template <class F>
void for_each_step(const CrossForwardPlan& p, F&& f) {
  f("forward", p.forward);
}
template <class F>
void for_each_step(const CrossBackwardPlan& p, F&& f) {
  f("delta", p.delta);
  f("dq", p.dq);
  f("dkv", p.dkv);
}

// "tensor_cores", "rows", ... (the enumerator without its k, in snake case).
const char* kernel_name(StepKernel k);
// One line per plan for logs and test messages, e.g.
// "patches: rows [1, 785) split 2 vec; cls: cls_partials" ("invalid" for an invalid plan).
std::string describe(const DividedForwardPlan& plan);
std::string describe(const DividedBackwardPlan& plan);
std::string describe(const CrossForwardPlan& plan);
std::string describe(const CrossBackwardPlan& plan);

namespace detail {

// Head dims with a tensor-core kernel for the pass (the dK/dV kernel keeps K, V, dK and dV of
// 16 rows in registers, which would spill at 128).
inline bool mma_supports(StepPass pass, int head_dim) {
  if (pass == StepPass::kDkv) return head_dim == 32 || head_dim == 64;
  return head_dim == 32 || head_dim == 64 || head_dim == 128;
}

// The column kernels keep all F tokens of a column in registers (buckets F <= 4 and F <= 8).
inline bool time_columns_supported(int frames, int head_dim) {
  return frames >= 1 && frames <= 8 && head_dim <= 64;
}

// The vectorised temporal forward (attention_cls.cuh): 16-bit dtypes, F <= 4, head dim 32/64.
inline bool time_vec_supported(int frames, int head_dim) {
  return frames >= 1 && frames <= 4 && (head_dim == 32 || head_dim == 64);
}

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
