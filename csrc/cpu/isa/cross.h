// The gated cross-attention core, forward and backward: all queries of a (batch, head) share
// the Lk keys.
// Part of the CPU kernels compiled once per instruction-set variant (see base.h).
#pragma once

#include <stdint.h>
#include <string.h>

#include "../attention.h"
#include "base.h"
#include "engines.h"

namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA {

constexpr int64_t kCrossQueriesPerItem = 2 * kQueryBlock;

template <typename T>
struct CrossForwardCtx {
  const CrossAttentionParams<T>* p;
  int64_t chunks;
  int failed;
};

// Items are (batch, head, block of queries); the keys of (batch, head) are packed per item.
template <typename T, typename Engine>
void cross_forward_range(CrossForwardCtx<T>& c, int64_t begin, int64_t end) {
  const CrossAttentionParams<T>& p = *c.p;
  const int64_t nk = p.k_len, dh = p.head_dim, dim = p.num_heads * dh;
  const int64_t n_rows = max64(nk, kCrossQueriesPerItem);
  Carver sizing(nullptr);
  {
    RowTable<T> r(sizing, n_rows);
    sizing.take<T>(nk);
    Engine e(sizing, nk, dh);
  }
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  RowTable<T> rows(cv, n_rows);
  T* mask = cv.take<T>(nk);
  Engine engine(cv, nk, dh);
  engine.clear();

  ForwardIo<T> io;
  io.q = Rows<T>{rows.q, p.q.stride_c};
  io.k = Rows<T>{rows.k, p.k.stride_c};
  io.v = Rows<T>{rows.v, p.v.stride_c};
  io.mask = p.key_mask ? mask : nullptr;
  io.out = rows.out;
  io.lse = rows.lse_w;

  for (int64_t item = begin; item < end; ++item) {
    const int64_t bh = item / c.chunks;
    const int64_t q0 = (item % c.chunks) * kCrossQueriesPerItem;
    const int64_t nq = min64(kCrossQueriesPerItem, p.q_len - q0);
    const int64_t b = bh / p.num_heads;
    const int64_t hc = (bh % p.num_heads) * dh;
    for (int64_t j = 0; j < nk; ++j) {
      rows.k[j] = p.k.at(b, j, hc);
      rows.v[j] = p.v.at(b, j, hc);
    }
    if (p.key_mask)
      for (int64_t j = 0; j < nk; ++j)
        mask[j] = p.key_mask[b * p.mask_stride_b + j * p.mask_stride_l];
    for (int64_t i = 0; i < nq; ++i) {
      rows.q[i] = p.q.at(b, q0 + i, hc);
      rows.out[i] = p.attn + (b * p.q_len + q0 + i) * dim + hc;
      rows.lse_w[i] = p.lse + bh * p.q_len + q0 + i;
    }
    engine.run(nq, p.scale, io);
  }
}

template <typename T>
Status cross_forward(const CrossAttentionParams<T>& p) {
  CrossForwardCtx<T> ctx{&p, ceil_div(p.q_len, kCrossQueriesPerItem), 0};
  auto body = [](int64_t begin, int64_t end, void* raw) {
    auto& c = *static_cast<CrossForwardCtx<T>*>(raw);
    if (c.p->q_len >= kDenseMin)
      cross_forward_range<T, DenseForward<T>>(c, begin, end);
    else
      cross_forward_range<T, RowForward<T>>(c, begin, end);
  };
  p.parallel_for(0, p.batch * p.num_heads * ctx.chunks, 1, body, &ctx);
  return ctx.failed ? Status::kOutOfMemory : Status::kOk;
}

template <typename T>
struct CrossBackwardCtx {
  const CrossAttentionGradParams<T>* p;
  int failed;
};

// One item per (batch, head): every query of it shares the keys, whose gradients are summed
// here without races.
template <typename T, typename Engine>
void cross_backward_range(CrossBackwardCtx<T>& c, int64_t begin, int64_t end) {
  const CrossAttentionGradParams<T>& p = *c.p;
  const int64_t nq = p.q_len, nk = p.k_len, dh = p.head_dim;
  const int64_t dim = p.num_heads * dh;
  const int64_t ld = padded<T>(dh);
  Carver sizing(nullptr);
  {
    RowTable<T> r(sizing, max64(nq, nk));
    sizing.take<T>(nk);
    sizing.take<T>(nk * ld);
    sizing.take<T>(nk * ld);
    Engine e(sizing, nk, dh);
  }
  Block block(sizing.used());
  if (!block.get()) EGOVLPV2_FAIL_AND_RETURN(c);
  Carver cv(block.get());
  RowTable<T> rows(cv, max64(nq, nk));
  T* mask = cv.take<T>(nk);
  T* dk = cv.take<T>(nk * ld);
  T* dv = cv.take<T>(nk * ld);
  Engine engine(cv, nk, dh);
  engine.clear();

  BackwardIo<T> io;
  io.q = Rows<T>{rows.q, p.q.stride_c};
  io.k = Rows<T>{rows.k, p.k.stride_c};
  io.v = Rows<T>{rows.v, p.v.stride_c};
  io.grad_out = Rows<T>{rows.go, p.grad_attn.stride_c};
  io.out = Rows<T>{rows.o, p.attn.stride_c};
  io.mask = p.key_mask ? mask : nullptr;
  io.lse = rows.lse_r;
  io.grad_q = rows.out;
  io.grad_k = dk;
  io.grad_v = dv;
  io.ld_grad = ld;

  for (int64_t bh = begin; bh < end; ++bh) {
    const int64_t b = bh / p.num_heads;
    const int64_t hc = (bh % p.num_heads) * dh;
    for (int64_t j = 0; j < nk; ++j) {
      rows.k[j] = p.k.at(b, j, hc);
      rows.v[j] = p.v.at(b, j, hc);
    }
    if (p.key_mask)
      for (int64_t j = 0; j < nk; ++j)
        mask[j] = p.key_mask[b * p.mask_stride_b + j * p.mask_stride_l];
    for (int64_t i = 0; i < nq; ++i) {
      rows.q[i] = p.q.at(b, i, hc);
      rows.go[i] = p.grad_attn.at(b, i, hc);
      rows.o[i] = p.attn.at(b, i, hc);
      rows.lse_r[i] = p.lse + bh * nq + i;
      rows.out[i] = p.grad_q + (b * nq + i) * dim + hc;
    }
    memset(dk, 0, static_cast<size_t>(nk * ld) * sizeof(T));
    memset(dv, 0, static_cast<size_t>(nk * ld) * sizeof(T));
    run_backward(engine, nq, p.scale, io);
    for (int64_t j = 0; j < nk; ++j) {
      memcpy(p.grad_k + (b * nk + j) * dim + hc, dk + j * ld, static_cast<size_t>(dh) * sizeof(T));
      memcpy(p.grad_v + (b * nk + j) * dim + hc, dv + j * ld, static_cast<size_t>(dh) * sizeof(T));
    }
  }
}

template <typename T>
Status cross_backward(const CrossAttentionGradParams<T>& p) {
  CrossBackwardCtx<T> ctx{&p, 0};
  auto body = [](int64_t begin, int64_t end, void* raw) {
    auto& c = *static_cast<CrossBackwardCtx<T>*>(raw);
    if (c.p->q_len >= kDenseMin)
      cross_backward_range<T, DenseBackward<T>>(c, begin, end);
    else
      cross_backward_range<T, RowBackward<T>>(c, begin, end);
  };
  p.parallel_for(0, p.batch * p.num_heads, 1, body, &ctx);
  return ctx.failed ? Status::kOutOfMemory : Status::kOk;
}

}  // namespace egovlpv2::cpu::EGOVLPV2_CPU_ISA
