"""QFVS semantic F1 against hand-worked examples and a brute-force maximum matching."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

pytest.importorskip("scipy")

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.eval.qfvs import qfvs_f1, semantic_iou_matrix

# Four shots over three concepts.
CONCEPTS = np.array(
    [
        [1, 1, 0],  # 0
        [1, 0, 0],  # 1
        [0, 1, 1],  # 2
        [0, 0, 0],  # 3: nothing tagged
    ]
)


def test_semantic_iou_by_hand():
    w = semantic_iou_matrix(CONCEPTS == 1, CONCEPTS == 1)
    assert w[0, 1] == 0.5  # {a,b} vs {a}
    assert w[0, 2] == pytest.approx(1 / 3)  # {a,b} vs {b,c}
    assert w[1, 2] == 0.0
    assert w[3, 3] == 0.0  # both empty: 0, as the original's semantic_iou
    assert w[2, 2] == 1.0


def test_f1_by_hand_square():
    # 0-1 weighs 1/2, 3 matches nothing: matched 0.5 over 2 and 2.
    p, r, f = qfvs_f1([0, 3], [1, 2], CONCEPTS)
    assert (p, r, f) == pytest.approx((25.0, 25.0, 25.0))


def test_f1_by_hand_matching_beats_greedy():
    # Weights pred x gt: [[1/2, 1/3], [1, 0]]; greedy takes 1 then 1/3 = 4/3, the optimum too.
    p, r, f = qfvs_f1([0, 1], [1, 2], CONCEPTS)
    assert (p, r, f) == pytest.approx((200 / 3, 200 / 3, 200 / 3))
    # A case where the greedy first pick is wrong: weights [[0.9, 0.8], [0.7, 0]].
    tags = np.zeros((4, 10), dtype=np.int64)
    tags[0, :9] = 1  # pred A: 9 concepts
    tags[2, :10] = 1  # gt X: 10 concepts -> IoU(A, X) = 0.9
    tags[3, :8] = 1  # gt Y: 8 concepts -> IoU(A, Y) = 0.8
    tags[1, [0, 1, 2, 3, 4, 5, 6]] = 1  # pred B: IoU(B, X) = 0.7, IoU(B, Y) = 7/8
    tags[3, :] = 0
    tags[3, [7, 8]] = 1  # gt Y = {7, 8}: IoU(A, Y) = 2/9, IoU(B, Y) = 0
    w = semantic_iou_matrix(tags[[0, 1]] == 1, tags[[2, 3]] == 1)
    assert w == pytest.approx(np.array([[0.9, 2 / 9], [0.7, 0.0]]))
    # Greedy: 0.9 + 0 = 0.9; optimum: 2/9 + 0.7 = 0.9222...
    p, r, f = qfvs_f1([0, 1], [2, 3], tags)
    best = (2 / 9 + 0.7) / 2 * 100
    assert (p, r, f) == pytest.approx((best, best, best))


def test_f1_by_hand_rectangular():
    # One gt shot (1 = {a}); the best partner is 1 itself (IoU 1).
    p, r, f = qfvs_f1([0, 1, 2], [1], CONCEPTS)
    assert (p, r, f) == pytest.approx((100 / 3, 100.0, 50.0))
    p, r, f = qfvs_f1([2], [0, 1], CONCEPTS)  # {b,c} vs {a,b}: 1/3
    assert (p, r, f) == pytest.approx((100 / 3, 50 / 3, 2 * (100 / 3) * (50 / 3) / 50))


def test_f1_edge_cases():
    assert qfvs_f1([], [0], CONCEPTS) == (0.0, 0.0, 0.0)
    assert qfvs_f1([0], [], CONCEPTS) == (0.0, 0.0, 0.0)
    assert qfvs_f1([3], [1], CONCEPTS) == (0.0, 0.0, 0.0)  # weight 0: F1 0, not 0/0
    assert qfvs_f1(np.array([1]), (1,), CONCEPTS.astype(bool)) == (100.0, 100.0, 100.0)


def _brute_force(pred, gt, tags):
    w = semantic_iou_matrix(tags[pred] == 1, tags[gt] == 1)
    m, n = w.shape
    if m <= n:
        best = max(
            sum(w[i, c] for i, c in enumerate(cols)) for cols in itertools.permutations(range(n), m)
        )
    else:
        best = max(
            sum(w[r, j] for j, r in enumerate(rows)) for rows in itertools.permutations(range(m), n)
        )
    p, r = best / m, best / n
    return 100 * p, 100 * r, (0.0 if p + r == 0 else 200 * p * r / (p + r))


@pytest.mark.parametrize("seed", range(40))
def test_f1_matches_brute_force(seed):
    rng = random.Random(seed)
    num_shots, num_concepts = rng.randint(2, 12), rng.randint(1, 6)
    tags = np.array(
        [[int(rng.random() < 0.4) for _ in range(num_concepts)] for _ in range(num_shots)]
    )
    pred = rng.sample(range(num_shots), rng.randint(1, min(6, num_shots)))
    gt = rng.sample(range(num_shots), rng.randint(1, min(6, num_shots)))
    got = qfvs_f1(pred, gt, tags)
    want = _brute_force(pred, gt, tags)
    assert got == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize(
    ("pred", "gt", "concepts", "needle"),
    [
        ([4], [0], CONCEPTS, "pred_shots[0] = 4 is outside the video (shots 0..3"),
        ([0], [0, -1], CONCEPTS, "gt_shots[1] = -1 is outside the video"),
        ([0, 0], [1], CONCEPTS, "pred_shots[1] = 0 repeats"),
        ([0.5], [1], CONCEPTS, "pred_shots[0] = 0.5; expected an integer"),
        ([True], [1], CONCEPTS, "pred_shots[0] = True; expected an integer"),
        ([0], [1], np.array([[1, 2], [0, 0]]), "concepts[0, 1] = 2; expected 0 or 1"),
        ([0], [1], np.zeros(3), "concepts must be [num_shots, num_concepts], got shape (3,)"),
        ([0], [1], np.array([["a"], ["b"]]), "concepts must be numeric 0/1"),
    ],
)
def test_f1_bad_input(pred, gt, concepts, needle):
    with pytest.raises(InputError) as err:
        qfvs_f1(pred, gt, concepts)
    assert needle in str(err.value)
