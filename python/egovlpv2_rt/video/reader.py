"""``read_clip`` and ``decode_clip``: the public entry points of the video package.

One call = probe (cached) -> plan the frame indices (planning.py, the same for every backend) ->
decode those frames with the chosen backend -> pad or raise on missing frames -> apply the
display rotation -> transform. The CPU decoders (PyAV, torchcodec) are called here; a backend
that reads whole plans itself (DALI) registers with :func:`register_plan_reader` when its module
is imported, so this module never imports it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .codecs import backends_for_codec, check_codec
from .errors import (
    BackendUnavailableError,
    CorruptVideoError,
    FramePaddingWarning,
    InsufficientFramesError,
    VideoError,
)
from .planning import frame_indices, plan_clip, split_seed
from .probe import VideoInfo, probe
from .pyav_backend import decode_pyav
from .sampling import (
    ClipPlan,
    EgoClipLayout,
    OutOfRange,
    Sampling,
    ShortPolicy,
    unique_per_file,
)
from .transforms import EvalTransform, TrainTransform, TransformArg, make_transform

__all__ = [
    "BACKENDS",
    "PlanReader",
    "backends_for_codec",
    "decode_clip",
    "frame_indices",
    "plan_clip",
    "read_clip",
    "read_plan",
    "register_plan_reader",
]

Backend = Literal["pyav", "torchcodec", "dali", "dali_cpu"]
BACKENDS: tuple[str, ...] = ("pyav", "torchcodec", "dali", "dali_cpu")

# (plans, transform, short, dtype, generator) -> one clip tensor (or VideoError) per plan.
PlanReader = Callable[
    [
        Sequence[ClipPlan],
        EvalTransform | TrainTransform | None,
        ShortPolicy,
        torch.dtype,
        torch.Generator | None,
    ],
    list[Tensor | VideoError],
]
_PLAN_READERS: dict[str, PlanReader] = {}


def register_plan_reader(backend: str, reader: PlanReader) -> None:
    """Make ``read_clip(..., backend=backend)`` hand its plan to ``reader``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _PLAN_READERS[backend] = reader


