"""VSLNet span head for EgoNLQ, as the original's ``EgoNLQ/model/VSLNet.py`` and ``layers.py``
build it with ``predictor='EgoVLP'`` (re-implemented).

Video features ``[B, T, Dv]`` (EgoVLPv2's query-conditioned fused CLS per window, pooled to at
most ``max_pos_len`` positions) and the query's RoBERTa token states ``[B, L, Dt]`` go through:

1. ``video_affine`` (dropout + pointwise linear Dv -> dim) and ``query_affine`` (Linear Dt -> dim);
2. one shared :class:`FeatureEncoder` (learned positions, 4 depthwise-separable conv layers of
   kernel 7, one multi-head self-attention block) applied to each;
3. ``variant="full"``: :class:`CQAttention` (context-query attention) -> :class:`CQConcatenate`
   (append the attention-pooled query) -> :class:`HighlightLayer` (per-position foreground
   score, multiplied into the features) -> :class:`ConditionedPredictor` (a second feature
   encoder run twice, start and end logits);
   ``variant="small"`` (the original's ``VSLNet_small.py``): no context-query attention; the
   highlight scores come from ``CQConcatenate(video, query)`` and feed only the highlight loss,
   and the span predictor reads the encoded video features directly (the small model's
   ``forward`` overwrites its first predictor call with this one, so that is its behaviour).

One deliberate difference: padded positions are zeroed before every convolution, so a sample's
outputs do not depend on how much padding its batch has (the original's kernel-7 convolutions
read the padded tail into the last 3 valid positions). Every softmax and the losses are masked
as in the original.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CQAttention",
    "CQConcatenate",
    "ConditionedPredictor",
    "DepthwiseSeparableConvBlock",
    "FeatureEncoder",
    "HighlightLayer",
    "MultiHeadAttentionBlock",
    "VSLNet",
    "VisualProjection",
    "highlight_loss",
    "mask_logits",
    "span_loss",
]

MASK_VALUE = -1e30
Variant = Literal["full", "small"]


def mask_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """``logits + (1 - mask) * -1e30``: masked positions get a logit no softmax picks.

    ``mask`` broadcasts against ``logits``; 1 keeps, 0 masks."""
    return logits + (1.0 - mask.to(logits.dtype)) * MASK_VALUE


def _zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask.to(x.dtype).unsqueeze(-1)


class VisualProjection(nn.Module):
    """Dropout, then a pointwise linear map ``[B, T, visual_dim] -> [B, T, dim]``."""

    def __init__(self, visual_dim: int, dim: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.linear = nn.Linear(visual_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.drop(x))


class DepthwiseSeparableConvBlock(nn.Module):
    """``num_layers`` pre-norm residual layers: LayerNorm -> depthwise conv (kernel ``k``, same
    padding, no bias) -> pointwise linear -> ReLU -> dropout, added to the input. ``[B, T, dim]``.
    """

    def __init__(self, dim: int, kernel_size: int, drop_rate: float, num_layers: int = 4):
        super().__init__()
        self.depthwise = nn.ModuleList(
            nn.Conv1d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2, bias=False)
            for _ in range(num_layers)
        )
        self.pointwise = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        self.layer_norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in range(num_layers))
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        out = x
        for norm, dw, pw in zip(self.layer_norms, self.depthwise, self.pointwise, strict=True):
            h = _zero_padding(norm(out), mask)
            h = dw(h.transpose(1, 2)).transpose(1, 2)
            out = self.dropout(F.relu(pw(h))) + out
        return out


class MultiHeadAttentionBlock(nn.Module):
    """Pre-norm self-attention with key masking, then a pointwise output layer, each with a
    residual (the original's ordering of norms, dropouts and residuals). ``[B, T, dim]``."""

    def __init__(self, dim: int, num_heads: int, drop_rate: float) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads, self.head_size = num_heads, dim // num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out_layer = nn.Linear(dim, dim)
        self.layer_norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.layer_norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.dropout = nn.Dropout(drop_rate)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_size).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.dropout(self.layer_norm1(x))
        q, k, v = self._heads(self.query(h)), self._heads(self.key(h)), self._heads(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_size)  # [B, heads, T, T]
        if mask is not None:
            scores = mask_logits(scores, mask[:, None, None, :])
        probs = self.dropout(torch.softmax(scores, dim=-1))
        att = (probs @ v).transpose(1, 2).reshape(x.shape)
        residual = self.dropout(att) + x
        out = self.out_layer(self.dropout(self.layer_norm2(residual)))
        return self.dropout(out) + residual


