"""Compute accounting: GMACs of EgoVLPv2's passes and of a fusion-specific-layers baseline.

Counted with ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors (no weights are
allocated, nothing runs): matrix products and convolutions, which is all the counter counts;
the custom ops count as their reference path (:mod:`egovlpv2_rt.op_flops`), so the fused model
and the reference give the same numbers. One MAC = 2 flops; GMACs are per clip / pair (batch 1).

The baseline is the design EgoVLPv2 compares itself with: the dual towers unchanged, then
``num_layers`` (6) extra co-attention layers per modality at the towers' width (METER style:
self-attention, cross-attention to the other modality's previous layer, MLP x4), then the same
VTM head. EgoVLPv2 instead adds gated cross-attention inside the top 6 layers of the towers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import ModelConfig
from ..modeling.model import EgoVLPv2
from ..modeling.validation import skip_value_checks

__all__ = [
    "CoAttentionLayer",
    "ComputeReport",
    "FusionLayersBaseline",
    "compute_report",
    "count_gmacs",
]


def count_gmacs(fn: Callable[[], object]) -> float:
    """GMACs (flops / 2 / 1e9) counted while ``fn()`` runs."""
    with FlopCounterMode(display=False) as counter, skip_value_checks():
        fn()
    return counter.get_total_flops() / 2e9


class CoAttentionLayer(nn.Module):
    """One METER-style fusion layer of one modality: self-attention, cross-attention to the
    other modality, MLP (pre-norm, residuals). x ``[B, L, D]``, other ``[B, M, D]``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: Tensor, other: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.norm2(x)
        x = x + self.cross_attn(h, other, other, need_weights=False)[0]
        return x + self.mlp(self.norm3(x))


class FusionLayersBaseline(nn.Module):
    """``num_layers`` co-attention layers per modality on the dual towers' tokens, then the VTM
    head (a pooler per modality and ``Linear(2D, 2)``)."""

    def __init__(self, dim: int, heads: int, num_layers: int = 6) -> None:
        super().__init__()
        self.video_layers = nn.ModuleList(CoAttentionLayer(dim, heads) for _ in range(num_layers))
        self.text_layers = nn.ModuleList(CoAttentionLayer(dim, heads) for _ in range(num_layers))
        self.video_pool = nn.Linear(dim, dim)
        self.text_pool = nn.Linear(dim, dim)
        self.itm = nn.Linear(2 * dim, 2)

    def forward(self, video: Tensor, text: Tensor) -> Tensor:
        """video ``[B, Lv, D]``, text ``[B, Lt, D]`` tokens -> VTM logits ``[B, 2]``."""
        for vl, tl in zip(self.video_layers, self.text_layers, strict=True):
            video, text = vl(video, text), tl(text, video)
        pooled = torch.cat(
            [torch.tanh(self.video_pool(video[:, 0])), torch.tanh(self.text_pool(text[:, 0]))], -1
        )
        return self.itm(pooled)


@dataclass(frozen=True)
class ComputeReport:
    """GMACs per clip / pair and the comparisons.

    ``video_tower`` / ``text_tower``: the dual encoders (with their projectors);
    ``fusion_vtm`` / ``fusion_mlm``: one fused forward with the VTM / MLM head;
    ``fusion_added``: ``fusion_vtm`` minus the two towers (what the gated cross-attention adds);
    ``baseline_layers``: the extra co-attention layers and VTM head; ``baseline_vtm``: towers +
    those; ``vtm_saving``: ``1 - fusion_vtm / baseline_vtm``; ``fusion_saving``: ``1 -
    fusion_added / baseline_layers``; ``pretrain_*``: per pair of a pre-training step (the dual
    pass for EgoNCE, ``vtm_passes`` fused VTM passes (the positive and the two hard negatives)
    and one MLM pass; the baseline runs its towers once and its fusion layers per pass)."""

    preset: str
    frames: int
    image_size: int
    text_length: int
    video_tokens: int
    video_tower: float
    text_tower: float
    fusion_vtm: float
    fusion_mlm: float
    fusion_added: float
    baseline_layers: float
    baseline_vtm: float
    vtm_saving: float
    fusion_saving: float
    vtm_passes: int
    pretrain_ours: float
    pretrain_baseline: float
    pretrain_saving: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def compute_report(
    config: ModelConfig,
    *,
    preset: str = "",
    text_length: int = 30,
    baseline_layers: int = 6,
    vtm_passes: int = 3,
) -> ComputeReport:
    """Count the passes of a model built from ``config`` (on the meta device) and of the
    baseline at the same width; ``text_length`` tokens, ``config.video.num_frames`` frames."""
    v, t = config.video, config.text
    if not 2 <= text_length <= t.max_text_length:
        raise ValueError(f"text_length must be in 2..{t.max_text_length}, got {text_length}")
    with torch.device("meta"):
        model = EgoVLPv2(config, attention_impl="reference", check_finite_pixels=False).eval()
        video = torch.empty(1, v.num_frames, 3, v.img_size, v.img_size)
        ids = torch.zeros(1, text_length, dtype=torch.long)
        mask = torch.ones_like(ids)
        baseline = FusionLayersBaseline(v.embed_dim, v.num_heads, baseline_layers).eval()
        tokens = 1 + v.num_frames * (v.img_size // v.patch_size) ** 2
        v_tok, t_tok = torch.empty(1, tokens, v.embed_dim), torch.empty(1, text_length, v.embed_dim)
    with torch.no_grad():
        video_tower = count_gmacs(lambda: model.forward_video(video))
        text_tower = count_gmacs(lambda: model.forward_text(ids, mask))
        vtm = count_gmacs(lambda: model.forward_fusion(video, ids, mask, task="itm"))
        mlm = count_gmacs(lambda: model.forward_fusion(video, ids, mask, task="mlm"))
        layers = count_gmacs(lambda: baseline(v_tok, t_tok))
    towers = video_tower + text_tower
    added = vtm - towers
    # The baseline's MLM pass: its layers plus the same MLM head as ours.
    mlm_head = mlm - vtm
    ours = towers + vtm_passes * vtm + mlm
    base = towers + vtm_passes * layers + layers + mlm_head
    return ComputeReport(
        preset=preset,
        frames=v.num_frames,
        image_size=v.img_size,
        text_length=text_length,
        video_tokens=tokens,
        video_tower=video_tower,
        text_tower=text_tower,
        fusion_vtm=vtm,
        fusion_mlm=mlm,
        fusion_added=added,
        baseline_layers=layers,
        baseline_vtm=towers + layers,
        vtm_saving=1.0 - vtm / (towers + layers),
        fusion_saving=1.0 - added / layers,
        vtm_passes=vtm_passes,
        pretrain_ours=ours,
        pretrain_baseline=base,
        pretrain_saving=1.0 - ours / base,
    )
