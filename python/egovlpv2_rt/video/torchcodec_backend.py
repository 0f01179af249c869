"""Optional torchcodec decoder (``backend='torchcodec'``).

torchcodec 0.13 runs beside a CPU torch and links the system FFmpeg (Debian bookworm:
``apt-get install libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4
libavdevice59 libavfilter8``); newer PyPI wheels need a CUDA torch. Frame indices come from the
shared probe, and torchcodec's ``seek_mode='exact'`` indexes frames the same way (presentation
order of every packet), so both backends decode the same pictures. torchcodec applies the
display rotation itself.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from .errors import BackendUnavailableError, CorruptVideoError
from .probe import VideoInfo

if TYPE_CHECKING:
    from torchcodec.decoders import VideoDecoder

__all__ = ["decode_torchcodec", "torchcodec_available"]

log = logging.getLogger(__name__)


@functools.cache
def _load() -> tuple[type[VideoDecoder] | None, str]:
    try:
        from torchcodec.decoders import VideoDecoder
    except (ImportError, OSError, RuntimeError) as e:  # package or FFmpeg libraries missing
        return None, f"{type(e).__name__}: {e}".splitlines()[0][:300]
    return VideoDecoder, ""


def torchcodec_available() -> tuple[bool, str]:
    """(True, '') when torchcodec loads here, else (False, why)."""
    cls, why = _load()
    return cls is not None, why


def decode_torchcodec(
    info: VideoInfo, indices: Iterable[int], threads: int = 1
) -> dict[int, np.ndarray]:
    """Decode frames ``indices`` of ``info.path``; returns ``{index: uint8 [H, W, 3]}``.

    The frames are in display orientation (rotation applied). Frames that fail to decode are
    absent from the result.
    """
    cls, why = _load()
    if cls is None:
        raise BackendUnavailableError(
            f"backend 'torchcodec' cannot be loaded here ({why}); install torchcodec==0.13.* "
            "and the FFmpeg shared libraries, or use backend='pyav'",
            info.path,
        )
    wanted = sorted({int(i) for i in indices})
    try:
        dec = cls(info.path, dimension_order="NHWC", num_ffmpeg_threads=threads, seek_mode="exact")
    except (RuntimeError, ValueError, OSError) as e:
        raise CorruptVideoError(f"{info.path}: torchcodec cannot open it ({e})", info.path) from e
    try:
        batch = dec.get_frames_at(wanted).data.numpy()
        return {i: batch[k] for k, i in enumerate(wanted)}
    except (RuntimeError, IndexError, ValueError):
        # One bad frame fails the whole batch: fall back to frame by frame to keep the good ones.
        out: dict[int, np.ndarray] = {}
        for i in wanted:
            try:
                out[i] = dec.get_frame_at(i).data.numpy()
            except (RuntimeError, IndexError, ValueError):
                log.debug("torchcodec could not decode frame %d of %s", i, info.path)
        return out
