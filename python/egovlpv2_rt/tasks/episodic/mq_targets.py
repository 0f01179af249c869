"""Training targets, losses and decoding of the MQ head (:mod:`.mq_head`).

Coordinates are window units: window ``i`` of a clip with ``N`` feature rows covers
``[i, i + 1)``, i.e. seconds ``[i, i + 1) * duration / N``. Position ``j`` of pyramid level
``l`` has its centre at ``(j + 0.5) * 2**l``.

Assignment (FCOS / ActionFormer): a position is positive for a moment when its centre lies in
the moment and the larger of its distances to the moment's edges lies in the level's regression
range. Its class target is every class of the moments it is positive for (moments of different
classes overlap in Ego4D); its distance target is that of the shortest of them. A moment that
gets no positive anywhere (shorter than a window and between two centres) is given the level-0
position of its midpoint, with its distances clamped at 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .mq_head import MQHeadConfig

__all__ = [
    "LevelTargets",
    "build_targets",
    "decode_clip",
    "focal_loss",
    "giou_loss",
    "nms_1d",
]

# (label index, start, end) in window units
Moment = tuple[int, float, float]


class LevelTargets:
    """Targets of one clip at one level: ``cls [T_l, K]`` 0/1, ``dist [T_l, 2]`` and ``pos
    [T_l]`` bool, float32 tensors over the clip's padded length."""

    def __init__(self, cls: Tensor, dist: Tensor, pos: Tensor) -> None:
        self.cls, self.dist, self.pos = cls, dist, pos


def build_targets(
    moments: Sequence[Moment], length: int, num_classes: int, config: MQHeadConfig
) -> list[LevelTargets]:
    """Targets of one clip whose padded length is ``length`` windows (a multiple of
    ``config.pad_multiple``); ``moments`` in window units, clipped by the caller."""
    ranges = config.level_ranges()
    levels = []
    covered = [False] * len(moments)
    for lvl, (lo, hi) in enumerate(ranges):
        stride = 2**lvl
        n = length // stride
        centres = (torch.arange(n, dtype=torch.float64) + 0.5) * stride
        cls = torch.zeros(n, num_classes)
        dist = torch.zeros(n, 2)
        best_len = torch.full((n,), math.inf, dtype=torch.float64)
        for m_i, (label, s, e) in enumerate(moments):
            left, right = centres - s, e - centres
            far = torch.maximum(left, right)
            hit = (left >= 0) & (right >= 0) & (far >= lo) & (far < hi)
            if not bool(hit.any()):
                continue
            covered[m_i] = True
            cls[hit, label] = 1.0
            shorter = hit & (best_len > (e - s))
            best_len[shorter] = e - s
            dist[shorter, 0] = left[shorter].float()
            dist[shorter, 1] = right[shorter].float()
        levels.append(LevelTargets(cls, dist, best_len < math.inf))
    for m_i, (label, s, e) in enumerate(moments):
        if covered[m_i]:
            continue
        j = min(max(int((s + e) / 2), 0), length - 1)
        lv = levels[0]
        c = j + 0.5
        lv.cls[j, label] = 1.0
        if not bool(lv.pos[j]):
            lv.dist[j, 0], lv.dist[j, 1] = max(c - s, 0.0), max(e - c, 0.0)
            lv.pos[j] = True
    return levels


