"""Frame-accurate decoding on every kind of file, and the typed errors of bad files.

Every test video draws its frame number into each frame (egovlpv2_rt.video.synthetic), so a
test reads the number back and checks that the reader returned exactly the frame it claims.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from egovlpv2_rt.video import (
    BackendUnavailableError,
    CorruptVideoError,
    FramePaddingWarning,
    InsufficientFramesError,
    NoVideoStreamError,
    UnsupportedCodecError,
    VideoError,
    VideoNotFoundError,
    decode_clip,
    frame_indices,
    plan_clip,
    probe,
    read_clip,
)
from egovlpv2_rt.video.pyav_backend import decode_pyav
from egovlpv2_rt.video.synthetic import read_frame_code, write_audio_only, write_video
from egovlpv2_rt.video.torchcodec_backend import torchcodec_available

H264_GOP = {"g": "24", "bf": "3"}  # several GOPs with B-frames in a short file


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("decode_videos")
    v = {
        "h264": write_video(d / "h264.mp4", 90),
        "h264_gop": write_video(d / "gop.mp4", 150, options=H264_GOP),
        "vp9": write_video(d / "vp9.webm", 90, codec="libvpx-vp9"),
        "mjpeg": write_video(d / "mjpeg.avi", 45, codec="mjpeg", pix_fmt="yuvj420p"),
        "one_sec": write_video(d / "one_sec.mp4", 30),
        "odd": write_video(d / "odd.webm", 40, width=333, height=250, codec="libvpx-vp9"),
        "portrait": write_video(d / "portrait.mp4", 30, width=64, height=48, rotation=90),
        "faststart": write_video(d / "fs.mp4", 60, container_options={"movflags": "faststart"}),
        "audio": write_audio_only(d / "audio_only.mp4"),
    }
    for name, src, frac in [
        ("trunc_mp4", "h264", 0.6),
        ("trunc_fs", "faststart", 0.6),
        ("trunc_webm", "vp9", 0.6),
    ]:
        data = Path(v[src]).read_bytes()
        dst = d / f"{name}{os.path.splitext(v[src])[1]}"
        dst.write_bytes(data[: int(len(data) * frac)])
        v[name] = str(dst)
    (d / "empty.mp4").write_bytes(b"")
    v["empty"] = str(d / "empty.mp4")
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    v["garbage"] = str(d / "garbage.mp4")
    return v


def codes(frames: torch.Tensor) -> list[int]:
    return [read_frame_code(f.numpy()) for f in frames]


@pytest.mark.parametrize(
    "name,n",
    [("h264", 90), ("vp9", 90), ("mjpeg", 45), ("one_sec", 30), ("odd", 40), ("h264_gop", 150)],
)
@pytest.mark.parametrize("num_frames,sampling", [(4, "uniform"), (8, "rand"), (16, "uniform")])
def test_frames_are_exact(media, name, n, num_frames, sampling):
    p = media[name]
    assert probe(p).num_frames == n
    idx = frame_indices(p, num_frames=num_frames, sampling=sampling, seed=3)
    frames = read_clip(p, num_frames=num_frames, sampling=sampling, seed=3, transform=None)
    assert frames.dtype == torch.uint8 and frames.shape[:2] == (num_frames, 3)
    assert codes(frames) == idx


def test_sizes_and_durations(media):
    assert probe(media["odd"]).display_size == (250, 333)
    assert read_clip(media["odd"], transform=None).shape == (4, 3, 250, 333)
    one = probe(media["one_sec"])
    assert one.num_frames == 30 and one.duration == pytest.approx(1.0)
    assert frame_indices(media["one_sec"], 0.0, 1.0) == [3, 10, 18, 25]


def test_every_frame_reachable_around_keyframes(media):
    """Single frames right before/after keyframes (mp4 seeks by dts, B-frames reorder)."""
    p = media["h264_gop"]
    info = probe(p)
    keys = [int(np.searchsorted(info.pts, k)) for k in info.key_pts]
    assert len(keys) >= 5
    wanted = sorted({j for k in keys[1:] for j in (k - 2, k - 1, k, k + 1)})
    for j in wanted:
        got = decode_pyav(info, [j])
        assert read_frame_code(got[j]) == j
    many = decode_pyav(info, wanted)
    assert [read_frame_code(many[j]) for j in wanted] == wanted


def test_skipping_nonref_frames_changes_no_pixel(media):
    info = probe(media["h264_gop"])
    idx = [5, 6, 40, 77, 78, 79, 149]
    a = decode_pyav(info, idx, skip_nonref=True)
    b = decode_pyav(info, idx, skip_nonref=False)
    assert all(np.array_equal(a[i], b[i]) for i in idx)
    assert [read_frame_code(a[i]) for i in idx] == idx


def test_rotation_metadata_is_applied(media):
    p = media["portrait"]
    info = probe(p)
    assert (info.rotation, info.width, info.height) == (90, 64, 48)
    assert info.display_size == (64, 48)
    frames = read_clip(p, transform=None)
    assert frames.shape == (4, 3, 64, 48)
    # Undo the 90-degree counter-clockwise display rotation to read the code back.
    unrotated = torch.rot90(frames, k=-1, dims=(2, 3))
    assert codes(unrotated) == frame_indices(p)
    assert read_clip(p).shape == (4, 3, 224, 224)


def test_eval_output_is_the_transform_of_the_frames(media):
    from egovlpv2_rt.video import EvalTransform

    p = media["odd"]
    raw = read_clip(p, 0.2, 1.1, transform=None)
    out = read_clip(p, 0.2, 1.1)
    assert out.shape == (4, 3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, EvalTransform()(raw), rtol=0, atol=0)
    half = read_clip(p, 0.2, 1.1, dtype=torch.float16)
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), out, rtol=0, atol=2e-3)


@pytest.mark.skipif(
    not torchcodec_available()[0],
    reason=f"torchcodec does not load here: {torchcodec_available()[1]}",
)
@pytest.mark.parametrize("name", ["h264", "h264_gop", "vp9", "mjpeg", "odd", "portrait"])
def test_torchcodec_matches_pyav(media, name):
    p = media[name]
    a = read_clip(p, 0.1, 0.9, num_frames=6, transform=None)
    b = read_clip(p, 0.1, 0.9, num_frames=6, transform=None, backend="torchcodec")
    assert a.shape == b.shape
    assert (a.int() - b.int()).abs().max().item() == 0


def test_missing_file(media, tmp_path):
    with pytest.raises(VideoNotFoundError, match=re.escape("nope.mp4: video file not found")) as ei:
        read_clip(tmp_path / "nope.mp4")
    assert isinstance(ei.value, FileNotFoundError) and ei.value.path.endswith("nope.mp4")
    with pytest.raises(VideoNotFoundError, match="not a regular file"):
        read_clip(tmp_path)


@pytest.mark.parametrize(
    "name,match",
    [
        ("empty", "empty file"),
        ("garbage", "cannot open container"),
        ("trunc_mp4", "cannot open container"),  # moov atom lost with the tail
    ],
)
def test_corrupt_files(media, name, match):
    with pytest.raises(CorruptVideoError, match=match) as ei:
        read_clip(media[name])
    assert ei.value.path == media[name]


def test_audio_only(media):
    with pytest.raises(NoVideoStreamError, match=r"no video stream \(streams present: audio\)"):
        read_clip(media["audio"])


def test_truncated_webm_reads_what_is_left(media):
    p = media["trunc_webm"]
    n = probe(p).num_frames
    assert 20 < n < 90
    frames = read_clip(p, transform=None, num_frames=8)
    assert codes(frames) == frame_indices(p, num_frames=8)
    assert max(frame_indices(p, num_frames=8)) < n


def test_truncated_faststart_pads_or_raises(media):
    """The index survives (moov first) but the tail packets are lost or damaged."""
    p = media["trunc_fs"]
    n = probe(p).num_frames
    plan = plan_clip(p, num_frames=n)
    with pytest.raises(InsufficientFramesError, match="could not be decoded") as ei:
        decode_clip(plan, short="raise")
    assert 0 < ei.value.available < ei.value.requested == n
    with pytest.warns(FramePaddingWarning, match="repeating the last decoded frame"):
        frames = decode_clip(plan, short="pad")
    assert frames.shape[0] == n
    k = ei.value.available
    assert all(torch.equal(frames[j], frames[k - 1]) for j in range(k, n))
    got = codes(frames[:k])
    assert got == sorted(got) and got[0] == 0


def test_unsupported_codec_for_backend(media):
    with pytest.raises(
        UnsupportedCodecError,
        match="codec 'h264' cannot be decoded by backend "
        "'dali_cpu'; backends that can read it: pyav, torchcodec, dali",
    ) as ei:
        from egovlpv2_rt.video.codecs import check_codec

        check_codec(probe(media["h264"]), "dali_cpu")
    assert ei.value.supported_by == ("pyav", "torchcodec", "dali")


def test_bad_arguments(media):
    p = media["h264"]
    with pytest.raises(ValueError, match="backend must be one of"):
        read_clip(p, backend="opencv")
    with pytest.raises(ValueError, match="sampling must be"):
        read_clip(p, sampling="middle")
    with pytest.raises(ValueError, match="num_frames must be a positive int"):
        read_clip(p, num_frames=0)
    with pytest.raises(ValueError, match="transform must be"):
        read_clip(p, transform="val")


def test_every_error_is_a_video_error():
    for cls in (
        VideoNotFoundError,
        CorruptVideoError,
        NoVideoStreamError,
        UnsupportedCodecError,
        InsufficientFramesError,
        BackendUnavailableError,
    ):
        assert issubclass(cls, VideoError)


def test_no_warning_on_clean_reads(media):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("h264", "vp9", "mjpeg", "odd", "portrait"):
            read_clip(media[name], transform=None)


def test_unavailable_backends_say_why(media, monkeypatch):
    from egovlpv2_rt.video import dali_backend, torchcodec_backend

    monkeypatch.setattr(
        torchcodec_backend, "_load", lambda: (None, "ImportError: No module named 'torchcodec'")
    )
    with pytest.raises(
        BackendUnavailableError,
        match=r"backend 'torchcodec' cannot be loaded "
        r"here \(ImportError: No module named 'torchcodec'\)",
    ):
        read_clip(media["h264"], backend="torchcodec")
    monkeypatch.setattr(
        dali_backend, "_load", lambda: (None, "ImportError: No module named 'nvidia'")
    )
    with pytest.raises(
        BackendUnavailableError,
        match="backend 'dali_cpu' is unavailable: nvidia-dali is not importable",
    ):
        read_clip(media["vp9"], backend="dali_cpu")
