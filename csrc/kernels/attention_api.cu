// Entry points of egovlpv2_kernels.h: argument checks, and the choice between the tensor-core
// kernels (half / bfloat16, spatial or cross attention, head dim 32/64/128, 16-byte aligned rows)
// and the one-row-per-warp kernels (everything else, and the CLS rows of divided attention).
// Host code only; no synchronisation and no allocation, so every entry point can be captured in
// a CUDA graph.
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "attention_launch.h"

namespace egovlpv2 {
namespace kernels {
namespace {

using detail::AttnArgs;

size_t elem_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }

const void* advance(const void* p, int64_t elems, DType t) {
  return static_cast<const char*>(p) + elems * int64_t(elem_size(t));
}
void* advance(void* p, int64_t elems, DType t) {
  return static_cast<char*>(p) + elems * int64_t(elem_size(t));
}

bool valid_dtype(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16;
}

// Alignment facts for a vector path: every pointer a multiple of `bytes`, every stride a
// multiple of `elems`.
struct AlignCheck {
  size_t bytes;
  int64_t elems;
  bool ok = true;
  AlignCheck(size_t b, int64_t e) : bytes(b), elems(e) {}
  AlignCheck& ptr(const void* p) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % bytes != 0) ok = false;
    return *this;
  }
  AlignCheck& stride(int64_t s) {
    if (s % elems != 0) ok = false;
    return *this;
  }
};

// 16-byte rows for the tensor-core tiles.
AlignCheck mma_align(const AttnArgs& a, DType t) {
  AlignCheck c(16, int64_t(16 / elem_size(t)));
  c.stride(a.head_dim);
  return c;
}

// The lane chunk (E = bucket/32 elements) of the one-row-per-warp kernels.
AlignCheck simt_align(const AttnArgs& a, DType t) {
  const int bucket = a.head_dim <= 32 ? 32 : (a.head_dim <= 64 ? 64 : 128);
  const int64_t e = bucket / 32;
  AlignCheck c(size_t(e) * elem_size(t), e);
  c.stride(a.head_dim);
  return c;
}

AlignCheck& add_qkv(AlignCheck& c, const AttnArgs& a) {
  return c.ptr(a.q).ptr(a.k).ptr(a.v).stride(a.q_sb).stride(a.q_st).stride(a.k_sb)
      .stride(a.k_st).stride(a.v_sb).stride(a.v_st);
}
AlignCheck& add_grad(AlignCheck& c, const AttnArgs& a) {
  return c.ptr(a.dout).stride(a.do_sb).stride(a.do_st);
}
AlignCheck& add_out(AlignCheck& c, void* p, int64_t sb, int64_t st) {
  return c.ptr(p).stride(sb).stride(st);
}

// 16-byte rows of dout and the forward output: delta = rowsum(dO * O) reads whole rows in
// 16-byte chunks.
bool delta_rows_aligned(const AttnArgs& a, DType t) {
  AlignCheck c(16, int64_t(16 / elem_size(t)));
  return add_grad(c, a).ptr(a.fwd_out).stride(a.fo_sb).stride(a.fo_st).ok;
}

// Warps per row for a partner list of length n: enough that no warp walks more than ~64.
int choose_split(int64_t n) {
  if (n <= 64) return 1;
  if (n <= 128) return 2;
  if (n <= 256) return 4;
  return 8;
}

// mma.sync with bf16 needs sm_80; cached per device (cudaGetDevice and attribute queries are
// legal during stream capture).
bool device_has_mma() {
  static std::atomic<int> cache[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  int v = cache[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      return false;
    }
    v = major >= 8 ? 1 : 2;
    cache[dev].store(v, std::memory_order_relaxed);
  }
  return v == 1;
}

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

bool valid_heads(int heads, int head_dim) {
  return heads >= 1 && head_dim >= 1 && head_dim <= kMaxHeadDim;
}

bool valid_divided(DType dtype, int64_t batch, int64_t tokens, int heads, int head_dim,
                   int frames) {
  return valid_dtype(dtype) && batch >= 0 && tokens >= 1 && valid_heads(heads, head_dim) &&
         frames >= 1 && (tokens - 1) % frames == 0;
}

