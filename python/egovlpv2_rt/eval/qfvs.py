"""Query-focused video summarisation metric (QFVS, UT Egocentric; Sharghi et al. 2017).

:func:`qfvs_f1` is the semantic F1 of the original's ``QFVS/semantic_evaluation.py``
(``calculate_semantic_matching``): every predicted shot is paired with every ground-truth shot,
a pair weighs the semantic IoU of the two shots' concept vectors, and the summary scores the
weight of a maximum-weight bipartite matching of predicted to ground-truth shots.

- semantic IoU of 0/1 vectors ``a``, ``b``: ``|a AND b| / |a OR b|``, and 0 when both are all
  zero (``semantic_iou``: union 0 gives 0).
- matching: :func:`scipy.optimize.linear_sum_assignment` with ``maximize=True``. The original
  uses ``networkx.max_weight_matching``, a maximum-weight matching of any cardinality; all
  weights are >= 0, so a maximum-weight matching of full cardinality ``min(#pred, #gt)`` (what
  the assignment solver returns) has the same weight, and the metric only uses the weight.
- precision = matched weight / #pred, recall = matched weight / #gt, F1 = 2PR / (P + R), all
  in percent.

Edge cases the original leaves to a division by zero: an empty prediction gives precision 0,
an empty ground truth gives recall 0, and P + R = 0 gives F1 0.

Shot indices are 0-based rows of ``concepts`` (the files' 1-based indices are converted by
:mod:`egovlpv2_rt.tasks.qfvs_data`). A shot listed twice on one side is an error: the original
takes predictions from a top-k and ground truth from a multi-hot vector, neither of which can
repeat a shot, and a repeat would be matched twice.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["qfvs_f1", "semantic_iou_matrix"]


def _concept_matrix(concepts: Any) -> np.ndarray:
    """``concepts`` as a ``[num_shots, num_concepts]`` bool array, checked to be 0/1."""
    if hasattr(concepts, "detach"):  # a torch tensor; avoids importing torch here
        concepts = concepts.detach().cpu().numpy()
    arr = np.asarray(concepts)
    if arr.ndim != 2:
        raise InputError(
            f"qfvs_f1: concepts must be [num_shots, num_concepts], got shape {tuple(arr.shape)}"
        )
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"qfvs_f1: concepts must be numeric 0/1, got dtype {arr.dtype}")
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        shot, concept = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(
            f"qfvs_f1: concepts[{shot}, {concept}] = {arr[shot, concept].item()!r}; expected 0 or 1"
        )
    return arr == 1


def _shot_indices(shots: Sequence[int], name: str, num_shots: int) -> np.ndarray:
    if hasattr(shots, "detach"):
        shots = shots.detach().cpu().tolist()
    out: list[int] = []
    seen: set[int] = set()
    for pos, shot in enumerate(shots):
        if isinstance(shot, (bool, np.bool_)) or not isinstance(shot, numbers.Integral):
            raise InputError(f"qfvs_f1: {name}[{pos}] = {shot!r}; expected an integer shot index")
        idx = int(shot)
        if not 0 <= idx < num_shots:
            raise InputError(
                f"qfvs_f1: {name}[{pos}] = {idx} is outside the video "
                f"(shots 0..{num_shots - 1}, 0-based)"
            )
        if idx in seen:
            raise InputError(f"qfvs_f1: {name}[{pos}] = {idx} repeats an earlier shot")
        seen.add(idx)
        out.append(idx)
    return np.asarray(out, dtype=np.int64)


def semantic_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise semantic IoU of bool concept vectors: ``a [m, C]``, ``b [n, C]`` -> ``[m, n]``
    float64; a pair whose union is empty weighs 0."""
    ai = a.astype(np.int64)
    bi = b.astype(np.int64)
    inter = ai @ bi.T
    union = ai.sum(1)[:, None] + bi.sum(1)[None, :] - inter
    out = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def qfvs_f1(
    pred_shots: Sequence[int], gt_shots: Sequence[int], concepts: Any
) -> tuple[float, float, float]:
    """Semantic precision, recall and F1 (percent) of a predicted summary against the oracle.

    Args:
        pred_shots: 0-based indices of the predicted summary's shots (distinct).
        gt_shots: 0-based indices of the oracle summary's shots (distinct).
        concepts: ``[num_shots, num_concepts]`` 0/1 (any numeric or bool array-like, or a
            torch tensor): the concepts present in each shot.

    Returns:
        ``(precision, recall, f1)`` in percent, as floats.

    Raises:
        InputError: concepts not 2-D or not 0/1; a shot index that is not an integer, lies
            outside ``0..num_shots-1`` or repeats.
    """
    tags = _concept_matrix(concepts)
    pred = _shot_indices(pred_shots, "pred_shots", tags.shape[0])
    gt = _shot_indices(gt_shots, "gt_shots", tags.shape[0])
    if pred.size == 0 or gt.size == 0:
        return 0.0, 0.0, 0.0
    from scipy.optimize import linear_sum_assignment  # optional dependency (extra "qfvs")

    weights = semantic_iou_matrix(tags[pred], tags[gt])
    rows, cols = linear_sum_assignment(weights, maximize=True)
    matched = float(weights[rows, cols].sum())
    precision = matched / pred.size
    recall = matched / gt.size
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return 100.0 * precision, 100.0 * recall, 100.0 * f1
