"""EgoNLQ metric ``nlq_recall``: hand-worked examples, ties at a threshold, fewer predictions than
k, empty input, bad input, and a brute-force loop transcription of the Ego4D script on random
data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.eval.grounding import nlq_recall, span_iou

KEYS = [
    "R@1_IoU0.3",
    "R@1_IoU0.5",
    "R@3_IoU0.3",
    "R@3_IoU0.5",
    "R@5_IoU0.3",
    "R@5_IoU0.5",
    "mIoU",
]


def test_hand_worked_two_queries():
    # Query 0: GT [10, 20]. Predictions: [0, 5] (IoU 0), [12, 22] (inter 8, hull 12: 2/3),
    # [10, 14] (inter 4, hull 10: 0.4).
    # Query 1: GT [0, 4]. Predictions: [0, 3] (IoU 0.75), [50, 60] (0), [1, 2] (0.25).
    pred = np.array(
        [
            [[0.0, 5.0], [12.0, 22.0], [10.0, 14.0]],
            [[0.0, 3.0], [50.0, 60.0], [1.0, 2.0]],
        ]
    )
    gt = np.array([[10.0, 20.0], [0.0, 4.0]])
    np.testing.assert_allclose(span_iou(pred, gt), [[0.0, 2 / 3, 0.4], [0.75, 0.0, 0.25]])
    r = nlq_recall(pred, gt)
    assert list(r) == KEYS
    assert r["R@1_IoU0.3"] == 50.0 and r["R@1_IoU0.5"] == 50.0
    assert r["R@3_IoU0.3"] == 100.0 and r["R@3_IoU0.5"] == 100.0
    # K = 3 < 5: R@5 uses the three predictions there are.
    assert r["R@5_IoU0.3"] == 100.0 and r["R@5_IoU0.5"] == 100.0
    assert r["mIoU"] == pytest.approx(100 * (0.0 + 0.75) / 2)


def test_threshold_ties_are_not_hits():
    # IoU exactly 0.3 and exactly 0.5: the Ego4D script counts IoU > threshold, strictly.
    gt = np.array([[0.0, 10.0], [0.0, 10.0]])
    pred = np.array([[[0.0, 3.0]], [[0.0, 5.0]]])
    assert span_iou(pred, gt)[:, 0].tolist() == [0.3, 0.5]
    r = nlq_recall(pred, gt, ks=(1,), ious=(0.3, 0.5))
    assert r == {"R@1_IoU0.3": 50.0, "R@1_IoU0.5": 0.0, "mIoU": 40.0}
    # A hair above the threshold is a hit.
    r = nlq_recall(np.array([[[0.0, 3.0 + 1e-9]]]), gt[:1], ks=(1,), ious=(0.3,))
    assert r["R@1_IoU0.3"] == 100.0


def test_rank_order_matters_and_equal_ious():
    gt = np.array([[0.0, 10.0]])
    good, bad = [0.0, 8.0], [20.0, 30.0]
    assert nlq_recall(np.array([[good, bad]]), gt, ks=(1,))["R@1_IoU0.5"] == 100.0
    assert nlq_recall(np.array([[bad, good]]), gt, ks=(1,))["R@1_IoU0.5"] == 0.0
    assert nlq_recall(np.array([[bad, good]]), gt, ks=(2,))["R@2_IoU0.5"] == 100.0
    # Two predictions with the same IoU (0.6) on either side of the GT: mIoU is the top-1's.
    r = nlq_recall(np.array([[[2.0, 8.0], [0.0, 6.0]]]), gt, ks=(1, 2))
    assert r["mIoU"] == pytest.approx(60.0) and r["R@1_IoU0.5"] == 100.0


def test_zero_length_spans_and_no_predictions():
    gt = np.array([[5.0, 5.0], [0.0, 10.0]])
    # Identical zero-length spans: IoU 0 (the original's 0/0 is NaN, never a hit).
    pred = np.array([[[5.0, 5.0]], [[5.0, 5.0]]])
    assert span_iou(pred, gt).tolist() == [[0.0], [0.0]]
    r = nlq_recall(pred, gt, ks=(1,), ious=(0.0,))
    assert r == {"R@1_IoU0": 0.0, "mIoU": 0.0}
    # K = 0: no query hits anything.
    r = nlq_recall(np.zeros((2, 0, 2)), gt, ks=(1, 5), ious=(0.3,))
    assert r == {"R@1_IoU0.3": 0.0, "R@5_IoU0.3": 0.0, "mIoU": 0.0}


def test_empty_query_set_is_nan():
    r = nlq_recall(np.zeros((0, 5, 2)), np.zeros((0, 2)))
    assert list(r) == KEYS
    assert all(math.isnan(v) for v in r.values())


def test_tensor_and_list_inputs_and_threshold_names():
    pred = torch.tensor([[[1.0, 4.0]]], dtype=torch.float32)
    r = nlq_recall(pred, [[1.0, 5.0]], ks=(1,), ious=(0.01, 0.7))
    assert r == {"R@1_IoU0.01": 100.0, "R@1_IoU0.7": 100.0, "mIoU": 75.0}


@pytest.mark.parametrize(
    ("pred", "gt", "kw", "match"),
    [
        (np.zeros((2, 2)), np.zeros((2, 2)), {}, r"pred_spans must have shape \[Q, K, 2\]"),
        (np.zeros((2, 1, 3)), np.zeros((2, 2)), {}, r"pred_spans must have shape"),
        (np.zeros((2, 1, 2)), np.zeros((2, 3)), {}, r"gt_spans must have shape \[Q, 2\]"),
        (np.zeros((2, 1, 2)), np.zeros((3, 2)), {}, r"2 queries but gt_spans has 3"),
        (np.full((1, 1, 2), np.nan), np.zeros((1, 2)), {}, "pred_spans contains NaN"),
        (np.zeros((1, 1, 2)), [[0.0, np.inf]], {}, "gt_spans contains NaN or infinite"),
        ([[[3.0, 1.0]]], [[0.0, 1.0]], {}, r"end < start at index \(0, 0\): \[3.0, 1.0\]"),
        ([[[0.0, 1.0]]], [[2.0, 1.0]], {}, r"gt_spans has a span with end < start"),
        (np.zeros((1, 1, 2)), np.zeros((1, 2)), {"ks": (0,)}, "every k in ks must be >= 1"),
        (np.zeros((1, 1, 2)), np.zeros((1, 2)), {"ks": (1.5,)}, "ks must be a non-empty"),
        (np.zeros((1, 1, 2)), np.zeros((1, 2)), {"ious": (1.5,)}, r"ious must be .* in \[0, 1\]"),
        ([["a", "b"]], np.zeros((1, 2)), {}, "pred_spans is not a numeric array"),
    ],
)
def test_bad_input(pred, gt, kw, match):
    with pytest.raises(InputError, match=match):
        nlq_recall(pred, gt, **kw)


def _brute_force(pred, gt, ks, ious):
    """The Ego4D script's loop, one query and one prediction at a time, in Python floats."""
    hits = {(k, t): 0 for k in ks for t in ious}
    top1 = []
    for q in range(len(gt)):
        gs, ge = float(gt[q][0]), float(gt[q][1])
        overlaps = []
        for s, e in pred[q]:
            inter = max(0.0, min(float(e), ge) - max(float(s), gs))
            union = max(0.0, max(float(e), ge) - min(float(s), gs))
            overlaps.append(inter / union if union > 0 else 0.0)
        top1.append(overlaps[0] if overlaps else 0.0)
        for k in ks:
            for t in ious:
                if any(o > t for o in overlaps[:k]):
                    hits[(k, t)] += 1
    out = {f"R@{k}_IoU{t:g}": 100.0 * hits[(k, t)] / len(gt) for k in ks for t in ious}
    out["mIoU"] = 100.0 * sum(top1) / len(top1)
    return out


@pytest.mark.parametrize("num_preds", [1, 3, 5, 7])
def test_against_brute_force_on_random_spans(num_preds):
    rng = np.random.default_rng(num_preds)
    q = 200
    # Spans on a coarse grid so that exact ties with the thresholds and between predictions occur.
    gt = np.sort(rng.integers(0, 20, size=(q, 2)), axis=1) / 2.0
    pred = np.sort(rng.integers(0, 20, size=(q, num_preds, 2)), axis=2) / 2.0
    ks, ious = (1, 3, 5), (0.01, 0.3, 0.5, 0.7)
    got = nlq_recall(pred, gt, ks=ks, ious=ious)
    want = _brute_force(pred.tolist(), gt.tolist(), ks, ious)
    assert list(got) == list(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    # The data exercise the metric: some but not all queries hit at R@1 IoU 0.3.
    assert 0.0 < got["R@1_IoU0.3"] < 100.0
