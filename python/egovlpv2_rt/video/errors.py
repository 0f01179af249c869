"""Typed errors and warnings of the video reader.

Every error names the file it is about (``err.path``) so that a dataset can report bad samples
without parsing messages. Catch :class:`VideoError` to handle every decoding failure at once;
the subclasses let callers tell a missing file from a corrupt one from a wrong clip range.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import EgoVLPv2Error

__all__ = [
    "BackendUnavailableError",
    "ClipRangeError",
    "ClipRangeWarning",
    "CorruptVideoError",
    "FramePaddingWarning",
    "InsufficientFramesError",
    "NoVideoStreamError",
    "UnsupportedCodecError",
    "VideoError",
    "VideoNotFoundError",
]


class VideoError(EgoVLPv2Error):
    """Base class of every error raised while reading a video clip.

    Attributes:
        path: the file (or EgoClip chunk directory) the error is about, '' when none.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = str(path)


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The video file does not exist or is not a regular file."""


class CorruptVideoError(VideoError):
    """The file exists but cannot be demuxed or decoded (corrupt, truncated, not a video)."""


class NoVideoStreamError(VideoError):
    """The container has no video stream (audio only, subtitles) or one of zero frames."""


class UnsupportedCodecError(VideoError):
    """The chosen backend cannot decode the file's codec.

    Attributes:
        codec: the codec name as FFmpeg spells it ('h264', 'vp9', 'mjpeg', ...).
        backend: the backend that refused it.
        supported_by: the backends that can decode this codec.
    """

    def __init__(self, path: str, codec: str, backend: str, supported_by: Sequence[str]) -> None:
        others = ", ".join(supported_by) if supported_by else "none of the available backends"
        super().__init__(
            f"{path}: codec '{codec}' cannot be decoded by backend '{backend}'; "
            f"backends that can read it: {others}",
            path,
        )
        self.codec = codec
        self.backend = backend
        self.supported_by = tuple(supported_by)


class ClipRangeError(VideoError, ValueError):
    """The requested [start_sec, end_sec) lies (partly) outside the video, or start > end."""


class InsufficientFramesError(VideoError):
    """Fewer distinct decodable frames than the number of frames requested.

    Attributes:
        available: how many frames could be decoded (or how many the clip range holds).
        requested: the number of frames asked for.
    """

    def __init__(self, message: str, path: str, available: int, requested: int) -> None:
        super().__init__(message, path)
        self.available = available
        self.requested = requested


class BackendUnavailableError(VideoError, ImportError):
    """The chosen backend's library is not installed or cannot be loaded here."""

    # VideoError's (the file), not ImportError's (the module's file, or None).
    path: str


class ClipRangeWarning(UserWarning):
    """A clip range outside the video was clamped to the video (``out_of_range='clamp'``)."""


class FramePaddingWarning(UserWarning):
    """Missing frames were replaced by repeating the last decoded one (``short='pad'``)."""


def describe_error(err: BaseException) -> str:
    """One line naming the error type and message (used in dataset reports)."""
    return f"{type(err).__name__}: {err}"
