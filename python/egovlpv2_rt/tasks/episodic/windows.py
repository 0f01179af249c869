"""Which frames of a canonical Ego4D video make the feature windows of a clip.

The original (EgoMQ feature extraction and EgoNLQ ``data_gen``, both through the reader
``read_frames_decord_start_end``) samples a clip ``[video_start_sec, video_end_sec]`` of its
canonical video as follows, assuming 30 frames per second:

1. ``start = video_start_sec * 30``, ``end = video_end_sec * 30`` (floats), clamped to
   ``[0, number of frames in the video]``;
2. ``n = (video_end_sec - video_start_sec) * 1.87 * F`` sampled frames are asked for, F the
   frames per window (16 for MQ, 4 for NLQ); the reader cuts ``[start, end]`` with
   ``int(linspace(start, end, int(n + 1) + 1))`` edges into ``int(n + 1)`` intervals and
   takes the midpoint ``(a + b - 1) // 2`` of each;
3. the frames are truncated to a multiple of F and grouped into consecutive, non-overlapping
   windows of F frames: 1.87 windows per second of clip.

:func:`plan_windows` transcribes this exactly. ``fps`` replaces the 30-fps assumption with a
video's real frame rate (the original's features of a 25-fps video are then 20% too slow and
drift off the clip's end, which its frame clamping hides). One difference on degenerate input:
an interval with equal edges gives the midpoint ``a - 1`` in the original, and ``-1`` (which
decord reads as the last frame of the video) for ``a = 0``; here indices are clamped to
``[0, frames - 1]``, so ``-1`` becomes frame 0.
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import InputError

__all__ = [
    "ASSUMED_FPS",
    "MQ_FRAMES_PER_WINDOW",
    "NLQ_FRAMES_PER_WINDOW",
    "WINDOWS_PER_SECOND",
    "clip_frame_indices",
    "plan_windows",
]

ASSUMED_FPS = 30.0
WINDOWS_PER_SECOND = 1.87
MQ_FRAMES_PER_WINDOW = 16
NLQ_FRAMES_PER_WINDOW = 4


def clip_frame_indices(
    video_start_sec: float,
    video_end_sec: float,
    num_video_frames: int,
    frames_per_window: int,
    *,
    fps: float = ASSUMED_FPS,
    windows_per_second: float = WINDOWS_PER_SECOND,
) -> np.ndarray:
    """Every sampled frame of a clip, before the truncation to whole windows.

    Args:
        video_start_sec, video_end_sec: the clip within its canonical video (seconds).
        num_video_frames: frames in the canonical video.
        frames_per_window: F.
        fps: frames per second used to turn seconds into frame numbers (the original: 30).
        windows_per_second: the original's 1.87.

    Returns:
        int64 [M] frame indices in the video, non-decreasing.
    """
    for name, value in (
        ("video_start_sec", video_start_sec),
        ("video_end_sec", video_end_sec),
        ("fps", fps),
        ("windows_per_second", windows_per_second),
    ):
        if not math.isfinite(value):
            raise InputError(f"{name} must be finite, got {value}")
    if not 0 <= video_start_sec < video_end_sec:
        raise InputError(
            f"expected 0 <= video_start_sec < video_end_sec, got {video_start_sec}, {video_end_sec}"
        )
    if frames_per_window < 1 or num_video_frames < 1 or fps <= 0 or windows_per_second <= 0:
        raise InputError(
            "frames_per_window, num_video_frames, fps and windows_per_second must be positive, "
            f"got {frames_per_window}, {num_video_frames}, {fps}, {windows_per_second}"
        )
    start = max(0.0, video_start_sec * fps)
    end = min(float(num_video_frames), video_end_sec * fps)
    if end <= start:
        raise InputError(
            f"the clip starts at frame {start:g}, after the video's last frame "
            f"({num_video_frames} frames at {fps:g} fps)"
        )
    # The original passes n to a reader that asks for n + 1 samples and then int()s it.
    wanted = (video_end_sec - video_start_sec) * windows_per_second * frames_per_window
    edges = np.linspace(start, end, num=int(wanted + 1) + 1).astype(np.int64)
    mids = (edges[:-1] + edges[1:] - 1) // 2
    return np.clip(mids, 0, num_video_frames - 1)


def plan_windows(
    video_start_sec: float,
    video_end_sec: float,
    num_video_frames: int,
    frames_per_window: int,
    *,
    fps: float = ASSUMED_FPS,
    windows_per_second: float = WINDOWS_PER_SECOND,
) -> np.ndarray:
    """The clip's windows: int64 [N_win, F] frame indices (arguments as
    :func:`clip_frame_indices`). Raises ``InputError`` when the clip is too short for one
    window."""
    idx = clip_frame_indices(
        video_start_sec,
        video_end_sec,
        num_video_frames,
        frames_per_window,
        fps=fps,
        windows_per_second=windows_per_second,
    )
    n_win = len(idx) // frames_per_window
    if n_win == 0:
        raise InputError(
            f"the clip [{video_start_sec}, {video_end_sec}] s gives {len(idx)} sampled frames, "
            f"fewer than one window of {frames_per_window}"
        )
    return idx[: n_win * frames_per_window].reshape(n_win, frames_per_window)
