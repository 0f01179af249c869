// Divided space-time attention, forward and backward.
//
// Every query set that shares one key set is handled together, so its keys and values are read
// once:
//   * space attention: the N patch queries of frame f share {CLS, patches of f};
//   * time attention: the F queries at spatial position n share {CLS, position n of each frame};
//   * the CLS query has all T keys: its partial softmax {max, sum, sum of p v} over each
//     patch key set is taken while that set is in cache, and the partials plus the CLS key
//     are merged at the end (the backward handles it in a second pass instead).
// Part of the CPU kernels compiled once per instruction-set variant (see base.h).
#pragma once

#include <stdint.h>
#include <string.h>

#include "../attention.h"
#include "base.h"
#include "engines.h"

namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA {

// Work items of the divided attention hold about this many queries (time attention groups
// have only F queries, so several groups make one item).
constexpr int64_t kQueriesPerItem = 64;

struct SpaceTimeGeometry {
  int64_t batch, tokens, heads, dh, dim, frames, patches;
  int64_t group_size;   // queries per key set (N for space, F for time)
  int64_t groups;       // key sets per (batch, head), CLS query excluded
  int64_t group_step;   // token offset between consecutive groups
  int64_t member_step;  // token offset between consecutive members of a group
  int64_t groups_per_item;
  int64_t chunks;                        // blocks of groups per batch element
  bool dense;                            // engine of the patch groups
  int64_t heads_per_block, head_blocks;  // a work item is (batch, chunk, block of heads)

  template <typename P>
  explicit SpaceTimeGeometry(const P& p)
      : batch(p.batch),
        tokens(p.tokens),
        heads(p.num_heads),
        dh(p.head_dim),
        dim(p.num_heads * p.head_dim),
        frames(p.num_frames),
        patches((p.tokens - 1) / p.num_frames) {
    if (p.temporal) {
      group_size = frames;
      groups = patches;
      group_step = 1;
      member_step = patches;
    } else {
      group_size = patches;
      groups = frames;
      group_step = patches;
      member_step = 1;
    }
    groups_per_item = max64(1, kQueriesPerItem / group_size);
    chunks = ceil_div(groups, groups_per_item);
    dense = group_size >= kDenseMin;
    // Split the heads into blocks only as far as needed for about 4 items per thread.
    const int64_t target_items = 4 * max64(1, p.num_threads);
    const int64_t wanted_blocks = min64(heads, max64(1, ceil_div(target_items, batch * chunks)));
    heads_per_block = ceil_div(heads, wanted_blocks);
    head_blocks = ceil_div(heads, heads_per_block);
  }

  int64_t token(int64_t group, int64_t member) const {
    return 1 + group * group_step + member * member_step;
  }
};

template <typename T>
struct SpaceTimeForwardCtx {
  const SpaceTimeAttentionParams<T>* p;
  const SpaceTimeGeometry* g;
  T* cls_states;  // [B, H, groups, 2 + dh]: the CLS query's partial softmax per key set
  int failed;
};

// Work items [begin, end) of the divided attention forward, key sets through `Engine`.
template <typename T, typename Engine>
void space_time_forward_range(SpaceTimeForwardCtx<T>& c, int64_t begin, int64_t end) {
  const SpaceTimeAttentionParams<T>& p = *c.p;
  const SpaceTimeGeometry& g = *c.g;
  const int64_t nk = g.group_size + 1;
  Carver sizing(nullptr);
  {
    RowTable<T> r(sizing, nk);
    Engine e(sizing, nk, g.dh);
    sizing.take<T>(g.dh);
  }
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  RowTable<T> rows(cv, nk);
  Engine engine(cv, nk, g.dh);
  T* cls_q = cv.take<T>(g.dh);
  engine.clear();

  const int64_t sc = p.qkv.stride_c;
  ForwardIo<T> io;
  io.q = Rows<T>{rows.q, sc};
  io.k = Rows<T>{rows.k, sc};
  io.v = Rows<T>{rows.v, sc};
  io.out = rows.out;
  io.lse = rows.lse_w;

  for (int64_t item = begin; item < end; ++item) {
    // Key sets of one batch element and a block of heads, all heads of a set in a row: its
    // token rows are then read whole and in order (heads are consecutive column slices).
    const int64_t b = item / (g.chunks * g.head_blocks);
    const int64_t chunk = (item / g.head_blocks) % g.chunks;
    const int64_t h_begin = (item % g.head_blocks) * g.heads_per_block;
    const int64_t h_end = min64(g.heads, h_begin + g.heads_per_block);
    const int64_t group_end = min64(g.groups, (chunk + 1) * g.groups_per_item);
    for (int64_t grp = chunk * g.groups_per_item; grp < group_end; ++grp) {
      for (int64_t h = h_begin; h < h_end; ++h) {
        const int64_t qc = h * g.dh, kc = g.dim + h * g.dh, vc = 2 * g.dim + h * g.dh;
        T* out_bh = p.out + b * g.tokens * g.dim + h * g.dh;
        T* lse_bh = p.lse + (b * g.heads + h) * g.tokens;
        rows.k[0] = p.qkv.at(b, 0, kc);
        rows.v[0] = p.qkv.at(b, 0, vc);
        for (int64_t i = 0; i < g.group_size; ++i) {
          const int64_t t = g.token(grp, i);
          rows.q[i] = p.qkv.at(b, t, qc);
          rows.k[1 + i] = p.qkv.at(b, t, kc);
          rows.v[1 + i] = p.qkv.at(b, t, vc);
          rows.out[i] = out_bh + t * g.dim;
          rows.lse_w[i] = lse_bh + t;
        }
        // Fetch the next (key set, head)'s rows while this one computes.
        const int64_t next_h = h + 1 < h_end ? h + 1 : h_begin;
        const int64_t next_grp = h + 1 < h_end ? grp : grp + 1;
        if (sc == 1 && next_grp < group_end) {
          const int64_t bytes = g.dh * static_cast<int64_t>(sizeof(T));
          for (int64_t i = 0; i < g.group_size; ++i) {
            const int64_t t = g.token(next_grp, i);
            const T* row = p.qkv.at(b, t, next_h * g.dh);
            prefetch(row, bytes, false);
            prefetch(row + g.dim, bytes, false);
            prefetch(row + 2 * g.dim, bytes, false);
            prefetch(p.out + (b * g.tokens + t) * g.dim + next_h * g.dh, bytes, true);
          }
        }
        engine.run(g.group_size, p.scale, io);
        // The CLS query's share of this key set, while it is in cache (merged later).
        load_row(p.qkv.at(b, 0, qc), sc, g.dh, g.dh, p.scale, cls_q);
        engine.partial(cls_q, c.cls_states + ((b * g.heads + h) * g.groups + grp) * (g.dh + 2));
      }
    }
  }
}

// The CLS query of (b, h) for b * heads + h in [begin, end): its softmax over all T keys from
// the partial states of the key sets (each holds every patch key once) and the CLS key.
template <typename T>
void space_time_forward_cls(SpaceTimeForwardCtx<T>& c, int64_t begin, int64_t end) {
  const SpaceTimeAttentionParams<T>& p = *c.p;
  const SpaceTimeGeometry& g = *c.g;
  const int64_t dh = g.dh;
  Carver sizing(nullptr);
  sizing.take<T>(dh);
  sizing.take<T>(dh);
  sizing.take<T>(dh);
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  T* qs = cv.take<T>(dh);
  T* k0 = cv.take<T>(dh);
  T* acc = cv.take<T>(dh);
  const int64_t sc = p.qkv.stride_c;
  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / g.heads;
    const int64_t h = bh % g.heads;
    load_row(p.qkv.at(b, 0, h * dh), sc, dh, dh, p.scale, qs);
    copy_row(p.qkv.at(b, 0, g.dim + h * dh), sc, dh, dh, k0);
    const T s0 = dot(qs, k0, dh);
    const T* states = c.cls_states + bh * g.groups * (dh + 2);
    T m = s0;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const T mg = states[grp * (dh + 2)];
      m = mg > m ? mg : m;
    }
    const T w0 = exp_t(s0 - m);
    T sum = w0;
    copy_row(p.qkv.at(b, 0, 2 * g.dim + h * dh), sc, dh, dh, acc);
    scale_row(acc, dh, w0);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const T* st = states + grp * (dh + 2);
      const T w = exp_t(st[0] - m);
      sum += w * st[1];
      axpy(w, st + 2, acc, dh);
    }
    T* out = p.out + b * g.tokens * g.dim + h * dh;
    const T f = T(1) / sum;
    for (int64_t d = 0; d < dh; ++d) out[d] = acc[d] * f;
    p.lse[bh * g.tokens] = m + log_t(sum);
  }
}

