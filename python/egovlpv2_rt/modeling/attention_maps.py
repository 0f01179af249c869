"""Cross-attention maps of the fusion encoder: where each word looks in the video (t2i) and
each video token in the caption (i2t), per fused layer and head.

The fused forward's kernels never form the attention probabilities (they are recomputed from
the softmax statistics), so :func:`cross_attention_maps` runs the fused layers once more with
the same modules and forms them from the same queries and keys: the fast path is untouched.
The hidden states it walks through are those of :meth:`EgoVLPv2.forward_fusion` (a test holds
them equal in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from .text import additive_key_mask
from .validation import check_batch_match, check_text

if TYPE_CHECKING:
    from .model import EgoVLPv2
    from .text import TextLayer
    from .video import SpaceTimeBlock

__all__ = ["CrossAttentionMaps", "cross_attention_maps"]


@dataclass(frozen=True)
class CrossAttentionMaps:
    """Attention probabilities of the fused layers.

    Attributes:
        t2i: ``[K, B, heads, L, 1 + F*N]`` float: text token -> video tokens (the fusion CLS
            first, then frame-major patches), for the K fused layers in ``layers`` order.
        i2t: ``[K, B, heads, 1 + F*N, L]`` float: video token -> text tokens (padding masked).
        layers: the fused layers' indices (e.g. 6..11).
        num_frames, grid: F frames of ``grid x grid`` patches.
        text_states: ``[B, L, H]`` the last text layer's output; video_states: ``[B, 1+F*N,
            D]`` the last video block's output (before the final norm).
    """

    t2i: Tensor
    i2t: Tensor
    layers: tuple[int, ...]
    num_frames: int
    grid: int
    text_states: Tensor
    video_states: Tensor

    def word_maps(self, layer: int | None = None) -> Tensor:
        """t2i attention of every text token over every frame's patches, averaged over heads
        (and over the fused layers, or of ``layer`` only): ``[B, L, F, grid, grid]``; a
        token's map sums to 1 minus the mass it gives the video CLS."""
        att = self.t2i if layer is None else self.t2i[self.layers.index(layer)][None]
        m = att.mean(dim=(0, 2))[..., 1:]  # [B, L, F*N]
        b, length = m.shape[:2]
        return m.reshape(b, length, self.num_frames, self.grid, self.grid)


@torch.no_grad()
def cross_attention_maps(
    model: EgoVLPv2, video: Tensor, input_ids: Tensor, attention_mask: Tensor
) -> CrossAttentionMaps:
    """Fused forward of pairs (video[i], text[i]) recording the t2i and i2t probabilities.

    video: [B, F, 3, H, W] float (model dtype); input_ids, attention_mask: [B, L]. The model
    must be in eval mode (dropout would make the maps random)."""
    if model.training:
        raise RuntimeError("cross_attention_maps: call model.eval() first")
    if not model.has_fusion:
        raise RuntimeError("cross_attention_maps: this model has no fusion layers")
    model._check_video(video)
    check_text(input_ids, attention_mask, model.config.text)
    check_batch_match(video, input_ids)
    blocks, layers = model.video_model.blocks, model.text_model.encoder.layer
    unfused, depth = model.config.num_unfused_layers, len(blocks)
    num_frames = video.shape[1]
    x = model.video_model.embed(video, cls_token=model.cls_token)
    for i in range(unfused):
        x = blocks[i](x, num_frames)
    h = model.text_model.embeddings(input_ids)
    key_mask = additive_key_mask(attention_mask, h.dtype)
    for i in range(unfused):
        h = layers[i](h, key_mask)
    t2i, i2t = [], []
    for i in range(unfused, depth):
        block = cast("SpaceTimeBlock", blocks[i])
        layer = cast("TextLayer", layers[i])
        # Video side: i2t queries after the block's space attention, keys from the text.
        s, q = block.text_free_part(x, num_frames)
        attn = block.attn
        k = attn.qkv_text_i2t(h)[..., : s.shape[-1]]
        i2t.append(_probs(q * attn.scale, k, attn.num_heads, key_mask))
        x_next = block.text_part(x, s, q, h, key_mask)
        # Text side: t2i queries from the self-attention output, keys from the video stream.
        a = layer.attention.output(layer.attention.self(h, key_mask))
        cross = layer.crossattention_t2i.self
        qt = cross.query(a) / math.sqrt(cross.head_dim)
        t2i.append(_probs(qt, cross.key(x), cross.num_heads, None))
        h = layer(h, key_mask, x)
        x = x_next
    grid = model.config.video.img_size // model.config.video.patch_size
    return CrossAttentionMaps(
        torch.stack(t2i),
        torch.stack(i2t),
        tuple(range(unfused, depth)),
        num_frames,
        grid,
        h,
        x,
    )


def _probs(q: Tensor, k: Tensor, heads: int, key_mask: Tensor | None) -> Tensor:
    """softmax(q k^T + mask) per head: q [B, Lq, D] (scaled), k [B, Lk, D] -> [B, h, Lq, Lk]."""
    b, lq, d = q.shape
    lk = k.shape[1]
    qh = q.reshape(b, lq, heads, d // heads).transpose(1, 2)
    kh = k.reshape(b, lk, heads, d // heads).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2)
    if key_mask is not None:
        scores = scores + key_mask[:, None, None, :]
    return scores.softmax(dim=-1)
