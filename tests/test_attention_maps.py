"""Cross-attention maps (``egovlpv2 explain``): the walk through the fused layers gives the
forward's own states, the probabilities reproduce the gated cross-attention outputs, padding gets
no i2t attention; on the shipped model, a synthetic clip's object word attends inside the
object's patches above their area share; the CLI writes the figure and the numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from egovlpv2_rt.config import preset
from egovlpv2_rt.data.synthetic import OBJECT_HALF, SceneObject, render_frame, write_video
from egovlpv2_rt.data.synthetic import _shape_mask as shape_mask
from egovlpv2_rt.modeling import EgoVLPv2
from egovlpv2_rt.modeling.attention_maps import cross_attention_maps
from egovlpv2_rt.ops import reference_gated_cross_attention


def _model(impl: str) -> EgoVLPv2:
    torch.manual_seed(0)
    model = EgoVLPv2(preset("tiny"), attention_impl=impl).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name:
                p.normal_(0.0, 0.5)  # gates on: the two streams read each other
    return model


def _inputs(model: EgoVLPv2):
    v = model.config.video
    gen = torch.Generator().manual_seed(1)
    video = torch.randn(2, v.num_frames, 3, v.img_size, v.img_size, generator=gen).double()
    ids = torch.randint(3, 100, (2, 7), generator=gen)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return video, ids, mask


@pytest.mark.parametrize("impl", ["reference", "fused"])
def test_maps_walk_the_forward_and_reproduce_its_cross_attention(impl):
    model = _model(impl)
    video, ids, mask = _inputs(model)
    maps = cross_attention_maps(model, video, ids, mask)
    out = model.forward_fusion(video, ids, mask, return_traces=True)
    last = len(model.video_model.blocks) - 1
    assert torch.equal(maps.text_states, out.traces[f"tlayer{last:02d}"])
    assert torch.equal(maps.video_states, out.traces[f"vblock{last:02d}"])
    k, b, h, length, tokens = maps.t2i.shape
    assert (k, b, length) == (6, 2, 7) and maps.i2t.shape == (6, 2, h, tokens, 7)
    torch.testing.assert_close(
        maps.t2i.sum(-1), torch.ones(k, b, h, length, dtype=torch.float64), rtol=0, atol=1e-12
    )
    assert float(maps.i2t[:, 1, :, :, 5:].abs().max()) == 0.0  # padding gets no attention
    # The first fused text layer's t2i output from these probabilities: a + gate * dense(P v).
    u = model.config.num_unfused_layers
    layer = model.text_model.encoder.layer[u]
    hid = out.traces[f"tlayer{u - 1:02d}"]
    from egovlpv2_rt.modeling.text import additive_key_mask

    a = layer.attention.output(layer.attention.self(hid, additive_key_mask(mask, hid.dtype)))
    x = out.traces[f"vblock{u - 1:02d}"]
    cross = layer.crossattention_t2i
    vv = cross.self.value(x).reshape(2, tokens, h, -1).transpose(1, 2)
    ctx = (maps.t2i[0] @ vv).transpose(1, 2).reshape(2, length, -1)
    mine = a + layer.alpha_t2i * cross.output.dense(ctx)
    ref = reference_gated_cross_attention(
        cross.self.query(a),
        cross.self.key(x),
        cross.self.value(x),
        None,
        cross.output.dense.weight,
        cross.output.dense.bias,
        layer.alpha_t2i,
        a,
        h,
        1.0 / math.sqrt(cross.self.head_dim),
    )
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)
    assert maps.word_maps().shape == (2, 7, maps.num_frames, maps.grid, maps.grid)


def test_maps_need_eval_mode():
    model = _model("reference").train()
    with pytest.raises(RuntimeError, match="eval"):
        cross_attention_maps(model, *_inputs(model))


def _scene(path, objects):
    size = 64
    frames = [
        render_frame(
            size,
            np.array([90.0, 110.0, 100.0], np.float32),
            np.zeros((0, 4), np.float32),
            objects,
            None,
            np.zeros((size, size, 3), np.float32),
        )
        for _ in range(8)
    ]
    write_video(path, frames, 4, "libx264")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    cells = shape_mask(xx, yy, objects[0], OBJECT_HALF * size).reshape(4, 16, 4, 16)
    return cells.mean(axis=(1, 3)) > 0.25  # the 16-px patches the object covers


def test_object_word_attends_inside_the_object(tmp_path):
    from egovlpv2_rt.runtime import load

    rt = load(device="cpu")
    patches = _scene(tmp_path / "red.mp4", [SceneObject("square", "red", 40.0, 24.0)])
    res = rt.cross_attention(str(tmp_path / "red.mp4"), "#C C rotates the red square")
    from egovlpv2_rt.runtime.explain import word_maps

    maps = word_maps(res, ["red", "square"])  # [2, F, 4, 4]
    share = patches.mean()
    for w in range(2):
        mass = float((maps[w] * patches).sum() / maps[w].sum())
        assert mass > 2 * share, (w, mass, share)


def test_cli_explain(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from egovlpv2_rt.cli import main

    _scene(tmp_path / "c.mp4", [SceneObject("circle", "blue", 24.0, 40.0)])
    fig = tmp_path / "fig.png"
    args = ["explain", "--clip", str(tmp_path / "c.mp4"), "--text", "#C C rotates the blue circle"]
    assert main([*args, "--words", "blue", "circle", "--out", str(fig), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert fig.stat().st_size > 10_000 and fig.read_bytes()[:4] == b"\x89PNG"
    assert [w["word"] for w in out["words"]] == ["blue", "circle"]
    att = np.array(out["words"][0]["attention"])
    assert att.shape == (4, 4, 4) and 0 < att.sum() <= 1.0 + 1e-6
    assert out["tokens"][0] == "<s>" and " circle" in out["tokens"]
    assert main([*args, "--words", "green", "--json"]) == 1
    assert "the caption has no word 'green'" in capsys.readouterr().err
    assert main([*args, "--layer", "2", "--json"]) == 1
    assert "--layer: 2 is not a fused layer" in capsys.readouterr().err
