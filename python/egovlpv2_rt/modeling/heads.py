"""Heads of EgoVLPv2: retrieval projections, cross-modal poolers, ITM (VTM) and MLM heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import PROJECTIONS

__all__ = [
    "PROJECTIONS",
    "ITMHead",
    "MLMHead",
    "Pooler",
    "projection",
    "text_projection",
    "video_projection",
]


def projection(in_dim: int, out_dim: int) -> nn.Sequential:
    """``txt_proj`` / ``vid_proj`` ("minimal"): Linear(no bias) - ReLU - Linear - ReLU - Linear.

    [..., in_dim] -> [..., out_dim]; state-dict keys ``0.weight``, ``2.*``, ``4.*``.
    """
    return nn.Sequential(
        nn.Linear(in_dim, out_dim, bias=False),
        nn.ReLU(),
        nn.Linear(out_dim, out_dim),
        nn.ReLU(),
        nn.Linear(out_dim, out_dim),
    )


def text_projection(kind: str, in_dim: int, out_dim: int) -> nn.Sequential:
    """``txt_proj`` of projector ``kind``: [..., in_dim] -> [..., out_dim].

    ``"minimal"``: :func:`projection` (keys ``0.weight``, ``2.*``, ``4.*``); ``"small"``:
    ReLU - Linear (keys ``1.weight``, ``1.bias``).
    """
    if kind == "minimal":
        return projection(in_dim, out_dim)
    if kind == "small":
        return nn.Sequential(nn.ReLU(), nn.Linear(in_dim, out_dim))
    raise ValueError(f"projection kind must be one of {PROJECTIONS}, got {kind!r}")


def video_projection(kind: str, in_dim: int, out_dim: int) -> nn.Sequential:
    """``vid_proj`` of projector ``kind``: [..., in_dim] -> [..., out_dim].

    ``"minimal"``: :func:`projection`; ``"small"``: one Linear (keys ``0.weight``, ``0.bias``).
    """
    if kind == "minimal":
        return projection(in_dim, out_dim)
    if kind == "small":
        return nn.Sequential(nn.Linear(in_dim, out_dim))
    raise ValueError(f"projection kind must be one of {PROJECTIONS}, got {kind!r}")


class Pooler(nn.Module):
    """``tanh(dense(x))`` on an already selected CLS row: [B, H] -> [B, H]."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.dense(x))


class ITMHead(nn.Module):
    """Video-text matching logits: [B, 2H] (text features first) -> [B, 2]."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


class PredictionHeadTransform(nn.Module):
    """BERT's prediction-head transform: dense, GELU (erf), LayerNorm."""

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class MLMHead(nn.Module):
    """Masked-language-model logits: [B, L, H] -> [B, L, V]. The decoder is not tied to the
    word embeddings; its bias is the separate ``bias`` parameter."""

    def __init__(self, hidden: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.transform = PredictionHeadTransform(hidden, eps)
        self.decoder = nn.Linear(hidden, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x)) + self.bias
