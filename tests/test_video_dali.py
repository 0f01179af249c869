"""DALI backend: same frames as PyAV, same transform geometry, DDP sharding, bad files.

The pipeline code is the same on DALI's CPU operators (VP8/VP9/MJPEG decoding) and on the GPU
(NVDEC): CPU tests run wherever nvidia-dali is installed; tests marked ``gpu`` need CUDA too.
Tolerances (docs/VIDEO.md), in normalised units (pixel / 255 - mean) / std:
- DALI end to end vs PyAV end to end: mean |diff| <= 0.04, 99th percentile <= 0.12,
  max <= 0.40. The decoded RGB differs by a few levels where chroma changes sharply (chroma
  upsampling and rounding of the YUV->RGB conversion), never by geometry.
- DALI's resize/crop/normalise vs the torch transform on the same decoded frames: max <= 5e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egovlpv2_rt.video import (
    ClipSpec,
    EvalTransform,
    TrainTransform,
    UnsupportedCodecError,
    frame_indices,
    read_clip,
)
from egovlpv2_rt.video.dali_backend import DaliClipLoader, dali_available
from egovlpv2_rt.video.planning import split_seed
from egovlpv2_rt.video.synthetic import read_frame_code, write_video

_OK, _WHY = dali_available("cpu")
pytestmark = pytest.mark.skipif(not _OK, reason=f"DALI is not importable here: {_WHY}")

E2E_MEAN, E2E_P99, E2E_MAX = 0.04, 0.12, 0.40
TRANSFORM_MAX = 5e-3


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("dali_videos")
    vp9 = {"codec": "libvpx-vp9"}
    mjpeg = {"codec": "mjpeg", "pix_fmt": "yuvj420p"}
    return {
        "vp9": write_video(d / "vp9.webm", 60, **vp9),
        "vp9_odd": write_video(d / "odd.webm", 30, width=333, height=250, **vp9),
        "vp9_rot90": write_video(d / "rot90.webm", 24, width=80, height=48, rotation=90, **vp9),
        "vp9_rot270": write_video(d / "rot270.webm", 24, width=80, height=48, rotation=270, **vp9),
        "mjpeg_avi": write_video(d / "mjpeg.avi", 45, **mjpeg),
        "mjpeg_mkv": write_video(d / "mjpeg.mkv", 45, width=96, height=72, **mjpeg),
        "h264": write_video(d / "h264.mp4", 60),
        "dir": d,
    }


def _stats(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    d = (a.float().cpu() - b.float().cpu()).abs().flatten()
    return d.mean().item(), d.quantile(0.99).item(), d.max().item()


def _unrotate(frames: torch.Tensor, rotation: int) -> torch.Tensor:
    return torch.rot90(frames, k=-(rotation // 90), dims=(2, 3))


CPU_FILES = ["vp9", "vp9_odd", "vp9_rot90", "vp9_rot270", "mjpeg_avi", "mjpeg_mkv"]


@pytest.mark.parametrize("name", CPU_FILES)
@pytest.mark.parametrize("num_frames,sampling", [(4, "uniform"), (8, "rand")])
def test_same_frames_as_pyav(media, name, num_frames, sampling):
    p = media[name]
    rot = 90 if name.endswith("rot90") else 270 if name.endswith("rot270") else 0
    idx = frame_indices(p, 0.1, 0.75, num_frames=num_frames, sampling=sampling, seed=4)
    raw = read_clip(p, 0.1, 0.75, num_frames, sampling, backend="dali_cpu", transform=None, seed=4)
    ref = read_clip(p, 0.1, 0.75, num_frames, sampling, backend="pyav", transform=None, seed=4)
    assert raw.shape == ref.shape and raw.dtype == torch.uint8
    assert [read_frame_code(f.numpy()) for f in _unrotate(raw, rot)] == idx
    assert [read_frame_code(f.numpy()) for f in _unrotate(ref, rot)] == idx


@pytest.mark.parametrize("name", CPU_FILES)
@pytest.mark.parametrize("transform", ["eval", "eval_no_aa", "train"])
def test_pixels_within_tolerance_of_pyav(media, name, transform):
    p = media[name]
    tf = {
        "eval": EvalTransform(),
        "eval_no_aa": EvalTransform(antialias=False),
        "train": TrainTransform(),
    }[transform]
    ours = read_clip(p, backend="dali_cpu", transform=tf, seed=11)
    ref = read_clip(p, backend="pyav", transform=tf, seed=11)
    assert ours.shape == ref.shape == (4, 3, 224, 224) and ours.dtype == torch.float32
    mean, p99, mx = _stats(ours, ref)
    assert mean <= E2E_MEAN and p99 <= E2E_P99 and mx <= E2E_MAX, (mean, p99, mx)


@pytest.mark.parametrize("name", CPU_FILES)
@pytest.mark.parametrize("transform", ["eval", "eval_no_aa", "train"])
def test_dali_ops_equal_torch_transform(media, name, transform):
    """Same decoded frames in: DALI's resize/crop/normalise equals the torch transform."""
    p = media[name]
    raw = read_clip(p, backend="dali_cpu", transform=None)
    ours = {
        "eval": EvalTransform(),
        "eval_no_aa": EvalTransform(antialias=False),
        "train": TrainTransform(),
    }[transform]
    dali = read_clip(p, backend="dali_cpu", transform=ours, seed=21)
    ref = ours(raw, generator=split_seed(21)[1]) if isinstance(ours, TrainTransform) else ours(raw)
    assert _stats(dali, ref)[2] <= TRANSFORM_MAX


