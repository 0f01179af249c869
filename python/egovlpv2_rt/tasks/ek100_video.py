"""EK-100 MIR clip input: the original's segment sampler and its own transform, read through
the package's video backends (PyAV, torchcodec, DALI alike).

Sampling (the original's ``get_frame_ids``, LaViLa style): ``start = round(fps * t0)``,
``end = ceil(fps * t1)`` with ``fps`` the container's average frame rate (decord's
``get_avg_fps``); ``seg = (end - start - 1) / T``; segment ``i`` spans
``[round(seg * i) + start, round(seg * (i + 1)) + start]`` clipped at ``end``; training takes a
uniformly random frame of it (both ends included), evaluation its midpoint ``(lo + hi) // 2``.
Two departures, both only where the original would fail: a clip shorter than one frame
(``end <= start``) is taken as the single frame ``start``, and indices are clamped to the
video's last frame (``ceil`` can reach one past it; decord would raise).

Transform: pixels stay in 0..255 and are normalised with mean (123.675, 116.28, 103.53) and
std (58.395, 57.12, 57.375); training ``RandomResizedCrop(224, scale=(0.5, 1))`` without flip,
evaluation ``Resize(224)`` (short side) + ``CenterCrop(224)``. The package's transforms scale
uint8 frames to [0, 1] first, so the same arithmetic is expressed as mean / 255 and std / 255:
``(x / 255 - m / 255) / (s / 255) = (x - m) / s``. They are the ordinary
:class:`~egovlpv2_rt.video.transforms.EvalTransform` / ``TrainTransform`` instances, so the DALI
backend runs them on the GPU as it runs the default ones.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..video.planning import split_seed
from ..video.probe import probe
from ..video.reader import Backend, read_plan
from ..video.sampling import ClipPlan, ShortPolicy
from ..video.transforms import EvalTransform, TrainTransform

__all__ = [
    "EK100_MEAN",
    "EK100_NUM_FRAMES",
    "EK100_STD",
    "ek100_frame_ids",
    "ek100_transform",
    "plan_ek100_clip",
    "read_ek100_clip",
]

EK100_NUM_FRAMES = 16
EK100_MEAN = (123.675, 116.28, 103.53)
EK100_STD = (58.395, 57.12, 57.375)


def ek100_frame_ids(
    start_frame: int,
    end_frame: int,
    num_segments: int = EK100_NUM_FRAMES,
    jitter: bool = False,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The original's ``get_frame_ids``: int64 ``[num_segments]`` frame indices.

    Args:
        start_frame, end_frame: ``round(fps * t0)`` and ``ceil(fps * t1)``.
        jitter: True (training) draws a uniform frame of each segment, both ends included;
            False takes each segment's midpoint.
        rng: generator for ``jitter`` (None: fresh entropy).
    """
    if num_segments < 1:
        raise InputError(f"num_segments must be >= 1, got {num_segments}")
    end_frame = max(int(end_frame), int(start_frame) + 1)  # see the module docstring
    seg = float(end_frame - start_frame - 1) / num_segments
    g = rng if rng is not None else np.random.default_rng()
    out = np.empty(num_segments, dtype=np.int64)
    for i in range(num_segments):
        lo = int(np.round(seg * i) + start_frame)
        hi = min(int(np.round(seg * (i + 1)) + start_frame), end_frame)
        out[i] = int(g.integers(lo, hi + 1)) if jitter else (lo + hi) // 2
    return out


def plan_ek100_clip(
    path: str | os.PathLike,
    start_sec: float,
    stop_sec: float,
    *,
    num_frames: int = EK100_NUM_FRAMES,
    train: bool = False,
    rng: np.random.Generator | None = None,
) -> ClipPlan:
    """The :class:`ClipPlan` of one EK-100 clip of a whole video (probes the file; raises the
    video package's VideoError naming it when it is missing or unreadable)."""
    if not (math.isfinite(start_sec) and math.isfinite(stop_sec)) or stop_sec < start_sec:
        raise InputError(
            f"{path}: clip range [{start_sec}, {stop_sec}] s; expected finite times, start <= stop"
        )
    info = probe(path)
    fps = float(info.average_fps)
    if not math.isfinite(fps) or fps <= 0:
        raise InputError(f"{path}: average frame rate {fps}; expected a positive number")
    start = round(fps * start_sec)
    end = math.ceil(fps * stop_sec)
    idx = ek100_frame_ids(start, end, num_frames, jitter=train, rng=rng)
    idx = np.clip(idx, 0, info.num_frames - 1)
    lo, hi = int(idx.min()), int(idx.max()) + 1
    return ClipPlan(indices=idx, files=(info.path,) * num_frames, local=idx.copy(), range=(lo, hi))


def ek100_transform(train: bool, size: int = 224) -> EvalTransform | TrainTransform:
    """The EK-100 transform (see the module docstring) producing ``[F, 3, size, size]``."""
    mean, std = _per_unit(EK100_MEAN), _per_unit(EK100_STD)
    if train:
        return TrainTransform(size=size, scale=(0.5, 1.0), flip_p=0.0, mean=mean, std=std)
    return EvalTransform(resize=size, crop=size, size=size, mean=mean, std=std)


def _per_unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
    return (v[0] / 255.0, v[1] / 255.0, v[2] / 255.0)


def read_ek100_clip(
    path: str | os.PathLike,
    start_sec: float,
    stop_sec: float,
    *,
    train: bool = False,
    num_frames: int = EK100_NUM_FRAMES,
    size: int = 224,
    backend: Backend = "pyav",
    seed: int | None = None,
    short: ShortPolicy = "pad",
    dtype: torch.dtype = torch.float32,
    threads: int = 1,
) -> Tensor:
    """One EK-100 clip, model-ready: ``[num_frames, 3, size, size]`` of ``dtype`` (on the GPU
    for ``backend="dali"``).

    Args:
        path: the whole video.
        start_sec, stop_sec: the clip's range in seconds.
        train: training sampling (random frame per segment) and transform (random crop).
        seed: seeds the frame draw and the crop (one seed gives the same clip on every
            backend); None is nondeterministic. Unused for evaluation reads.
    """
    rng, gen = split_seed(seed)
    plan = plan_ek100_clip(path, start_sec, stop_sec, num_frames=num_frames, train=train, rng=rng)
    tf = ek100_transform(train, size)
    return read_plan(plan, backend, tf, gen, short=short, dtype=dtype, threads=threads)
