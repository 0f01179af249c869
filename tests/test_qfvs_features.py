"""QFVS shot features (cached prefix vs the direct fused computation, float64) and the
segmentation against a brute-force transcription of the original's KTS objective."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

pytest.importorskip("ruptures")

from egovlpv2_rt.config import preset
from egovlpv2_rt.errors import InputError
from egovlpv2_rt.modeling import EgoVLPv2
from egovlpv2_rt.tasks.qfvs import (
    prompt_inputs,
    segment_shots,
    shot_features,
    shot_features_direct,
    shot_frame_indices,
)


def _model(num_frames: int = 5) -> EgoVLPv2:
    cfg = preset("tiny")
    cfg = cfg.replace(
        video=dataclasses.replace(cfg.video, depth=4, num_frames=num_frames),
        text=dataclasses.replace(cfg.text, num_hidden_layers=4),
        fusion=dataclasses.replace(cfg.fusion, num_layers=4, num_fuse_block=2),
    )
    torch.manual_seed(0)
    model = EgoVLPv2(cfg, attention_impl="reference").double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name or "timeattn" in name:
                p.normal_(0.0, 0.5)  # the gates on: the fused features depend on the prompt
    return model


class _Tok:
    """Character ids in RoBERTa's <s> ... </s> frame, padded with 1."""

    def __call__(self, texts, *, max_length, padding, truncation):
        assert padding == "max_length" and truncation
        ids = torch.ones(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, t in enumerate(texts):
            row = [0, *[3 + (ord(c) % 90) for c in t][: max_length - 2], 2]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def test_shot_features_equal_the_direct_fused_computation():
    model = _model()
    v = model.config.video
    gen = torch.Generator().manual_seed(3)
    shots = torch.randn(3, 5, 3, v.img_size, v.img_size, generator=gen).double()
    queries = [("Car", "Cupglass"), ("Sky", "Tree")]
    got = shot_features(model, _Tok(), shots, queries, shot_batch=2, pair_batch=4)
    want = shot_features_direct(model, _Tok(), shots, queries)
    assert got.fused.shape == (2, 3, 3, model.config.embed_dim)
    assert got.prefix_cls.shape == (3, v.embed_dim)
    assert got.fused.dtype == torch.float64
    rel = (got.fused - want).abs().max() / want.abs().max()
    assert rel.item() < 1e-10
    # The prompt matters: c1 and c2 prompts give different features for the same shot.
    assert (got.fused[0, 0] - got.fused[0, 1]).abs().max().item() > 1e-3
    # prefix CLS = the cache's CLS after the unfused blocks, exactly, taken in the same batches
    # of 2 shots (some CPUs' matmuls round a batch of 3 differently from batches of 2 and 1,
    # by ~1e-16 in float64).
    cache_cls = [model.video_fusion_cache(shots[s : s + 2]).tokens[:, 0] for s in (0, 2)]
    torch.testing.assert_close(got.prefix_cls, torch.cat(cache_cls), rtol=0, atol=0)


def test_model_must_take_five_frames():
    model = _model(num_frames=4)
    shots = torch.zeros(1, 5, 3, 32, 32, dtype=torch.float64)
    with pytest.raises(InputError, match="load it with num_frames: 5"):
        shot_features(model, _Tok(), shots, [("a", "b")])


def test_a_prompt_longer_than_the_model_is_refused_never_cut():
    model = _model()
    limit = model.config.text.max_text_length
    # _Tok spends one token per character: "There is a " + c1 + " and a " + c2 + <s> </s>.
    room = limit - len("There is a  and a ") - 2
    ok = ("a" * (room // 2), "b" * (room - room // 2))
    ids, mask = prompt_inputs(model, _Tok(), [ok])
    assert ids.shape == (3, limit) and int(mask[2].sum()) == limit
    with pytest.raises(InputError, match=r"QFVS prompt 'There is a a+ and a bb+' takes more than"):
        prompt_inputs(model, _Tok(), [(ok[0], ok[1] + "b")])


def test_shot_frame_indices():
    # 30 fps, 12.5 s: 12 whole seconds + 1 -> 13 seconds of 1 fps frames -> 2 shots.
    idx = shot_frame_indices(375, 30.0)
    np.testing.assert_array_equal(idx, [[0, 30, 60, 90, 120], [150, 180, 210, 240, 270]])
    assert shot_frame_indices(10, 1.0).shape == (2, 5)
    with pytest.raises(InputError, match="shorter than one shot"):
        shot_frame_indices(100, 30.0)


def _original_kts(x: np.ndarray, max_cps: int, lmax: int) -> list[int]:
    """cpd_auto(K = x x^T, max_cps, vmax=1, lmax) by brute force over every cut set."""
    n = len(x)

    def scatter(a, b):
        seg = x[a:b]
        return float(((seg - seg.mean(0)) ** 2).sum())

    best = None
    for m in range(max_cps + 1):
        low = math.inf
        arg = None
        for cuts in itertools.combinations(range(1, n), m):
            bounds = [0, *cuts, n]
            if max(b - a for a, b in itertools.pairwise(bounds)) > lmax:
                continue
            s = sum(scatter(a, b) for a, b in itertools.pairwise(bounds))
            if s < low:
                low, arg = s, bounds
        if arg is None:
            continue
        cost = low / n + (0.0 if m == 0 else m / (2 * n) * (math.log(n / m) + 1))
        if best is None or cost < best[0]:
            best = (cost, [b - a for a, b in itertools.pairwise(arg)])
    assert best is not None
    return best[1]


@pytest.mark.parametrize("seed", range(6))
def test_segments_match_brute_force_kts(seed):
    rng = np.random.default_rng(seed)
    # Three to four regimes of different means, a few shots each.
    lengths = rng.integers(2, 5, size=rng.integers(3, 5))
    x = np.concatenate([rng.normal(rng.normal(0, 3, 4), 0.5, (k, 4)) for k in lengths])
    got = segment_shots(x, max_segments=5, max_shots=6)
    assert got == _original_kts(x, 4, 6)
    assert sum(got) == len(x)


def test_segments_clear_blocks_and_limits():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(m, 0.05, (n, 8)) for m, n in ((0, 30), (5, 50), (-5, 20))])
    assert segment_shots(x) == [30, 50, 20]
    # One long still stretch: split to respect max_shots.
    flat = rng.normal(0, 0.01, (25, 3))
    got = segment_shots(flat, max_segments=4, max_shots=10)
    assert max(got) <= 10 and sum(got) == 25 and len(got) <= 4
    assert segment_shots(flat[:1]) == [1]
    with pytest.raises(InputError, match="cannot be cut into at most 2 segments of at most 10"):
        segment_shots(flat, max_segments=2, max_shots=10)
