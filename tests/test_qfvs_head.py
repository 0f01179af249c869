"""QFVS head: positional table, segment packing, seeded training that learns, leave-one-video-out
evaluation against a random summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")
pytest.importorskip("ruptures")

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.tasks.qfvs import QFVSShotFeatures
from egovlpv2_rt.tasks.qfvs_data import QFVSQuery, QFVSVideo
from egovlpv2_rt.tasks.qfvs_head import (
    RANDOM_DRAWS,
    QFVSExample,
    QFVSHead,
    QFVSTrainConfig,
    build_examples,
    evaluate_qfvs,
    expected_random_summary_f1,
    positional_table,
    predict_summary,
    random_summary_f1,
    score_shots,
    swap_queries,
    train_qfvs,
)

DIM = 16


def test_positional_table_by_hand():
    t = positional_table(3, 4).double()
    pos = 2.0
    want = [
        math.sin(pos),
        math.cos(pos / 10000 ** (2 / 4)),
        math.sin(pos / 10000 ** (4 / 4)),
        math.cos(pos / 10000 ** (6 / 4)),
    ]
    assert t[2].tolist() == pytest.approx(want, abs=1e-7)
    assert t[0].tolist() == [0.0, 1.0, 0.0, 1.0]
    with pytest.raises(InputError, match="must be even"):
        positional_table(3, 5)


def test_head_init_and_padding_is_excluded():
    torch.manual_seed(0)
    head = QFVSHead(DIM).eval()
    assert head.summ_head.bias.item() == pytest.approx(-1.91)
    feats = torch.randn(1, 9, DIM)
    packed = score_shots(head, feats, [3, 6])
    with torch.no_grad():
        alone = head(feats[:, :3], torch.zeros(1, 3, dtype=torch.bool))
    # The 3-shot segment padded to 6 scores as it does alone.
    torch.testing.assert_close(packed[:, :3], alone, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="segments cover 8 shots, the features 9"):
        score_shots(head, feats, [3, 5])


def _video(name: str, rng: np.random.Generator, shots: int = 40):
    """Shots tagged with 4 concepts; features carry the labels along one direction + noise."""
    concepts = ["A", "B", "C", "D"]
    tags = rng.random((shots, 4)) < 0.3
    queries = []
    pairs = [("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")]
    for c1, c2 in pairs:
        both = np.flatnonzero(tags[:, concepts.index(c1)] & tags[:, concepts.index(c2)])
        if both.size == 0:
            tags[0, [concepts.index(c1), concepts.index(c2)]] = True
            both = np.array([0])
        queries.append(QFVSQuery(name, c1, c2, tuple(int(i) for i in both)))
    video = QFVSVideo(
        name,
        tuple(frozenset(c for c, t in zip(concepts, row, strict=True) if t) for row in tags),
        tuple(queries),
    )
    u = torch.zeros(DIM)
    u[0] = 1.0
    fused = torch.randn(
        len(pairs),
        3,
        shots,
        DIM,
        generator=torch.Generator().manual_seed(int(rng.integers(1 << 30))),
    )
    for q, query in enumerate(queries):
        lab = [video.concept_labels(query.concept1), video.concept_labels(query.concept2)]
        for p in range(2):
            fused[q, p] += 3.0 * torch.from_numpy(lab[p])[:, None] * u
        oracle = torch.zeros(shots)
        oracle[list(query.oracle)] = 1.0
        fused[q, 2] += 3.0 * oracle[:, None] * u
    prefix = torch.randn(shots, 8, generator=torch.Generator().manual_seed(1))
    return video, QFVSShotFeatures(prefix, fused), video.concept_matrix(concepts)


def _dataset(n_videos: int = 3):
    rng = np.random.default_rng(0)
    examples, concepts = {}, {}
    for v in range(n_videos):
        video, feats, conc = _video(f"P0{v + 1}", rng)
        examples[video.name] = build_examples(video, feats)
        concepts[video.name] = conc
    return examples, concepts


def test_build_examples():
    examples, _ = _dataset(1)
    e = examples["P01"][0]
    assert isinstance(e, QFVSExample)
    assert e.features.shape == (3, 40, DIM) and e.labels.shape == (3, 40)
    assert sum(e.segments) == 40 and max(e.segments) <= 200
    assert e.labels[2].nonzero().flatten().tolist() == list(e.oracle)


CFG = QFVSTrainConfig(epochs=3, lr=3e-3, budget=0.1, seed=0)


def test_training_learns_and_is_deterministic():
    examples, concepts = _dataset(2)
    train, val = examples["P01"], examples["P02"]
    a = train_qfvs(train, val, concepts, CFG)
    b = train_qfvs(train, val, concepts, CFG)
    assert a.val_f1 == b.val_f1 and a.best_epoch == b.best_epoch
    for k, v in a.head.state_dict().items():
        assert torch.equal(v, b.head.state_dict()[k])
    assert len(a.val_f1) == CFG.epochs + 1
    assert a.val_f1[a.best_epoch] == max(a.val_f1)
    assert a.best_epoch > 0 and max(a.val_f1) > a.val_f1[0]
    top = predict_summary(a.head, val[0], CFG.budget)
    assert len(top) == 4  # int(40 * 0.1)


def test_leave_one_video_out_beats_random():
    examples, concepts = _dataset(2)
    out = evaluate_qfvs(examples, concepts, CFG)
    per = out["per_video"]
    assert sorted(per) == ["P01", "P02"]
    assert out["f1"] == pytest.approx(np.mean([v["f1"] for v in per.values()]))
    assert out["f1"] > out["random_f1"] + 20.0
    for v, row in per.items():
        exp = expected_random_summary_f1(examples[v], concepts, CFG.budget, RANDOM_DRAWS)
        assert row["random_f1_expected"] == exp
    assert out["random_f1_expected"] == pytest.approx(
        np.mean([v["random_f1_expected"] for v in per.values()])
    )
    with pytest.raises(InputError, match="at least 2 videos"):
        evaluate_qfvs({"P01": examples["P01"]}, concepts, CFG)


def test_query_swap_control_keeps_f1_and_loses_the_query():
    examples, concepts = _dataset(2)
    plain = evaluate_qfvs(examples, concepts, CFG)
    ctrl = evaluate_qfvs(examples, concepts, CFG, query_swap_control=True)
    assert ctrl["f1"] == plain["f1"] and ctrl["random_f1"] == plain["random_f1"]
    per = ctrl["per_video"]
    assert ctrl["f1_query_swapped"] == pytest.approx(
        np.mean([v["f1_query_swapped"] for v in per.values()])
    )
    # Each query's own prompt carries its oracle here, so another query's prompt loses it.
    assert ctrl["f1_query_swapped"] < ctrl["f1"] - 20.0
    assert "f1_query_swapped" not in plain and "f1_query_swapped" not in plain["per_video"]["P01"]


def test_swap_queries_takes_the_next_querys_features():
    examples, _ = _dataset(1)
    ex = examples["P01"]
    sw = swap_queries(ex)
    assert len(sw) == len(ex) == 4
    for i, e in enumerate(sw):
        assert e.features is ex[(i + 1) % 4].features
        assert e.oracle == ex[i].oracle and torch.equal(e.labels, ex[i].labels)
        assert (e.concept1, e.concept2, e.segments) == (
            ex[i].concept1,
            ex[i].concept2,
            ex[i].segments,
        )
    with pytest.raises(InputError, match="video P01: swapping queries needs at least 2 queries"):
        swap_queries(ex[:1])


def test_expected_random_summary_f1_is_the_mean_over_draws():
    # 10 shots, a 1-shot summary (budget 0.1), the oracle is shot 0, the only shot with concept A:
    # a draw scores F1 100 when it picks shot 0 (IoU 1) and 0 otherwise, so the expectation is 10.
    s = 10
    tags = np.zeros((s, 2), dtype=np.float32)
    tags[0, 0] = 1
    tags[1:, 1] = 1
    e = QFVSExample("P01", "A", "B", torch.zeros(3, s, DIM), torch.zeros(3, s), (s,), (0,))
    concepts = {"P01": tags}
    by_hand = np.mean([random_summary_f1([e], concepts, 0.1, seed) for seed in range(3)])
    assert expected_random_summary_f1([e], concepts, 0.1, draws=3) == by_hand
    many = expected_random_summary_f1([e], concepts, 0.1, draws=2000)
    assert abs(many - 10.0) < 3 * 100 * math.sqrt(0.1 * 0.9 / 2000)  # 3 sd of the mean
    with pytest.raises(InputError, match="draws must be >= 1"):
        expected_random_summary_f1([e], concepts, 0.1, draws=0)


def test_trained_head_query_swap_control_by_hand():
    from egovlpv2_rt.tasks.qfvs_head import mean_f1
    from egovlpv2_rt.tasks.qfvs_job import evaluate_qfvs_dataset

    examples, concepts = _dataset(2)
    head = train_qfvs(examples["P01"][:3], examples["P01"][3:], concepts, CFG).head
    out = evaluate_qfvs_dataset({"P02": examples["P02"]}, concepts, CFG, head=head)
    ctrl = evaluate_qfvs_dataset(
        {"P02": examples["P02"]}, concepts, CFG, head=head, query_swap_control=True
    )
    by_hand = mean_f1(head, swap_queries(examples["P02"]), concepts, CFG.budget)[2]
    assert ctrl["per_video"]["P02"]["f1_query_swapped"] == by_hand == ctrl["f1_query_swapped"]
    assert ctrl["f1"] == out["f1"] and "f1_query_swapped" not in out
    assert by_hand < ctrl["f1"] - 20.0
