"""Video backbone: the Frozen-in-Time SpaceTimeTransformer with EgoVLPv2's gated i2t
cross-attention in the top blocks (``video_model.*`` in the state dict).

Tokens: index 0 is CLS, index ``1 + f*N + n`` is patch ``n`` of frame ``f`` (frame-major).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .. import ops
from ..config import VideoConfig
from .attention import gated_cross_attention

__all__ = ["DividedAttention", "SpaceTimeBlock", "SpaceTimeTransformer", "VideoPatchEmbed"]


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (per sample); identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """``fc2(drop(GELU(fc1(x))))`` then dropout; GELU is the exact (erf) one."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class VideoPatchEmbed(nn.Module):
    """``Conv2d(C, D, patch, stride=patch)`` on every frame.

    video: [B, F, C, H, W] -> tokens [B, F*N, D], frame-major (token f*N + n = patch n of f).
    """

    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        self.embed_dim = cfg.embed_dim
        self.proj = nn.Conv2d(
            cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )

    def forward(self, video: Tensor) -> Tensor:
        b, f, c, h, w = video.shape
        x = self.proj(video.reshape(b * f, c, h, w))  # [B*F, D, h', w']
        return x.flatten(2).transpose(1, 2).reshape(b, -1, self.embed_dim)


class DividedAttention(nn.Module):
    """Divided attention over the packed ``qkv`` projection (the original ``VarAttention``).

    ``temporal=False`` is the space attention (``attn``), ``True`` the time attention
    (``timeattn``). With ``cross_dim`` set (space attention of the fused blocks) it also owns the
    gated image-to-text cross-attention: ``alpha_i2t``, ``qkv_text_i2t`` (text -> k, v),
    ``qkv_i2t`` (q), ``proj_i2t``, ``norm_i2t_i``.
    """

    def __init__(
        self, cfg: VideoConfig, *, temporal: bool, cross_dim: int | None, impl: str
    ) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.temporal = temporal
        self.scale = cfg.head_dim**-0.5
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=cfg.qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(cfg.drop_rate)
        self.has_cross = cross_dim is not None
        if cross_dim is not None:
            # Registration order reproduces the original state-dict order.
            self.qkv_text_i2t = nn.Linear(cross_dim, dim * 2, bias=cfg.qkv_bias)
            self.qkv_i2t = nn.Linear(dim, dim, bias=cfg.qkv_bias)
            self.attn_drop_i2t = cfg.attn_drop_rate
            self.proj_i2t = nn.Linear(dim, dim)
            self.proj_drop_i2t = cfg.drop_rate
            self.alpha_i2t = nn.Parameter(torch.zeros(1))
            self.norm_i2t_i = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)

    def forward(
        self,
        x: Tensor,
        num_frames: int,
        text: Tensor | None = None,
        text_key_mask: Tensor | None = None,
    ) -> Tensor:
        """x: [B, 1+F*N, D]; text: [B, L, Dt] raw text states or None; text_key_mask: [B, L]
        additive. Returns [B, 1+F*N, D] (after ``proj``, before the block residual)."""
        s = self.proj_drop(
            self.proj(
                ops.divided_space_time_attention(
                    self.qkv(x),
                    self.num_heads,
                    num_frames,
                    self.temporal,
                    self.scale,
                    impl=self.impl,
                )
            )
        )
        if text is None:
            return s
        if not self.has_cross:
            raise RuntimeError("this attention has no i2t cross-attention parameters")
        return self.i2t(s, self.i2t_query(s), text, text_key_mask)

    def i2t_query(self, s: Tensor) -> Tensor:
        """The i2t queries ``qkv_i2t(norm_i2t_i(s))`` of the space attention's output s
        [B, T, D] (they do not depend on the text). Returns [B, T, D]."""
        return self.qkv_i2t(self.norm_i2t_i(s))

    def i2t(self, s: Tensor, q: Tensor, text: Tensor, text_key_mask: Tensor | None) -> Tensor:
        """``s + alpha_i2t * proj_i2t(softmax(q k^T) v)`` with k, v from ``text`` [B, L, Dt].

        s: [B, T, D] space-attention output; q: [B, T, D] from :meth:`i2t_query`;
        text_key_mask: [B, L] additive. Returns [B, T, D].
        """
        dim = s.shape[-1]
        kv = self.qkv_text_i2t(text)
        # k, v stay strided views of the packed projection; the op reads them in place.
        return gated_cross_attention(
            q,
            kv[..., :dim],
            kv[..., dim:],
            text_key_mask,
            self.proj_i2t,
            self.alpha_i2t,
            s,
            self.num_heads,
            self.scale,
            impl=self.impl,
            training=self.training,
            attn_dropout=self.attn_drop_i2t,
            out_dropout=self.proj_drop_i2t,
        )

    def cls_forward(
        self,
        x: Tensor,
        text: Tensor | None = None,
        text_key_mask: Tensor | None = None,
    ) -> Tensor:
        """The CLS row of :meth:`forward` of the space attention, computed alone.

        x: [B, 1+F*N, D] (the attention's normed input). The CLS query attends to every token,
        so only k and v are projected for all tokens and q for CLS alone. Returns [B, 1, D].
        Inference only (no attention dropout): the last fused block, whose patch outputs
        nothing reads.
        """
        if self.temporal:
            raise RuntimeError("cls_forward is the space attention's CLS row")
        dim = x.shape[-1]
        w, b = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, :1], w[:dim], None if b is None else b[:dim])
        kv = F.linear(x, w[dim:], None if b is None else b[dim:])
        qh, kh, vh = (
            rearrange(t, "b n (h d) -> b h n d", h=self.num_heads)
            for t in (q * self.scale, kv[..., :dim], kv[..., dim:])
        )
        probs = torch.matmul(qh, kh.transpose(-1, -2)).softmax(dim=-1)
        out = rearrange(torch.matmul(probs, vh), "b h n d -> b n (h d)")
        s = self.proj(out)
        if text is None:
            return s
        return self.i2t(s, self.i2t_query(s), text, text_key_mask)