def test_h264_is_refused_on_cpu_with_the_alternatives(media):
    with pytest.raises(
        UnsupportedCodecError, match=r"backends that can read it: pyav, torchcodec, dali$"
    ):
        read_clip(media["h264"], backend="dali_cpu")


def test_loader_shards_batches_and_reports(media):
    good = [ClipSpec(media[n], 0.0, 0.7) for n in ("vp9", "vp9_odd", "mjpeg_avi", "mjpeg_mkv")]
    bad = [ClipSpec(media["dir"] / "missing.webm"), ClipSpec(media["h264"])]
    clips = good * 2 + bad
    seen, failures = [], []
    for shard in range(2):
        loader = DaliClipLoader(clips, batch_size=3, device="cpu", shard_id=shard, num_shards=2)
        for batch in loader:
            assert batch["video"].shape[1:] == (4, 3, 224, 224)
            for v, i in zip(batch["video"], batch["index"].tolist(), strict=True):
                ref = read_clip(clips[i].path, clips[i].start_sec, clips[i].end_sec)
                assert _stats(v, ref)[0] <= E2E_MEAN
                seen.append(i)
        failures += loader.failures
    assert sorted(seen) == list(range(8))
    assert sorted(i for i, _, _ in failures) == [8, 9]
    kinds = sorted(e.split(":")[0] for _, _, e in failures)
    assert kinds == ["UnsupportedCodecError", "VideoNotFoundError"]
    with pytest.raises(ValueError, match="shard_id"):
        DaliClipLoader(clips, batch_size=2, device="cpu", shard_id=2, num_shards=2)


_GPU_OK, _GPU_WHY = dali_available("gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not _GPU_OK, reason=f"DALI GPU path unavailable: {_GPU_WHY}")
@pytest.mark.parametrize("name", ["h264", "vp9", "mjpeg_avi", "vp9_rot90"])
def test_gpu_decoding_matches_pyav(media, name):
    p = media[name]
    rot = 90 if name.endswith("rot90") else 0
    idx = frame_indices(p, num_frames=8)
    raw = read_clip(p, num_frames=8, backend="dali", transform=None)
    assert raw.is_cuda
    assert [read_frame_code(f.cpu().numpy()) for f in _unrotate(raw, rot)] == idx
    out = read_clip(p, backend="dali")
    assert out.is_cuda and out.shape == (4, 3, 224, 224)
    mean, p99, mx = _stats(out, read_clip(p))
    assert mean <= E2E_MEAN and p99 <= E2E_P99 and mx <= E2E_MAX, (mean, p99, mx)


@pytest.mark.gpu
@pytest.mark.skipif(not _GPU_OK, reason=f"DALI GPU path unavailable: {_GPU_WHY}")
def test_gpu_loader_yields_cuda_batches(media):
    clips = [media["h264"], media["vp9"], media["mjpeg_avi"]] * 2
    loader = DaliClipLoader(clips, batch_size=4, device="gpu")
    batches = list(loader)
    assert [b["video"].shape[0] for b in batches] == [4, 2]
    assert all(b["video"].is_cuda for b in batches)
    ref = torch.stack([read_clip(c) for c in clips])
    got = torch.cat([b["video"] for b in batches]).cpu()
    assert _stats(got, ref)[0] <= E2E_MEAN
    assert np.isfinite(got.numpy()).all()
