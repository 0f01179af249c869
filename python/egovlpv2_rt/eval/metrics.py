"""Evaluation metrics: EgoMCQ accuracy, text-video retrieval ranks, EK-100 MIR mAP and nDCG,
Charades-Ego mAP.

All functions take numpy arrays or torch tensors and compute in float64 numpy.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .detection import detection_map, moment_recall
from .grounding import nlq_recall
from .qfvs import qfvs_f1
from .taskqa import majority_answer, majority_baseline, taskqa_accuracy

__all__ = [
    "charades_class_ap",
    "charades_map",
    "detection_map",
    "egomcq_accuracy",
    "ek100_mir_metrics",
    "majority_answer",
    "majority_baseline",
    "mean_average_precision",
    "moment_recall",
    "ndcg",
    "nlq_recall",
    "qfvs_f1",
    "retrieval_metrics",
    "t2v_ranks",
    "taskqa_accuracy",
    "v2t_ranks",
]


def _np(x: object, name: str, ndim: int | None = None) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def egomcq_accuracy(scores: object, answers: object, types: object) -> dict[str, float]:
    """Accuracy in percent per question type, as the original's ``egomcq_accuracy_metrics``.

    Args:
        scores: ``[Q, C]`` score of each candidate (higher = better match).
        answers: ``[Q]`` index of the correct candidate.
        types: ``[Q]`` 1 = inter-video, 2 = intra-video.

    Returns:
        ``{"inter": %, "intra": %, "inter_count": n, "intra_count": n}``; a type with no
        question is reported as NaN. Ties go to the lowest index (``argmax``).
    """
    s = _np(scores, "scores", 2)
    a = np.asarray(answers.cpu() if hasattr(answers, "cpu") else answers).astype(np.int64)
    t = np.asarray(types.cpu() if hasattr(types, "cpu") else types).astype(np.int64)
    if a.shape != (s.shape[0],) or t.shape != (s.shape[0],):
        raise ValueError(f"answers and types must be [{s.shape[0]}], got {a.shape} and {t.shape}")
    if a.size and (a.min() < 0 or a.max() >= s.shape[1]):
        raise ValueError(f"answers must lie in [0, {s.shape[1]}), got {a.min()}..{a.max()}")
    bad = set(np.unique(t).tolist()) - {1, 2}
    if bad:
        raise ValueError(f"types must be 1 (inter) or 2 (intra), got {sorted(bad)}")
    pred = s.argmax(axis=1)
    out: dict[str, float] = {}
    for name, code in (("inter", 1), ("intra", 2)):
        sel = t == code
        n = int(sel.sum())
        out[name] = float(100.0 * (pred[sel] == a[sel]).mean()) if n else float("nan")
        out[f"{name}_count"] = n
    return out


def t2v_ranks(sims: object) -> np.ndarray:
    """0-based rank of the matching video for each text query (square ``[N, N]`` similarity,
    rows texts, match on the diagonal). Ties are broken optimistically, as the original's
    ``t2v_metrics``."""
    s = _np(sims, "sims", 2)
    if s.shape[0] != s.shape[1]:
        raise ValueError(f"sims must be square [N, N] (one caption per video), got {s.shape}")
    gt = np.diag(s)[:, None]
    return (s > gt).sum(axis=1).astype(np.float64)


def v2t_ranks(sims: object) -> np.ndarray:
    """0-based rank of the matching caption for each video query (``sims`` rows are texts).
    Ties are averaged, as the original's ``v2t_metrics``."""
    s = _np(sims, "sims", 2).T
    if s.shape[0] != s.shape[1]:
        raise ValueError(f"sims must be square [N, N] (one caption per video), got {s.shape}")
    gt = np.diag(s)[:, None]
    better = (s > gt).sum(axis=1)
    ties = (s == gt).sum(axis=1)  # includes the match itself
    return better + (ties - 1) / 2.0


