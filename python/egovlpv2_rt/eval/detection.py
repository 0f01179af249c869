"""Temporal action detection metrics of Ego4D moment queries (EgoMQ).

:func:`detection_map` is the ActivityNet detection protocol (``ANETdetection`` /
``compute_average_precision_detection`` of the original's ``EgoMQ/Evaluation``);
:func:`moment_recall` is the Ego4D MQ retrieval metric (``Moment_Retrieval.evaluate``).

Records are plain dicts, as a detection JSON holds them:

- detection: ``{"video": str, "label": str, "start": s, "end": s, "score": float}``
- ground truth: ``{"video": str, "label": str, "start": s, "end": s}``

Times are seconds (any unit works, as long as both sides use it). All arithmetic is float64.

Tie rules (the original leaves them to ``numpy.argsort``, whose order for equal keys depends on
the array length): detections with equal scores keep their order in ``detections`` (a stable
sort, earlier first), and a detection whose tIoU is equal for several unmatched ground-truth
segments takes the earliest of them in ``ground_truth`` order. tIoU of two zero-length segments
(union 0) is 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["detection_map", "interpolated_ap", "moment_recall", "segment_tiou"]

_GT_FIELDS = ("video", "label", "start", "end")
_DET_FIELDS = ("video", "label", "start", "end", "score")


@dataclass(frozen=True)
class _Rec:
    video: str | int
    label: str | int
    start: float
    end: float
    score: float


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{where} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{where} must be finite, got {v}")
    return v


def _records(items: Sequence[Mapping[str, object]], what: str, scored: bool) -> list[_Rec]:
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise InputError(f"{what} must be a list of dicts, got {type(items).__name__}")
    fields = _DET_FIELDS if scored else _GT_FIELDS
    out: list[_Rec] = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InputError(f"{what}[{i}] must be a dict, got {type(item).__name__}")
        missing = [f for f in fields if f not in item]
        if missing:
            raise InputError(f"{what}[{i}] lacks field {missing[0]!r} (needs {list(fields)})")
        ids = []
        for f in ("video", "label"):
            v = item[f]
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise InputError(f"{what}[{i}].{f} must be a string or an int, got {v!r}")
            ids.append(v)
        start = _number(item["start"], f"{what}[{i}].start")
        end = _number(item["end"], f"{what}[{i}].end")
        if end < start:
            raise InputError(f"{what}[{i}].end must be >= start ({start}), got {end}")
        score = _number(item["score"], f"{what}[{i}].score") if scored else 0.0
        out.append(_Rec(ids[0], ids[1], start, end, score))
    return out


def _thresholds(values: Sequence[float], what: str) -> tuple[float, ...]:
    ts = tuple(_number(t, f"{what}[{i}]") for i, t in enumerate(values))
    if not ts:
        raise InputError(f"{what} must name at least one threshold")
    for i, t in enumerate(ts):
        if not 0.0 < t <= 1.0:
            raise InputError(f"{what}[{i}] must lie in (0, 1], got {t}")
    # The result keys print thresholds with :g, so two thresholds must differ there too.
    if len({f"{t:g}" for t in ts}) != len(ts):
        raise InputError(f"{what} must not repeat a threshold, got {list(ts)}")
    return ts


def segment_tiou(segment: tuple[float, float], segments: np.ndarray) -> np.ndarray:
    """tIoU of one ``(start, end)`` with each row of ``segments`` ``[N, 2]``; float64 ``[N]``.

    Union = sum of the lengths minus the intersection (ActivityNet ``segment_iou``); a union of
    0 (two zero-length segments) gives 0 instead of NaN.
    """
    seg = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    s0, s1 = float(segment[0]), float(segment[1])
    inter = np.clip(np.minimum(s1, seg[:, 1]) - np.maximum(s0, seg[:, 0]), 0.0, None)
    union = (seg[:, 1] - seg[:, 0]) + (s1 - s0) - inter
    out = np.zeros(len(seg), dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the monotone precision envelope (VOC 2011 / ActivityNet
    ``interpolated_prec_rec``): precision at each recall is the best precision at that recall
    or any higher one; the area is summed over the points where recall changes. ``precision``
    and ``recall`` are the cumulative curves ``[D]`` over the ranked detections."""
    prec = np.concatenate([[0.0], np.asarray(precision, np.float64), [0.0]])
    rec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.flatnonzero(rec[1:] != rec[:-1]) + 1
    return float(np.sum((rec[steps] - rec[steps - 1]) * envelope[steps]))


