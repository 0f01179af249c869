"""Text backbone: RoBERTa with EgoVLPv2's gated t2i cross-attention in the top layers
(``text_model.*`` in the state dict; module names follow ``transformers.RobertaModel``).

In dual mode it computes exactly what ``RobertaModel`` computes (post-norm layers, additive
``(1 - mask) * finfo.min`` mask, RoBERTa position ids from the token ids).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TextConfig
from .attention import gated_cross_attention

__all__ = ["RobertaTextModel", "TextLayer", "additive_key_mask", "roberta_position_ids"]


def roberta_position_ids(input_ids: Tensor, pad_token_id: int) -> Tensor:
    """Positions counted over non-pad tokens, offset by ``pad_token_id + 1``; pads get
    ``pad_token_id``. input_ids: [B, L] int -> [B, L] int64 (fairseq/RoBERTa rule)."""
    mask = input_ids.ne(pad_token_id).int()
    return (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + pad_token_id


def additive_key_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """0/1 mask [B, L] -> additive mask [B, L] of ``dtype``: 0 on kept keys, ``finfo.min`` on
    masked ones (the transformers 4.x extended attention mask, without the broadcast dims)."""
    return (1.0 - attention_mask.to(dtype)) * torch.finfo(dtype).min


class RobertaEmbeddings(nn.Module):
    """word + token_type[0] + position embeddings, LayerNorm, dropout.

    input_ids: [B, L] int64 -> [B, L, H].
    """

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.padding_idx = cfg.pad_token_id
        self.word_embeddings = nn.Embedding(cfg.vocab_size, h, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(
            cfg.max_position_embeddings, h, padding_idx=cfg.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        # Persistent, as in the original's transformers 4.30: released checkpoints hold it.
        self.register_buffer(
            "position_ids",
            torch.arange(cfg.max_position_embeddings).expand((1, -1)),
            persistent=True,
        )

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = roberta_position_ids(input_ids, self.padding_idx)
        token_type = self.token_type_embeddings.weight[0]
        x = self.word_embeddings(input_ids) + token_type
        x = x + self.position_embeddings(positions)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """``attention.self`` / ``crossattention_t2i.self``: query, key, value projections.

    For the cross-attention, ``key``/``value`` read the video width ``kv_dim``.
    """

    def __init__(self, cfg: TextConfig, kv_dim: int | None = None) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = h // self.num_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(kv_dim or h, h)
        self.value = nn.Linear(kv_dim or h, h)
        self.dropout = nn.Dropout(cfg.attention_probs_dropout_prob)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        """Self-attention as ``RobertaSelfAttention`` (eager). x: [B, L, H]; key_mask: [B, L]
        additive. Returns the context [B, L, H] (before ``output.dense``)."""
        b, length, _ = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if key_mask is not None:
            scores = scores + key_mask[:, None, None, :]
        probs = self.dropout(scores.softmax(dim=-1))
        ctx = torch.matmul(probs, v).transpose(1, 2).contiguous()
        return ctx.view(b, length, self.num_heads * self.head_dim)


class SelfOutput(nn.Module):
    """``attention.output``: dense + dropout. The LayerNorm is applied by the layer (after the
    optional t2i gate); the cross-attention output has none."""

    def __init__(self, cfg: TextConfig, with_norm: bool) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        if with_norm:
            self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.dense(x))


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, kv_dim: int | None = None) -> None:
        super().__init__()
        self.self = SelfAttention(cfg, kv_dim)
        self.output = SelfOutput(cfg, with_norm=kv_dim is None)


class Intermediate(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class Output(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class TextLayer(nn.Module):
    """Post-norm RoBERTa layer; with ``video_dim`` set it owns ``crossattention_t2i`` and the
    gate ``alpha_t2i``: ``a = alpha_t2i * dense(CrossAttn(q = a, k/v = video)) + a`` between the
    self-attention output and its residual LayerNorm (no mask on the video keys)."""

    def __init__(self, cfg: TextConfig, *, video_dim: int | None, impl: str) -> None:
        super().__init__()
        self.impl = impl
        self.attention = Attention(cfg)
        self.has_cross = video_dim is not None
        if video_dim is not None:
            self.crossattention_t2i = Attention(cfg, kv_dim=video_dim)
            self.alpha_t2i = nn.Parameter(torch.zeros(1))
        self.intermediate = Intermediate(cfg)
        self.output = Output(cfg)

    def video_keys(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """The t2i keys and values of ``video`` [B, T, Dv] (they do not depend on the text):
        ([B, T, H], [B, T, H]), for ``forward(..., video_kv=)``."""
        cross = self.crossattention_t2i
        return cross.self.key(video), cross.self.value(video)

    def forward(
        self,
        h: Tensor,
        key_mask: Tensor | None,
        video: Tensor | None = None,
        *,
        video_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """h: [B, L, H]; key_mask: [B, L] additive; video: [B, T, Dv] raw video stream or None;
        video_kv: :meth:`video_keys` of the video instead of ``video``. Returns [B, L, H]."""
        a = self.attention.output(self.attention.self(h, key_mask))
        if video is not None or video_kv is not None:
            if not self.has_cross:
                raise RuntimeError("this text layer has no t2i cross-attention parameters")
            cross = self.crossattention_t2i
            if video_kv is None:
                assert video is not None
                video_kv = self.video_keys(video)
            a = gated_cross_attention(
                cross.self.query(a),
                video_kv[0],
                video_kv[1],
                None,
                cross.output.dense,
                self.alpha_t2i,
                a,
                cross.self.num_heads,
                1.0 / math.sqrt(cross.self.head_dim),
                impl=self.impl,
                training=self.training,
                attn_dropout=cross.self.dropout.p,
                out_dropout=cross.output.dropout.p,
            )
        a = self.attention.output.LayerNorm(a + h)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, cfg: TextConfig, *, num_fuse_block: int, video_dim: int, impl: str) -> None:
        super().__init__()
        first_fused = cfg.num_hidden_layers - num_fuse_block
        self.layer = nn.ModuleList(
            TextLayer(cfg, video_dim=video_dim if i >= first_fused else None, impl=impl)
            for i in range(cfg.num_hidden_layers)
        )


class RobertaTextModel(nn.Module):
    """``text_model``: embeddings and encoder layers. The original's pooler has no parameters
    and is unused, so it is omitted."""

    def __init__(self, cfg: TextConfig, *, num_fuse_block: int, video_dim: int, impl: str) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = RobertaEmbeddings(cfg)
        self.encoder = Encoder(cfg, num_fuse_block=num_fuse_block, video_dim=video_dim, impl=impl)
