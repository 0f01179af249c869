// C entry points over egovlpv2_kernels.h for the emulator build (ctypes-friendly: plain scalars
// and pointers). Used by tests/test_kernels_emulated.py.
#include <cmath>
#include <cstdint>
#include <vector>

#include "../egovlpv2_kernels.h"
#include "cuda_emu.h"

using namespace egovlpv2::kernels;

extern "C" {

__attribute__((visibility("default"))) void ego_emu_set_seed(uint64_t seed) {
  emu::set_seed(seed);
}

__attribute__((visibility("default"))) void ego_emu_set_async_mode(int mode) {
  emu::set_async_mode(mode);
}

__attribute__((visibility("default"))) int ego_emu_launches_with_block(int threads) {
  return emu::launches_with_block(threads);
}

__attribute__((visibility("default"))) void ego_emu_reset_launches() { emu::reset_launches(); }

__attribute__((visibility("default"))) const char* ego_emu_error() { return emu::take_error(); }

__attribute__((visibility("default"))) int ego_emu_divided_forward(
    int dtype, const void* qkv, int64_t sb, int64_t st, int64_t batch, int64_t tokens, int heads,
    int head_dim, int frames, int temporal, float scale, void* out, float* lse) {
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
  // Scratch as the torch registration gives it: uninitialised (NaN here, so unwritten
  // partials would show).
  std::vector<float> ws(divided_forward_workspace_bytes(p) / sizeof(float), NAN);
  p.workspace = ws.empty() ? nullptr : ws.data();
  p.workspace_bytes = ws.size() * sizeof(float);
  return int(divided_forward(p, nullptr));
}

__attribute__((visibility("default"))) int ego_emu_divided_backward(
    int dtype, const void* grad_out, const void* qkv, int64_t sb, int64_t st, const void* out,
    const float* lse, int64_t batch, int64_t tokens, int heads, int head_dim, int frames,
    int temporal, float scale, float* delta, void* grad_qkv) {
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
  std::vector<float> ws(divided_backward_workspace_bytes(p) / sizeof(float), NAN);
  p.workspace = ws.empty() ? nullptr : ws.data();
  p.workspace_bytes = ws.size() * sizeof(float);
  return int(divided_backward(p, nullptr));
}

__attribute__((visibility("default"))) int ego_emu_cross_forward(
    int dtype, const void* q, int64_t q_sb, int64_t q_st, const void* k, int64_t k_sb,
    int64_t k_st, const void* v, int64_t v_sb, int64_t v_st, const void* mask, int64_t mask_sb,
    int64_t batch, int64_t len_q, int64_t len_k, int heads, int head_dim, float scale, void* attn,
    float* lse) {
  CrossForwardParams p;
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
  p.attn = attn;
  p.lse = lse;
  return int(cross_forward(p, nullptr));
}

__attribute__((visibility("default"))) int ego_emu_cross_backward(
    int dtype, const void* grad_attn, const void* q, int64_t q_sb, int64_t q_st, const void* k,
    int64_t k_sb, int64_t k_st, const void* v, int64_t v_sb, int64_t v_st, const void* mask,
    int64_t mask_sb, const void* attn, const float* lse, int64_t batch, int64_t len_q,
    int64_t len_k, int heads, int head_dim, float scale, float* delta, void* grad_q,
    void* grad_k, void* grad_v) {
  CrossBackwardParams p;
  p.dtype = DType(dtype);
  p.grad_attn = grad_attn;
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
  p.attn = attn;
  p.lse = lse;
  p.batch = batch;
  p.len_q = len_q;
  p.len_k = len_k;
  p.heads = heads;
  p.head_dim = head_dim;
  p.scale = scale;
  p.delta = delta;
  p.grad_q = grad_q;
  p.grad_k = grad_k;
  p.grad_v = grad_v;
  return int(cross_backward(p, nullptr));
}

__attribute__((visibility("default"))) int ego_emu_gate_residual(int dtype, const void* residual,
                                                                 const void* lin,
                                                                 const void* gate, int gate_f32,
                                                                 void* out, int64_t numel) {
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
