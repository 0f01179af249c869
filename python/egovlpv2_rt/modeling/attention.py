"""Model-side wrapper of the gated cross-attention op that adds the original's dropouts.

The custom op (``egovlpv2_rt.ops.gated_cross_attention``) has no dropout. The original applies
dropout to the attention probabilities and to the projected output before the gate; when a
module trains with a non-zero rate we therefore run the same computation in plain PyTorch with
those dropouts, and use the op otherwise (inference, or rates of 0 as in the video tower).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .. import ops

__all__ = ["gated_cross_attention"]


def _with_dropout(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None,
    proj: nn.Linear,
    gate: Tensor,
    residual: Tensor,
    num_heads: int,
    scale: float,
    attn_dropout: float,
    out_dropout: float,
) -> Tensor:
    qh, kh, vh = (rearrange(t, "b n (h d) -> b h n d", h=num_heads) for t in (q, k, v))
    scores = torch.matmul(qh * scale, kh.transpose(-1, -2))
    if key_mask is not None:
        scores = scores + key_mask[:, None, None, :]
    probs = F.dropout(scores.softmax(dim=-1), attn_dropout, training=True)
    attn = rearrange(torch.matmul(probs, vh), "b h n d -> b n (h d)")
    return residual + gate * F.dropout(proj(attn), out_dropout, training=True)


def gated_cross_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_mask: Tensor | None,
    proj: nn.Linear,
    gate: Tensor,
    residual: Tensor,
    num_heads: int,
    scale: float,
    *,
    impl: str,
    training: bool = False,
    attn_dropout: float = 0.0,
    out_dropout: float = 0.0,
) -> Tensor:
    """``residual + gate * dropout(proj(dropout(softmax((q*scale) k^T + key_mask)) v))``.

    q: [B, Lq, D]; k, v: [B, Lk, D] (any strides); key_mask: [B, Lk] additive or None;
    gate: [1]; residual: [B, Lq, Dout]. Returns [B, Lq, Dout] in the dtype of q.
    """
    if training and (attn_dropout > 0.0 or out_dropout > 0.0):
        return _with_dropout(
            q, k, v, key_mask, proj, gate, residual, num_heads, scale, attn_dropout, out_dropout
        )
    return ops.gated_cross_attention(
        q, k, v, key_mask, proj.weight, proj.bias, gate, residual, num_heads, scale, impl=impl
    )
