"""EgoMCQ accuracy, retrieval ranks and EK-100 MIR metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.eval.metrics import (
    charades_class_ap,
    charades_map,
    egomcq_accuracy,
    ek100_mir_metrics,
    mean_average_precision,
    ndcg,
    retrieval_metrics,
    t2v_ranks,
    v2t_ranks,
)


def test_egomcq_accuracy_by_type():
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0],  # pred 1, answer 1, inter: right
            [0.5, 0.1, 0.2, 0.0, 0.0],  # pred 0, answer 2, inter: wrong
            [0.0, 0.0, 0.0, 0.0, 1.0],  # pred 4, answer 4, intra: right
            [0.3, 0.3, 0.1, 0.0, 0.0],  # tie 0/1 -> 0, answer 1, intra: wrong
            [0.0, 0.2, 0.1, 0.0, 0.0],  # pred 1, answer 1, intra: right
        ]
    )
    res = egomcq_accuracy(scores, torch.tensor([1, 2, 4, 1, 1]), torch.tensor([1, 1, 2, 2, 2]))
    assert res["inter"] == 50.0
    assert res["intra"] == pytest.approx(200 / 3)
    assert res["inter_count"] == 2 and res["intra_count"] == 3


def test_egomcq_accuracy_bad_input():
    with pytest.raises(ValueError, match="answers must lie"):
        egomcq_accuracy(np.zeros((2, 5)), [0, 5], [1, 2])
    with pytest.raises(ValueError, match="types must be 1"):
        egomcq_accuracy(np.zeros((2, 5)), [0, 1], [1, 3])
    with pytest.raises(ValueError, match="NaN"):
        egomcq_accuracy(np.full((1, 5), np.nan), [0], [1])


def test_retrieval_ranks_hand_computed():
    # rows texts, columns videos; caption i matches video i.
    sims = np.array(
        [
            [0.9, 0.1, 0.2, 0.0],  # t2v rank 0
            [0.8, 0.5, 0.6, 0.0],  # rank 2 (0.8, 0.6 above 0.5)
            [0.1, 0.1, 0.3, 0.3],  # tie with column 3 -> optimistic rank 0
            [0.0, 0.9, 0.0, 0.4],  # rank 1
        ]
    )
    assert t2v_ranks(sims).tolist() == [0, 2, 0, 1]
    # v2t: columns as queries. video 0: texts scores [0.9, 0.8, 0.1, 0.0] -> rank 0;
    # video 1: [0.1, 0.5, 0.1, 0.9] -> rank 1; video 2: [0.2, 0.6, 0.3, 0.0] -> 0.3 under 0.6 -> 1;
    # video 3: [0.0, 0.0, 0.3, 0.4] -> 0.
    assert v2t_ranks(sims).tolist() == [0, 1, 1, 0]
    m = retrieval_metrics(sims)
    assert m["t2v"]["R1"] == 50.0 and m["t2v"]["R5"] == 100.0
    assert m["t2v"]["MedR"] == 1.5 and m["t2v"]["MeanR"] == 1.75
    assert m["v2t"]["R1"] == 50.0 and m["v2t"]["MedR"] == 1.5


def test_v2t_ties_are_averaged():
    sims = np.ones((3, 3))
    assert v2t_ranks(sims).tolist() == [1.0, 1.0, 1.0]
    assert t2v_ranks(sims).tolist() == [0.0, 0.0, 0.0]


def test_ndcg_reference_example():
    # The worked example shipped with the EK-100 / JPoSE nDCG code (expected 0.9371789900735429).
    sim = np.array([[1.0, 0.7, 0.4, 0.0], [0.3, 0.9, 0.6, 0.1], [0.2, 0.5, 0.8, 0.4]])
    rel = np.array([[1.0, 0.5, 0.25, 0.0], [0.0, 1.0, 0.4, 0.0], [0.5, 0.3, 1.0, 0.0]])
    assert ndcg(sim, rel) == pytest.approx(0.9371789900735429, abs=1e-15)


def test_ndcg_hand_computed():
    sim = np.array([[0.1, 0.9, 0.5]])
    rel = np.array([[1.0, 0.0, 0.5]])
    # ranking: 1 (rel 0), 2 (0.5), 0 (1.0); k = 2 relevant items -> only the first 2 ranks count.
    dcg = 0.0 / math.log2(2) + 0.5 / math.log2(3)
    idcg = 1.0 / math.log2(2) + 0.5 / math.log2(3)
    assert ndcg(sim, rel) == pytest.approx(dcg / idcg, abs=1e-15)


def test_map_hand_computed():
    sim = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]])
    rel = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # row 0: relevant at ranks 1 and 3 -> (1/1 + 2/3) / 2; row 1: relevant at rank 4 -> 1/4.
    expected = ((1 + 2 / 3) / 2 + 1 / 4) / 2
    assert mean_average_precision(sim, rel) == pytest.approx(expected, abs=1e-15)


def test_map_partial_relevance_counts_as_the_reference_does():
    sim = np.array([[0.9, 0.8]])
    rel = np.array([[0.5, 1.0]])
    # Only the fully relevant item at rank 2 contributes; its running sum is 0.5 + 1.
    assert mean_average_precision(sim, rel) == pytest.approx(1.5 / 2, abs=1e-15)


def test_ek100_mir_metrics_perfect_and_transposed():
    rel = np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.3], [0.1, 0.0, 1.0]])
    m = ek100_mir_metrics(rel.copy(), rel)
    for key in ("mAP_V2T", "mAP_T2V", "mAP_AVG", "nDCG_V2T", "nDCG_T2V", "nDCG_AVG"):
        assert m[key] == pytest.approx(100.0, abs=1e-12)
    sim = np.array([[0.1, 0.9, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    m = ek100_mir_metrics(sim, rel)
    assert m["mAP_V2T"] == pytest.approx(100 * mean_average_precision(sim, rel))
    assert m["mAP_T2V"] == pytest.approx(100 * mean_average_precision(sim.T, rel.T))
    assert m["nDCG_AVG"] == pytest.approx((m["nDCG_V2T"] + m["nDCG_T2V"]) / 2)


def test_metric_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        ndcg(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no item of relevance 1"):
        mean_average_precision(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="square"):
        t2v_ranks(np.zeros((2, 3)))


# -- Charades-Ego mAP ---------------------------------------------------------------------


def test_charades_map_hand_worked():
    scores = np.array(
        [
            [0.9, 0.1, 0.5],  # v0: class 0
            [0.8, 0.7, 0.5],  # v1: class 1
            [0.3, 0.2, 0.5],  # v2: classes 0 and 1
            [0.95, 0.6, 0.2],  # v3: no label -> left out (as the original's -inf scores)
            [0.1, 0.9, 0.4],  # v4: class 1
        ]
    )
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]])
    # Class 0 over v0, v1, v2, v4 by score: v0 (+), v1, v2 (+), v4; precision at the positive
    # ranks 1 and 3: 1/1 and 2/3; AP = (1 + 2/3) / 2 = 5/6. (Had v3 stayed in, ranked first,
    # AP would be (1/2 + 2/4) / 2 = 1/2.)
    # Class 1: v4 (+), v1 (+), v2 (+), v0; AP = (1/1 + 2/2 + 3/3) / 3 = 1.
    # Class 2: no positive -> NaN, ignored. mAP = (5/6 + 1) / 2 = 11/12 -> 91.666...%.
    ap = charades_class_ap(scores, targets)
    assert ap[0] == pytest.approx(5 / 6, abs=1e-15) and ap[1] == 1.0 and math.isnan(ap[2])
    assert charades_map(scores, targets) == pytest.approx(100 * 11 / 12, abs=1e-12)
    # Tensors and bool targets give the same number.
    assert charades_map(torch.tensor(scores), torch.tensor(targets == 1)) == pytest.approx(
        100 * 11 / 12, abs=1e-12
    )


def test_charades_map_ties_rank_by_video_index():
    # Equal scores in each class: the lower video index ranks first (stable sort). Class 0's
    # positive is v1, ranked 2nd: AP 1/2; class 1's is v0, ranked 1st: AP 1.
    ap = charades_class_ap([[0.5, 0.0], [0.5, 0.0]], [[0, 1], [1, 0]])
    np.testing.assert_array_equal(ap, [0.5, 1.0])
    assert charades_map([[0.5, 0.0], [0.5, 0.0]], [[0, 1], [1, 0]]) == 75.0


def _brute_force_class_ap(s: np.ndarray, t: np.ndarray, c: int) -> float:
    labelled = [v for v in range(s.shape[0]) if t[v].sum() > 0]
    ranking = sorted(labelled, key=lambda v: (-s[v, c], v))
    hits, total = 0, 0.0
    for k, v in enumerate(ranking, start=1):
        if t[v, c] == 1:
            hits += 1
            total += hits / k
    return total / hits if hits else float("nan")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_charades_map_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    videos, classes = 40, 9
    # Few distinct values, so that many scores tie.
    scores = rng.integers(0, 6, size=(videos, classes)).astype(np.float64) / 5
    targets = (rng.random((videos, classes)) < 0.2).astype(np.int64)
    targets[rng.random(videos) < 0.2] = 0  # videos without labels
    targets[:, 3] = 0  # a class without positives
    want = [_brute_force_class_ap(scores, targets, c) for c in range(classes)]
    got = charades_class_ap(scores, targets)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, equal_nan=True)
    assert math.isnan(got[3])
    assert charades_map(scores, targets) == pytest.approx(
        100 * np.mean([a for a in want if not math.isnan(a)]), rel=1e-12
    )


@pytest.mark.parametrize(
    ("scores", "targets", "message"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), r"scores \(3, 2\) and targets \(3, 3\) must have"),
        (np.zeros(3), np.zeros(3), r"scores must be 2-D \[videos, classes\], got shape \(3,\)"),
        (np.full((2, 2), np.nan), np.eye(2), "scores contains NaN"),
        (np.zeros((2, 2)), np.array([[1, 0], [0, 0.5]]), r"0.5 at \[video 1, class 1\]"),
        (np.zeros((2, 2)), np.array([[1, 0], [0, 2]]), "multi-hot"),
        (np.zeros((2, 2)), np.zeros((2, 2)), "no class has a positive video"),
        (np.zeros((2, 2)), [["a", "b"], ["c", "d"]], "targets is not a numeric array"),
    ],
)
def test_charades_map_bad_input(scores, targets, message):
    with pytest.raises(InputError, match=message):
        charades_map(scores, targets)


# -- EgoMCQ scoring with a model, and the eval CLI ------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from egovlpv2_rt.checkpoint import save_safetensors
    from egovlpv2_rt.config import preset
    from egovlpv2_rt.data.egoclip import read_egoclip
    from egovlpv2_rt.data.synthetic import SynthConfig, generate_dataset
    from egovlpv2_rt.modeling.model import EgoVLPv2
    from egovlpv2_rt.tokenizer import RobertaTokenizer
    from egovlpv2_rt.train.bpe import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("mcq")
    generate_dataset(root / "data", seed=3, cfg=SynthConfig(num_clips=48, size=32, num_mcq=6))
    texts = [r.clip_text for r in read_egoclip(root / "data" / "egoclip.csv")]
    train_bpe_tokenizer(texts, 300, root / "tokenizer.json")
    vocab = RobertaTokenizer.from_tokenizer_json(root / "tokenizer.json").vocab_size
    cfg = preset("tiny")
    cfg = type(cfg).from_dict(
        {
            **cfg.to_dict(),
            "text": {**cfg.to_dict()["text"], "vocab_size": vocab},
            "fusion": {**cfg.to_dict()["fusion"], "vocab_size": vocab},
        }
    )
    torch.manual_seed(0)
    model = EgoVLPv2(cfg)
    with torch.no_grad():  # gates on, so that the fusion path differs from the dual one
        for name, p in model.named_parameters():
            if "alpha" in name:
                p.fill_(0.7)
    save_safetensors(model, root / "model.safetensors")
    return root


def test_egomcq_scores_match_the_model_calls(tiny_model_dir):
    from egovlpv2_rt.checkpoint import load_model
    from egovlpv2_rt.data.clips import ClipReader
    from egovlpv2_rt.data.egomcq import read_egomcq
    from egovlpv2_rt.eval.egomcq import evaluate_egomcq
    from egovlpv2_rt.modeling.model import sim_matrix
    from egovlpv2_rt.tokenizer import RobertaTokenizer

    root = tiny_model_dir
    model = load_model(root / "model.safetensors")
    tok = RobertaTokenizer.from_tokenizer_json(root / "tokenizer.json", max_length=16)
    items = read_egomcq(root / "data" / "egomcq.json")
    res = evaluate_egomcq(model, items, root / "data" / "videos", tok, batch_size=4)
    # Reference for the second question, computed directly from the model.
    it = items[1]
    reader = ClipReader(root / "data" / "videos", num_frames=4, image_size=32)
    video = torch.stack([reader.read(c) for c in it.choices])
    enc = tok([it.text] * 5, max_length=16, padding="max_length")
    with torch.no_grad():
        dual = sim_matrix(
            model.encode_text(enc["input_ids"][:1], enc["attention_mask"][:1]),
            model.encode_video(video),
        )[0].double()
        fusion = torch.softmax(
            model.vtm_logits(video, enc["input_ids"], enc["attention_mask"]).double(), -1
        )[:, 1]
    assert torch.allclose(res.scores["dual"][1], dual, rtol=0, atol=1e-6)
    assert torch.allclose(res.scores["fusion"][1], fusion, rtol=0, atol=1e-6)
    assert torch.equal(res.scores["ensemble"], res.scores["dual"] + res.scores["fusion"])
    for mode in ("dual", "fusion", "ensemble"):
        assert res.accuracy[mode] == egomcq_accuracy(res.scores[mode], res.answers, res.types)


def test_eval_cli_json(tiny_model_dir, capsys):
    import argparse
    import json

    from egovlpv2_rt.cli.training import add_subcommands

    parser = argparse.ArgumentParser()
    add_subcommands(parser.add_subparsers(dest="cmd", required=True))
    root = tiny_model_dir
    args = parser.parse_args(
        [
            "eval",
            "--task",
            "egomcq",
            "--data",
            str(root / "data"),
            "--checkpoint",
            str(root / "model.safetensors"),
            "--json",
        ]
    )
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    acc = out["accuracy"]
    assert set(acc) == {"dual", "fusion", "ensemble"}
    from egovlpv2_rt.checkpoint import load_model
    from egovlpv2_rt.eval.egomcq import evaluate_egomcq
    from egovlpv2_rt.tokenizer import RobertaTokenizer

    direct = evaluate_egomcq(
        load_model(root / "model.safetensors"),
        root / "data" / "egomcq.json",
        root / "data" / "videos",
        RobertaTokenizer.from_tokenizer_json(root / "tokenizer.json"),
    )
    for mode, a in acc.items():
        assert a["inter_count"] == 3 and a["intra_count"] == 3
        assert a == direct.accuracy[mode]
    from egovlpv2_rt import cli

    assert (
        cli.main(["eval", "--data", str(root), "--checkpoint", str(root / "missing.safetensors")])
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("egovlpv2: error: --checkpoint: no such file") and err.count("\n") == 1
    assert "missing.safetensors" in err