class SpaceTimeBlock(nn.Module):
    """Pre-norm block: ``t = x + time(norm3(x))``; ``x' = x + space(norm1(t))`` (the residual is
    ``x``: time attention reaches the stream only through the space attention's input);
    ``out = x' + mlp(norm2(x'))``."""

    def __init__(
        self, cfg: VideoConfig, *, cross_dim: int | None, drop_path: float, impl: str
    ) -> None:
        super().__init__()
        dim, eps = cfg.embed_dim, cfg.layer_norm_eps
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = DividedAttention(cfg, temporal=False, cross_dim=cross_dim, impl=impl)
        self.timeattn = DividedAttention(cfg, temporal=True, cross_dim=None, impl=impl)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.drop_rate)
        self.norm3 = nn.LayerNorm(dim, eps=eps)

    def forward(
        self,
        x: Tensor,
        num_frames: int,
        text: Tensor | None = None,
        text_key_mask: Tensor | None = None,
    ) -> Tensor:
        """x: [B, 1+F*N, D] -> [B, 1+F*N, D]; ``text`` ([B, L, Dt]) turns on the i2t gate."""
        t = x + self.timeattn(self.norm3(x), num_frames)
        x = x + self.drop_path(self.attn(self.norm1(t), num_frames, text, text_key_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def text_free_part(self, x: Tensor, num_frames: int) -> tuple[Tensor, Tensor]:
        """What a fused block computes before it reads the text (inference): the time and space
        attentions and the i2t queries. x: [B, 1+F*N, D]. Returns (s, q), both [B, 1+F*N, D],
        for :meth:`text_part`."""
        t = x + self.timeattn(self.norm3(x), num_frames)
        s = self.attn(self.norm1(t), num_frames)
        return s, self.attn.i2t_query(s)

    def text_part(
        self, x: Tensor, s: Tensor, q: Tensor, text: Tensor, text_key_mask: Tensor | None
    ) -> Tensor:
        """The rest of the fused block (inference): ``forward(x, F, text, mask)`` equals
        ``text_part(x, *text_free_part(x, F), text, mask)``, so a video's text-free part can be
        paired with many texts. x, s, q: [B, 1+F*N, D]; text: [B, L, Dt]. Returns x's shape."""
        x = x + self.attn.i2t(s, q, text, text_key_mask)
        return x + self.mlp(self.norm2(x))

    def cls_forward(
        self,
        x: Tensor,
        num_frames: int,
        text: Tensor | None = None,
        text_key_mask: Tensor | None = None,
    ) -> Tensor:
        """The CLS token of :meth:`forward` alone (inference): x [B, 1+F*N, D] -> [B, 1, D].

        The time attention still runs on every token (the space attention's keys read it);
        the space attention's patch queries, its i2t cross-attention and the MLP run for CLS
        only, which saves most of a block when nothing reads the patch outputs.
        """
        t = x + self.timeattn(self.norm3(x), num_frames)
        c = x[:, :1] + self.attn.cls_forward(self.norm1(t), text, text_key_mask)
        return c + self.mlp(self.norm2(c))


class SpaceTimeTransformer(nn.Module):
    """``video_model``: patch embedding, position (per patch) and temporal (per frame)
    embeddings, ``depth`` blocks (the top ``num_fuse_block`` with i2t parameters), final norm."""

    def __init__(self, cfg: VideoConfig, *, num_fuse_block: int, text_dim: int, impl: str) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.patches_per_frame + 1, dim))
        self.temporal_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, dim))
        self.patch_embed = VideoPatchEmbed(cfg)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        first_fused = cfg.depth - num_fuse_block
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(
                cfg, cross_dim=text_dim if i >= first_fused else None, drop_path=rates[i], impl=impl
            )
            for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)

    def embed(self, video: Tensor, cls_token: Tensor | None = None) -> Tensor:
        """video: [B, F, C, H, W] -> tokens [B, 1+F*N, D] entering block 0.

        CLS = ``cls_token + pos_embed[0]``; patch (f, n) = ``patch + (pos_embed[1+n] +
        temporal_embed[f])``. ``cls_token`` overrides ``self.cls_token`` (the fusion path uses
        the model's top-level one). F may be below ``num_frames``: the first F temporal
        embeddings are used, as the original's slicing of the tiled table does.
        """
        b, f = video.shape[:2]
        n = self.cfg.patches_per_frame
        x = self.patch_embed(video)
        cls = (self.cls_token if cls_token is None else cls_token).expand(b, -1, -1)
        x = torch.cat((cls, x), dim=1)
        tile_pos = self.pos_embed[:, 1:, :].repeat(1, f, 1)
        tile_time = self.temporal_embed[:, :f].repeat_interleave(n, 1)
        total = torch.cat([self.pos_embed[:, :1, :], tile_pos + tile_time], dim=1)
        return self.pos_drop(x + total)