def focal_loss(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Sigmoid focal loss (Lin et al.), summed; ``logits`` and ``targets`` of one shape."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.sum()


def giou_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """1-D generalised IoU loss ``1 - GIoU``, summed, for segments given as (start, end)
    distances ``[P, 2]`` >= 0 from a shared centre."""
    inter = torch.minimum(pred[:, 0], target[:, 0]) + torch.minimum(pred[:, 1], target[:, 1])
    union = pred.sum(1) + target.sum(1) - inter
    hull = torch.maximum(pred[:, 0], target[:, 0]) + torch.maximum(pred[:, 1], target[:, 1])
    giou = inter / union.clamp_min(eps) - (hull - union) / hull.clamp_min(eps)
    return (1.0 - giou).sum()


def _tiou(seg: Tensor, segs: Tensor) -> Tensor:
    inter = (torch.minimum(seg[1], segs[:, 1]) - torch.maximum(seg[0], segs[:, 0])).clamp_min(0)
    union = (seg[1] - seg[0]) + (segs[:, 1] - segs[:, 0]) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def nms_1d(
    segments: Tensor, scores: Tensor, *, mode: str, threshold: float, sigma: float, top_k: int
) -> tuple[Tensor, Tensor]:
    """Greedy 1-D NMS of one class.

    Args:
        segments: ``[P, 2]`` float64 (start, end).
        scores: ``[P]`` float64.
        mode: ``"hard"`` drops segments whose tIoU with a kept one exceeds ``threshold``;
            ``"soft"`` multiplies their scores by ``exp(-tIoU**2 / sigma)`` (Gaussian soft-NMS).
        top_k: at most this many kept.

    Returns:
        ``(kept segments [M, 2], their scores [M])`` in the order kept (scores descending for
        hard NMS). Ties in score go to the earlier segment.
    """
    segs = segments.clone()
    sc = scores.clone()
    kept_segs: list[Tensor] = []
    kept_scores: list[Tensor] = []
    alive = torch.ones(len(sc), dtype=torch.bool)
    while len(kept_scores) < top_k and bool(alive.any()):
        masked = torch.where(alive, sc, torch.full_like(sc, -math.inf))
        i = int(torch.argmax(masked))  # first maximum: earlier segment on ties
        if not masked[i] > 0 and mode == "soft":
            break
        kept_segs.append(segs[i])
        kept_scores.append(sc[i])
        alive[i] = False
        iou = _tiou(segs[i], segs)
        if mode == "hard":
            alive &= ~(iou > threshold)
        else:
            sc = torch.where(alive, sc * torch.exp(-(iou**2) / sigma), sc)
    if not kept_scores:
        return segments.new_zeros((0, 2)), scores.new_zeros(0)
    return torch.stack(kept_segs), torch.stack(kept_scores)


def decode_clip(
    logits: Sequence[Tensor],
    dists: Sequence[Tensor],
    masks: Sequence[Tensor],
    num_windows: int,
    duration: float,
    config: MQHeadConfig,
) -> list[tuple[int, float, float, float]]:
    """Detections of one clip from the head's per-level outputs (batch row already taken).

    Args:
        logits: per level ``[T_l, K]``.
        dists: per level ``[T_l, 2]`` window units.
        masks: per level ``[T_l]``.
        num_windows: ``N``, the clip's number of feature rows.
        duration: the clip's length in seconds.

    Returns:
        ``(label index, start_s, end_s, score)`` sorted by score descending (stable), at most
        ``config.max_detections``; segments clamped to ``[0, duration]``.
    """
    all_scores, all_segs, all_labels = [], [], []
    for lvl, (lg, dd, mm) in enumerate(zip(logits, dists, masks, strict=True)):
        stride = 2**lvl
        prob = torch.sigmoid(lg.double()) * mm.double()[:, None]
        centres = (torch.arange(lg.shape[0], dtype=torch.float64) + 0.5) * stride
        segs = torch.stack([centres - dd[:, 0].double(), centres + dd[:, 1].double()], 1)
        pos, cls = torch.nonzero(prob > config.score_threshold, as_tuple=True)
        all_scores.append(prob[pos, cls])
        all_segs.append(segs[pos])
        all_labels.append(cls)
    scores = torch.cat(all_scores)
    segs = torch.cat(all_segs)
    labels = torch.cat(all_labels)
    if len(scores) > config.pre_nms_top_k:
        top = torch.sort(scores, descending=True, stable=True).indices[: config.pre_nms_top_k]
        scores, segs, labels = scores[top], segs[top], labels[top]
    scale = duration / num_windows
    segs = (segs * scale).clamp(0.0, duration)
    out: list[tuple[int, float, float, float]] = []
    for k in torch.unique(labels).tolist():
        sel = labels == k
        ks, kc = nms_1d(
            segs[sel],
            scores[sel],
            mode=config.nms_mode,
            threshold=config.nms_threshold,
            sigma=config.soft_nms_sigma,
            top_k=config.max_detections,
        )
        out.extend(
            (int(k), float(s[0]), float(s[1]), float(c)) for s, c in zip(ks, kc, strict=True)
        )
    out.sort(key=lambda d: -d[3])
    return out[: config.max_detections]