template <typename T>
Status space_time_forward(const SpaceTimeAttentionParams<T>& p) {
  const SpaceTimeGeometry geo(p);
  Block states(geo.batch * geo.heads * geo.groups * (geo.dh + 2) * static_cast<int64_t>(sizeof(T)));
  if (!states.get()) return Status::kOutOfMemory;
  SpaceTimeForwardCtx<T> ctx{&p, &geo, reinterpret_cast<T*>(states.get()), 0};
  auto body = [](int64_t begin, int64_t end, void* raw) {
    auto& c = *static_cast<SpaceTimeForwardCtx<T>*>(raw);
    if (c.g->dense)
      space_time_forward_range<T, DenseForward<T>>(c, begin, end);
    else
      space_time_forward_range<T, RowForward<T>>(c, begin, end);
  };
  p.parallel_for(0, geo.batch * geo.chunks * geo.head_blocks, 1, body, &ctx);
  if (ctx.failed) return Status::kOutOfMemory;
  auto cls_body = [](int64_t begin, int64_t end, void* raw) {
    space_time_forward_cls(*static_cast<SpaceTimeForwardCtx<T>*>(raw), begin, end);
  };
  p.parallel_for(0, geo.batch * geo.heads, 4, cls_body, &ctx);
  return ctx.failed ? Status::kOutOfMemory : Status::kOk;
}

