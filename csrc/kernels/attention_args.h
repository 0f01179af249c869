// The internal argument block of the attention kernels, and how each entry point's params fill
// it. Plain host/device data, no CUDA call: the planner (attention_plan.cu) reads its pointers
// and strides for the alignment facts, the launchers (attention_api.cu) pass it to the kernels,
// so both see the same q, k, v, output and gradient views.
#pragma once

#include <cstddef>
#include <cstdint>

#include "egovlpv2_kernels.h"

namespace egovlpv2 {
namespace kernels {
namespace detail {

enum Mode : int { kDivided = 0, kCross = 1 };

// One argument block for every attention kernel. Strides are in elements; rows of every tensor
// are contiguous. "Rows" are the side a kernel iterates over in its grid (queries for the forward
// and dQ passes, keys for the dK/dV pass); "partners" are the other side.
struct AttnArgs {
  const void* q = nullptr;
  int64_t q_sb = 0, q_st = 0;
  const void* k = nullptr;
  int64_t k_sb = 0, k_st = 0;
  const void* v = nullptr;
  int64_t v_sb = 0, v_st = 0;
  const void* dout = nullptr;  // gradient of the attention output (backward)
  int64_t do_sb = 0, do_st = 0;
  const void* fwd_out = nullptr;  // forward output (backward: delta = rowsum(dout * out))
  int64_t fo_sb = 0, fo_st = 0;
  const void* mask = nullptr;  // additive key mask [batch, len_k] (cross only)
  int64_t mask_sb = 0;
  void* o = nullptr;  // forward output, or dQ in the dQ pass
  int64_t o_sb = 0, o_st = 0;
  void* dk = nullptr;
  int64_t dk_sb = 0, dk_st = 0;
  void* dv = nullptr;
  int64_t dv_sb = 0, dv_st = 0;
  float* lse = nullptr;    // [batch, heads, q_rows]
  float* delta = nullptr;  // [batch, heads, q_rows]
  int64_t batch = 0;
  int heads = 0;
  int head_dim = 0;
  float scale = 1.f;
  int mode = kDivided;
  int64_t q_rows = 0;  // rows of the lse/delta buffers: tokens (divided) or len_q (cross)
  // divided
  int64_t tokens = 0, patches = 0;
  int frames = 0;
  bool temporal = false;
  // cross
  int64_t len_q = 0, len_k = 0;
  // per-launch selection for the one-row-per-warp kernels (set from a PlanStep)
  int64_t row_begin = 0, row_count = 0;
  int split = 1;        // warps cooperating on one row (1, 2, 4 or 8)
  bool vec_ok = false;  // rows may be read with vector loads of the lane's chunk
};

inline size_t elem_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

inline const void* advance(const void* p, int64_t elems, DType t) {
  return static_cast<const char*>(p) + elems * int64_t(elem_size(t));
}
inline void* advance(void* p, int64_t elems, DType t) {
  return static_cast<char*>(p) + elems * int64_t(elem_size(t));
}

// The output of a forward pass, [B, rows, D] contiguous, and its lse.
inline void set_output(AttnArgs& a, void* out, float* lse, int64_t rows, int64_t D) {
  a.o = out;
  a.o_sb = rows * D;
  a.o_st = D;
  a.lse = lse;
}

// What a backward pass reads of its forward: the output's gradient and the output ([B, rows, D]
// contiguous), the lse; and the delta scratch.
inline void set_saved_forward(AttnArgs& a, const void* dout, const void* out, const float* lse,
                              float* delta, int64_t rows, int64_t D) {
  a.dout = dout;
  a.do_sb = rows * D;
  a.do_st = D;
  a.fwd_out = out;
  a.fo_sb = rows * D;
  a.fo_st = D;
  a.lse = const_cast<float*>(lse);  // read-only in the backward kernels
  a.delta = delta;
}

// dQ (in a.o: the dQ pass writes where the forward writes its output), dK and dV.
inline void set_grads(AttnArgs& a, void* dq, int64_t dq_sb, int64_t dq_st, void* dk, void* dv,
                      int64_t dkv_sb, int64_t dkv_st) {
  a.o = dq;
  a.o_sb = dq_sb;
  a.o_st = dq_st;
  a.dk = dk;
  a.dv = dv;
  a.dk_sb = a.dv_sb = dkv_sb;
  a.dk_st = a.dv_st = dkv_st;
}

// Sizes and scale, named alike in every params struct.
template <class P>
AttnArgs sized_args(const P& p, Mode mode, int64_t q_rows) {
  AttnArgs a;
  a.batch = p.batch;
  a.heads = p.heads;
  a.head_dim = p.head_dim;
  a.scale = p.scale;
  a.mode = mode;
  a.q_rows = q_rows;
  return a;
}

// q, k, v: the three column blocks of the packed [B, T, 3D] projection. Needs frames >= 1.
template <class P>
AttnArgs divided_args(const P& p) {
  const int64_t D = int64_t(p.heads) * p.head_dim;
  AttnArgs a = sized_args(p, kDivided, p.tokens);
  a.q = p.qkv;
  a.k = advance(p.qkv, D, p.dtype);
  a.v = advance(p.qkv, 2 * D, p.dtype);
  a.q_sb = a.k_sb = a.v_sb = p.qkv_stride_b;
  a.q_st = a.k_st = a.v_st = p.qkv_stride_t;
  a.tokens = p.tokens;
  a.frames = p.frames;
  a.patches = (p.tokens - 1) / p.frames;
  a.temporal = p.temporal;
  return a;
}

// q, k, v and the optional key mask, as given.
template <class P>
AttnArgs cross_args(const P& p) {
  AttnArgs a = sized_args(p, kCross, p.len_q);
  a.q = p.q;
  a.q_sb = p.q_stride_b;
  a.q_st = p.q_stride_t;
  a.k = p.k;
  a.k_sb = p.k_stride_b;
  a.k_st = p.k_stride_t;
  a.v = p.v;
  a.v_sb = p.v_stride_b;
  a.v_st = p.v_stride_t;
  a.mask = p.key_mask;
  a.mask_sb = p.mask_stride_b;
  a.len_q = p.len_q;
  a.len_k = p.len_k;
  return a;
}

// The argument block of each entry point's params.
inline AttnArgs attn_args(const DividedForwardParams& p) {
  AttnArgs a = divided_args(p);
  set_output(a, p.out, p.lse, p.tokens, int64_t(p.heads) * p.head_dim);
  return a;
}

inline AttnArgs attn_args(const DividedBackwardParams& p) {
  const int64_t D = int64_t(p.heads) * p.head_dim;
  AttnArgs a = divided_args(p);
  set_saved_forward(a, p.grad_out, p.out, p.lse, p.delta, p.tokens, D);
  // grad_qkv [B, T, 3D]: dQ, dK, dV are its column blocks.
  set_grads(a, p.grad_qkv, p.tokens * 3 * D, 3 * D, advance(p.grad_qkv, D, p.dtype),
            advance(p.grad_qkv, 2 * D, p.dtype), p.tokens * 3 * D, 3 * D);
  return a;
}

inline AttnArgs attn_args(const CrossForwardParams& p) {
  AttnArgs a = cross_args(p);
  set_output(a, p.attn, p.lse, p.len_q, int64_t(p.heads) * p.head_dim);
  return a;
}

inline AttnArgs attn_args(const CrossBackwardParams& p) {
  const int64_t D = int64_t(p.heads) * p.head_dim;
  AttnArgs a = cross_args(p);
  set_saved_forward(a, p.grad_attn, p.attn, p.lse, p.delta, p.len_q, D);
  set_grads(a, p.grad_q, p.len_q * D, D, p.grad_k, p.grad_v, p.len_k * D, D);
  return a;
}

}  // namespace detail
}  // namespace kernels
}  // namespace egovlpv2