class FeatureEncoder(nn.Module):
    """Learned positional embedding, depthwise-separable conv block, self-attention block.

    ``[B, T, dim]`` -> ``[B, T, dim]``, ``T <= max_pos_len``; ``mask`` ``[B, T]`` 1 = valid."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        max_pos_len: int,
        kernel_size: int = 7,
        num_layers: int = 4,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Embedding(max_pos_len, dim)
        self.conv_block = DepthwiseSeparableConvBlock(dim, kernel_size, drop_rate, num_layers)
        self.attention_block = MultiHeadAttentionBlock(dim, num_heads, drop_rate)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        t = x.shape[1]
        if t > self.pos_embedding.num_embeddings:
            raise ValueError(
                f"sequence length {t} exceeds max_pos_len {self.pos_embedding.num_embeddings}"
            )
        pos = self.pos_embedding(torch.arange(t, device=x.device))
        h = self.conv_block(x + pos, mask)
        return self.attention_block(h, mask)


class CQAttention(nn.Module):
    """Context-query attention (BiDAF-style trilinear similarity).

    ``context`` ``[B, T, dim]``, ``query`` ``[B, L, dim]`` -> ``[B, T, dim]``: the linear map of
    ``[c, c2q, c * c2q, c * q2c]``."""

    def __init__(self, dim: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.w4C = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, 1)))
        self.w4Q = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, 1)))
        self.w4mlu = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, 1, dim)))
        self.dropout = nn.Dropout(drop_rate)
        self.cqa_linear = nn.Linear(4 * dim, dim)

    def trilinear(self, context: Tensor, query: Tensor) -> Tensor:
        """``[B, T, L]`` similarity ``w_c . c + w_q . q + w_m . (c * q)``."""
        c, q = self.dropout(context), self.dropout(query)
        return (
            (c @ self.w4C) + (q @ self.w4Q).transpose(1, 2) + (c * self.w4mlu) @ q.transpose(1, 2)
        )

    def forward(self, context: Tensor, query: Tensor, c_mask: Tensor, q_mask: Tensor) -> Tensor:
        score = self.trilinear(context, query)
        c2q_w = torch.softmax(mask_logits(score, q_mask[:, None, :]), dim=2)  # over query
        q2c_w = torch.softmax(mask_logits(score, c_mask[:, :, None]), dim=1)  # over context
        c2q = c2q_w @ query
        q2c = (c2q_w @ q2c_w.transpose(1, 2)) @ context
        return self.cqa_linear(torch.cat([context, c2q, context * c2q, context * q2c], dim=2))


class WeightedPool(nn.Module):
    """Masked attention pooling ``[B, L, dim] -> [B, dim]`` with one learned scoring vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, 1)))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        alpha = torch.softmax(mask_logits(x @ self.weight, mask[:, :, None]), dim=1)  # [B, L, 1]
        return (x.transpose(1, 2) @ alpha).squeeze(2)


class CQConcatenate(nn.Module):
    """Append the pooled query to every context position and map ``2 dim -> dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weighted_pool = WeightedPool(dim)
        self.linear = nn.Linear(2 * dim, dim)

    def forward(self, context: Tensor, query: Tensor, q_mask: Tensor) -> Tensor:
        pooled = self.weighted_pool(query, q_mask)[:, None, :].expand_as(context)
        return self.linear(torch.cat([context, pooled], dim=2))


class HighlightLayer(nn.Module):
    """Per-position foreground probability ``[B, T]`` (sigmoid of a masked linear score; 0 at
    padded positions)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return torch.sigmoid(mask_logits(self.linear(x).squeeze(2), mask))


class ConditionedPredictor(nn.Module):
    """The transformer-style span predictor: one :class:`FeatureEncoder` gives start features,
    the same encoder on those gives end features; each, layer-normed and concatenated with the
    input, goes through ``Linear(2 dim, dim) -> ReLU -> Linear(dim, 1)``. Masked logits
    ``[B, T]`` each."""

    def __init__(self, dim: int, num_heads: int, max_pos_len: int, drop_rate: float = 0.0):
        super().__init__()
        self.encoder = FeatureEncoder(dim, num_heads, max_pos_len, 7, 4, drop_rate)
        self.start_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.end_layer_norm = nn.LayerNorm(dim, eps=1e-6)
        self.start_block = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))
        self.end_block = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        start = self.encoder(x, mask)
        end = self.encoder(start, mask)
        start, end = self.start_layer_norm(start), self.end_layer_norm(end)
        s = self.start_block(torch.cat([start, x], dim=2)).squeeze(2)
        e = self.end_block(torch.cat([end, x], dim=2)).squeeze(2)
        return mask_logits(s, mask), mask_logits(e, mask)


