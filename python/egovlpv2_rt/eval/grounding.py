"""EgoNLQ temporal-grounding metric: Recall@k at temporal-IoU thresholds and mean IoU.

The protocol of the Ego4D NLQ evaluation script (``evaluate_nlq_performance`` in the
original's ``EgoNLQ/utils/evaluate_ego4d_nlq.py``):

- IoU of a predicted span ``[s, e]`` with the ground truth ``[gs, ge]`` is
  ``max(0, min(e, ge) - max(s, gs)) / (max(e, ge) - min(s, gs))``: the union is the hull of
  both spans, which equals the true union whenever they overlap (and the IoU is 0 otherwise).
- A query counts for R@k at threshold ``t`` when any of its first ``k`` predictions has IoU
  **strictly greater** than ``t`` (the original's ``overlap > threshold``); a query with fewer
  than ``k`` predictions uses all it has.
- mIoU is the mean over queries of the IoU of the top-1 prediction (the original's
  ``np.sort(overlap[0])[-3:]`` is taken over a one-element array: the top-1 IoU).

Deviations, for inputs the original cannot handle: two zero-length spans at the same point
have IoU 0 (the original divides 0 by 0 and gets NaN); a query with no prediction (``K = 0``)
hits nothing and has IoU 0; no queries (``Q = 0``) gives NaN for every key, as the package's
other metrics do for an empty set.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

__all__ = ["nlq_recall", "span_iou"]


def _spans(x: object, name: str, ndim: int) -> np.ndarray:
    try:
        a = (
            x.detach().cpu().double().numpy()
            if hasattr(x, "detach")
            else np.asarray(x, dtype=np.float64)
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"nlq_recall: {name} is not a numeric array ({exc})") from None
    if a.ndim != ndim or a.shape[-1] != 2:
        want = "[Q, K, 2]" if ndim == 3 else "[Q, 2]"
        raise InputError(f"nlq_recall: {name} must have shape {want}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"nlq_recall: {name} contains NaN or infinite values")
    bad = np.argwhere(a[..., 1] < a[..., 0])
    if bad.size:
        where = tuple(int(i) for i in bad[0])
        raise InputError(
            f"nlq_recall: {name} has a span with end < start at index {where}: "
            f"{a[where].tolist()} (spans are [start, end] seconds with start <= end)"
        )
    return a


def span_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of spans ``pred`` ``[Q, K, 2]`` with ``gt`` ``[Q, 2]`` (float64), ``[Q, K]``.

    Hull union as the Ego4D script; 0 where the hull has zero length (see the module doc)."""
    g0, g1 = gt[:, None, 0], gt[:, None, 1]
    inter = np.maximum(0.0, np.minimum(pred[..., 1], g1) - np.maximum(pred[..., 0], g0))
    union = np.maximum(pred[..., 1], g1) - np.minimum(pred[..., 0], g0)
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _threshold_name(t: float) -> str:
    return f"{t:g}"


def nlq_recall(
    pred_spans: object,
    gt_spans: object,
    ks: tuple[int, ...] = (1, 3, 5),
    ious: tuple[float, ...] = (0.3, 0.5),
) -> dict[str, float]:
    """EgoNLQ Recall@k at IoU thresholds and mIoU, in percent.

    Args:
        pred_spans: ``[Q, K, 2]`` predicted (start, end) seconds per query, ranked best first
            (numpy array, torch tensor or nested lists); ``K`` may be 0 or below ``max(ks)``.
        gt_spans: ``[Q, 2]`` ground-truth (start, end) seconds.
        ks: the k of Recall@k, positive integers.
        ious: IoU thresholds in [0, 1]; a prediction counts when its IoU is > the threshold.

    Returns:
        ``{"R@{k}_IoU{t}": percent, ..., "mIoU": percent}`` (keys ordered by k, then t, then
        mIoU; ``t`` written with ``%g``, e.g. ``"R@1_IoU0.3"``). NaN for every key when Q = 0.
    """
    ks = tuple(ks)
    ious = tuple(ious)
    if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) for k in ks):
        raise InputError(f"nlq_recall: ks must be a non-empty tuple of integers, got {ks!r}")
    if any(k < 1 for k in ks):
        raise InputError(f"nlq_recall: every k in ks must be >= 1, got {ks!r}")
    if not ious or any(not (0.0 <= float(t) <= 1.0) for t in ious):
        raise InputError(f"nlq_recall: ious must be non-empty thresholds in [0, 1], got {ious!r}")
    pred = _spans(pred_spans, "pred_spans", 3)
    gt = _spans(gt_spans, "gt_spans", 2)
    if pred.shape[0] != gt.shape[0]:
        raise InputError(
            f"nlq_recall: pred_spans has {pred.shape[0]} queries but gt_spans has {gt.shape[0]}"
        )
    q, kk = pred.shape[0], pred.shape[1]
    out: dict[str, float] = {}
    if q == 0:
        for k in ks:
            for t in ious:
                out[f"R@{k}_IoU{_threshold_name(t)}"] = float("nan")
        out["mIoU"] = float("nan")
        return out
    iou = span_iou(pred, gt)  # [Q, K]
    for k in ks:
        top = iou[:, : min(int(k), kk)]
        for t in ious:
            hit = (top > float(t)).any(axis=1) if top.shape[1] else np.zeros(q, dtype=bool)
            out[f"R@{k}_IoU{_threshold_name(t)}"] = float(100.0 * hit.mean())
    top1 = iou[:, 0] if kk else np.zeros(q)
    out["mIoU"] = float(100.0 * top1.mean())
    return out