template <typename T>
struct SpaceTimeBackwardCtx {
  const SpaceTimeAttentionGradParams<T>* p;
  const SpaceTimeGeometry* g;
  T* partials;  // [B, H, chunks, 2, dh]: dK, dV of the CLS key from each item of pass 1
  int failed;
};

// Accumulates a key's share of the gradients into [nk, ld] buffers (row engine).
template <typename T>
struct KeyGradInto {
  T* dk;
  T* dv;
  int64_t ld, dh;
  void operator()(int64_t j, T ds, T pj, const T* qs, const T* go) const {
    axpy(ds, qs, dk + j * ld, dh);
    axpy(pj, go, dv + j * ld, dh);
  }
};

template <typename T>
inline void run_backward(DenseBackward<T>& e, int64_t nq, T scale, const BackwardIo<T>& io) {
  e.run(nq, scale, io);
}

template <typename T>
inline void run_backward(RowBackward<T>& e, int64_t nq, T scale, const BackwardIo<T>& io) {
  e.run(nq, scale, io, KeyGradInto<T>{io.grad_k, io.grad_v, io.ld_grad, e.dh});
}

// Pass 1 of the divided attention backward: the patch queries. Each patch key belongs to one
// key set (plus the CLS query's), so its rows of grad_qkv are written here by one item.
template <typename T, typename Engine>
void space_time_backward_range(SpaceTimeBackwardCtx<T>& c, int64_t begin, int64_t end) {
  const SpaceTimeAttentionGradParams<T>& p = *c.p;
  const SpaceTimeGeometry& g = *c.g;
  const int64_t nk = g.group_size + 1;
  const int64_t ld = padded<T>(g.dh);
  Carver sizing(nullptr);
  {
    RowTable<T> r(sizing, nk);
    sizing.take<T>(nk * ld);
    sizing.take<T>(nk * ld);
    Engine e(sizing, nk, g.dh);
  }
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  RowTable<T> rows(cv, nk);
  T* dk = cv.take<T>(nk * ld);
  T* dv = cv.take<T>(nk * ld);
  Engine engine(cv, nk, g.dh);
  engine.clear();
  const int64_t three_d = 3 * g.dim;

  BackwardIo<T> io;
  io.q = Rows<T>{rows.q, p.qkv.stride_c};
  io.k = Rows<T>{rows.k, p.qkv.stride_c};
  io.v = Rows<T>{rows.v, p.qkv.stride_c};
  io.grad_out = Rows<T>{rows.go, p.grad_out.stride_c};
  io.out = Rows<T>{rows.o, p.out.stride_c};
  io.lse = rows.lse_r;
  io.grad_q = rows.out;
  io.grad_k = dk;
  io.grad_v = dv;
  io.ld_grad = ld;

  for (int64_t item = begin; item < end; ++item) {
    // (batch, chunk, block of heads) as in the forward.
    const int64_t b = item / (g.chunks * g.head_blocks);
    const int64_t chunk = (item / g.head_blocks) % g.chunks;
    const int64_t h_begin = (item % g.head_blocks) * g.heads_per_block;
    const int64_t h_end = min64(g.heads, h_begin + g.heads_per_block);
    T* grad_b = p.grad_qkv + b * g.tokens * three_d;
    for (int64_t h = h_begin; h < h_end; ++h) {
      T* part = c.partials + ((b * g.heads + h) * g.chunks + chunk) * 2 * g.dh;
      for (int64_t d = 0; d < 2 * g.dh; ++d) part[d] = T(0);
    }
    const int64_t group_end = min64(g.groups, (chunk + 1) * g.groups_per_item);
    for (int64_t grp = chunk * g.groups_per_item; grp < group_end; ++grp) {
      for (int64_t h = h_begin; h < h_end; ++h) {
        const int64_t bh = b * g.heads + h;
        const int64_t qc = h * g.dh, kc = g.dim + h * g.dh, vc = 2 * g.dim + h * g.dh;
        rows.k[0] = p.qkv.at(b, 0, kc);
        rows.v[0] = p.qkv.at(b, 0, vc);
        for (int64_t i = 0; i < g.group_size; ++i) {
          const int64_t t = g.token(grp, i);
          rows.q[i] = p.qkv.at(b, t, qc);
          rows.k[1 + i] = p.qkv.at(b, t, kc);
          rows.v[1 + i] = p.qkv.at(b, t, vc);
          rows.go[i] = p.grad_out.at(b, t, qc);
          rows.o[i] = p.out.at(b, t, qc);
          rows.lse_r[i] = p.lse + bh * g.tokens + t;
          rows.out[i] = grad_b + t * three_d + qc;
        }
        // Fetch the next (key set, head)'s rows while this one computes (as in the forward).
        const int64_t next_h = h + 1 < h_end ? h + 1 : h_begin;
        const int64_t next_grp = h + 1 < h_end ? grp : grp + 1;
        if (p.qkv.stride_c == 1 && p.grad_out.stride_c == 1 && p.out.stride_c == 1 &&
            next_grp < group_end) {
          const int64_t bytes = g.dh * static_cast<int64_t>(sizeof(T));
          const int64_t nc = next_h * g.dh;
          for (int64_t i = 0; i < g.group_size; ++i) {
            const int64_t t = g.token(next_grp, i);
            const T* row = p.qkv.at(b, t, nc);
            prefetch(row, bytes, false);
            prefetch(row + g.dim, bytes, false);
            prefetch(row + 2 * g.dim, bytes, false);
            prefetch(p.grad_out.at(b, t, nc), bytes, false);
            prefetch(p.out.at(b, t, nc), bytes, false);
            T* grad_row = grad_b + t * three_d + nc;
            prefetch(grad_row, bytes, true);
            prefetch(grad_row + g.dim, bytes, true);
            prefetch(grad_row + 2 * g.dim, bytes, true);
          }
        }
        memset(dk, 0, static_cast<size_t>(nk * ld) * sizeof(T));
        memset(dv, 0, static_cast<size_t>(nk * ld) * sizeof(T));
        run_backward(engine, g.group_size, p.scale, io);
        for (int64_t i = 0; i < g.group_size; ++i) {
          T* row = grad_b + g.token(grp, i) * three_d;
          memcpy(row + kc, dk + (1 + i) * ld, static_cast<size_t>(g.dh) * sizeof(T));
          memcpy(row + vc, dv + (1 + i) * ld, static_cast<size_t>(g.dh) * sizeof(T));
        }
        T* part = c.partials + (bh * g.chunks + chunk) * 2 * g.dh;
        axpy(T(1), dk, part, g.dh);
        axpy(T(1), dv, part + g.dh, g.dh);
      }
    }
  }
}