AttnArgs divided_args(DType dtype, const void* qkv, int64_t sb, int64_t st, int64_t batch,
                      int64_t tokens, int heads, int head_dim, int frames, bool temporal,
                      float scale) {
  const int64_t D = int64_t(heads) * head_dim;
  AttnArgs a;
  a.q = qkv;
  a.k = advance(qkv, D, dtype);
  a.v = advance(qkv, 2 * D, dtype);
  a.q_sb = a.k_sb = a.v_sb = sb;
  a.q_st = a.k_st = a.v_st = st;
  a.batch = batch;
  a.heads = heads;
  a.head_dim = head_dim;
  a.scale = scale;
  a.mode = detail::kDivided;
  a.q_rows = tokens;
  a.tokens = tokens;
  a.frames = frames;
  a.patches = (tokens - 1) / frames;
  a.temporal = temporal;
  return a;
}

}  // namespace

namespace {

// The split-softmax plan of the CLS row for these shapes (ok == false: not available).
detail::ClsPlan forward_cls_plan(DType dtype, int64_t tokens, int heads, int head_dim,
                                 int frames, bool temporal) {
  if (dtype == DType::kFloat32 || frames < 1 || tokens < 2 || (tokens - 1) % frames != 0) {
    return detail::ClsPlan{};
  }
  if (temporal && detail::time_vec_supported(frames, head_dim)) {
    return detail::cls_plan(heads, head_dim, (tokens - 1) / frames, 1);
  }
  // The CLS row alone (its keys are every token in both modes).
  return detail::cls_plan(heads, head_dim, tokens - 1, 4);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
size_t divided_forward_workspace_bytes(const DividedForwardParams& p) {
  if (!valid_divided(p.dtype, p.batch, p.tokens, p.heads, p.head_dim, p.frames)) return 0;
  const detail::ClsPlan plan =
      forward_cls_plan(p.dtype, p.tokens, p.heads, p.head_dim, p.frames, p.temporal);
  if (!plan.ok || p.batch > 65535) return 0;
  return size_t(p.batch) * size_t(p.heads) * size_t(plan.chunks) * size_t(p.head_dim + 2) *
         sizeof(float);
}

cudaError_t divided_forward(const DividedForwardParams& p, cudaStream_t stream) {
  if (!valid_divided(p.dtype, p.batch, p.tokens, p.heads, p.head_dim, p.frames)) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;
  const int64_t D = int64_t(p.heads) * p.head_dim;
  AttnArgs a = divided_args(p.dtype, p.qkv, p.qkv_stride_b, p.qkv_stride_t, p.batch, p.tokens,
                            p.heads, p.head_dim, p.frames, p.temporal, p.scale);
  a.o = p.out;
  a.o_sb = p.tokens * D;
  a.o_st = D;
  a.lse = p.lse;
  const size_t ws_need = divided_forward_workspace_bytes(p);
  return by_dtype(p.dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    cudaError_t err = cudaSuccess;
    AlignCheck vc = simt_align(a, p.dtype);
    const bool vec = add_out(add_qkv(vc, a), a.o, a.o_sb, a.o_st).ok;
    bool cls_vec = false;  // CLS row from per-CTA partials (16-byte rows, workspace given)
    if constexpr (!std::is_same<T, float>::value) {
      AlignCheck c16 = mma_align(a, p.dtype);
      cls_vec = ws_need > 0 && p.workspace != nullptr && p.workspace_bytes >= ws_need &&
                a.patches > 0 && add_out(add_qkv(c16, a), a.o, a.o_sb, a.o_st).ok;
      if (cls_vec && p.temporal && detail::time_vec_supported(p.frames, p.head_dim)) {
        // Patch tokens and the CLS row in one pass over qkv, then the tiny combine.
        return detail::launch_cls_vec<T>(true, a, p.workspace, stream);
      }
    }
    bool done = false;
    if constexpr (!std::is_same<T, float>::value) {
      AlignCheck mc = mma_align(a, p.dtype);
      if (!p.temporal && a.patches > 0 && detail::mma_supports(detail::kMmaForward, p.head_dim) &&
          add_out(add_qkv(mc, a), a.o, a.o_sb, a.o_st).ok && device_has_mma()) {
        err = detail::launch_mma<T>(detail::kMmaForward, a, stream);
        if (err != cudaSuccess) return err;
        done = true;
      }
    }
    if (!done && a.patches > 0 && p.temporal &&
        detail::time_columns_supported(p.frames, p.head_dim)) {
      a.vec_ok = vec;
      err = detail::launch_time_columns<T>(false, a, stream);
      if (err != cudaSuccess) return err;
      done = true;
    }
    if (!done && a.patches > 0) {
      const int64_t partners = p.temporal ? p.frames + 1 : a.patches + 1;
      a.row_begin = 1;
      a.row_count = p.tokens - 1;
      a.split = choose_split(partners);
      a.vec_ok = vec;
      err = detail::launch_simt<T>(detail::kSimtForward, a, stream);
      if (err != cudaSuccess) return err;
    }
    if constexpr (!std::is_same<T, float>::value) {
      // The CLS query attends to every token: split over many CTAs, then combined.
      if (cls_vec) return detail::launch_cls_vec<T>(false, a, p.workspace, stream);
    }
    // The CLS query attends to every token: one row, split over all warps of a CTA.
    a.row_begin = 0;
    a.row_count = 1;
    a.split = choose_split(p.tokens);
    a.vec_ok = vec;
    return detail::launch_simt<T>(detail::kSimtForward, a, stream);
  });
}

size_t divided_backward_workspace_bytes(const DividedBackwardParams& p) {
  if (!valid_divided(p.dtype, p.batch, p.tokens, p.heads, p.head_dim, p.frames)) return 0;
  if (p.dtype == DType::kFloat32 || p.tokens < 2 || p.batch > 65535) return 0;
  const detail::ClsPlan plan =
      detail::cls_plan(p.heads, p.head_dim, p.tokens, 2, detail::kClsBackwardSteps);
  if (!plan.ok) return 0;
  return size_t(p.batch) * size_t(p.heads) * size_t(plan.chunks) * size_t(3 * p.head_dim) *
         sizeof(float);
}

cudaError_t divided_backward(const DividedBackwardParams& p, cudaStream_t stream) {
  if (!valid_divided(p.dtype, p.batch, p.tokens, p.heads, p.head_dim, p.frames)) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;
  const int64_t D = int64_t(p.heads) * p.head_dim;
  AttnArgs a = divided_args(p.dtype, p.qkv, p.qkv_stride_b, p.qkv_stride_t, p.batch, p.tokens,
                            p.heads, p.head_dim, p.frames, p.temporal, p.scale);
  a.dout = p.grad_out;
  a.do_sb = p.tokens * D;
  a.do_st = D;
  a.fwd_out = p.out;
  a.fo_sb = p.tokens * D;
  a.fo_st = D;
  a.lse = const_cast<float*>(p.lse);  // read-only in the backward kernels
  a.delta = p.delta;
  a.o = p.grad_qkv;  // dQ: columns [0, D) of grad_qkv
  a.o_sb = p.tokens * 3 * D;
  a.o_st = 3 * D;
  a.dk = advance(p.grad_qkv, D, p.dtype);
  a.dv = advance(p.grad_qkv, 2 * D, p.dtype);
  a.dk_sb = a.dv_sb = p.tokens * 3 * D;
  a.dk_st = a.dv_st = 3 * D;
  const size_t ws_need = divided_backward_workspace_bytes(p);
  return by_dtype(p.dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    a.grad_rows16 = delta_rows_aligned(a, p.dtype);
    cudaError_t err = detail::launch_delta<T>(a, stream);
    if (err != cudaSuccess) return err;
    AlignCheck vc = simt_align(a, p.dtype);
    add_out(add_out(add_out(add_grad(add_qkv(vc, a), a), a.o, a.o_sb, a.o_st), a.dk, a.dk_sb,
                    a.dk_st),
            a.dv, a.dv_sb, a.dv_st);
    const bool vec = vc.ok;
    const int64_t partners = p.temporal ? p.frames + 1 : a.patches + 1;
    bool mma_ok = false, cls_split = false;
    if constexpr (!std::is_same<T, float>::value) {
      AlignCheck mc = mma_align(a, p.dtype);
      add_out(add_out(add_out(add_grad(add_qkv(mc, a), a), a.o, a.o_sb, a.o_st), a.dk, a.dk_sb,
                      a.dk_st),
              a.dv, a.dv_sb, a.dv_st);
      mma_ok = !p.temporal && a.patches > 0 && mc.ok && device_has_mma();
      // Row 0 (CLS query dQ, CLS key dK/dV) split over many CTAs: 16-byte rows, workspace.
      cls_split = ws_need > 0 && p.workspace != nullptr && p.workspace_bytes >= ws_need && mc.ok;
    }
    // Temporal columns: dQ, dK and dV of every patch token in one pass.
    const bool columns =
        p.temporal && a.patches > 0 && detail::time_columns_supported(p.frames, p.head_dim);
    if (columns) {
      a.vec_ok = vec;
      err = detail::launch_time_columns<T>(true, a, stream);
      if (err != cudaSuccess) return err;
    }
    // dQ of the patch rows, then of the CLS row.
    bool done = columns;
    if constexpr (!std::is_same<T, float>::value) {
      if (mma_ok && detail::mma_supports(detail::kMmaDq, p.head_dim)) {
        err = detail::launch_mma<T>(detail::kMmaDq, a, stream);
        if (err != cudaSuccess) return err;
        done = true;
      }
    }
    if (!done && a.patches > 0) {
      a.row_begin = 1;
      a.row_count = p.tokens - 1;
      a.split = choose_split(partners);
      a.vec_ok = vec;
      err = detail::launch_simt<T>(detail::kSimtDq, a, stream);
      if (err != cudaSuccess) return err;
    }
    if (!cls_split) {
      a.row_begin = 0;
      a.row_count = 1;
      a.split = choose_split(p.tokens);
      a.vec_ok = vec;
      err = detail::launch_simt<T>(detail::kSimtDq, a, stream);
      if (err != cudaSuccess) return err;
    }
    // dK, dV of the patch keys, then of the CLS key (attended by every query).
    done = columns;
    if constexpr (!std::is_same<T, float>::value) {
      if (mma_ok && detail::mma_supports(detail::kMmaDkv, p.head_dim)) {
        err = detail::launch_mma<T>(detail::kMmaDkv, a, stream);
        if (err != cudaSuccess) return err;
        done = true;
      }
    }
    if (!done && a.patches > 0) {
      a.row_begin = 1;
      a.row_count = p.tokens - 1;
      a.split = choose_split(partners);
      a.vec_ok = vec;
      err = detail::launch_simt<T>(detail::kSimtDkv, a, stream);
      if (err != cudaSuccess) return err;
    }
    if constexpr (!std::is_same<T, float>::value) {
      if (cls_split) return detail::launch_cls_backward<T>(a, p.workspace, stream);
    }
    a.row_begin = 0;
    a.row_count = 1;
    a.split = choose_split(p.tokens);
    a.vec_ok = vec;
    return detail::launch_simt<T>(detail::kSimtDkv, a, stream);
  });
}