def _decode_file(
    path: str, local: list[int], backend: str, threads: int
) -> tuple[VideoInfo, dict[int, np.ndarray], bool]:
    """(info, {local index: uint8 HWC array}, rotation already applied?)."""
    info = probe(path)
    check_codec(info, backend)
    if backend == "pyav":
        return info, decode_pyav(info, local, threads=threads), False
    if backend == "torchcodec":
        from .torchcodec_backend import decode_torchcodec

        return info, decode_torchcodec(info, local, threads=threads), True
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _rotate(frames: Tensor, rotation: int) -> Tensor:
    """[F, H, W, 3] coded -> displayed (rotation counter-clockwise, FFmpeg's convention)."""
    k = (rotation // 90) % 4
    return torch.rot90(frames, k=k, dims=(1, 2)) if k else frames


def decode_clip(
    plan: ClipPlan,
    backend: str = "pyav",
    short: ShortPolicy = "pad",
    threads: int = 1,
    contiguous: bool = True,
) -> Tensor:
    """Decode the frames of ``plan`` on a CPU backend.

    Returns:
        uint8 [F, 3, H, W] RGB, display orientation (a channels-last view unless
        ``contiguous``). Frames that could not be decoded are
        replaced as the original's lax loading does (``short='pad'``: the decoded frames keep
        their order and the last one is repeated to fill F, with a FramePaddingWarning) or
        raise InsufficientFramesError (``short='raise'``).
    """
    path = plan.files[0]
    got: dict[tuple[str, int], np.ndarray] = {}
    rotation = {}
    for f, local in unique_per_file(plan).items():
        info, frames, rotated = _decode_file(f, local, backend, threads)
        rotation[f] = 0 if rotated else info.rotation
        for i, a in frames.items():
            got[(f, i)] = a
    keys = list(zip(plan.files, plan.local.tolist(), strict=True))
    ok = [k for k in keys if k in got]
    if not ok:
        raise CorruptVideoError(
            f"{path}: none of the frames {sorted(set(plan.local.tolist()))} could be decoded", path
        )
    if len(ok) < len(keys):
        missing = sorted({i for f, i in keys if (f, i) not in got})
        msg = (
            f"{path}: {len(keys) - len(ok)} of {len(keys)} frames could not be decoded "
            f"(frames {missing})"
        )
        if short == "raise":
            raise InsufficientFramesError(msg, path, len(ok), len(keys))
        warnings.warn(msg + "; repeating the last decoded frame", FramePaddingWarning, stacklevel=3)
        ok = ok + [ok[-1]] * (len(keys) - len(ok))
    tensors = [_rotate(torch.from_numpy(got[k])[None], rotation[k[0]]) for k in ok]
    shapes = sorted({tuple(t.shape[1:3]) for t in tensors})
    if len(shapes) != 1:
        raise CorruptVideoError(f"{path}: the clip's frames differ in size {shapes}", path)
    out = torch.cat(tensors).permute(0, 3, 1, 2)
    # A transform crops and converts anyway: skip the channels-first copy of whole frames.
    return out.contiguous() if contiguous else out


def read_clip(
    path: str | os.PathLike,
    start_sec: float | None = None,
    end_sec: float | None = None,
    num_frames: int = 4,
    sampling: Sampling = "uniform",
    backend: Backend = "pyav",
    transform: TransformArg = "eval",
    seed: int | None = None,
    *,
    layout: EgoClipLayout | None = None,
    out_of_range: OutOfRange = "clamp",
    short: ShortPolicy = "pad",
    dtype: torch.dtype = torch.float32,
    threads: int = 1,
) -> Tensor:
    """Read one clip as a model-ready tensor.

    Args:
        path: video file; with ``layout``, the directory of the video's chunk files.
        start_sec, end_sec: clip range in seconds (None: from the start / to the end).
        num_frames: F, frames to sample.
        sampling: 'uniform' (segment midpoints) or 'rand' (one random frame per segment).
        backend: 'pyav' (default, CPU), 'torchcodec' (CPU, optional), 'dali' (GPU decode and
            transform), 'dali_cpu' (DALI's CPU decoder: VP8, VP9, MJPEG).
        transform: 'eval', 'train', None (raw frames) or a transform instance.
        seed: seeds 'rand' sampling and the train transform (None: nondeterministic).
        layout: EgoClipLayout for Ego4D chunk directories (fixed 30 fps, 600 s chunks).
        out_of_range: 'clamp' (warn, ClipRangeWarning) or 'raise' (ClipRangeError) when the
            range leaves the video.
        short: 'pad' (repeat frames) or 'raise' (InsufficientFramesError) when the clip holds
            or yields fewer than F frames.
        dtype: output dtype of transformed clips.
        threads: decoder threads (keep 1 inside DataLoader workers).

    Returns:
        With a transform: ``[F, 3, S, S]`` of ``dtype`` (S = 224 for 'eval'/'train'), on the
        GPU for backend 'dali'. With ``transform=None``: uint8 ``[F, 3, H, W]`` RGB frames as
        displayed (rotation applied).

    Raises:
        VideoError subclasses (see errors.py); ValueError for invalid arguments.
    """
    tf = make_transform(transform)
    rng, gen = split_seed(seed)
    plan = plan_clip(
        path,
        start_sec,
        end_sec,
        num_frames,
        sampling,
        rng,
        layout=layout,
        out_of_range=out_of_range,
        short=short,
    )
    return read_plan(plan, backend, tf, gen, short=short, dtype=dtype, threads=threads)


def read_plan(
    plan: ClipPlan,
    backend: Backend = "pyav",
    transform: TransformArg = "eval",
    generator: torch.Generator | None = None,
    *,
    short: ShortPolicy = "pad",
    dtype: torch.dtype = torch.float32,
    threads: int = 1,
) -> Tensor:
    """Decode and transform the frames of an already made plan on any backend.

    This is ``read_clip`` after its planning step, for callers whose frame choice is not the
    package's sampling rule (a task's own sampler builds the :class:`ClipPlan`; every backend,
    DALI included, then decodes exactly those frames).

    Args:
        plan: the frames to decode (``files``/``local`` per output position).
        backend, transform, short, dtype, threads: as :func:`read_clip`.
        generator: draws the train transform's crop (None: nondeterministic).

    Returns:
        As :func:`read_clip`: ``[F, 3, S, S]`` of ``dtype`` with a transform, uint8
        ``[F, 3, H, W]`` without.
    """
    tf = make_transform(transform)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("dali", "dali_cpu"):
        if backend not in _PLAN_READERS:
            raise BackendUnavailableError(
                f"backend {backend!r}: its module egovlpv2_rt.video.dali_backend is not loaded",
                plan.files[0],
            )
        (clip,) = _PLAN_READERS[backend]([plan], tf, short, dtype, generator)
        if isinstance(clip, VideoError):
            raise clip
        return clip
    frames = decode_clip(plan, backend, short, threads, contiguous=tf is None)
    if tf is None:
        return frames
    if isinstance(tf, TrainTransform):
        return tf(frames, generator=generator, dtype=dtype)
    return tf(frames, dtype=dtype)
