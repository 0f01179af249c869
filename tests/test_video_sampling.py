"""The frame-sampling rule: the original's arithmetic, real timestamps, EgoClip chunk layout."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest

from egovlpv2_rt.video import (
    ClipRangeError,
    ClipRangeWarning,
    EgoClipLayout,
    InsufficientFramesError,
    frame_indices,
    probe,
    read_clip,
    segment_indices,
)
from egovlpv2_rt.video.synthetic import read_frame_code, write_video


def original_sample_frames_start_end(num_frames, start, end, sample="rand"):
    """Transcription of the original EgoVLPv2 ``sample_frames_start_end`` (the reference)."""
    acc_samples = min(num_frames, end)
    intervals = np.linspace(start=start, stop=end, num=acc_samples + 1).astype(int)
    ranges = []
    for idx, interv in enumerate(intervals[:-1]):
        ranges.append((interv, intervals[idx + 1] - 1))
    if sample == "rand":
        return [random.choice(range(x[0], x[1])) for x in ranges]
    return [(x[0] + x[1]) // 2 for x in ranges]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("sampling_videos")
    # Variable frame rate: bursts of 30 fps and 10 fps frames.
    durations = [1 / 30 if (i // 5) % 2 == 0 else 1 / 10 for i in range(59)]
    vfr_times = np.concatenate([[0.0], np.cumsum(durations)])
    out = {
        "cfr": write_video(d / "cfr.mp4", 90),
        "vfr": write_video(d / "vfr.mp4", 60, timestamps=vfr_times),
        "vfr_times": vfr_times,
        "dir": d,
    }
    # EgoClip layout with 2-second chunks (60 frames at 30 fps) numbered globally.
    vid = d / "video_uid"
    vid.mkdir()
    for k in range(3):
        write_video(vid / f"{k}.mp4", 60 if k < 2 else 25, first_index=60 * k)
    out["chunks"] = vid
    return out


@pytest.mark.parametrize("num_frames", [1, 4, 8, 16])
@pytest.mark.parametrize("start,end", [(0, 90), (15, 45), (7, 200), (100, 117), (3, 19)])
def test_uniform_equals_original(num_frames, start, end):
    if end - start < num_frames:
        pytest.skip("the original differs by design when a segment is empty")
    ours = segment_indices(start, end, num_frames, "uniform").tolist()
    assert ours == original_sample_frames_start_end(num_frames, start, end, "uniform")


@pytest.mark.parametrize("start,end,num_frames", [(0, 90, 4), (15, 47, 8), (200, 260, 16)])
def test_rand_is_seeded_and_matches_original_support(start, end, num_frames):
    a = segment_indices(start, end, num_frames, "rand", seed=7)
    b = segment_indices(start, end, num_frames, "rand", seed=7)
    assert a.tolist() == b.tolist()
    edges = np.linspace(start, end, num_frames + 1).astype(int)
    # The original draws random.choice(range(a_k, a_{k+1} - 1)): collect its support.
    seen = set()
    for s in range(300):
        draw = segment_indices(start, end, num_frames, "rand", seed=s)
        for k, v in enumerate(draw.tolist()):
            assert edges[k] <= v < edges[k + 1] - 1
            seen.add((k, v))
    support = {(k, v) for k in range(num_frames) for v in range(edges[k], edges[k + 1] - 1)}
    assert seen == support


def test_short_ranges_repeat_frames_inside_the_clip():
    # 2 frames for 4 outputs: the original would emit index start-1 (before the clip).
    assert segment_indices(10, 12, 4).tolist() == [10, 10, 11, 11]
    assert segment_indices(10, 11, 3).tolist() == [10, 10, 10]
    with pytest.raises(ValueError, match="start < end"):
        segment_indices(5, 5, 4)


def test_cfr_time_mapping_equals_original_arithmetic(videos):
    p = videos["cfr"]
    for start, end in [(0.0, 3.0), (0.5, 1.5), (1.01, 2.99), (0.1, 0.2), (2.0, 2.0)]:
        s, e = int(start * 30), max(int(end * 30), int(start * 30) + 1)
        expect = segment_indices(s, min(e, 90), 4).tolist()
        assert frame_indices(p, start, end) == expect, (start, end)


def test_vfr_uses_real_timestamps(videos):
    p, times = videos["vfr"], videos["vfr_times"]
    info = probe(p)
    np.testing.assert_allclose(info.timestamps, times, atol=1e-3)
    for start, end in [(0.3, 1.9), (1.0, 2.5), (0.0, 3.5)]:
        s = int(np.searchsorted(times, start + 1e-6, side="right")) - 1
        e = int(np.searchsorted(times, end + 1e-6, side="right")) - 1
        expect = segment_indices(s, e, 6).tolist()
        got = frame_indices(p, start, end, num_frames=6)
        assert got == expect
        # A fixed 30 fps assumption would pick other frames in this file.
        assert got != segment_indices(int(start * 30), int(end * 30), 6).tolist()
        frames = read_clip(p, start, end, num_frames=6, transform=None)
        assert [read_frame_code(f.numpy()) for f in frames] == got


def test_out_of_range_clamp_or_raise(videos):
    p = videos["cfr"]
    with pytest.warns(ClipRangeWarning, match="past the end"):
        got = frame_indices(p, 2.0, 10.0)
    assert got == segment_indices(60, 90, 4).tolist()
    with pytest.raises(ClipRangeError, match=r"end_sec=10 is past the end of the video \(3 s\)"):
        frame_indices(p, 2.0, 10.0, out_of_range="raise")
    with pytest.raises(ClipRangeError, match="before the start"):
        frame_indices(p, -1.0, 1.0, out_of_range="raise")
    with pytest.warns(ClipRangeWarning):
        assert frame_indices(p, 5.0, 6.0) == [89, 89, 89, 89]
    with pytest.raises(ClipRangeError, match="after end_sec"):
        frame_indices(p, 2.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert frame_indices(p, 0.0, 3.0) == segment_indices(0, 90, 4).tolist()


def test_short_clip_pad_or_raise(videos):
    p = videos["cfr"]
    assert frame_indices(p, 1.0, 1.05, num_frames=4) == [30, 30, 30, 30]
    with pytest.raises(InsufficientFramesError, match="holds 1 frame") as ei:
        frame_indices(p, 1.0, 1.05, num_frames=4, short="raise")
    assert (ei.value.available, ei.value.requested) == (1, 4)


def test_egoclip_layout_spans_two_chunks(videos):
    layout = EgoClipLayout(chunk_sec=2.0)
    d = videos["chunks"]
    start, end = 1.5, 2.6  # frames 45..77: chunk 0 then chunk 1
    expect = original_sample_frames_start_end(4, int(start * 30), int(end * 30), "uniform")
    assert frame_indices(d, start, end, layout=layout) == expect
    frames = read_clip(d, start, end, layout=layout, transform=None)
    assert [read_frame_code(f.numpy()) for f in frames] == expect
    # The original seeks CAP_PROP_POS_FRAMES to index - 1, i.e. decodes the previous frame.
    legacy = EgoClipLayout(chunk_sec=2.0, original_off_by_one=True)
    got = frame_indices(d, start, end, layout=legacy)
    assert got == [i - 1 for i in expect]
    frames = read_clip(d, start, end, layout=legacy, transform=None)
    assert [read_frame_code(f.numpy()) for f in frames] == got


def test_egoclip_layout_short_last_chunk(videos):
    layout = EgoClipLayout(chunk_sec=2.0)
    d = videos["chunks"]  # chunk 2 holds frames 120..144 only
    with pytest.warns(ClipRangeWarning, match="chunk 2 holds 25 frames"):
        frames = read_clip(d, 4.5, 5.5, layout=layout, transform=None)
    assert [read_frame_code(f.numpy()) for f in frames][-1] == 144
    with pytest.raises(ClipRangeError, match="chunk 2 holds 25 frames"):
        read_clip(d, 4.5, 5.5, layout=layout, out_of_range="raise")
    with pytest.raises(ClipRangeError, match="needs both start_sec and end_sec"):
        frame_indices(d, layout=layout)