class VSLNet(nn.Module):
    """The EgoNLQ span head.

    Args:
        video_dim: feature size of the video windows (768 for EgoVLPv2's fused CLS).
        text_dim: feature size of the query tokens (768 for RoBERTa-base).
        dim: hidden size (128 in the original).
        num_heads: attention heads (8).
        max_pos_len: the longest video (and query) sequence (256).
        drop_rate: dropout (0.2).
        variant: ``"full"`` or ``"small"`` (no context-query attention).
    """

    def __init__(
        self,
        video_dim: int = 768,
        text_dim: int = 768,
        dim: int = 128,
        num_heads: int = 8,
        max_pos_len: int = 256,
        drop_rate: float = 0.2,
        variant: Variant = "full",
    ) -> None:
        super().__init__()
        if variant not in ("full", "small"):
            raise ValueError(f"variant must be 'full' or 'small', got {variant!r}")
        self.variant = variant
        self.video_affine = VisualProjection(video_dim, dim, drop_rate)
        self.query_affine = nn.Linear(text_dim, dim)
        self.feature_encoder = FeatureEncoder(dim, num_heads, max_pos_len, 7, 4, drop_rate)
        self.cq_attention = CQAttention(dim, drop_rate) if variant == "full" else None
        self.cq_concat = CQConcatenate(dim)
        self.highlight_layer = HighlightLayer(dim)
        self.predictor = ConditionedPredictor(dim, num_heads, max_pos_len, drop_rate)
        self._init_weights()

    def _init_weights(self) -> None:
        # The original re-initialises every conv and linear layer: Xavier-uniform weights, zero
        # biases; embeddings, LayerNorms and the attention vectors keep their own init.
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(
        self, video: Tensor, v_mask: Tensor, text: Tensor, q_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Highlight scores and span logits.

        Args:
            video: ``[B, T, video_dim]`` float, zero-padded after each sample's length.
            v_mask: ``[B, T]`` 1 at valid positions, 0 at padding (float or integer).
            text: ``[B, L, text_dim]`` float query token features.
            q_mask: ``[B, L]`` the query's attention mask.

        Returns:
            ``(highlight [B, T] in [0, 1], start_logits [B, T], end_logits [B, T])``; logits
            at padded positions are about -1e30.
        """
        v_mask = v_mask.to(video.dtype)
        q_mask = q_mask.to(text.dtype)
        v = self.feature_encoder(self.video_affine(video), v_mask)
        q = self.feature_encoder(self.query_affine(text), q_mask)
        if self.cq_attention is not None:
            fused = self.cq_concat(self.cq_attention(v, q, v_mask, q_mask), q, q_mask)
            h = self.highlight_layer(fused, v_mask)
            start, end = self.predictor(fused * h.unsqueeze(2), v_mask)
        else:
            h = self.highlight_layer(self.cq_concat(v, q, q_mask), v_mask)
            start, end = self.predictor(v, v_mask)
        return h, start, end


def span_loss(start_logits: Tensor, end_logits: Tensor, s_ind: Tensor, e_ind: Tensor) -> Tensor:
    """``CE(start) + CE(end)``, each the batch mean. Logits ``[B, T]``, labels ``[B]`` int64."""
    return F.cross_entropy(start_logits, s_ind) + F.cross_entropy(end_logits, e_ind)


def highlight_loss(scores: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """Masked weighted BCE of the highlight scores: foreground positions weigh 2, background 1,
    summed over valid positions and divided by their count (the original's normalisation).

    ``scores`` ``[B, T]`` probabilities, ``labels`` ``[B, T]`` 0/1, ``mask`` ``[B, T]``."""
    labels = labels.to(scores.dtype)
    mask = mask.to(scores.dtype)
    weights = torch.where(labels == 0, torch.ones_like(labels), 2.0 * labels)
    per = F.binary_cross_entropy(scores, labels, reduction="none") * weights
    return (per * mask).sum() / (mask.sum() + 1e-12)