def _cols2metrics(ranks: np.ndarray) -> dict[str, float]:
    n = ranks.size
    return {
        "R1": float(100.0 * (ranks == 0).sum() / n),
        "R5": float(100.0 * (ranks < 5).sum() / n),
        "R10": float(100.0 * (ranks < 10).sum() / n),
        "MedR": float(np.median(ranks) + 1),
        "MeanR": float(ranks.mean() + 1),
    }


def retrieval_metrics(sims: object) -> dict[str, dict[str, float]]:
    """Text-to-video and video-to-text R@1/5/10 (percent), median and mean rank (1-based).

    Args:
        sims: ``[N, N]`` similarity, rows texts, caption i describes video i.
    """
    return {"t2v": _cols2metrics(t2v_ranks(sims)), "v2t": _cols2metrics(v2t_ranks(sims))}


def mean_average_precision(sim: object, relevancy: object) -> float:
    """mAP of the rows of ``sim`` against a relevancy matrix, as EK-100 MIR's ``calculate_mAP``.

    An item counts as relevant when its relevancy equals 1. As in the reference implementation,
    the "relevant so far" count at rank k is the running sum of relevancies (partial relevancies
    included) and only positions of relevance exactly 1 contribute.

    Args:
        sim: ``[n1, n2]`` predicted similarity.
        relevancy: ``[n1, n2]`` relevancy in [0, 1].
    """
    s = _np(sim, "sim", 2)
    r = _np(relevancy, "relevancy", 2)
    if s.shape != r.shape:
        raise ValueError(f"sim {s.shape} and relevancy {r.shape} must have the same shape")
    order = np.argsort(-s, axis=1, kind="stable")
    ranked = np.take_along_axis(r, order, axis=1)
    cum = np.cumsum(ranked, axis=1)
    cum[ranked != 1] = 0
    n_rel = (ranked == 1).sum(axis=1)
    if np.any(n_rel == 0):
        raise ValueError(
            f"{int((n_rel == 0).sum())} row(s) of relevancy have no item of "
            f"relevance 1; average precision is undefined for them"
        )
    ap = (cum / (np.arange(ranked.shape[1]) + 1)).sum(axis=1) / n_rel
    return float(ap.mean())


def ndcg(sim: object, relevancy: object) -> float:
    """Mean nDCG of the rows of ``sim``, as EK-100 MIR's ``calculate_nDCG``: the DCG of a query
    only counts its first k retrievals, k = number of items with non-zero relevancy."""
    s = _np(sim, "sim", 2)
    r = _np(relevancy, "relevancy", 2)
    if s.shape != r.shape:
        raise ValueError(f"sim {s.shape} and relevancy {r.shape} must have the same shape")
    k_counts = (np.sort(r, axis=1)[:, ::-1] > 0).astype(np.float64)
    disc = np.log2(np.arange(s.shape[1]) + 2.0)

    def dcg(scores: np.ndarray) -> np.ndarray:
        order = np.argsort(scores, axis=1, kind="stable")[:, ::-1]
        return (np.take_along_axis(r, order, axis=1) * k_counts / disc).sum(axis=1)

    idcg = dcg(r)
    if np.any(idcg == 0):
        raise ValueError(
            f"{int((idcg == 0).sum())} row(s) of relevancy are all zero; nDCG is undefined for them"
        )
    return float((dcg(s) / idcg).mean())


def ek100_mir_metrics(sim_video_text: object, relevancy: object) -> dict[str, float]:
    """EPIC-Kitchens-100 multi-instance retrieval: mAP and nDCG, V2T, T2V and their average,
    in percent.

    Args:
        sim_video_text: ``[num_videos, num_captions]`` similarity (videos are rows).
        relevancy: ``[num_videos, num_captions]`` relevancy (the EK-100 relevancy matrix layout).
    """
    s = _np(sim_video_text, "sim_video_text", 2)
    r = _np(relevancy, "relevancy", 2)
    out = {
        "mAP_V2T": 100 * mean_average_precision(s, r),
        "mAP_T2V": 100 * mean_average_precision(s.T, r.T),
        "nDCG_V2T": 100 * ndcg(s, r),
        "nDCG_T2V": 100 * ndcg(s.T, r.T),
    }
    out["mAP_AVG"] = (out["mAP_V2T"] + out["mAP_T2V"]) / 2
    out["nDCG_AVG"] = (out["nDCG_V2T"] + out["nDCG_T2V"]) / 2
    return out