// Pass 2: the CLS query of each (batch, head), which adds its share to every key row.
template <typename T>
void space_time_backward_cls(SpaceTimeBackwardCtx<T>& c, int64_t begin, int64_t end) {
  const SpaceTimeAttentionGradParams<T>& p = *c.p;
  const SpaceTimeGeometry& g = *c.g;
  Carver sizing(nullptr);
  {
    RowTable<T> r(sizing, g.tokens);
    sizing.take<T>(g.dh);
    sizing.take<T>(g.dh);
    RowBackward<T> e(sizing, g.tokens, g.dh);
  }
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  RowTable<T> rows(cv, g.tokens);
  T* gk0 = cv.take<T>(g.dh);
  T* gv0 = cv.take<T>(g.dh);
  RowBackward<T> engine(cv, g.tokens, g.dh);
  const int64_t three_d = 3 * g.dim;

  BackwardIo<T> io;
  io.q = Rows<T>{rows.q, p.qkv.stride_c};
  io.k = Rows<T>{rows.k, p.qkv.stride_c};
  io.v = Rows<T>{rows.v, p.qkv.stride_c};
  io.grad_out = Rows<T>{rows.go, p.grad_out.stride_c};
  io.out = Rows<T>{rows.o, p.out.stride_c};
  io.lse = rows.lse_r;
  io.grad_q = rows.out;

  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / g.heads;
    const int64_t h = bh % g.heads;
    const int64_t qc = h * g.dh, kc = g.dim + h * g.dh, vc = 2 * g.dim + h * g.dh;
    T* grad_b = p.grad_qkv + b * g.tokens * three_d;
    rows.q[0] = p.qkv.at(b, 0, qc);
    rows.go[0] = p.grad_out.at(b, 0, qc);
    rows.o[0] = p.out.at(b, 0, qc);
    rows.lse_r[0] = p.lse + bh * g.tokens;
    rows.out[0] = grad_b + qc;
    for (int64_t t = 0; t < g.tokens; ++t) {
      rows.k[t] = p.qkv.at(b, t, kc);
      rows.v[t] = p.qkv.at(b, t, vc);
    }
    for (int64_t d = 0; d < g.dh; ++d) gk0[d] = gv0[d] = T(0);
    for (int64_t chunk = 0; chunk < g.chunks; ++chunk) {
      const T* part = c.partials + (bh * g.chunks + chunk) * 2 * g.dh;
      axpy(T(1), part, gk0, g.dh);
      axpy(T(1), part + g.dh, gv0, g.dh);
    }
    const int64_t dh = g.dh;
    engine.run(1, p.scale, io, [&](int64_t j, T ds, T pj, const T* qs, const T* go) {
      T* gk = j == 0 ? gk0 : grad_b + j * three_d + kc;
      T* gv = j == 0 ? gv0 : grad_b + j * three_d + vc;
      axpy(ds, qs, gk, dh);
      axpy(pj, go, gv, dh);
    });
    memcpy(grad_b + kc, gk0, static_cast<size_t>(g.dh) * sizeof(T));
    memcpy(grad_b + vc, gv0, static_cast<size_t>(g.dh) * sizeof(T));
  }
}

