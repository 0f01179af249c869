"""Probe a video file once: codec, size, rotation and the timestamp of every frame.

Every backend samples frames from the same :class:`VideoInfo`, so that "frame i" means the same
picture everywhere: the i-th frame in presentation order of the first video stream. The table is
built by demuxing the packets (no decoding), which reads timestamps the container really stores
(variable frame rate included) instead of trusting a nominal frame rate. Results are cached per
process (keyed on path, size and mtime), which makes repeated clips from one long file cheap; the
cache is dropped in a forked child so that workers never share state with their parent.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from .errors import (
    BackendUnavailableError,
    CorruptVideoError,
    NoVideoStreamError,
    VideoError,
    VideoNotFoundError,
)

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.stream import VideoStream

__all__ = ["VideoInfo", "clear_probe_cache", "probe"]

# Times closer than this (seconds) are treated as equal: it absorbs float rounding of
# pts * time_base against user-given seconds (1 microsecond << any frame interval).
TIME_EPS = 1e-6


@dataclass(frozen=True, eq=False)
class VideoInfo:
    """What every backend needs to know about a file before decoding it.

    Attributes:
        path: the file.
        codec: FFmpeg's canonical codec name ('h264', 'vp9', 'mjpeg', ...).
        width, height: coded frame size in pixels (before rotation).
        rotation: display rotation in degrees counter-clockwise (0, 90, 180 or 270).
        time_base: unit of ``pts`` in seconds.
        pts: int64 [N], presentation timestamps of the N frames, sorted (frame i = pts[i]).
        key_pts: int64 [K], sorted presentation timestamps of the keyframes.
        key_seek: int64 [K], timestamp to seek to for keyframe k (min of its pts and dts, so
            that demuxers indexing by dts, such as mp4, land on or before it).
        end_pts: presentation end of the last frame (its pts plus its duration).
        has_timestamps: False when the packets carry no timestamps (raw streams); frames are then
            found by decoding from the start and counting.
        average_fps: the container's average frame rate (informational; sampling uses ``pts``).
        container: the demuxer name.
    """

    path: str
    codec: str
    width: int
    height: int
    rotation: int
    time_base: Fraction
    pts: np.ndarray
    key_pts: np.ndarray
    key_seek: np.ndarray
    end_pts: int
    has_timestamps: bool
    average_fps: float
    container: str

    @property
    def num_frames(self) -> int:
        return int(self.pts.shape[0])

    @property
    def display_size(self) -> tuple[int, int]:
        """(height, width) of the frames as displayed, after rotation."""
        if self.rotation in (90, 270):
            return self.width, self.height
        return self.height, self.width

    @functools.cached_property
    def timestamps(self) -> np.ndarray:
        """float64 [N], start time of each frame in seconds, the first frame at 0."""
        return (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)

    @property
    def duration(self) -> float:
        """Seconds from the start of the first frame to the end of the last one."""
        return float((self.end_pts - int(self.pts[0])) * self.time_base)

    def frame_at(self, t: float) -> int:
        """Index of the frame shown at time ``t`` (seconds from the first frame).

        Returns N for t at or past the end of the video, 0 for t before the start: for a
        constant 30 fps file this is ``floor(t * 30)``, the original's ``int(sec * 30)``.
        """
        if t >= self.duration - TIME_EPS:
            return self.num_frames
        i = int(np.searchsorted(self.timestamps, t + TIME_EPS, side="right")) - 1
        return max(i, 0)

    def seek_target(self, index: int) -> int:
        """Timestamp to seek to (backward) so that decoding forward reaches frame ``index``."""
        k = int(np.searchsorted(self.key_pts, self.pts[index], side="right")) - 1
        return int(self.key_seek[max(k, 0)])


_CACHE: OrderedDict[tuple, VideoInfo] = OrderedDict()
_CACHE_PID = os.getpid()
_CACHE_MAX = 128
_LOCK = threading.Lock()


def clear_probe_cache() -> None:
    """Forget every probed file (e.g. after rewriting a file in place within one mtime tick)."""
    with _LOCK:
        _CACHE.clear()


def check_file(path: str | os.PathLike) -> str:
    """Return ``path`` as str; raise :class:`VideoNotFoundError` unless it is a regular file."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise VideoNotFoundError(f"{p}: video file not found", p)
    if not os.path.isfile(p):
        raise VideoNotFoundError(f"{p}: not a regular file", p)
    return p


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read codec, size, rotation and every frame timestamp of ``path`` (cached per process).

    Raises:
        VideoNotFoundError: no such file.
        CorruptVideoError: the container cannot be opened or holds no readable packet.
        NoVideoStreamError: no video stream (e.g. audio only) or a video stream of zero frames.
    """
    global _CACHE_PID
    p = check_file(path)
    st = os.stat(p)
    key = (os.path.abspath(p), st.st_size, st.st_mtime_ns)
    with _LOCK:
        if os.getpid() != _CACHE_PID:
            _CACHE.clear()
            _CACHE_PID = os.getpid()
        info = _CACHE.get(key)
        if info is not None:
            _CACHE.move_to_end(key)
            return info
    info = _probe_uncached(p)
    with _LOCK:
        _CACHE[key] = info
        while len(_CACHE) > _CACHE_MAX:
            _CACHE.popitem(last=False)
    return info


def import_av() -> ModuleType:
    """The ``av`` module, or a BackendUnavailableError saying how to install it."""
    try:
        import av
    except ImportError as e:
        raise BackendUnavailableError(
            f"PyAV is needed to read videos ({e}); install it with `pip install av` "
            "(the 'video' extra of egovlpv2-rt)"
        ) from e
    return av


def _open(p: str) -> InputContainer:
    av = import_av()
    try:
        return av.open(p, metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise CorruptVideoError(f"{p}: cannot open container ({e})", p) from e


def _probe_uncached(p: str) -> VideoInfo:
    av = import_av()

    if os.path.getsize(p) == 0:
        raise CorruptVideoError(f"{p}: empty file (0 bytes)", p)
    container = _open(p)
    try:
        if not container.streams.video:
            kinds: list[str] = sorted({s.type for s in container.streams}) or ["none"]
            raise NoVideoStreamError(
                f"{p}: no video stream (streams present: {', '.join(kinds)})", p
            )
        stream = container.streams.video[0]
        codec = _codec_name(stream)
        cc = stream.codec_context
        width, height = int(cc.width), int(cc.height)
        pts_list: list[int] = []
        keys: list[tuple[int, int]] = []
        durations: list[int] = []
        no_ts = 0
        demux_error: Exception | None = None
        try:
            for pkt in container.demux(stream):
                if pkt.size == 0 or pkt.is_discard:
                    continue
                ts = pkt.pts if pkt.pts is not None else pkt.dts
                if ts is None:
                    no_ts += 1
                    continue
                pts_list.append(int(ts))
                durations.append(int(pkt.duration or 0))
                if pkt.is_keyframe:
                    dts = pkt.dts if pkt.dts is not None else ts
                    keys.append((int(ts), int(min(ts, dts))))
        except av.error.FFmpegError as e:
            # A truncated or damaged tail: keep the packets read so far.
            demux_error = e
        time_base = stream.time_base or Fraction(1, 1)
        average_fps = float(stream.average_rate) if stream.average_rate else 0.0
        container_name = container.format.name
    finally:
        container.close()

    has_ts = no_ts == 0
    if not has_ts:
        pts_list = list(range(len(pts_list) + no_ts))
        keys = [(0, 0)]
        durations = [1] * len(pts_list)
        time_base = Fraction(1, round(average_fps)) if average_fps else Fraction(1, 30)
    if not pts_list:
        if demux_error is not None:
            raise CorruptVideoError(f"{p}: no readable video packet ({demux_error})", p)
        raise NoVideoStreamError(f"{p}: the video stream has zero frames", p)
    order = np.argsort(np.asarray(pts_list, dtype=np.int64), kind="stable")
    pts = np.asarray(pts_list, dtype=np.int64)[order]
    if not keys:
        # No packet flagged as a keyframe (some intra-only streams): every frame is one.
        keys = [(int(t), int(t)) for t in pts]
    keys.sort()
    key_pts = np.asarray([k for k, _ in keys], dtype=np.int64)
    key_seek = np.asarray([s for _, s in keys], dtype=np.int64)
    last_dur = int(np.asarray(durations, dtype=np.int64)[order][-1])
    if last_dur <= 0:
        last_dur = (
            int(np.median(np.diff(pts))) if pts.shape[0] > 1 else _one_frame(time_base, average_fps)
        )
    if average_fps <= 0 and pts.shape[0] > 1:
        average_fps = float((pts.shape[0] - 1) / ((pts[-1] - pts[0]) * time_base))
    return VideoInfo(
        path=p,
        codec=codec,
        width=width,
        height=height,
        rotation=_rotation(p),
        time_base=Fraction(time_base),
        pts=pts,
        key_pts=key_pts,
        key_seek=key_seek,
        end_pts=int(pts[-1]) + max(last_dur, 1),
        has_timestamps=has_ts,
        average_fps=average_fps,
        container=container_name,
    )


def _one_frame(time_base: Fraction, fps: float) -> int:
    return max(1, round(1 / ((fps or 30.0) * float(time_base))))


def _codec_name(stream: VideoStream) -> str:
    cc = stream.codec_context
    codec = getattr(cc, "codec", None) if cc is not None else None
    if codec is not None:
        return str(codec.canonical_name)
    return "unknown"  # no decoder for this codec in PyAV's FFmpeg


def _rotation(p: str) -> int:
    """Display rotation of the first frame (FFmpeg attaches the stream's display matrix to it)."""
    import av

    try:
        with av.open(p, metadata_errors="ignore") as c:
            for frame in c.decode(video=0):
                rot = round(getattr(frame, "rotation", 0) or 0) % 360
                return rot if rot in (0, 90, 180, 270) else 0
    except (av.error.FFmpegError, VideoError, StopIteration):
        pass
    return 0