// ---------------------------------------------------------------------------------------------
namespace {

bool valid_cross(DType dtype, int64_t batch, int64_t len_q, int64_t len_k, int heads,
                 int head_dim) {
  return valid_dtype(dtype) && batch >= 0 && len_q >= 0 && len_k >= 1 &&
         valid_heads(heads, head_dim);
}

AttnArgs cross_args(const void* q, int64_t q_sb, int64_t q_st, const void* k, int64_t k_sb,
                    int64_t k_st, const void* v, int64_t v_sb, int64_t v_st, const void* mask,
                    int64_t mask_sb, int64_t batch, int64_t len_q, int64_t len_k, int heads,
                    int head_dim, float scale) {
  AttnArgs a;
  a.q = q;
  a.q_sb = q_sb;
  a.q_st = q_st;
  a.k = k;
  a.k_sb = k_sb;
  a.k_st = k_st;
  a.v = v;
  a.v_sb = v_sb;
  a.v_st = v_st;
  a.mask = mask;
  a.mask_sb = mask_sb;
  a.batch = batch;
  a.heads = heads;
  a.head_dim = head_dim;
  a.scale = scale;
  a.mode = detail::kCross;
  a.q_rows = len_q;
  a.len_q = len_q;
  a.len_k = len_k;
  return a;
}

}  // namespace