template <typename T>
Status space_time_backward(const SpaceTimeAttentionGradParams<T>& p) {
  const SpaceTimeGeometry geo(p);
  Block partials(geo.batch * geo.heads * geo.chunks * 2 * geo.dh * static_cast<int64_t>(sizeof(T)));
  if (!partials.get()) return Status::kOutOfMemory;
  SpaceTimeBackwardCtx<T> ctx{&p, &geo, reinterpret_cast<T*>(partials.get()), 0};
  auto groups_body = [](int64_t begin, int64_t end, void* raw) {
    auto& c = *static_cast<SpaceTimeBackwardCtx<T>*>(raw);
    if (c.g->dense)
      space_time_backward_range<T, DenseBackward<T>>(c, begin, end);
    else
      space_time_backward_range<T, RowBackward<T>>(c, begin, end);
  };
  p.parallel_for(0, geo.batch * geo.chunks * geo.head_blocks, 1, groups_body, &ctx);
  if (ctx.failed) return Status::kOutOfMemory;
  auto cls_body = [](int64_t begin, int64_t end, void* raw) {
    space_time_backward_cls(*static_cast<SpaceTimeBackwardCtx<T>*>(raw), begin, end);
  };
  p.parallel_for(0, geo.batch * geo.heads, 1, cls_body, &ctx);
  return ctx.failed ? Status::kOutOfMemory : Status::kOk;
}

}  // namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA
