"""Synthetic QFVS data: the layout the readers load, consistent tags and oracles, same bytes
for the same seed."""

from __future__ import annotations

import hashlib

import pytest

from egovlpv2_rt.tasks.qfvs import shot_frame_indices
from egovlpv2_rt.tasks.qfvs_data import load_qfvs
from egovlpv2_rt.tasks.qfvs_synth import QFVSSynthConfig, synthesize_qfvs
from egovlpv2_rt.video.probe import probe

CFG = QFVSSynthConfig(videos=2, shots=12, queries=3, oracle_cap=4, size=32)


def _digest(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_synthetic_qfvs_layout_and_determinism(tmp_path):
    a = synthesize_qfvs(tmp_path / "a", 7, CFG)
    b = synthesize_qfvs(tmp_path / "b", 7, CFG)
    da, db = _digest(a["root"]), _digest(b["root"])
    assert da == db
    assert sum(k.endswith(".mp4") for k in da) == 2
    assert _digest(synthesize_qfvs(tmp_path / "c", 8, CFG)["root"]) != da

    videos, vocab = load_qfvs(a["root"])
    assert [v.name for v in videos] == ["P01", "P02"]
    assert set(vocab) <= {
        "red",
        "green",
        "blue",
        "yellow",
        "purple",
        "white",
        "square",
        "circle",
        "triangle",
        "bar",
    }
    for v in videos:
        info = probe(a[v.name])
        assert (info.num_frames, info.average_fps) == (60, pytest.approx(1.0))
        assert len(shot_frame_indices(info.num_frames, info.average_fps)) == v.num_shots == 12
        assert 1 <= len(v.queries) <= 3
        for q in v.queries:
            both = [i for i, t in enumerate(v.tags) if {q.concept1, q.concept2} <= t]
            assert 1 <= len(q.oracle) <= 4
            assert set(q.oracle) <= set(both)
            assert len(q.oracle) == min(4, len(both))


def test_config_checks():
    with pytest.raises(ValueError, match=r"videos must be in 1\.\.9"):
        QFVSSynthConfig(videos=10)
    with pytest.raises(ValueError, match="scene_shots"):
        QFVSSynthConfig(scene_shots=(4, 2))
