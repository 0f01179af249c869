"""Synthetic videos whose frames carry their own frame number (tests and benchmarks).

Each frame shows its index as a binary code of big blocks (a 4 x 4 grid, 16 bits, most
significant bit top-left): a block is dark (level 48) for 0 and light (level 208) for 1, with a
small per-channel texture on top so that resampling and colour conversion are exercised. Blocks
this big survive lossy compression and chroma subsampling, so :func:`read_frame_code` recovers
the number exactly from any decoded frame and a test can check that a reader returned exactly
the frame it claims.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

__all__ = ["CODE_BITS", "frame_image", "read_frame_code", "write_audio_only", "write_video"]

CODE_BITS = 16
_GRID = 4
_LOW, _HIGH = 48, 208


def frame_image(index: int, height: int, width: int, texture: bool = True) -> np.ndarray:
    """uint8 [height, width, 3] RGB image coding ``index`` (0 <= index < 2**16)."""
    if not 0 <= index < 2**CODE_BITS:
        raise ValueError(f"index must be in [0, {2**CODE_BITS}), got {index}")
    bits = [(index >> (CODE_BITS - 1 - b)) & 1 for b in range(CODE_BITS)]
    rows = np.minimum(np.arange(height) * _GRID // height, _GRID - 1)
    cols = np.minimum(np.arange(width) * _GRID // width, _GRID - 1)
    cell = rows[:, None] * _GRID + cols[None, :]
    level = np.where(np.asarray(bits)[cell] == 1, _HIGH, _LOW).astype(np.float32)
    img = np.repeat(level[:, :, None], 3, axis=2)
    if texture:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        img[..., 0] += 24 * np.sin(xx * 0.35 + index * 0.2)
        img[..., 1] += 24 * np.cos(yy * 0.3 - index * 0.1)
        img[..., 2] += 16 * np.sin((xx + yy) * 0.15)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def read_frame_code(frame: np.ndarray) -> int:
    """Recover the index from a decoded frame, uint8 [H, W, 3] (or [3, H, W])."""
    a = np.asarray(frame)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[2] != 3:
        a = a.transpose(1, 2, 0)
    gray = a.astype(np.float32).mean(axis=2)
    h, w = gray.shape
    value = 0
    for b in range(CODE_BITS):
        r, c = divmod(b, _GRID)
        # The centre half of each block, away from edges blurred by compression.
        y0, y1 = (4 * r + 1) * h // (4 * _GRID), (4 * r + 3) * h // (4 * _GRID)
        x0, x1 = (4 * c + 1) * w // (4 * _GRID), (4 * c + 3) * w // (4 * _GRID)
        bit = gray[y0:y1, x0:x1].mean() > (_LOW + _HIGH) / 2
        value = (value << 1) | int(bit)
    return value


def write_video(
    path: str | os.PathLike,
    num_frames: int,
    width: int = 64,
    height: int = 48,
    fps: int = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    timestamps: Sequence[float] | None = None,
    rotation: int = 0,
    options: dict | None = None,
    container_options: dict | None = None,
    texture: bool = True,
    first_index: int = 0,
) -> str:
    """Encode frames coding ``first_index .. first_index + num_frames - 1`` with PyAV.

    Args:
        timestamps: per-frame presentation times in seconds for a variable-frame-rate file
            (written with a 1/1000 s time base); None for constant ``fps``.
        rotation: display rotation (degrees counter-clockwise) stored as stream metadata.
        options: encoder options (e.g. {'preset': 'veryfast'}).
        container_options: muxer options (e.g. {'movflags': 'faststart'}).
    """
    import av

    p = os.fspath(path)
    with av.open(p, "w", options=container_options or {}) as c:
        s = c.add_stream(codec, rate=fps, options=options or {})
        s.width, s.height, s.pix_fmt = width, height, pix_fmt
        if timestamps is not None:
            s.codec_context.time_base = Fraction(1, 1000)
            s.time_base = Fraction(1, 1000)
        if rotation:
            s.set_display_rotation(rotation)
        for k in range(num_frames):
            frame = av.VideoFrame.from_ndarray(
                frame_image(first_index + k, height, width, texture), format="rgb24"
            )
            if timestamps is not None:
                frame.pts = round(timestamps[k] * 1000)
                frame.time_base = Fraction(1, 1000)
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return p


def write_audio_only(path: str | os.PathLike, seconds: float = 1.0, rate: int = 16000) -> str:
    """An AAC audio-only file (no video stream), e.g. 'clip.mp4' holding only sound."""
    import av

    p = os.fspath(path)
    with av.open(p, "w") as c:
        s = c.add_stream("aac", rate=rate)
        n = int(seconds * rate)
        t = np.arange(n, dtype=np.float32) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = rate
        for pkt in s.encode(frame):
            c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return p
