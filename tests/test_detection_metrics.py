"""EgoMQ detection mAP and Recall@kx against hand-worked examples and a brute-force
reimplementation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.eval.detection import (
    detection_map,
    interpolated_ap,
    moment_recall,
    segment_tiou,
)


def det(video, label, start, end, score):
    return {"video": video, "label": label, "start": start, "end": end, "score": score}


def gt(video, label, start, end):
    return {"video": video, "label": label, "start": start, "end": end}


GT_A = [gt("v", "a", 0.0, 10.0), gt("v", "a", 20.0, 30.0)]


def test_hand_worked_single_class():
    dets = [
        det("v", "a", 0.0, 10.0, 0.9),  # tIoU 1 with [0, 10]: TP
        det("v", "a", 0.0, 10.0, 0.8),  # [0, 10] taken, [20, 30] tIoU 0: FP
        det("v", "a", 21.0, 30.0, 0.7),  # tIoU 9/10 with [20, 30]: TP at 0.5, FP at 0.95
    ]
    res = detection_map(dets, GT_A, tious=(0.5, 0.95))
    # @0.5: TP FP TP -> precision 1, 1/2, 2/3; recall 1/2, 1/2, 1.
    #   envelope at recall 1/2 = max(1, 1/2, 2/3) = 1, at recall 1 = 2/3
    #   AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    # @0.95: TP FP FP -> recall stays 1/2, AP = 1/2 * 1 = 1/2
    assert list(res) == ["mAP@0.5", "mAP@0.95", "average"]
    assert res["mAP@0.5"] == pytest.approx(500 / 6, abs=1e-12)
    assert res["mAP@0.95"] == pytest.approx(50.0, abs=1e-12)
    assert res["average"] == pytest.approx((500 / 6 + 50) / 2, abs=1e-12)


def test_video_without_ground_truth_is_a_false_positive():
    dets = [
        det("v", "a", 0.0, 10.0, 0.9),  # TP
        det("w", "a", 0.0, 10.0, 0.85),  # video w has no ground truth: FP
        det("v", "a", 0.0, 10.0, 0.8),  # FP (duplicate)
        det("v", "a", 20.0, 30.0, 0.7),  # TP
    ]
    # precision 1, 1/2, 1/3, 1/2; recall 1/2, 1/2, 1/2, 1 -> AP = 1/2 * 1 + 1/2 * 1/2 = 3/4
    res = detection_map(dets, GT_A, tious=(0.5,))
    assert res == {"mAP@0.5": pytest.approx(75.0, abs=1e-12), "average": pytest.approx(75.0)}


def test_classes_absent_from_ground_truth_are_ignored_and_missing_ones_count_zero():
    dets = [det("v", "a", 0.0, 10.0, 0.9), det("v", "a", 20.0, 30.0, 0.8)]  # AP(a) = 1
    noise = [det("v", "c", 0.0, 10.0, 0.99), det("v", "c", 20.0, 30.0, 0.95)]  # class c: no GT
    gts = [*GT_A, gt("v", "b", 40.0, 50.0)]  # class b: no detection -> AP 0
    res = detection_map(dets + noise, gts, tious=(0.1, 0.2, 0.3, 0.4, 0.5))
    assert list(res) == ["mAP@0.1", "mAP@0.2", "mAP@0.3", "mAP@0.4", "mAP@0.5", "average"]
    assert all(v == pytest.approx(50.0, abs=1e-12) for v in res.values())  # (1 + 0) / 2
    assert detection_map(dets, gts) == detection_map(dets + noise, gts)


def test_empty_detections_give_zero():
    res = detection_map([], [*GT_A, gt("u", "b", 1.0, 2.0)])
    keys = ("mAP@0.1", "mAP@0.2", "mAP@0.3", "mAP@0.4", "mAP@0.5", "average")
    assert res == dict.fromkeys(keys, 0.0)


def test_score_ties_keep_input_order():
    one_gt = [gt("v", "a", 0.0, 10.0)]
    hit, miss = det("v", "a", 0.0, 10.0, 0.5), det("v", "a", 50.0, 60.0, 0.5)
    # hit first: TP FP -> AP 1; miss first: FP TP -> precision 0, 1/2 -> AP 1/2
    assert detection_map([hit, miss], one_gt, tious=(0.5,))["average"] == pytest.approx(100.0)
    assert detection_map([miss, hit], one_gt, tious=(0.5,))["average"] == pytest.approx(50.0)


def test_match_goes_to_the_highest_tiou_unmatched_ground_truth():
    gts = [gt("v", "a", 0.0, 10.0), gt("v", "a", 4.0, 14.0)]
    dets = [
        # tIoU 5/14 = 0.357 with [0, 10], 9/10 with [4, 14]: takes [4, 14]
        det("v", "a", 5.0, 14.0, 0.9),
        # tIoU 6/10 with [0, 10], 2/14 with [4, 14]: takes [0, 10]
        det("v", "a", 0.0, 6.0, 0.8),
    ]
    # Both TP at 0.3 -> AP 1. Taking the first GT above threshold instead of the best would
    # leave the second detection with 2/14 < 0.3: AP 1/2.
    assert detection_map(dets, gts, tious=(0.3,))["average"] == pytest.approx(100.0)


def test_equal_tiou_goes_to_the_earliest_ground_truth():
    d1 = det("v", "a", 5.0, 15.0, 0.9)  # tIoU 5/15 with both segments below
    d2 = det("v", "a", 0.0, 10.0, 0.8)  # tIoU 1 with [0, 10], 0 with [10, 20]
    first, second = gt("v", "a", 0.0, 10.0), gt("v", "a", 10.0, 20.0)
    # [0, 10] first: d1 takes it, d2 finds only [10, 20] at tIoU 0: TP FP -> AP 1/2
    assert detection_map([d1, d2], [first, second], tious=(0.3,))["average"] == pytest.approx(50.0)
    # [10, 20] first: d1 takes [10, 20], d2 takes [0, 10]: AP 1
    assert detection_map([d1, d2], [second, first], tious=(0.3,))["average"] == pytest.approx(100)


def test_threshold_is_inclusive_for_detection():
    # tIoU of [0, 5] with [0, 10] is exactly 0.5: matched at 0.5 (>=), not at 0.6
    res = detection_map([det("v", "a", 0.0, 5.0, 1.0)], [gt("v", "a", 0.0, 10.0)], (0.5, 0.6))
    assert res["mAP@0.5"] == 100.0 and res["mAP@0.6"] == 0.0


def test_segment_tiou_and_interpolated_ap_small_cases():
    segs = np.array([[0.0, 10.0], [5.0, 15.0], [20.0, 30.0], [3.0, 3.0]])
    np.testing.assert_allclose(segment_tiou((0.0, 10.0), segs), [1.0, 5 / 15, 0.0, 0.0])
    assert segment_tiou((3.0, 3.0), np.array([[3.0, 3.0]]))[0] == 0.0  # union 0 -> 0, no NaN
    # precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3 -> 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert interpolated_ap(np.array([1, 0.5, 2 / 3]), np.array([1, 1, 2]) / 3) == pytest.approx(
        5 / 9
    )


def test_moment_recall_hand_worked():
    gts = [*GT_A, gt("v", "b", 5.0, 6.0)]
    dets = [
        det("v", "a", 0.0, 10.0, 0.9),  # tIoU 1 with [0, 10]
        det("v", "a", 0.0, 9.0, 0.8),  # tIoU 0.9 with [0, 10]
        det("v", "a", 40.0, 50.0, 0.7),  # nothing
        det("v", "a", 20.0, 25.0, 0.6),  # tIoU exactly 0.5 with [20, 30]
        det("w", "a", 20.0, 30.0, 0.99),  # other video: never counts for v
    ]  # label b in v: no detection
    res = moment_recall(dets, gts, ks=(1, 2), tious=(0.3, 0.5))
    # 3 ground-truth segments. a has n = 2: top 2 for 1x, top 4 for 2x.
    # 1x: [0, 10] retrieved, [20, 30] not -> 1/3 at both thresholds.
    # 2x: [20, 30] by tIoU 0.5: > 0.3 yes, > 0.5 no (strict) -> 2/3 at 0.3, 1/3 at 0.5.
    assert list(res) == ["R@1x_IoU0.3", "R@1x_IoU0.5", "R@2x_IoU0.3", "R@2x_IoU0.5"]
    assert res["R@1x_IoU0.3"] == pytest.approx(100 / 3)
    assert res["R@1x_IoU0.5"] == pytest.approx(100 / 3)
    assert res["R@2x_IoU0.3"] == pytest.approx(200 / 3)
    assert res["R@2x_IoU0.5"] == pytest.approx(100 / 3)


def test_moment_recall_one_detection_can_retrieve_several_segments_and_defaults():
    gts = [gt("v", "a", 0.0, 10.0), gt("v", "a", 1.0, 11.0)]
    dets = [det("v", "a", 0.5, 10.5, 0.5)]  # tIoU 9.5/10.5 with both
    res = moment_recall(dets, gts)
    assert list(res) == [f"R@{k}x_IoU{t}" for k in (1, 5) for t in (0.3, 0.5, 0.7)]
    assert all(v == 100.0 for v in res.values())
    assert all(v == 0.0 for v in moment_recall([], gts).values())


def test_moment_recall_ties_keep_input_order():
    gts = [gt("v", "a", 0.0, 10.0)]
    hit, miss = det("v", "a", 0.0, 10.0, 0.5), det("v", "a", 50.0, 60.0, 0.5)
    assert moment_recall([hit, miss], gts, ks=(1,), tious=(0.5,)) == {"R@1x_IoU0.5": 100.0}
    assert moment_recall([miss, hit], gts, ks=(1,), tious=(0.5,)) == {"R@1x_IoU0.5": 0.0}


@pytest.mark.parametrize(
    ("dets", "gts", "match"),
    [
        ([{"video": "v", "label": "a", "start": 0, "end": 1}], GT_A, r"detections\[0\].*'score'"),
        ([det("v", "a", 2.0, 1.0, 0.5)], GT_A, r"detections\[0\]\.end must be >= start"),
        ([det("v", "a", 0, 1, 0.1), det("v", "a", 0, 1, math.nan)], GT_A, r"\[1\]\.score.*finite"),
        ([det("v", "a", 0, 1, "high")], GT_A, r"detections\[0\]\.score must be a number"),
        ([], [gt("v", "a", 0.0, 1.0), {"video": "v", "start": 0, "end": 1}], r"\[1\].*'label'"),
        ([], [gt("v", "a", 0.0, math.inf)], r"ground_truth\[0\]\.end must be finite"),
        ([], [gt("v", "a", 3.0, 1.0)], r"ground_truth\[0\]\.end must be >= start"),
        ([], [], "ground_truth is empty"),
        ([], "not a list", "ground_truth must be a list"),
        ([det(None, "a", 0, 1, 1.0)], GT_A, r"detections\[0\]\.video must be a string"),
    ],
)
def test_bad_input_names_index_and_field(dets, gts, match):
    with pytest.raises(InputError, match=match):
        detection_map(dets, gts)
    with pytest.raises(InputError, match=match):
        moment_recall(dets, gts)


def test_bad_thresholds_and_ranks():
    with pytest.raises(InputError, match=r"tious\[1\] must lie in \(0, 1\]"):
        detection_map([], GT_A, tious=(0.5, 1.5))
    with pytest.raises(InputError, match="must not repeat"):
        detection_map([], GT_A, tious=(0.5, 0.5))
    with pytest.raises(InputError, match="at least one"):
        detection_map([], GT_A, tious=())
    with pytest.raises(InputError, match=r"ks\[0\] must be a positive integer"):
        moment_recall([], GT_A, ks=(0,))


# -- brute force ---------------------------------------------------------------------------------


def _brute_tiou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def _brute_map(dets, gts, tious):
    """Straightforward float64 ActivityNet mAP: AP = sum over the true positives (each a recall
    step of 1 / n_gt) of the best precision at that rank or any later one."""
    classes = list(dict.fromkeys(g["label"] for g in gts))
    table = np.zeros((len(tious), len(classes)))
    for c_i, c in enumerate(classes):
        cg = [g for g in gts if g["label"] == c]
        order = sorted(
            range(len(dets)), key=lambda i: (-dets[i]["score"], i)
        )  # explicit index tie-break
        cd = [dets[i] for i in order if dets[i]["label"] == c]
        for t_i, t in enumerate(tious):
            used = [False] * len(cg)
            flags = []
            for d in cd:
                best, best_iou = None, -1.0
                for j, g in enumerate(cg):
                    if g["video"] != d["video"] or used[j]:
                        continue
                    iou = _brute_tiou((d["start"], d["end"]), (g["start"], g["end"]))
                    if iou >= t and iou > best_iou:
                        best, best_iou = j, iou
                if best is not None:
                    used[best] = True
                flags.append(best is not None)
            precision = []
            tp = 0
            for r, f in enumerate(flags):
                tp += f
                precision.append(tp / (r + 1))
            ap = 0.0
            for r, f in enumerate(flags):
                if f:
                    ap += max(precision[r:]) / len(cg)
            table[t_i, c_i] = ap
    per = table.mean(axis=1) * 100
    return [float(x) for x in per] + [float(per.mean())]


def _brute_recall(dets, gts, ks, tious):
    out = []
    for k in ks:
        for t in tious:
            hit = 0
            for g in gts:
                n = sum(1 for h in gts if h["video"] == g["video"] and h["label"] == g["label"])
                same = [
                    (i, d)
                    for i, d in enumerate(dets)
                    if d["video"] == g["video"] and d["label"] == g["label"]
                ]
                same.sort(key=lambda p: (-p[1]["score"], p[0]))
                top = [d for _, d in same[: k * n]]
                hit += any(
                    _brute_tiou((d["start"], d["end"]), (g["start"], g["end"])) > t for d in top
                )
            out.append(100.0 * hit / len(gts))
    return out


def _random_case(rng):
    videos = [f"v{i}" for i in range(rng.randint(1, 4))]
    labels = ["a", "b", "c", "d"]
    gts = []
    for _ in range(rng.randint(1, 12)):
        s = rng.randint(0, 40)  # integer times: many exact tIoU ties
        gts.append(
            gt(rng.choice(videos), rng.choice(labels[:3]), float(s), float(s + rng.randint(1, 15)))
        )
    dets = []
    for _ in range(rng.randint(0, 40)):
        s = rng.randint(0, 45)
        dets.append(
            det(
                rng.choice([*videos, "x"]),
                rng.choice(labels),
                float(s),
                float(s + rng.randint(0, 15)),
                rng.choice([0.1, 0.2, 0.5, 0.9, rng.random()]),  # repeated scores: ties
            )
        )
    return dets, gts


def test_detection_map_matches_brute_force_on_random_cases():
    rng = random.Random(1234)
    tious = (0.1, 0.3, 0.5, 0.7)
    nonzero = 0
    for _ in range(300):
        dets, gts = _random_case(rng)
        got = list(detection_map(dets, gts, tious).values())
        want = _brute_map(dets, gts, tious)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
        nonzero += want[-1] > 0
    assert nonzero > 100  # the cases exercise real matches, not only zeros


def test_moment_recall_matches_brute_force_on_random_cases():
    rng = random.Random(99)
    for _ in range(300):
        dets, gts = _random_case(rng)
        got = list(moment_recall(dets, gts, ks=(1, 2, 5), tious=(0.3, 0.5, 0.7)).values())
        np.testing.assert_allclose(
            got, _brute_recall(dets, gts, (1, 2, 5), (0.3, 0.5, 0.7)), rtol=0, atol=1e-9
        )
