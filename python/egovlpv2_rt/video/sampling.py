"""The one frame-sampling rule shared by every backend.

A clip is a file (or, in the EgoClip layout, a directory of 600-second chunk files) and an
optional time range ``[start_sec, end_sec)``. The rule, as the original's
``sample_frames_start_end``:

1. The range becomes frames ``[s, e)``: ``s`` is the frame shown at ``start_sec`` and ``e`` the
   frame shown at ``end_sec`` (exclusive), from the container's real timestamps (for a constant
   30 fps file ``s = int(start_sec * 30)``, exactly the original's arithmetic). A whole file is
   ``[0, N)``. An empty range (``end_sec == start_sec``) is the single frame at ``start_sec``.
2. Edges ``a = int(linspace(s, e, F + 1))`` cut it into F segments ``[a_k, a_{k+1} - 1]``.
3. ``uniform`` takes each segment's midpoint ``(a_k + a_{k+1} - 1) // 2``; ``rand`` takes
   ``a_k + randint(0, a_{k+1} - 1 - a_k)`` from a seeded generator (the original's
   ``random.choice(range(a_k, a_{k+1} - 1))``, which never picks the segment's last frame).

Where a segment is empty (fewer than F frames in the range) the original produced index
``a_k - 1``, a frame before the clip; here it is ``a_k``, so clips shorter than F frames repeat
frames instead. Otherwise the indices equal the original's.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .errors import ClipRangeError, ClipRangeWarning, InsufficientFramesError

if TYPE_CHECKING:
    from .probe import VideoInfo

__all__ = [
    "ClipPlan",
    "ClipSpec",
    "EgoClipLayout",
    "OutOfRange",
    "Sampling",
    "Seed",
    "ShortPolicy",
    "plan_egoclip",
    "plan_file",
    "segment_indices",
]

Sampling = Literal["uniform", "rand"]
OutOfRange = Literal["clamp", "raise"]
ShortPolicy = Literal["pad", "raise"]
# What seeds 'rand' sampling: an int, a generator, or None (fresh entropy).
Seed = int | np.random.Generator | None


@dataclass(frozen=True)
class ClipSpec:
    """A clip: a file and an optional time range in seconds (``None`` = from start / to end).

    With an :class:`EgoClipLayout`, ``path`` is the directory holding the chunk files
    ``0.mp4, 1.mp4, ...`` of one video and the times are seconds from the start of the video.
    """

    path: str | os.PathLike
    start_sec: float | None = None
    end_sec: float | None = None


@dataclass(frozen=True)
class EgoClipLayout:
    """EgoClip compatibility: the original's fixed frame rate and 600-second chunk files.

    The original assumes 30 fps for every Ego4D file (it never reads the container's rate) and
    stores each video as chunks ``<video_uid>/<chunk_id>.mp4`` of ``chunk_sec`` seconds, so a
    clip can span two files. Global frame ``g`` lives in chunk ``g // (chunk_sec * fps)`` at
    local index ``g % (chunk_sec * fps)``.

    Attributes:
        fps: assumed frame rate (30 in the original).
        chunk_sec: chunk length in seconds (600 in the original).
        original_off_by_one: decode frame ``g - 1`` for every sampled ``g``, as the original's
            OpenCV loop does (it seeks ``CAP_PROP_POS_FRAMES`` to ``index - 1`` then reads).
        chunk_name: file name of chunk ``k`` inside the video directory.
    """

    fps: float = 30.0
    chunk_sec: float = 600.0
    original_off_by_one: bool = False
    chunk_name: str = "{}.mp4"

    @property
    def frames_per_chunk(self) -> int:
        return round(self.chunk_sec * self.fps)

    def chunk_path(self, video_dir: str | os.PathLike, chunk_id: int) -> str:
        return os.path.join(os.fspath(video_dir), self.chunk_name.format(chunk_id))


@dataclass(frozen=True)
class ClipPlan:
    """Frames to decode for one clip.

    Attributes:
        indices: int64 [F], the sampled frame of each output position (file-level frame index,
            or global frame index in the EgoClip layout), in output order.
        files: for each output position, the file to decode it from.
        local: int64 [F], the frame index inside ``files[i]``.
        range: the frame range ``[s, e)`` the indices were drawn from (global in EgoClip).
    """

    indices: np.ndarray
    files: tuple[str, ...]
    local: np.ndarray
    range: tuple[int, int]


def segment_indices(
    start: int, end: int, num_frames: int, sampling: Sampling = "uniform", seed: Seed = None
) -> np.ndarray:
    """The original's per-segment choice of F frames in ``[start, end)``.

    Args:
        start, end: frame range, ``0 <= start < end``.
        num_frames: F >= 1.
        sampling: 'uniform' (segment midpoints) or 'rand' (one random frame per segment).
        seed: int, ``np.random.Generator`` or None (fresh entropy); used by 'rand' only.

    Returns:
        int64 [F], non-decreasing, every value in ``[start, end - 1]``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not 0 <= start < end:
        raise ValueError(f"need 0 <= start < end, got start={start}, end={end}")
    edges = np.linspace(start, end, num_frames + 1).astype(np.int64)
    lo, hi = edges[:-1], edges[1:] - 1
    if sampling == "uniform":
        return np.maximum(lo, (lo + hi) // 2)
    if sampling == "rand":
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        span = hi - lo
        draw = np.floor(rng.random(num_frames) * np.maximum(span, 1)).astype(np.int64)
        return np.where(span > 0, lo + draw, lo)
    raise ValueError(f"sampling must be 'uniform' or 'rand', got {sampling!r}")


def _check_times(path: str, start_sec: float | None, end_sec: float | None) -> None:
    for name, v in (("start_sec", start_sec), ("end_sec", end_sec)):
        if v is not None and not math.isfinite(float(v)):
            raise ClipRangeError(f"{path}: {name} must be a finite number, got {v}", path)
    if start_sec is not None and end_sec is not None and float(start_sec) > float(end_sec):
        raise ClipRangeError(f"{path}: start_sec={start_sec} is after end_sec={end_sec}", path)


def _out_of_range(path: str, message: str, policy: OutOfRange) -> None:
    if policy == "raise":
        raise ClipRangeError(f"{path}: {message}", path)
    if policy != "clamp":
        raise ValueError(f"out_of_range must be 'clamp' or 'raise', got {policy!r}")
    warnings.warn(f"{path}: {message}; clamped to the video", ClipRangeWarning, stacklevel=5)


def _check_short(path: str, available: int, num_frames: int, short: ShortPolicy) -> None:
    if short not in ("pad", "raise"):
        raise ValueError(f"short must be 'pad' or 'raise', got {short!r}")
    if available < num_frames and short == "raise":
        raise InsufficientFramesError(
            f"{path}: the clip holds {available} frame(s), fewer than the {num_frames} requested",
            path,
            available,
            num_frames,
        )


def plan_file(
    info: VideoInfo,
    start_sec: float | None,
    end_sec: float | None,
    num_frames: int,
    sampling: Sampling = "uniform",
    seed: Seed = None,
    out_of_range: OutOfRange = "clamp",
    short: ShortPolicy = "pad",
) -> ClipPlan:
    """Plan a clip of one file from its real timestamps (``info``: a probed ``VideoInfo``)."""
    path = info.path
    _check_times(path, start_sec, end_sec)
    duration = info.duration
    t0 = 0.0 if start_sec is None else float(start_sec)
    t1 = duration if end_sec is None else float(end_sec)
    eps = 1e-6
    problems = []
    if t0 < -eps:
        problems.append(f"start_sec={t0:g} is before the start of the video")
    if t0 >= duration - eps:
        problems.append(f"start_sec={t0:g} is at or past the end of the video ({duration:g} s)")
    if t1 > duration + eps:
        problems.append(f"end_sec={t1:g} is past the end of the video ({duration:g} s)")
    if problems:
        _out_of_range(path, "; ".join(problems), out_of_range)
    t0 = min(max(t0, 0.0), duration)
    t1 = min(max(t1, 0.0), duration)
    n = info.num_frames
    s = min(info.frame_at(t0), n - 1)
    e = min(max(info.frame_at(t1), s + 1), n)
    _check_short(path, e - s, num_frames, short)
    idx = segment_indices(s, e, num_frames, sampling, seed)
    return ClipPlan(indices=idx, files=(path,) * num_frames, local=idx.copy(), range=(s, e))


def plan_egoclip(
    video_dir: str | os.PathLike,
    start_sec: float | None,
    end_sec: float | None,
    num_frames: int,
    layout: EgoClipLayout,
    chunk_frames: Callable[[int], int],
    sampling: Sampling = "uniform",
    seed: Seed = None,
    out_of_range: OutOfRange = "clamp",
    short: ShortPolicy = "pad",
) -> ClipPlan:
    """Plan a clip in the EgoClip chunk layout with the original's fixed-rate arithmetic.

    Args:
        video_dir: directory of the chunk files of one video.
        start_sec, end_sec: seconds from the start of the whole video (both required).
        chunk_frames: callable ``chunk_id -> number of frames in that chunk file`` (probes it;
            raises a VideoError if the chunk is missing or unreadable).
    """
    path = os.fspath(video_dir)
    if start_sec is None or end_sec is None:
        raise ClipRangeError(f"{path}: the EgoClip layout needs both start_sec and end_sec", path)
    _check_times(path, start_sec, end_sec)
    if float(start_sec) < 0 or float(end_sec) < 0:
        _out_of_range(path, f"negative time in [{start_sec}, {end_sec})", out_of_range)
    # The original's arithmetic, kept bit for bit: max(0, int(sec * 30)).
    s = max(0, int(float(start_sec) * layout.fps))
    e = max(0, int(float(end_sec) * layout.fps))
    e = max(e, s + 1)
    _check_short(path, e - s, num_frames, short)
    idx = segment_indices(s, e, num_frames, sampling, seed)
    decode = np.maximum(idx - 1, 0) if layout.original_off_by_one else idx
    per_chunk = layout.frames_per_chunk
    files: list[str] = []
    local: list[int] = []
    beyond: dict[tuple[int, int], list[int]] = {}
    for g in decode.tolist():
        chunk, li = divmod(int(g), per_chunk)
        n = chunk_frames(chunk)
        if li >= n:
            beyond.setdefault((chunk, n), []).append(li)
            li = n - 1
        files.append(layout.chunk_path(path, chunk))
        local.append(li)
    if beyond:
        _out_of_range(
            path,
            "; ".join(
                f"chunk {c} holds {n} frames, frames {v} requested" for (c, n), v in beyond.items()
            ),
            out_of_range,
        )
    return ClipPlan(
        indices=decode.astype(np.int64),
        files=tuple(files),
        local=np.asarray(local, dtype=np.int64),
        range=(s, e),
    )


def unique_per_file(plan: ClipPlan) -> dict[str, list[int]]:
    """Sorted distinct local frame indices to decode from each file of ``plan``."""
    out: dict[str, set[int]] = {}
    for f, i in zip(plan.files, plan.local.tolist(), strict=True):
        out.setdefault(f, set()).add(int(i))
    return {f: sorted(v) for f, v in out.items()}


def as_specs(items: Sequence) -> list[ClipSpec]:
    """Accept ClipSpec, path, or (path, start, end) tuples; return ClipSpecs."""
    specs = []
    for it in items:
        if isinstance(it, ClipSpec):
            specs.append(it)
        elif isinstance(it, (str, os.PathLike)):
            specs.append(ClipSpec(it))
        else:
            specs.append(ClipSpec(*it))
    return specs
