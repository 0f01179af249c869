"""FLOP formulas of the custom ops for ``torch.utils.flop_counter.FlopCounterMode``.

The counter counts matrix products (``mm``, ``bmm``, ``addmm``, attention) and nothing else. Each
formula gives the number the counter reports for the **reference** path of the same op
(:func:`~egovlpv2_rt.ops.reference_divided_space_time_attention`,
:func:`~egovlpv2_rt.ops.reference_gated_cross_attention`), so a model counts the same whether it
runs fused or reference:

- divided space-time attention, qkv ``[B, 1 + F*N, 3D]``: the CLS query against all ``T`` tokens,
  and each patch query against ``1 + N`` keys (space: CLS + its frame) or ``1 + F`` keys (time:
  CLS + its position in every frame); each score product and each weighted sum is
  ``2 * queries * keys * D`` flops per clip;
- gated cross-attention, q ``[B, Lq, D]``, k/v ``[B, Lk, D]``, proj ``[Dout, D]``: the two
  attention products ``2 * 2 * B * Lq * Lk * D`` plus the projection ``2 * B * Lq * D * Dout``;
- the backward ops: twice their forward's attention products (each product's two input
  gradients, as autograd of the reference's products); the cross-attention's projection
  gradients are ``mm`` calls of the Python backward and are counted as such.

A flash-style kernel recomputes the scores in its backward, so the work done is a little higher
than these counts: they measure the model's arithmetic, not a kernel's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["cross_attention_flops", "register_flop_formulas", "space_time_attention_flops"]

Shape = Sequence[int]


def space_time_attention_flops(qkv_shape: Shape, num_frames: int, temporal: bool) -> int:
    """Forward flops of divided space-time attention on a qkv of shape ``[B, T, 3D]``."""
    batch, tokens, width = (int(s) for s in qkv_shape)
    dim = width // 3
    patches = (tokens - 1) // num_frames
    cls = 2 * (2 * batch * tokens * dim)  # one query, T keys: scores and weighted sum
    if temporal:
        groups, queries, keys = batch * patches, num_frames, num_frames + 1
    else:
        groups, queries, keys = batch * num_frames, patches, patches + 1
    return cls + 2 * (2 * groups * queries * keys * dim)


def _cross_core_flops(q_shape: Shape, k_shape: Shape) -> int:
    batch, lq, dim = (int(s) for s in q_shape)
    lk = int(k_shape[1])
    return 2 * (2 * batch * lq * lk * dim)


def cross_attention_flops(q_shape: Shape, k_shape: Shape, proj_shape: Shape) -> int:
    """Forward flops of gated cross-attention: the attention products and the projection."""
    batch, lq, dim = (int(s) for s in q_shape)
    return _cross_core_flops(q_shape, k_shape) + 2 * batch * lq * dim * int(proj_shape[0])


def register_flop_formulas(ops: Any) -> None:
    """Register the formulas for ``ops`` (``torch.ops.egovlpv2``) with the flop counter."""
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(ops.divided_space_time_attention)
    def _space_time(
        qkv: Shape, num_heads: int, num_frames: int, temporal: bool, scale: float, **_: Any
    ) -> int:
        return space_time_attention_flops(qkv, num_frames, temporal)

    @register_flop_formula(ops.divided_space_time_attention_backward)
    def _space_time_backward(
        grad_out: Shape,
        qkv: Shape,
        out: Shape,
        lse: Shape,
        num_heads: int,
        num_frames: int,
        temporal: bool,
        scale: float,
        **_: Any,
    ) -> int:
        return 2 * space_time_attention_flops(qkv, num_frames, temporal)

    @register_flop_formula(ops.gated_cross_attention)
    def _cross(
        q: Shape, k: Shape, v: Shape, key_mask: Any, proj_weight: Shape, *_: Any, **__: Any
    ) -> int:
        return cross_attention_flops(q, k, proj_weight)

    @register_flop_formula(ops.gated_cross_attention_backward)
    def _cross_backward(grad_attn: Shape, q: Shape, k: Shape, *_: Any, **__: Any) -> int:
        return 2 * _cross_core_flops(q, k)