def _ranked(dets: list[_Rec]) -> list[_Rec]:
    # Stable: equal scores keep their input order.
    return sorted(dets, key=lambda d: -d.score)


def _class_ap(dets: list[_Rec], gts: list[_Rec], tious: tuple[float, ...]) -> np.ndarray:
    """AP at each threshold for one class: ``dets`` and ``gts`` are that class's records."""
    ap = np.zeros(len(tious), dtype=np.float64)
    if not dets:
        return ap
    by_video: dict[str | int, list[int]] = {}
    for j, g in enumerate(gts):
        by_video.setdefault(g.video, []).append(j)
    # video -> (its ground-truth segments [G, 2], their indices into gts [G])
    videos = {
        v: (np.asarray([(gts[j].start, gts[j].end) for j in js], np.float64), np.asarray(js))
        for v, js in by_video.items()
    }
    ranked = _ranked(dets)
    thr = np.asarray(tious, dtype=np.float64)
    matched = np.zeros((len(tious), len(gts)), dtype=bool)
    tp = np.zeros((len(tious), len(ranked)), dtype=np.float64)
    for k, d in enumerate(ranked):
        if d.video not in videos:
            continue  # no ground truth of this class in the video: a false positive everywhere
        segs, idx = videos[d.video]
        iou = segment_tiou((d.start, d.end), segs)
        for t in range(len(thr)):
            free = (iou >= thr[t]) & ~matched[t, idx]
            if free.any():
                # argmax returns the first maximum: ties go to the earliest ground truth.
                best = int(np.argmax(np.where(free, iou, -1.0)))
                matched[t, idx[best]] = True
                tp[t, k] = 1.0
    tp_cum = np.cumsum(tp, axis=1)
    fp_cum = np.cumsum(1.0 - tp, axis=1)
    recall = tp_cum / float(len(gts))
    precision = tp_cum / (tp_cum + fp_cum)
    for t in range(len(thr)):
        ap[t] = interpolated_ap(precision[t], recall[t])
    return ap


def detection_map(
    detections: Sequence[Mapping[str, object]],
    ground_truth: Sequence[Mapping[str, object]],
    tious: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
) -> dict[str, float]:
    """ActivityNet detection mAP in percent, at each tIoU threshold and their average.

    Per class present in ``ground_truth``: the class's detections ranked by score (descending,
    ties in input order); each is a true positive at threshold ``t`` when some not yet matched
    ground-truth segment of the same video and class has tIoU >= ``t`` (it takes the highest
    such tIoU), else a false positive (a detection in a video with no ground truth of its class
    included); AP is the area under the monotone precision envelope (:func:`interpolated_ap`).
    mAP@t is the mean AP over the ground-truth classes; a class with no detection has AP 0, and
    detections of classes absent from the ground truth are ignored.

    Args:
        detections: dicts ``video, label, start, end, score``.
        ground_truth: dicts ``video, label, start, end``; at least one.
        tious: thresholds in (0, 1].

    Returns:
        ``{"mAP@0.1": %, ..., "average": %}`` (keys ``f"mAP@{t:g}"`` in the order of ``tious``).

    Raises:
        InputError: a record lacks a field, has ``end < start`` or a non-finite number, the
            ground truth is empty, or a threshold is outside (0, 1] or repeated.
    """
    thr = _thresholds(tious, "tious")
    gts = _records(ground_truth, "ground_truth", scored=False)
    dets = _records(detections, "detections", scored=True)
    if not gts:
        raise InputError("ground_truth is empty: mAP is undefined without ground-truth segments")
    gt_by_class: dict[str | int, list[_Rec]] = {}
    for g in gts:
        gt_by_class.setdefault(g.label, []).append(g)
    det_by_class: dict[str | int, list[_Rec]] = {c: [] for c in gt_by_class}
    for d in dets:
        if d.label in det_by_class:
            det_by_class[d.label].append(d)
    ap = np.stack([_class_ap(det_by_class[c], gt_by_class[c], thr) for c in gt_by_class], axis=1)
    per_thr = ap.mean(axis=1) * 100.0
    out = {f"mAP@{t:g}": float(m) for t, m in zip(thr, per_thr, strict=True)}
    out["average"] = float(per_thr.mean())
    return out


