"""Which backend decodes which codec (by capability, whether or not it is installed here)."""

from __future__ import annotations

from .errors import UnsupportedCodecError
from .probe import VideoInfo
from .pyav_backend import pyav_can_decode

__all__ = ["DALI_CPU_CODECS", "DALI_GPU_CODECS", "backends_for_codec", "check_codec"]

# What each backend can decode (FFmpeg codec names). DALI's CPU decoder only has the royalty-free
# software codecs; its GPU ("mixed") decoder uses NVDEC for the rest.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_GPU_CODECS = frozenset({"h264", "hevc", "av1", "mpeg4", "vp8", "vp9", "mjpeg"})


def backends_for_codec(codec: str) -> list[str]:
    """Backends able to decode ``codec`` (by capability, whether or not installed here)."""
    out = []
    if pyav_can_decode(codec):
        out += ["pyav", "torchcodec"]
    if codec in DALI_GPU_CODECS:
        out.append("dali")
    if codec in DALI_CPU_CODECS:
        out.append("dali_cpu")
    return out


def check_codec(info: VideoInfo, backend: str) -> None:
    """Raise :class:`UnsupportedCodecError` if ``backend`` cannot decode ``info``'s codec."""
    able = backends_for_codec(info.codec)
    if backend not in able:
        raise UnsupportedCodecError(info.path, info.codec, backend, able)
