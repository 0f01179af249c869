"""The overlapped decode -> encode pipeline: batch k+1 decodes while batch k is encoded, the
results come in order, at most ``depth`` decoded batches wait, a decode error surfaces at its
batch, and ``Runtime.iter_encode_video`` gives the embeddings of ``encode_video`` and reports a
corrupt file without stopping the others."""

from __future__ import annotations

import threading

import pytest
import torch
from _tiny_assets import synthetic_clips, tiny_model_dir

from egovlpv2_rt.runtime import load
from egovlpv2_rt.video import ClipSpec, VideoError
from egovlpv2_rt.video.pipeline import DecodedBatch, overlapped


def test_next_batch_decodes_while_the_current_one_encodes():
    started = [threading.Event() for _ in range(4)]
    waiting: list[int] = []

    def decode(pos):
        k = pos[0]
        started[k].set()
        return DecodedBatch(list(pos), torch.full((len(pos), 1), float(k)))

    def encode(pixels):
        k = int(pixels[0, 0])
        # Without the overlap the next decode would not have started: this would time out.
        if k + 1 < len(started):
            assert started[k + 1].wait(timeout=10), f"batch {k + 1} not decoding during {k}"
        waiting.append(sum(e.is_set() for e in started) - k - 1)
        return pixels * 2

    out = list(overlapped([[0], [1], [2], [3]], decode, encode, depth=1))
    assert [b.positions for b in out] == [[0], [1], [2], [3]]
    assert [float(b.embeddings[0, 0]) for b in out] == [0.0, 2.0, 4.0, 6.0]
    assert max(waiting) <= 1  # bounded: never more than depth batches decoded ahead


def test_decode_error_surfaces_at_its_batch_and_stops():
    def decode(pos):
        if pos[0] == 2:
            raise VideoError("clip 2: broken")
        return DecodedBatch(list(pos), torch.zeros(1, 1))

    got = []
    with pytest.raises(VideoError, match="clip 2: broken"):
        for b in overlapped([[0], [1], [2], [3]], decode, lambda x: x, depth=2):
            got.append(b.positions[0])
    assert got == [0, 1]
    with pytest.raises(ValueError, match="depth"):
        list(overlapped([[0]], decode, lambda x: x, depth=0))


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    return load(tiny_model_dir(tmp_path_factory), device="cpu")


def test_iter_encode_video_skips_a_corrupt_file(rt, tmp_path_factory, tmp_path):
    root, records = synthetic_clips(tmp_path_factory)
    good = [ClipSpec(str(root / "videos" / f"{r.video_uid}.mp4"), r.clip_start, r.clip_end)
            for r in records[:5]]  # fmt: skip
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    clips = [good[0], good[1], ClipSpec(str(bad), 0.0, 1.0), good[2], good[3], good[4]]
    want = rt.encode_video(good, batch_size=2, output="torch")
    batches = list(rt.iter_encode_video(clips, batch_size=2, skip_bad=True))
    assert [b.positions for b in batches] == [[0, 1], [3], [4, 5]]
    assert [(p, type(e)) for b in batches for p, e in b.failed] == [
        (2, type(batches[1].failed[0][1]))
    ]
    assert isinstance(batches[1].failed[0][1], VideoError)
    assert "broken.mp4" in str(batches[1].failed[0][1])
    got = torch.cat([b.embeddings for b in batches])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(VideoError, match=r"broken\.mp4"):
        rt.encode_video(clips, batch_size=2)
