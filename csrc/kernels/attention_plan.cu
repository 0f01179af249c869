// The planners of attention_plan.h and the workspace sizes of egovlpv2_kernels.h. Host code
// only, and no CUDA runtime call: every decision about which kernel runs is made here, from the
// params and the DeviceFacts alone.
#include "attention_plan.h"

#include <cstdio>

#include "attention_args.h"

namespace egovlpv2 {
namespace kernels {
namespace {

using detail::AttnArgs;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool valid_dtype(DType t) {
  return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16;
}

bool valid_heads(int heads, int head_dim) {
  return heads >= 1 && head_dim >= 1 && head_dim <= kMaxHeadDim;
}

bool valid_divided(DType dtype, int64_t batch, int64_t tokens, int heads, int head_dim,
                   int frames) {
  return valid_dtype(dtype) && batch >= 0 && tokens >= 1 && valid_heads(heads, head_dim) &&
         frames >= 1 && (tokens - 1) % frames == 0;
}

bool valid_cross(DType dtype, int64_t batch, int64_t len_q, int64_t len_k, int heads,
                 int head_dim) {
  return valid_dtype(dtype) && batch >= 0 && len_q >= 0 && len_k >= 1 &&
         valid_heads(heads, head_dim);
}

// ----- alignment -----------------------------------------------------------------------------

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
  AlignCheck& rows(const void* p, int64_t sb, int64_t st) { return ptr(p).stride(sb).stride(st); }
};

// 16-byte rows for the tensor-core tiles and the CLS partial kernels.
AlignCheck mma_align(const AttnArgs& a, DType t) {
  AlignCheck c(16, int64_t(16 / detail::elem_size(t)));
  c.stride(a.head_dim);
  return c;
}

// The lane chunk (E = bucket/32 elements) of the one-row-per-warp and column kernels.
AlignCheck simt_align(const AttnArgs& a, DType t) {
  const int bucket = a.head_dim <= 32 ? 32 : (a.head_dim <= 64 ? 64 : 128);
  const int64_t e = bucket / 32;
  AlignCheck c(size_t(e) * detail::elem_size(t), e);
  c.stride(a.head_dim);
  return c;
}

// Every tensor a forward pass reads or writes by row: q, k, v and the output.
bool forward_rows_ok(AlignCheck c, const AttnArgs& a) {
  return c.rows(a.q, a.q_sb, a.q_st)
      .rows(a.k, a.k_sb, a.k_st)
      .rows(a.v, a.v_sb, a.v_st)
      .rows(a.o, a.o_sb, a.o_st)
      .ok;
}

// ... and a backward pass: q, k, v, dout, dQ, dK, dV.
bool backward_rows_ok(AlignCheck c, const AttnArgs& a) {
  return c.rows(a.q, a.q_sb, a.q_st)
      .rows(a.k, a.k_sb, a.k_st)
      .rows(a.v, a.v_sb, a.v_st)
      .rows(a.dout, a.do_sb, a.do_st)
      .rows(a.o, a.o_sb, a.o_st)
      .rows(a.dk, a.dk_sb, a.dk_st)
      .rows(a.dv, a.dv_sb, a.dv_st)
      .ok;
}

// ----- steps ---------------------------------------------------------------------------------

// Warps per row for a partner list of length n: enough that no warp walks more than ~64.
int choose_split(int64_t n) {
  if (n <= 64) return 1;
  if (n <= 128) return 2;
  if (n <= 256) return 4;
  return 8;
}

PlanStep whole(StepKernel kernel, StepPass pass, bool vec = false) {
  PlanStep s;
  s.kernel = kernel;
  s.pass = pass;
  s.vec = vec;
  return s;
}

PlanStep rows(StepPass pass, int64_t begin, int64_t count, int64_t partners, bool vec) {
  PlanStep s = whole(StepKernel::kRows, pass, vec);
  s.row_begin = begin;
  s.row_count = count;
  s.split = choose_split(partners);
  return s;
}

// delta = rowsum(dO * O) over whole rows in 16-byte chunks needs 16-byte rows of dout and the
// forward output, and C = head_dim / (16 / elem size) chunks per head, a power of two <= 32 (C
// neighbouring lanes then hold one head); else one warp per row and head.
PlanStep delta_step(const AttnArgs& a, DType t) {
  const int64_t per_chunk = int64_t(16 / detail::elem_size(t));
  AlignCheck c(16, per_chunk);
  c.rows(a.dout, a.do_sb, a.do_st).rows(a.fwd_out, a.fo_sb, a.fo_st);
  int chunks = 0;
  if (c.ok && a.head_dim % per_chunk == 0) {
    const int64_t n = a.head_dim / per_chunk;
    if (n <= 32 && (n & (n - 1)) == 0) chunks = int(n);
  }
  PlanStep s =
      whole(chunks > 0 ? StepKernel::kDeltaRows : StepKernel::kDeltaHeads, StepPass::kDelta);
  s.chunks = chunks;
  return s;
}

// ----- the CLS partials' grid and workspace --------------------------------------------------

constexpr int kClsBackwardSteps = 8;

// items: patch columns N (temporal) or patch tokens F*N (spatial CLS row).
ClsGrid cls_grid(int heads, int head_dim, int64_t items, int unroll, int steps) {
  ClsGrid g;
  if (head_dim != 32 && head_dim != 64 && head_dim != 128) return g;
  g.lanes = head_dim / 8;
  const int64_t slot_threads = int64_t(heads) * g.lanes;
  if (heads < 1 || slot_threads > 256 || items < 1) return g;
  g.cols = int(256 / slot_threads);
  g.threads = int((int64_t(g.cols) * slot_threads + 31) / 32 * 32);
  // About `steps` columns (or steps of U tokens) per slot position: enough CTAs for even waves
  // on a large GPU, few enough partials (forward: B*h*chunks*(DH+2) floats, 5 MB at B=32,
  // 12 heads, N=196).
  g.iters = g.cols >= steps ? 1 : steps / g.cols;
  g.unroll = unroll;
  g.per_cta = int64_t(g.cols) * g.iters * g.unroll;
  g.chunks = ceil_div(items, g.per_cta);
  g.ok = g.chunks <= 65535 * 16;
  return g;
}

// The forward's CLS grid for these shapes (ok == false: not available). Temporal with F <= 4
// and head dim 32/64: the vectorised column kernel leaves one partial per CTA of N columns;
// otherwise cls_partial_kernel streams the CLS row's T - 1 keys, 4 per slot per step.
ClsGrid forward_cls_grid(const DividedForwardParams& p) {
  if (p.dtype == DType::kFloat32 || p.tokens < 2) return ClsGrid{};
  if (p.temporal && detail::time_vec_supported(p.frames, p.head_dim)) {
    return cls_grid(p.heads, p.head_dim, (p.tokens - 1) / p.frames, 1, 4);
  }
  return cls_grid(p.heads, p.head_dim, p.tokens - 1, 4, 4);
}

// The backward's: row 0 (dQ of the CLS query, dK/dV of the CLS key) over all T tokens.
ClsGrid backward_cls_grid(const DividedBackwardParams& p) {
  if (p.dtype == DType::kFloat32 || p.tokens < 2) return ClsGrid{};
  return cls_grid(p.heads, p.head_dim, p.tokens, 2, kClsBackwardSteps);
}

// The grids index batch elements by blockIdx.y.
size_t cls_workspace_bytes(const ClsGrid& g, int64_t batch, int heads, int64_t per_partial) {
  if (!g.ok || batch > 65535) return 0;
  return size_t(batch) * size_t(heads) * size_t(g.chunks) * size_t(per_partial) * sizeof(float);
}

size_t forward_workspace_bytes(const DividedForwardParams& p, const ClsGrid& g) {
  return cls_workspace_bytes(g, p.batch, p.heads, p.head_dim + 2);  // max, sum, accumulator
}

size_t backward_workspace_bytes(const DividedBackwardParams& p, const ClsGrid& g) {
  return cls_workspace_bytes(g, p.batch, p.heads, 3 * p.head_dim);  // dQ, dK, dV sums
}

bool workspace_fits(const float* ws, size_t bytes, size_t need) {
  return need > 0 && ws != nullptr && bytes >= need;
}

}  // namespace

size_t divided_forward_workspace_bytes(const DividedForwardParams& p) {
  if (!valid_divided(p.dtype, p.batch, p.tokens, p.heads, p.head_dim, p.frames)) return 0;
  return forward_workspace_bytes(p, forward_cls_grid(p));
}

size_t divided_backward_workspace_bytes(const DividedBackwardParams& p) {
  if (!valid_divided(p.dtype, p.batch, p.tokens, p.heads, p.head_dim, p.frames)) return 0;
  return backward_workspace_bytes(p, backward_cls_grid(p));
}

// ----- planners ------------------------------------------------------------------------------

DividedForwardPlan plan_divided_forward(const DividedForwardParams& p, const DeviceFacts& dev) {
  DividedForwardPlan plan;
  if (!valid_divided(p.dtype, p.batch, p.tokens, p.heads, p.head_dim, p.frames)) return plan;
  plan.valid = true;
  if (p.batch == 0) return plan;
  const AttnArgs a = detail::attn_args(p);
  const bool low = p.dtype != DType::kFloat32;
  const bool vec = forward_rows_ok(simt_align(a, p.dtype), a);
  const bool rows16 = low && forward_rows_ok(mma_align(a, p.dtype), a);
  const ClsGrid grid = forward_cls_grid(p);
  // The CLS row from per-CTA partials: 16-byte rows and a large enough workspace.
  const bool cls_partials =
      rows16 && a.patches > 0 &&
      workspace_fits(p.workspace, p.workspace_bytes, forward_workspace_bytes(p, grid));
  if (cls_partials) plan.cls_grid = grid;
  if (cls_partials && p.temporal && detail::time_vec_supported(p.frames, p.head_dim)) {
    // Patch tokens and the CLS row in one pass over qkv, then the tiny combine.
    plan.patches = whole(StepKernel::kVecColumnsCls, StepPass::kForward);
    plan.cls = whole(StepKernel::kFused, StepPass::kForward);
    return plan;
  }
  if (a.patches > 0) {
    if (rows16 && !p.temporal && detail::mma_supports(StepPass::kForward, p.head_dim) &&
        dev.has_mma) {
      plan.patches = whole(StepKernel::kTensorCores, StepPass::kForward);
    } else if (p.temporal && detail::time_columns_supported(p.frames, p.head_dim)) {
      plan.patches = whole(StepKernel::kColumns, StepPass::kForward, vec);
    } else {
      const int64_t partners = p.temporal ? p.frames + 1 : a.patches + 1;
      plan.patches = rows(StepPass::kForward, 1, p.tokens - 1, partners, vec);
    }
  }
  // The CLS query attends to every token: split over many CTAs and combined, or one row split
  // over all warps of a CTA.
  plan.cls = cls_partials ? whole(StepKernel::kClsPartials, StepPass::kForward)
                          : rows(StepPass::kForward, 0, 1, p.tokens, vec);
  return plan;
}

DividedBackwardPlan plan_divided_backward(const DividedBackwardParams& p, const DeviceFacts& dev) {
  DividedBackwardPlan plan;
  if (!valid_divided(p.dtype, p.batch, p.tokens, p.heads, p.head_dim, p.frames)) return plan;
  plan.valid = true;
  if (p.batch == 0) return plan;
  const AttnArgs a = detail::attn_args(p);
  const bool low = p.dtype != DType::kFloat32;
  plan.delta = delta_step(a, p.dtype);
  const bool vec = backward_rows_ok(simt_align(a, p.dtype), a);
  const bool rows16 = low && backward_rows_ok(mma_align(a, p.dtype), a);
  const bool mma = rows16 && !p.temporal && a.patches > 0 && dev.has_mma;
  // Row 0 (CLS query dQ, CLS key dK/dV) split over many CTAs: 16-byte rows, workspace.
  const ClsGrid grid = backward_cls_grid(p);
  const bool cls_partials =
      rows16 && workspace_fits(p.workspace, p.workspace_bytes, backward_workspace_bytes(p, grid));
  if (cls_partials) plan.cls_grid = grid;
  const int64_t partners = p.temporal ? p.frames + 1 : a.patches + 1;
  if (p.temporal && a.patches > 0 && detail::time_columns_supported(p.frames, p.head_dim)) {
    // dQ, dK and dV of every patch token in one pass.
    plan.dq_patches = whole(StepKernel::kColumns, StepPass::kDq, vec);
    plan.dkv_patches = whole(StepKernel::kFused, StepPass::kDkv);
  } else if (a.patches > 0) {
    plan.dq_patches = mma && detail::mma_supports(StepPass::kDq, p.head_dim)
                          ? whole(StepKernel::kTensorCores, StepPass::kDq)
                          : rows(StepPass::kDq, 1, p.tokens - 1, partners, vec);
    plan.dkv_patches = mma && detail::mma_supports(StepPass::kDkv, p.head_dim)
                           ? whole(StepKernel::kTensorCores, StepPass::kDkv)
                           : rows(StepPass::kDkv, 1, p.tokens - 1, partners, vec);
  }
  // The CLS query and the CLS key have every token as partner.
  plan.dq_cls = cls_partials ? whole(StepKernel::kFused, StepPass::kDq)
                             : rows(StepPass::kDq, 0, 1, p.tokens, vec);
  plan.dkv_cls = cls_partials ? whole(StepKernel::kClsPartials, StepPass::kDkv)
                              : rows(StepPass::kDkv, 0, 1, p.tokens, vec);
  return plan;
}

CrossForwardPlan plan_cross_forward(const CrossForwardParams& p, const DeviceFacts& dev) {
  CrossForwardPlan plan;
  if (!valid_cross(p.dtype, p.batch, p.len_q, p.len_k, p.heads, p.head_dim)) return plan;
  plan.valid = true;
  if (p.batch == 0 || p.len_q == 0) return plan;
  const AttnArgs a = detail::attn_args(p);
  if (p.dtype != DType::kFloat32 && detail::mma_supports(StepPass::kForward, p.head_dim) &&
      forward_rows_ok(mma_align(a, p.dtype), a) && dev.has_mma) {
    plan.forward = whole(StepKernel::kTensorCores, StepPass::kForward);
    return plan;
  }
  plan.forward =
      rows(StepPass::kForward, 0, p.len_q, p.len_k, forward_rows_ok(simt_align(a, p.dtype), a));
  return plan;
}

CrossBackwardPlan plan_cross_backward(const CrossBackwardParams& p, const DeviceFacts& dev) {
  CrossBackwardPlan plan;
  if (!valid_cross(p.dtype, p.batch, p.len_q, p.len_k, p.heads, p.head_dim)) return plan;
  plan.valid = true;
  if (p.batch == 0) return plan;
  if (p.len_q == 0) {
    // No query attends any key: the key gradients are zero. Written by the same kernel as
    // usual (every partner list is empty, so one warp per row), so the op stays free of memsets.
    plan.dkv = rows(StepPass::kDkv, 0, p.len_k, 0, false);
    return plan;
  }
  const AttnArgs a = detail::attn_args(p);
  plan.delta = delta_step(a, p.dtype);
  const bool vec = backward_rows_ok(simt_align(a, p.dtype), a);
  const bool mma =
      p.dtype != DType::kFloat32 && backward_rows_ok(mma_align(a, p.dtype), a) && dev.has_mma;
  plan.dq = mma && detail::mma_supports(StepPass::kDq, p.head_dim)
                ? whole(StepKernel::kTensorCores, StepPass::kDq)
                : rows(StepPass::kDq, 0, p.len_q, p.len_k, vec);
  plan.dkv = mma && detail::mma_supports(StepPass::kDkv, p.head_dim)
                 ? whole(StepKernel::kTensorCores, StepPass::kDkv)
                 : rows(StepPass::kDkv, 0, p.len_k, p.len_q, vec);
  return plan;
}

// ----- descriptions --------------------------------------------------------------------------

const char* kernel_name(StepKernel k) {
  switch (k) {
    case StepKernel::kNone:
      return "none";
    case StepKernel::kFused:
      return "fused";
    case StepKernel::kRows:
      return "rows";
    case StepKernel::kTensorCores:
      return "tensor_cores";
    case StepKernel::kColumns:
      return "columns";
    case StepKernel::kVecColumnsCls:
      return "vec_columns_cls";
    case StepKernel::kClsPartials:
      return "cls_partials";
    case StepKernel::kDeltaRows:
      return "delta_rows";
    case StepKernel::kDeltaHeads:
      return "delta_heads";
  }
  return "?";
}

namespace {

template <class Plan>
std::string describe_steps(const Plan& plan) {
  if (!plan.valid) return "invalid";
  std::string out;
  for_each_step(plan, [&](const char* name, const PlanStep& s) {
    char buf[160];
    int n = std::snprintf(buf, sizeof buf, "%s%s: %s", out.empty() ? "" : "; ", name,
                          kernel_name(s.kernel));
    if (s.kernel == StepKernel::kRows) {
      n += std::snprintf(buf + n, sizeof buf - size_t(n), " [%lld, %lld) split %d",
                         static_cast<long long>(s.row_begin),
                         static_cast<long long>(s.row_begin + s.row_count), s.split);
    }
    if (s.kernel == StepKernel::kDeltaRows) {
      n += std::snprintf(buf + n, sizeof buf - size_t(n), " chunks %d", s.chunks);
    }
    if (s.vec && (s.kernel == StepKernel::kRows || s.kernel == StepKernel::kColumns)) {
      std::snprintf(buf + n, sizeof buf - size_t(n), " vec");
    }
    out += buf;
  });
  return out;
}

}  // namespace

std::string describe(const DividedForwardPlan& plan) { return describe_steps(plan); }
std::string describe(const DividedBackwardPlan& plan) { return describe_steps(plan); }
std::string describe(const CrossForwardPlan& plan) { return describe_steps(plan); }
std::string describe(const CrossBackwardPlan& plan) { return describe_steps(plan); }

}  // namespace kernels
}  // namespace egovlpv2
