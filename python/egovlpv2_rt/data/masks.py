"""EgoNCE verb / noun masks from clip tags."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["egonce_masks", "multi_hot", "overlap_mask"]


def multi_hot(tags: Sequence[Sequence[int]], dim: int | None = None) -> Tensor:
    """``[N, dim]`` float32 multi-hot rows (the original's ``noun_vec`` / ``verb_vec``).

    ``dim`` defaults to ``1 + max tag``; a tag ``>= dim`` raises ``ValueError``.
    """
    top = max((max(t) for t in tags if len(t)), default=-1)
    dim = top + 1 if dim is None else dim
    if top >= dim:
        raise ValueError(f"tag {top} does not fit a multi-hot vector of size {dim}")
    out = torch.zeros(len(tags), max(dim, 1), dtype=torch.float32)
    for i, t in enumerate(tags):
        if len(t):
            out[i, list(t)] = 1.0
    return out


def overlap_mask(vec: Tensor) -> Tensor:
    """``[N, N]`` float32: 1 where two rows of a multi-hot ``[N, K]`` share a tag, else 0.

    The original takes the cosine of the multi-hot vectors and tests ``> 0``; that is exactly
    "share at least one tag", which this computes without the normalisation.
    """
    if vec.dim() != 2:
        raise ValueError(f"vec must be [N, K], got shape {tuple(vec.shape)}")
    v = vec.double()
    return ((v @ v.t()) > 0).float()


def egonce_masks(verb_vec: Tensor, noun_vec: Tensor) -> tuple[Tensor, Tensor]:
    """Verb and noun overlap masks, each ``[N, N]`` float32 0/1, from multi-hot tags."""
    if verb_vec.shape[0] != noun_vec.shape[0]:
        raise ValueError(
            f"verb_vec has {verb_vec.shape[0]} rows but noun_vec has {noun_vec.shape[0]}"
        )
    return overlap_mask(verb_vec), overlap_mask(noun_vec)