cudaError_t cross_forward(const CrossForwardParams& p, cudaStream_t stream) {
  if (!valid_cross(p.dtype, p.batch, p.len_q, p.len_k, p.heads, p.head_dim)) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0 || p.len_q == 0) return cudaSuccess;
  const int64_t D = int64_t(p.heads) * p.head_dim;
  AttnArgs a = cross_args(p.q, p.q_stride_b, p.q_stride_t, p.k, p.k_stride_b, p.k_stride_t, p.v,
                          p.v_stride_b, p.v_stride_t, p.key_mask, p.mask_stride_b, p.batch,
                          p.len_q, p.len_k, p.heads, p.head_dim, p.scale);
  a.o = p.attn;
  a.o_sb = p.len_q * D;
  a.o_st = D;
  a.lse = p.lse;
  return by_dtype(p.dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    if constexpr (!std::is_same<T, float>::value) {
      AlignCheck mc = mma_align(a, p.dtype);
      if (detail::mma_supports(detail::kMmaForward, p.head_dim) &&
          add_out(add_qkv(mc, a), a.o, a.o_sb, a.o_st).ok && device_has_mma()) {
        return detail::launch_mma<T>(detail::kMmaForward, a, stream);
      }
    }
    AlignCheck vc = simt_align(a, p.dtype);
    a.row_begin = 0;
    a.row_count = p.len_q;
    a.split = choose_split(p.len_k);
    a.vec_ok = add_out(add_qkv(vc, a), a.o, a.o_sb, a.o_st).ok;
    return detail::launch_simt<T>(detail::kSimtForward, a, stream);
  });
}

