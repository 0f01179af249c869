"""QFVS summarize: the top shots by query score with their times; head save/load round trip."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ruptures")

from test_qfvs_features import _model, _Tok

from egovlpv2_rt.errors import InputError
from egovlpv2_rt.tasks.qfvs import segment_shots, shot_features
from egovlpv2_rt.tasks.qfvs_head import QFVSHead, score_shots
from egovlpv2_rt.tasks.qfvs_summarize import (
    load_qfvs_head,
    parse_query,
    save_qfvs_head,
    summarize,
)


def test_summarize_top_shots_with_times(tmp_path):
    model = _model()
    v = model.config.video
    shots = torch.randn(
        10, 5, 3, v.img_size, v.img_size, generator=torch.Generator().manual_seed(4)
    )
    shots = shots.double()
    torch.manual_seed(0)
    head = QFVSHead(model.config.embed_dim).double().eval()
    with torch.no_grad():
        head.summ_head.weight.mul_(50.0)  # spread the scores so the top shots are clear
    got = summarize(model, _Tok(), head, shots, " Car , Sky", budget=0.2)
    feats = shot_features(model, _Tok(), shots, [("Car", "Sky")])
    with torch.no_grad():
        scores = score_shots(head, feats.fused[0, 2:3], segment_shots(feats.prefix_cls))[0]
    want = sorted(torch.topk(scores, 2).indices.tolist())
    assert [s.shot for s in got] == want
    assert [(s.start, s.end) for s in got] == [(5.0 * i, 5.0 * i + 5.0) for i in want]
    assert [s.score for s in got] == pytest.approx([float(scores[i]) for i in want])
    # Round trip through the file: the same summary.
    path = tmp_path / "head.safetensors"
    save_qfvs_head(path, head.float())
    again = load_qfvs_head(path).double()
    assert summarize(model, _Tok(), again, shots, "Car,Sky", budget=0.2)[0].shot == want[0]


def test_bad_query_budget_and_head(tmp_path):
    assert parse_query("Cupglass,Sky") == ("Cupglass", "Sky")
    with pytest.raises(InputError, match="expected two concepts 'c1,c2', got 'Car'"):
        parse_query("Car")
    with pytest.raises(InputError, match="got 'a,,b'"):
        parse_query("a,,b")
    model = _model()
    with pytest.raises(InputError, match=r"budget: expected a fraction in \(0, 1\], got 0"):
        summarize(model, _Tok(), QFVSHead(model.config.embed_dim), torch.zeros(1), "a,b", budget=0)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(InputError, match="not a safetensors QFVS head"):
        load_qfvs_head(bad)
