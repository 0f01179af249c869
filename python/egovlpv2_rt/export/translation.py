"""ONNX translations of the custom ops (contract: docs/OPS.md), for ``torch.onnx.export(...,
dynamo=True, custom_translation_table=custom_translation_table())``.

Each op becomes a subgraph of standard ONNX operators laid out the way TensorRT's attention
fusion expects it (NVIDIA, "Fused Attention"): queries, keys and values as ``[B', heads, S, dh]``
tensors, ``q`` multiplied by the scale *before* the first MatMul, then
``MatMul(q, K^T) [-> Add(mask)] -> Softmax(-1) -> MatMul(., V)``.

The divided space-time attention is not one attention but three per head: the CLS query over all
``T`` keys, and the patch queries in groups (one group per frame for space, one per spatial
position for time), each group with the CLS key prepended. The groups are formed with
reshapes/transposes of the packed ``qkv`` projection and folded into the batch axis, so every
group is an ordinary 4-D attention of ``N + 1`` (space) or ``F + 1`` (time) keys.

The functions are traced by the exporter: ``qkv`` etc. are symbolic values whose static dims
(token count, width) are plain ints; the batch (and text length) may be symbolic. Both ops also
return their ``softmax_lse`` output as the contract defines it; an inference graph never reads
it, and dead-code elimination drops it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from onnxscript import opset18 as op

__all__ = [
    "ONNX_OPSET",
    "custom_translation_table",
    "divided_space_time_attention_onnx",
    "gated_cross_attention_onnx",
]

ONNX_OPSET = 18


def _ints(values: list[int]) -> Any:
    return op.Constant(value_ints=[int(v) for v in values])


def _scalar(value: float) -> Any:
    return op.Constant(value_float=float(value))


def _static_dim(value: Any, axis: int, what: str) -> int:
    dim = value.shape[axis]
    if not isinstance(dim, int):
        raise ValueError(
            f"ONNX export of {what}: dimension {axis} of the input must be static "
            f"(fixed frame count and image size), got symbolic {dim}"
        )
    return dim


def _attend(q: Any, k: Any, v: Any, scale: Any, mask: Any | None = None) -> tuple[Any, Any]:
    """q [G, h, Sq, dh], k, v [G, h, Sk, dh], scale a scalar of q's dtype ->
    (out [G, h, Sq, dh], scores before the softmax, for the logsumexp output).

    ``Mul(q, scale) -> MatMul(., K^T) -> [Add] -> Softmax -> MatMul``: the chain TensorRT fuses,
    with the scale applied to q right before the first MatMul (as the original scales q)."""
    scores = op.MatMul(op.Mul(q, scale), op.Transpose(k, perm=[0, 1, 3, 2]))
    if mask is not None:
        scores = op.Add(scores, mask)
    probs = op.Softmax(scores, axis=-1)
    return op.MatMul(probs, v), scores


def _lse(scores: Any) -> Any:
    """Natural-log logsumexp over the last axis, keeping it: [..., S, K] -> [..., S, 1]."""
    return op.ReduceLogSumExp(scores, _ints([-1]), keepdims=1)


def divided_space_time_attention_onnx(
    qkv: Any, num_heads: int, num_frames: int, temporal: bool, scale: float
) -> tuple[Any, Any]:
    """``egovlpv2::divided_space_time_attention`` as standard ONNX.

    qkv: [B, T, 3*D], T = 1 + F*N static. Returns (out [B, T, D], softmax_lse [B, h, T]).
    """
    tokens = _static_dim(qkv, 1, "divided_space_time_attention")
    width = _static_dim(qkv, 2, "divided_space_time_attention")
    h, frames = int(num_heads), int(num_frames)
    dim = width // 3
    dh = dim // h
    patches = (tokens - 1) // frames
    if dim * 3 != width or dh * h != dim or patches * frames != tokens - 1:
        raise ValueError(
            f"ONNX export of divided_space_time_attention: qkv {list(qkv.shape)} does not fit "
            f"num_heads={h}, num_frames={frames}"
        )
    scale_c = op.CastLike(_scalar(scale), qkv)

    # [B, T, 3, h, dh] -> [3, B, h, T, dh]: q, k, v per head, in token order.
    heads = op.Transpose(op.Reshape(qkv, _ints([0, tokens, 3, h, dh])), perm=[2, 0, 3, 1, 4])
    q_all, k_all, v_all = op.Split(heads, axis=0, num_outputs=3)
    q_all = op.Squeeze(q_all, _ints([0]))  # [B, h, T, dh]
    k_all = op.Squeeze(k_all, _ints([0]))
    v_all = op.Squeeze(v_all, _ints([0]))

    # CLS query over all T keys.
    q_cls = op.Slice(q_all, _ints([0]), _ints([1]), _ints([2]))  # [B, h, 1, dh]
    out_cls, scores_cls = _attend(q_cls, k_all, v_all, scale_c)
    lse_cls = op.Squeeze(_lse(scores_cls), _ints([3]))  # [B, h, 1]

    # Patch tokens as [B, h, F, N, dh]; groups = frames (space) or positions (time).
    def patches_of(t: Any) -> Any:
        body = op.Slice(t, _ints([1]), _ints([tokens]), _ints([2]))  # [B, h, F*N, dh]
        return op.Reshape(body, _ints([0, h, frames, patches, dh]))

    groups, size = (patches, frames) if temporal else (frames, patches)
    # -> [B, G, h, S, dh]: space keeps (F, N); time swaps to (N, F).
    perm = [0, 3, 1, 2, 4] if temporal else [0, 2, 1, 3, 4]

    def grouped(t: Any) -> Any:
        return op.Reshape(op.Transpose(patches_of(t), perm=perm), _ints([-1, h, size, dh]))

    def with_cls(t: Any, cls: Any) -> Any:
        # cls [B, h, 1, dh] -> [B*G, h, 1, dh], prepended to every group's keys/values.
        tiled = op.Expand(op.Unsqueeze(cls, _ints([1])), _ints([1, groups, 1, 1, 1]))
        return op.Concat(op.Reshape(tiled, _ints([-1, h, 1, dh])), grouped(t), axis=2)

    k_cls = op.Slice(k_all, _ints([0]), _ints([1]), _ints([2]))
    v_cls = op.Slice(v_all, _ints([0]), _ints([1]), _ints([2]))
    out_p, scores_p = _attend(
        grouped(q_all), with_cls(k_all, k_cls), with_cls(v_all, v_cls), scale_c
    )

    # [B*G, h, S, dh] -> [B, G, h, S, dh] -> [B, F, N, h, dh] (token order) -> [B, F*N, D].
    back = [0, 3, 1, 2, 4] if temporal else [0, 1, 3, 2, 4]
    out_p = op.Transpose(op.Reshape(out_p, _ints([-1, groups, h, size, dh])), perm=back)
    out_p = op.Reshape(out_p, _ints([-1, frames * patches, dim]))
    out_cls = op.Reshape(op.Transpose(out_cls, perm=[0, 2, 1, 3]), _ints([-1, 1, dim]))
    out = op.Concat(out_cls, out_p, axis=1)

    # softmax_lse [B, h, T]: patch rows back to token order (frame-major).
    lse_p = op.Reshape(_lse(scores_p), _ints([-1, groups, h, size]))  # [B, G, h, S]
    lse_perm = [0, 2, 3, 1] if temporal else [0, 2, 1, 3]  # -> [B, h, F, N]
    lse_p = op.Reshape(op.Transpose(lse_p, perm=lse_perm), _ints([0, h, frames * patches]))
    lse = op.Concat(lse_cls, lse_p, axis=2)
    return out, lse


def gated_cross_attention_onnx(
    q: Any,
    k: Any,
    v: Any,
    key_mask: Any | None,
    proj_weight: Any,
    proj_bias: Any | None,
    gate: Any,
    residual: Any,
    num_heads: int,
    scale: float,
) -> tuple[Any, Any, Any]:
    """``egovlpv2::gated_cross_attention`` as standard ONNX.

    q [B, Lq, D], k, v [B, Lk, D], key_mask [B, Lk] additive or None, proj_weight [Dout, D],
    proj_bias [Dout] or None, gate [1], residual [B, Lq, Dout] ->
    (out [B, Lq, Dout], attn [B, Lq, D], softmax_lse [B, h, Lq]).
    """
    dim = _static_dim(q, 2, "gated_cross_attention")
    h = int(num_heads)
    dh = dim // h
    if dh * h != dim:
        raise ValueError(
            f"ONNX export of gated_cross_attention: q width {dim} is not divisible by num_heads={h}"
        )
    scale_c = op.CastLike(_scalar(scale), q)

    def heads(t: Any) -> Any:  # [B, L, D] -> [B, h, L, dh]
        return op.Transpose(op.Reshape(t, _ints([0, 0, h, dh])), perm=[0, 2, 1, 3])

    mask = None
    if key_mask is not None:
        mask = op.Unsqueeze(key_mask, _ints([1, 2]))  # [B, 1, 1, Lk]
    ctx, scores = _attend(heads(q), heads(k), heads(v), scale_c, mask)
    attn = op.Reshape(op.Transpose(ctx, perm=[0, 2, 1, 3]), _ints([0, 0, dim]))
    projected = op.MatMul(attn, op.Transpose(proj_weight, perm=[1, 0]))
    if proj_bias is not None:
        projected = op.Add(projected, proj_bias)
    out = op.Add(residual, op.Mul(gate, projected))
    lse = op.Squeeze(_lse(scores), _ints([3]))
    return out, attn, lse


def custom_translation_table() -> dict[Callable, Callable]:
    """``{torch.ops.egovlpv2.<op>.default: translation}`` for ``torch.onnx.export``.

    Raises ``RuntimeError`` if the compiled op library is not loaded (the fused model path, and
    so the export, needs the op schemas).
    """
    try:
        space_time = torch.ops.egovlpv2.divided_space_time_attention.default
        cross = torch.ops.egovlpv2.gated_cross_attention.default
    except (AttributeError, RuntimeError) as exc:
        raise RuntimeError(
            "ONNX export needs the egovlpv2 custom ops (torch.ops.egovlpv2.*), which are not "
            "registered: build the package with `pip install --no-build-isolation .`"
        ) from exc
    return {space_time: divided_space_time_attention_onnx, cross: gated_cross_attention_onnx}
