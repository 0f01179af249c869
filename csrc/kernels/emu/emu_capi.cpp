// C entry points over egovlpv2_kernels.h and attention_plan.h for the emulator build
// (ctypes-friendly: plain scalars and pointers). Used by tests/test_kernels_emulated.py.
//
// Every attention entry takes a last PlanRequest pointer: null runs the op; otherwise the call
// only plans it, as the op would on a device with or without tensor cores and with the given
// workspace, and returns the plan there. Both go through the same params, so a plan test sees
// exactly the pointers, strides and sizes a run would.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "../attention_plan.h"
#include "../egovlpv2_kernels.h"
#include "cuda_emu.h"

using namespace egovlpv2::kernels;

constexpr int kMaxPlanSteps = 8;

// Mirrored by tests/_kernel_emu.py (ctypes).
struct PlanRequest {
  int64_t workspace_bytes;  // < 0: what the op's *_workspace_bytes asks for (divided ops)
  int32_t has_mma;          // DeviceFacts::has_mma
  int32_t num_steps;        // out: steps written, -1 for an invalid plan
  // out: per step in launch order: kernel, row_begin, row_count, split, vec, chunks
  int64_t steps[kMaxPlanSteps][6];
  char text[512];  // out: describe()
};

namespace {

template <class Plan>
int export_plan(const Plan& plan, PlanRequest* r) {
  std::snprintf(r->text, sizeof r->text, "%s", describe(plan).c_str());
  r->num_steps = plan.valid ? 0 : -1;
  if (!plan.valid) return 0;
  for_each_step(plan, [&](const char*, const PlanStep& s) {
    if (r->num_steps == kMaxPlanSteps) return;
    int64_t* o = r->steps[r->num_steps++];
    o[0] = int64_t(s.kernel);
    o[1] = s.row_begin;
    o[2] = s.row_count;
    o[3] = s.split;
    o[4] = s.vec ? 1 : 0;
    o[5] = s.chunks;
  });
  return 0;
}

DeviceFacts facts(const PlanRequest* r) {
  DeviceFacts d;
  d.has_mma = r->has_mma != 0;
  return d;
}

// Run: scratch as the torch registration gives it, uninitialised (NaN here, so unwritten
// partials would show). Plan: a stand-in of the requested size that nothing reads.
template <class P>
std::vector<float> workspace(P& p, size_t need, const PlanRequest* r) {
  alignas(256) static float never_read[1];
  if (r != nullptr) {
    p.workspace_bytes = r->workspace_bytes < 0 ? need : size_t(r->workspace_bytes);
    p.workspace = p.workspace_bytes > 0 ? never_read : nullptr;
    return {};
  }
  std::vector<float> ws(need / sizeof(float), NAN);
  p.workspace = ws.empty() ? nullptr : ws.data();
  p.workspace_bytes = ws.size() * sizeof(float);
  return ws;
}

// q, k, v and the mask of both cross params structs.
template <class P>
P cross_params(int dtype, const void* q, int64_t q_sb, int64_t q_st, const void* k, int64_t k_sb,
               int64_t k_st, const void* v, int64_t v_sb, int64_t v_st, const void* mask,
               int64_t mask_sb, int64_t batch, int64_t len_q, int64_t len_k, int heads,
               int head_dim, float scale) {
  P p;
  p.dtype = DType(dtype);
  p.q = q;
  p.q_stride_b = q_sb;
  p.q_stride_t = q_st;
  p.k = k;
  p.k_stride_b = k_sb;
  p.k_stride_t = k_st;
  p.v = v;
  p.v_stride_b = v_sb;
  p.v_stride_t = v_st;
  p.key_mask = mask;
  p.mask_stride_b = mask_sb;
  p.batch = batch;
  p.len_q = len_q;
  p.len_k = len_k;
  p.heads = heads;
  p.head_dim = head_dim;
  p.scale = scale;
  return p;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) void ego_emu_set_seed(uint64_t seed) { emu::set_seed(seed); }

__attribute__((visibility("default"))) void ego_emu_set_async_mode(int mode) {
  emu::set_async_mode(mode);
}

__attribute__((visibility("default"))) int ego_emu_launches_with_block(int threads) {
  return emu::launches_with_block(threads);
}

__attribute__((visibility("default"))) int ego_emu_launch_count() { return emu::launch_count(); }

__attribute__((visibility("default"))) void ego_emu_reset_launches() { emu::reset_launches(); }

__attribute__((visibility("default"))) const char* ego_emu_error() { return emu::take_error(); }

__attribute__((visibility("default"))) const char* ego_emu_kernel_name(int kernel) {
  return kernel_name(StepKernel(kernel));
}

__attribute__((visibility("default"))) int ego_emu_divided_forward(
    int dtype, const void* qkv, int64_t sb, int64_t st, int64_t batch, int64_t tokens, int heads,
    int head_dim, int frames, int temporal, float scale, void* out, float* lse, PlanRequest* plan) {
  DividedForwardParams p;
  p.dtype = DType(dtype);
  p.qkv = qkv;
  p.qkv_stride_b = sb;
  p.qkv_stride_t = st;
  p.batch = batch;
  p.tokens = tokens;
  p.heads = heads;
  p.head_dim = head_dim;
  p.frames = frames;
  p.temporal = temporal != 0;
  p.scale = scale;
  p.out = out;
  p.lse = lse;
  const std::vector<float> ws = workspace(p, divided_forward_workspace_bytes(p), plan);
  if (plan != nullptr) return export_plan(plan_divided_forward(p, facts(plan)), plan);
  return int(divided_forward(p, nullptr));
}

__attribute__((visibility("default"))) int ego_emu_divided_backward(
    int dtype, const void* grad_out, const void* qkv, int64_t sb, int64_t st, const void* out,
    const float* lse, int64_t batch, int64_t tokens, int heads, int head_dim, int frames,
    int temporal, float scale, float* delta, void* grad_qkv, PlanRequest* plan) {
  DividedBackwardParams p;
  p.dtype = DType(dtype);
  p.grad_out = grad_out;
  p.qkv = qkv;
  p.qkv_stride_b = sb;
  p.qkv_stride_t = st;
  p.out = out;
  p.lse = lse;
  p.batch = batch;
  p.tokens = tokens;
  p.heads = heads;
  p.head_dim = head_dim;
  p.frames = frames;
  p.temporal = temporal != 0;
  p.scale = scale;
  p.delta = delta;
  p.grad_qkv = grad_qkv;
  const std::vector<float> ws = workspace(p, divided_backward_workspace_bytes(p), plan);
  if (plan != nullptr) return export_plan(plan_divided_backward(p, facts(plan)), plan);
  return int(divided_backward(p, nullptr));
}

__attribute__((visibility("default"))) int ego_emu_cross_forward(
    int dtype, const void* q, int64_t q_sb, int64_t q_st, const void* k, int64_t k_sb, int64_t k_st,
    const void* v, int64_t v_sb, int64_t v_st, const void* mask, int64_t mask_sb, int64_t batch,
    int64_t len_q, int64_t len_k, int heads, int head_dim, float scale, void* attn, float* lse,
    PlanRequest* plan) {
  CrossForwardParams p =
      cross_params<CrossForwardParams>(dtype, q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, mask,
                                       mask_sb, batch, len_q, len_k, heads, head_dim, scale);
  p.attn = attn;
  p.lse = lse;
  if (plan != nullptr) return export_plan(plan_cross_forward(p, facts(plan)), plan);
  return int(cross_forward(p, nullptr));
}

__attribute__((visibility("default"))) int ego_emu_cross_backward(
    int dtype, const void* grad_attn, const void* q, int64_t q_sb, int64_t q_st, const void* k,
    int64_t k_sb, int64_t k_st, const void* v, int64_t v_sb, int64_t v_st, const void* mask,
    int64_t mask_sb, const void* attn, const float* lse, int64_t batch, int64_t len_q,
    int64_t len_k, int heads, int head_dim, float scale, float* delta, void* grad_q, void* grad_k,
    void* grad_v, PlanRequest* plan) {
  CrossBackwardParams p =
      cross_params<CrossBackwardParams>(dtype, q, q_sb, q_st, k, k_sb, k_st, v, v_sb, v_st, mask,
                                        mask_sb, batch, len_q, len_k, heads, head_dim, scale);
  p.grad_attn = grad_attn;
  p.attn = attn;
  p.lse = lse;
  p.delta = delta;
  p.grad_q = grad_q;
  p.grad_k = grad_k;
  p.grad_v = grad_v;
  if (plan != nullptr) return export_plan(plan_cross_backward(p, facts(plan)), plan);
  return int(cross_backward(p, nullptr));
}

__attribute__((visibility("default"))) int ego_emu_gate_residual(int dtype, const void* residual,
                                                                 const void* lin, const void* gate,
                                                                 int gate_f32, void* out,
                                                                 int64_t numel) {
  GateResidualParams p;
  p.dtype = DType(dtype);
  p.residual = residual;
  p.lin = lin;
  p.gate = gate;
  p.gate_is_float32 = gate_f32 != 0;
  p.out = out;
  p.numel = numel;
  return int(gate_residual(p, nullptr));
}

}  // extern "C"