def charades_class_ap(scores: object, targets: object) -> np.ndarray:
    """Per-class average precision of Charades-Ego, as the original's ``charades_map`` / ``map``
    (the "approximate version" of the official Charades matlab script), as a fraction.

    Videos without any label are left out (the original sets their scores to -inf, which with
    finite scores ranks them below every positive: the same APs). For each class the remaining
    videos are ranked by descending score and ``AP = sum of precision@k at the ranks k of the
    positives / number of positives``. Ties are ranked by video index (a stable sort); the
    original's default ``np.argsort`` leaves the order of ties unspecified.

    Args:
        scores: ``[videos, classes]`` finite scores (higher = more likely).
        targets: ``[videos, classes]`` multi-hot labels, every value 0 or 1 (bool or number).

    Returns:
        ``[classes]`` float64 AP in [0, 1]; NaN for a class without any positive video.

    Raises:
        InputError: shapes that are not equal 2-D, non-finite scores, targets other than 0/1.
    """
    s = _checked(scores, "scores")
    t = _checked(targets, "targets")
    if s.shape != t.shape:
        raise InputError(
            f"charades_map: scores {s.shape} and targets {t.shape} must have the same shape "
            "[videos, classes]"
        )
    bad = ~((t == 0) | (t == 1))
    if bad.any():
        v, c = np.argwhere(bad)[0]
        raise InputError(
            f"charades_map: targets must be multi-hot (0 or 1), got {float(t[v, c])!r} at "
            f"[video {v}, class {c}] ({int(bad.sum())} such value(s))"
        )
    labelled = t.sum(axis=1) > 0
    s, t = s[labelled], t[labelled]
    order = np.argsort(-s, axis=0, kind="stable")
    ranked = np.take_along_axis(t, order, axis=0)  # [videos, classes], 1 at positive ranks
    precision = np.cumsum(ranked, axis=0) / np.arange(1, ranked.shape[0] + 1)[:, None]
    n_pos = ranked.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * ranked).sum(axis=0) / n_pos
    ap[n_pos == 0] = np.nan
    return ap


def charades_map(scores: object, targets: object) -> float:
    """Charades-Ego mAP in percent: the mean of :func:`charades_class_ap` over the classes
    with at least one positive video (``nanmean``), times 100.

    Args:
        scores: ``[videos, classes]`` finite scores, e.g. cosine similarity of each test video
            to each class-name embedding.
        targets: ``[videos, classes]`` multi-hot labels (0/1).

    Raises:
        InputError: bad shapes or values (see :func:`charades_class_ap`), or no class with a
            positive video (the mean is undefined).
    """
    ap = charades_class_ap(scores, targets)
    if not np.any(np.isfinite(ap)):
        raise InputError(
            "charades_map: no class has a positive video (targets are all 0); mAP is undefined"
        )
    return float(100.0 * np.nanmean(ap))


def _checked(x: object, name: str) -> np.ndarray:
    """``x`` as a float64 [videos, classes] array, or ``InputError`` naming it."""
    try:
        a = (
            x.detach().cpu().double().numpy()
            if hasattr(x, "detach")
            else np.asarray(x, dtype=np.float64)
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"charades_map: {name} is not a numeric array ({exc})") from None
    if a.ndim != 2:
        raise InputError(f"charades_map: {name} must be 2-D [videos, classes], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"charades_map: {name} contains NaN or infinite values")
    return a