cudaError_t cross_backward(const CrossBackwardParams& p, cudaStream_t stream) {
  if (!valid_cross(p.dtype, p.batch, p.len_q, p.len_k, p.heads, p.head_dim)) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;
  const int64_t D = int64_t(p.heads) * p.head_dim;
  AttnArgs a = cross_args(p.q, p.q_stride_b, p.q_stride_t, p.k, p.k_stride_b, p.k_stride_t, p.v,
                          p.v_stride_b, p.v_stride_t, p.key_mask, p.mask_stride_b, p.batch,
                          p.len_q, p.len_k, p.heads, p.head_dim, p.scale);
  a.dout = p.grad_attn;
  a.do_sb = p.len_q * D;
  a.do_st = D;
  a.fwd_out = p.attn;
  a.fo_sb = p.len_q * D;
  a.fo_st = D;
  a.lse = const_cast<float*>(p.lse);  // read-only in the backward kernels
  a.delta = p.delta;
  a.o = p.grad_q;
  a.o_sb = p.len_q * D;
  a.o_st = D;
  a.dk = p.grad_k;
  a.dv = p.grad_v;
  a.dk_sb = a.dv_sb = p.len_k * D;
  a.dk_st = a.dv_st = D;
  return by_dtype(p.dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    cudaError_t err = cudaSuccess;
    if (p.len_q == 0) {
      // No query attends any key: the key gradients are zero. Written by the same kernel as
      // usual (every partner list is empty), so the op stays free of memsets.
      a.row_begin = 0;
      a.row_count = p.len_k;
      a.split = 1;
      a.vec_ok = false;
      return detail::launch_simt<T>(detail::kSimtDkv, a, stream);
    }
    a.grad_rows16 = delta_rows_aligned(a, p.dtype);
    err = detail::launch_delta<T>(a, stream);
    if (err != cudaSuccess) return err;
    AlignCheck vc = simt_align(a, p.dtype);
    add_out(add_out(add_out(add_grad(add_qkv(vc, a), a), a.o, a.o_sb, a.o_st), a.dk, a.dk_sb,
                    a.dk_st),
            a.dv, a.dv_sb, a.dv_st);
    bool mma_ok = false;
    if constexpr (!std::is_same<T, float>::value) {
      AlignCheck mc = mma_align(a, p.dtype);
      add_out(add_out(add_out(add_grad(add_qkv(mc, a), a), a.o, a.o_sb, a.o_st), a.dk, a.dk_sb,
                      a.dk_st),
              a.dv, a.dv_sb, a.dv_st);
      mma_ok = mc.ok && device_has_mma();
    }
    bool done = false;
    if constexpr (!std::is_same<T, float>::value) {
      if (mma_ok && detail::mma_supports(detail::kMmaDq, p.head_dim)) {
        err = detail::launch_mma<T>(detail::kMmaDq, a, stream);
        if (err != cudaSuccess) return err;
        done = true;
      }
    }
    if (!done) {
      a.row_begin = 0;
      a.row_count = p.len_q;
      a.split = choose_split(p.len_k);
      a.vec_ok = vc.ok;
      err = detail::launch_simt<T>(detail::kSimtDq, a, stream);
      if (err != cudaSuccess) return err;
    }
    if constexpr (!std::is_same<T, float>::value) {
      if (mma_ok && detail::mma_supports(detail::kMmaDkv, p.head_dim)) {
        return detail::launch_mma<T>(detail::kMmaDkv, a, stream);
      }
    }
    a.row_begin = 0;
    a.row_count = p.len_k;
    a.split = choose_split(p.len_q);
    a.vec_ok = vc.ok;
    return detail::launch_simt<T>(detail::kSimtDkv, a, stream);
  });
}

}  // namespace kernels
}  // namespace egovlpv2