def moment_recall(
    detections: Sequence[Mapping[str, object]],
    ground_truth: Sequence[Mapping[str, object]],
    ks: Sequence[int] = (1, 5),
    tious: Sequence[float] = (0.3, 0.5, 0.7),
) -> dict[str, float]:
    """Ego4D MQ retrieval Recall@kx at tIoU in percent, as the original's
    ``Moment_Retrieval.evaluate``.

    For each (video, label) of the ground truth with ``n`` segments: the detections of that
    video and label ranked by score (descending, ties in input order), the top ``k * n`` of them
    kept; a ground-truth segment is retrieved when one of those has tIoU strictly greater than
    the threshold (``overlap > t`` in the original; no one-to-one matching: one detection can
    retrieve several segments). The recall is the fraction of all ground-truth segments
    retrieved. Every detection given is ranked: the original's ``generate_retrieval`` first
    keeps the 200 best of each clip, so pass detections capped the same way to match it.

    Returns:
        ``{"R@1x_IoU0.3": %, ...}`` (keys ``f"R@{k}x_IoU{t:g}"``, ``ks`` outer, ``tious`` inner).

    Raises:
        InputError: as :func:`detection_map`; ``ks`` must be positive integers, not repeated.
    """
    thr = _thresholds(tious, "tious")
    kk = tuple(ks)
    for i, k in enumerate(kk):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"ks[{i}] must be a positive integer, got {k!r}")
    if not kk or len(set(kk)) != len(kk):
        raise InputError(f"ks must name at least one rank, none repeated, got {list(kk)}")
    gts = _records(ground_truth, "ground_truth", scored=False)
    dets = _records(detections, "detections", scored=True)
    if not gts:
        raise InputError("ground_truth is empty: recall is undefined without ground-truth segments")
    groups: dict[tuple[str | int, str | int], list[_Rec]] = {}
    for g in gts:
        groups.setdefault((g.video, g.label), []).append(g)
    cands: dict[tuple[str | int, str | int], list[_Rec]] = {key: [] for key in groups}
    for d in dets:
        if (d.video, d.label) in cands:
            cands[(d.video, d.label)].append(d)
    hits = np.zeros((len(kk), len(thr)), dtype=np.float64)
    thr_arr = np.asarray(thr, dtype=np.float64)
    for key, group in groups.items():
        ranked = _ranked(cands[key])
        gt_segs = np.asarray([(g.start, g.end) for g in group], dtype=np.float64)
        # overlap[r, j]: tIoU of the r-th ranked detection with ground-truth segment j.
        overlap = np.zeros((len(ranked), len(group)), dtype=np.float64)
        for r, d in enumerate(ranked):
            overlap[r] = segment_tiou((d.start, d.end), gt_segs)
        for a, k in enumerate(kk):
            top = overlap[: k * len(group)]
            for b, t in enumerate(thr_arr):
                hits[a, b] += float((top > t).any(axis=0).sum()) if len(top) else 0.0
    recall = hits / float(len(gts)) * 100.0
    return {
        f"R@{k}x_IoU{t:g}": float(recall[a, b]) for a, k in enumerate(kk) for b, t in enumerate(thr)
    }
