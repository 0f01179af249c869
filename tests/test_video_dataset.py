"""The clip dataset under a multi-worker DataLoader: bad files are reported, never fatal."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from egovlpv2_rt.video import ClipSpec, VideoError, frame_indices
from egovlpv2_rt.video.dataset import ClipFailure, RobustClipLoader, VideoClipDataset
from egovlpv2_rt.video.synthetic import read_frame_code, write_audio_only, write_video


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("dataset_videos")
    good = [write_video(d / f"good{k}.mp4", 45 + 10 * k, first_index=100 * k) for k in range(3)]
    h264 = Path(good[0]).read_bytes()
    (d / "truncated.mp4").write_bytes(h264[: len(h264) // 2])
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_bytes(b"not a video at all\n" * 50)
    write_audio_only(d / "audio.mp4")
    bad = [
        str(d / "missing.mp4"),
        str(d / "truncated.mp4"),
        str(d / "zero.mp4"),
        str(d / "text.mp4"),
        str(d / "audio.mp4"),
    ]
    specs = []
    for i in range(195):
        p = good[i % 3]
        start = (i % 7) * 0.1
        specs.append(ClipSpec(p, start, start + 0.5))
    for k, b in enumerate(bad):  # spread the bad files through the list
        specs.insert(17 + 40 * k, ClipSpec(b, 0.0, 0.5))
    assert len(specs) == 200
    return specs, bad


def test_loader_with_workers_skips_and_reports_bad_files(clips, caplog):
    specs, bad = clips
    ds = VideoClipDataset(specs, num_frames=4, transform=None)
    loader = RobustClipLoader(ds, batch_size=16, num_workers=2, timeout=120)
    seen = []
    with caplog.at_level(logging.WARNING, logger="egovlpv2_rt.video.dataset"):
        for batch in loader:
            video = batch["video"]
            assert video.dtype == torch.uint8 and video.shape[1:] == (4, 3, 48, 64)
            for v, i in zip(video, batch["index"].tolist(), strict=True):
                spec = specs[i]
                expect = frame_indices(spec.path, spec.start_sec, spec.end_sec)
                k = int(spec.path.rsplit("good", 1)[1][0])
                assert [read_frame_code(f.numpy()) for f in v] == [100 * k + j for j in expect]
                seen.append(i)
    assert len(seen) == 195 and len(set(seen)) == 195
    assert sorted(f.path for f in loader.failures) == sorted(bad)
    errors = {f.path.rsplit("/", 1)[1]: f.error.split(":")[0] for f in loader.failures}
    assert errors == {
        "missing.mp4": "VideoNotFoundError",
        "truncated.mp4": "CorruptVideoError",
        "zero.mp4": "CorruptVideoError",
        "text.mp4": "CorruptVideoError",
        "audio.mp4": "NoVideoStreamError",
    }
    assert "epoch 0: 5 bad sample(s) skipped" in caplog.text


def test_raise_mode_names_the_file(clips):
    specs = clips[0]
    ds = VideoClipDataset(specs[15:20], on_error="raise", transform=None)
    with pytest.raises(VideoError, match=re.escape("missing.mp4: video file not found")):
        for i in range(len(ds)):
            ds[i]
    loader = RobustClipLoader(
        VideoClipDataset(specs[15:20], on_error="raise"), batch_size=5, num_workers=1, timeout=60
    )
    with pytest.raises(Exception, match=re.escape("missing.mp4")):
        list(loader)


def test_skip_mode_returns_failure_items(clips):
    specs, _ = clips
    ds = VideoClipDataset(specs, transform=None)
    item = ds[17]
    assert isinstance(item, ClipFailure) and item.index == 17
    assert item.path.endswith("missing.mp4") and item.error.startswith("VideoNotFoundError")


def test_rand_sampling_is_reproducible_across_worker_counts(clips):
    specs = clips[0]
    subset = [s for s in specs[:40] if "good" in str(s.path)][:8]

    def run(workers):
        ds = VideoClipDataset(subset, sampling="rand", seed=123, transform="train")
        loader = RobustClipLoader(ds, batch_size=4, num_workers=workers, timeout=60)
        return torch.cat([b["video"] for b in loader])

    a, b = run(0), run(2)
    assert a.shape == (8, 4, 3, 224, 224)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_spawn_workers(clips):
    specs, _ = clips
    subset = specs[:4]
    ds = VideoClipDataset(subset, transform=None)
    loader = RobustClipLoader(
        ds, batch_size=4, num_workers=1, multiprocessing_context="spawn", timeout=120
    )
    (batch,) = list(loader)
    assert batch["index"].tolist() == [0, 1, 2, 3] and not loader.failures
