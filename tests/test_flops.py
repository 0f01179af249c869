"""Compute accounting: the custom ops' flop formulas count exactly what the reference path
counts (forward and backward), the base model's video tower per 4-frame 224-px clip on both
paths, and ``egovlpv2 flops``."""

from __future__ import annotations

import json

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from egovlpv2_rt.cli import main
from egovlpv2_rt.config import preset
from egovlpv2_rt.eval.compute import FusionLayersBaseline, compute_report, count_gmacs
from egovlpv2_rt.modeling import EgoVLPv2
from egovlpv2_rt.op_flops import cross_attention_flops, space_time_attention_flops

EGOVLPV2_OPS = {"egovlpv2.divided_space_time_attention", "egovlpv2.gated_cross_attention"}


def _counted(fn) -> tuple[int, set[str]]:
    with FlopCounterMode(display=False) as counter:
        fn()
    ops = {str(op) for op in counter.get_flop_counts()["Global"]}
    return counter.get_total_flops(), ops


@pytest.mark.parametrize("temporal", [False, True])
def test_space_time_formula_by_hand(temporal):
    # B 2, F 3 frames of N 4 patches, D 8: CLS 1 x 13 keys; patches 12 x (5 or 4) keys.
    keys = 5 if not temporal else 4
    want = 2 * (2 * 2 * 13 * 8) + 2 * (2 * 2 * 12 * keys * 8)
    assert space_time_attention_flops((2, 13, 24), 3, temporal) == want
    assert (
        cross_attention_flops((2, 5, 8), (2, 7, 8), (6, 8))
        == 2 * 2 * 2 * 5 * 7 * 8 + 2 * 2 * 5 * 8 * 6
    )


def test_fused_counts_equal_reference_forward_and_backward():
    cfg = preset("tiny")
    video = torch.randn(2, cfg.video.num_frames, 3, cfg.video.img_size, cfg.video.img_size)
    ids = torch.randint(3, 100, (2, 8))
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    got = {}
    for impl in ("reference", "fused"):
        torch.manual_seed(0)
        model = EgoVLPv2(cfg, attention_impl=impl)
        fwd, ops = _counted(lambda m=model: m.forward_fusion(video, ids, mask))
        assert (ops >= EGOVLPV2_OPS) == (impl == "fused")
        dual, _ = _counted(lambda m=model: m.forward_video(video))
        train, _ = _counted(
            lambda m=model: m.forward_fusion(video, ids, mask).video_cls.sum().backward()
        )
        got[impl] = (dual, fwd, train)
    assert got["fused"] == got["reference"]
    assert got["reference"][2] > 2 * got["reference"][1]  # backward counted too


def test_base_video_tower_per_clip_reference_equals_fused():
    cfg = preset("base")
    counts = {}
    for impl in ("reference", "fused"):
        with torch.device("meta"):
            model = EgoVLPv2(cfg, attention_impl=impl, check_finite_pixels=False).eval()
        # Fake CPU tensors: shapes only, and the fused path dispatches its custom ops.
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            model = model.to_empty(device="cpu")
            video = torch.empty(1, 4, 3, 224, 224)
            flops, ops = _counted(lambda m=model, v=video: m.forward_video(v))
            assert ("egovlpv2.divided_space_time_attention" in ops) == (impl == "fused")
            counts[impl] = flops / 2e9
    assert counts["fused"] == counts["reference"]
    report = compute_report(cfg, preset="base")
    assert report.video_tower == pytest.approx(counts["reference"], rel=0.01)
    # By hand (MACs): patch embedding; 12 blocks of time attention and space attention (each
    # its own qkv and proj on all 785 tokens; CLS against all tokens, patches against 1 + F or
    # 1 + N keys) and the MLP; the dual projector 768-4096-4096-4096. Within 1%.
    t, d, f, n = 785, 768, 4, 196
    linear = 12 * t * (2 * (3 * d * d + d * d) + 8 * d * d)
    attn = 12 * ((2 * t * d + 2 * f * n * (f + 1) * d) + (2 * t * d + 2 * f * n * (n + 1) * d))
    patch = f * n * 3 * 16 * 16 * d
    proj = d * 4096 + 2 * 4096 * 4096
    assert report.video_tower == pytest.approx((linear + attn + patch + proj) / 1e9, rel=0.01)


def test_baseline_layers_by_hand():
    torch.manual_seed(0)
    with torch.device("meta"):
        base = FusionLayersBaseline(32, 4, num_layers=2)
        v, t = torch.empty(1, 10, 32), torch.empty(1, 6, 32)
    gmacs = count_gmacs(lambda: base(v, t))
    d = 32

    def layer(l_self: int, l_other: int) -> int:
        self_attn = 4 * l_self * d * d + 2 * l_self * l_self * d
        cross = 2 * l_self * d * d + 2 * l_other * d * d + 2 * l_self * l_other * d
        return self_attn + cross + 8 * l_self * d * d

    head = 2 * d * d + 2 * d * 2
    assert gmacs * 1e9 == pytest.approx(2 * (layer(10, 6) + layer(6, 10)) + head)


def test_cli_flops(capsys):
    assert main(["flops", "--preset", "tiny", "--frames", "2", "--text-len", "8", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["frames"] == 2 and rep["text_length"] == 8
    assert rep["fusion_added"] == pytest.approx(
        rep["fusion_vtm"] - rep["video_tower"] - rep["text_tower"]
    )
    assert rep["vtm_saving"] == pytest.approx(1 - rep["fusion_vtm"] / rep["baseline_vtm"])
    assert main(["flops", "--preset", "tiny"]) == 0
    assert "less than the fusion layers" in capsys.readouterr().out
