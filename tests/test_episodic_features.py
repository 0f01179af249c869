"""EgoNLQ / EgoMQ feature extraction: the window planner against a transcription of the
original's arithmetic, and the cached-prefix fused features against the original's one pass
per query (float64)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from egovlpv2_rt.config import preset
from egovlpv2_rt.errors import InputError
from egovlpv2_rt.modeling import EgoVLPv2
from egovlpv2_rt.tasks.episodic.features import (
    FeatureSettings,
    nlq_clip_features,
    nlq_clip_features_one_pass,
)
from egovlpv2_rt.tasks.episodic.windows import clip_frame_indices, plan_windows


def original_windows(start_sec, end_sec, vlen, frames_per_window, fps=30):
    """The original's read_frames_decord_start_end + truncation, transcribed."""
    num_frames = (end_sec - start_sec) * 1.87 * frames_per_window
    start, end = start_sec * fps, end_sec * fps
    acc_samples = num_frames + 1
    start = max(0, start)
    end = min(vlen, end)
    intervals = np.linspace(start=start, stop=end, num=int(acc_samples) + 1).astype(int)
    ranges = [(interv, intervals[i + 1] - 1) for i, interv in enumerate(intervals[:-1])]
    idxs = [(a + b) // 2 for a, b in ranges]
    f = len(idxs) // frames_per_window * frames_per_window
    return np.asarray(idxs[:f]).reshape(-1, frames_per_window)


@pytest.mark.parametrize("frames_per_window", [4, 16])
@pytest.mark.parametrize(
    ("start", "end", "vlen"),
    [(0.0, 480.0, 14400), (12.3, 492.3, 20000), (3.0, 7.5, 400), (100.0, 130.0, 3500)],
)
def test_windows_equal_the_original_arithmetic(start, end, vlen, frames_per_window):
    got = plan_windows(start, end, vlen, frames_per_window)
    want = original_windows(start, end, vlen, frames_per_window)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_window_counts_of_an_eight_minute_clip():
    # 480 s x 1.87 windows/s: the 897 windows of most Ego4D NLQ clips.
    assert plan_windows(10.0, 490.0, 20000, 4).shape == (897, 4)
    assert plan_windows(10.0, 490.0, 20000, 16).shape == (897, 16)


def test_real_frame_rate_and_clamping():
    # 25 fps: frame numbers from the real rate, inside the clip.
    w = plan_windows(2.0, 10.0, 1000, 4, fps=25.0)
    assert w.min() >= 50 and w.max() < 250
    # The clip runs past the video's end: sampling stops at the last frame.
    w = clip_frame_indices(0.0, 10.0, 120, 16)
    assert w.max() == 119 and w.min() == 0
    np.testing.assert_array_equal(np.diff(w) >= 0, True)


@pytest.mark.parametrize(
    ("start", "end", "vlen", "match"),
    [
        (5.0, 5.0, 300, "video_start_sec < video_end_sec"),
        (20.0, 30.0, 300, "after the video's last frame"),
        (0.0, 0.1, 300, "fewer than one window"),
        (float("nan"), 3.0, 300, "finite"),
    ],
)
def test_bad_clips_are_named(start, end, vlen, match):
    with pytest.raises(InputError, match=match):
        plan_windows(start, end, vlen, 16)


def _fusion_model(impl: str, num_fuse_block: int = 2) -> EgoVLPv2:
    cfg = preset("tiny")
    cfg = cfg.replace(
        video=dataclasses.replace(cfg.video, depth=4),
        text=dataclasses.replace(cfg.text, num_hidden_layers=4),
        fusion=dataclasses.replace(cfg.fusion, num_layers=4, num_fuse_block=num_fuse_block),
    )
    torch.manual_seed(0)
    model = EgoVLPv2(cfg, attention_impl=impl).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name or "timeattn" in name:
                p.normal_(0.0, 0.5)  # the gates on: the fused features depend on the query
    return model


class _Tok:
    """A tokenizer stand-in: ids from characters, RoBERTa's <s> ... </s> and padding."""

    def __call__(self, texts, *, max_length, padding, truncation):
        assert padding == "max_length" and truncation
        ids = torch.ones(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, t in enumerate(texts):
            body = [3 + (ord(c) % 90) for c in t][: max_length - 2]
            row = [0, *body, 2]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("impl", ["reference", "fused"])
@pytest.mark.parametrize("num_fuse_block", [1, 2])
def test_cached_prefix_equals_one_pass_per_query(impl, num_fuse_block):
    model = _fusion_model(impl, num_fuse_block)
    v = model.config.video
    gen = torch.Generator().manual_seed(1)
    video = torch.randn(5, v.num_frames, 3, v.img_size, v.img_size, generator=gen).double()
    # Different lengths: the shorter queries' padding is trimmed in the fused pairs.
    queries = ["When did I cut it?", "where is the red bowl", "Pick"]
    s = FeatureSettings(task="nlq", query_max_length=16, window_batch=2, pair_batch=5)
    ours = nlq_clip_features(model, _Tok(), video, None, queries, s)
    ref = nlq_clip_features_one_pass(model, _Tok(), video, None, queries, s)
    assert ours.fused.shape == (3, 5, model.config.embed_dim)
    assert ours.text.shape == (3, 16, model.config.text.hidden_size)
    rel = (ours.fused.double() - ref.fused.double()).abs().max() / ref.fused.abs().max()
    assert rel < 1e-10
    # The query matters (the gates are on): features of different queries differ.
    assert (ours.fused[0] - ours.fused[1]).abs().max() > 1e-3
    torch.testing.assert_close(ours.text, ref.text, rtol=0, atol=0)
    torch.testing.assert_close(ours.attention_mask, ref.attention_mask, rtol=0, atol=0)


def test_fused_cls_from_the_cache_equals_forward_fusion():
    model = _fusion_model("reference")
    v, t = model.config.video, model.config.text
    gen = torch.Generator().manual_seed(2)
    video = torch.randn(3, v.num_frames, 3, v.img_size, v.img_size, generator=gen).double()
    ids = torch.randint(3, t.vocab_size, (3, 9), generator=gen)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[2, 6:] = 0
    want = model.forward_fusion(video, ids, mask).video_cls
    h, km = model.fusion_text_prefix(ids, mask)
    got = model.fused_video_cls(model.video_fusion_cache(video), h, km)
    assert want is not None
    assert ((got - want).abs().max() / want.abs().max()).item() < 1e-10
    # Tiling pairs row r*B + b with row b.
    tiled = model.video_fusion_cache(video).tile(2)
    assert torch.equal(tiled.tokens[3:], tiled.tokens[:3])


def test_fused_cls_refuses_training_mode_and_mismatched_batches():
    model = _fusion_model("reference")
    v = model.config.video
    video = torch.zeros(2, v.num_frames, 3, v.img_size, v.img_size, dtype=torch.float64)
    ids = torch.full((3, 5), 5)
    mask = torch.ones(3, 5, dtype=torch.long)
    cache = model.video_fusion_cache(video)
    h, km = model.fusion_text_prefix(ids, mask)
    with pytest.raises(ValueError, match="batch sizes differ"):
        model.fused_video_cls(cache, h, km)
    model.train()
    with pytest.raises(RuntimeError, match="inference"):
        model.fused_video_cls(cache, h[:2], km[:2])


def test_feature_settings_are_checked():
    with pytest.raises(InputError, match="task"):
        FeatureSettings(task="vq")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="window_batch"):
        FeatureSettings(task="mq", window_batch=0)
    assert FeatureSettings(task="mq").window_frames == 16
    assert FeatureSettings(task="nlq").window_frames == 4
    assert "backend" not in FeatureSettings(task="nlq").numerics()


def test_mq_features_decode_the_next_chunk_while_the_model_runs(monkeypatch):
    # 5 windows in chunks of 2: chunk k + 1 is being decoded (read_windows, background thread)
    # while the model runs on chunk k; the features equal the chunk-by-chunk computation.
    import threading

    from egovlpv2_rt.tasks.episodic import features as feats

    model = _fusion_model("reference")
    v = model.config.video
    windows = np.arange(5 * v.num_frames, dtype=np.int64).reshape(5, v.num_frames)
    started: dict[int, threading.Event] = {k: threading.Event() for k in (0, 2, 4)}

    def read_windows(video, win, size, *, backend, dtype):
        first = int(win[0, 0]) // v.num_frames
        started[first].set()
        gen = torch.Generator().manual_seed(first)
        return torch.randn(len(win), v.num_frames, 3, size, size, generator=gen, dtype=dtype)

    monkeypatch.setattr(feats, "read_windows", read_windows)
    real = model.forward_video
    waited = []

    def forward_video(clip):
        first = next(k for k in started if started[k].is_set() and k not in waited)
        waited.append(first)
        if first + 2 in started:  # without the overlap this would time out
            assert started[first + 2].wait(timeout=10), f"chunk {first + 2} not decoding"
        return real(clip)

    monkeypatch.setattr(model, "forward_video", forward_video)
    s = FeatureSettings(task="mq", window_batch=2)
    got = feats.mq_clip_features(model, "video.mp4", windows, s)
    want = torch.cat(
        [
            real(
                read_windows(None, windows[a:b], v.img_size, backend="pyav", dtype=model.dtype)
            ).embeds.float()
            for a, b in ((0, 2), (2, 4), (4, 5))
        ]
    )
    assert waited == [0, 2, 4]
    assert got.shape == (5, model.config.projection_dim)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
