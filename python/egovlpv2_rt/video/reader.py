"""``read_clip`` and ``frame_indices``: the public entry points of the video package.

One call = probe (cached) -> plan the frame indices (sampling.py, the same for every backend) ->
decode those frames with the chosen backend -> pad or raise on missing frames -> apply the
display rotation -> transform.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .errors import (
    CorruptVideoError,
    FramePaddingWarning,
    InsufficientFramesError,
    UnsupportedCodecError,
)
from .probe import VideoInfo, probe
from .pyav_backend import decode_pyav, pyav_can_decode
from .sampling import (
    ClipPlan,
    EgoClipLayout,
    OutOfRange,
    Sampling,
    ShortPolicy,
    plan_egoclip,
    plan_file,
    unique_per_file,
)
from .transforms import EvalTransform, TrainTransform

__all__ = [
    "BACKENDS",
    "backends_for_codec",
    "decode_clip",
    "frame_indices",
    "make_transform",
    "plan_clip",
    "read_clip",
]

Backend = Literal["pyav", "torchcodec", "dali", "dali_cpu"]
BACKENDS: tuple[str, ...] = ("pyav", "torchcodec", "dali", "dali_cpu")

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


def make_transform(transform) -> EvalTransform | TrainTransform | None:
    """'eval' | 'train' | None | an EvalTransform/TrainTransform instance -> instance or None."""
    if transform is None or isinstance(transform, (EvalTransform, TrainTransform)):
        return transform
    if transform == "eval":
        return EvalTransform()
    if transform == "train":
        return TrainTransform()
    raise ValueError(
        f"transform must be 'eval', 'train', None or a transform instance, got {transform!r}"
    )


def _seeds(seed) -> tuple[np.random.Generator | None, torch.Generator | None]:
    """Independent generators for frame sampling and the train transform from one seed."""
    if seed is None:
        return None, None
    ss = np.random.SeedSequence(int(seed))
    a, b = ss.spawn(2)
    g = torch.Generator()
    g.manual_seed(int(b.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return np.random.default_rng(a), g


def plan_clip(
    path: str | os.PathLike,
    start_sec: float | None = None,
    end_sec: float | None = None,
    num_frames: int = 4,
    sampling: Sampling = "uniform",
    seed=None,
    *,
    layout: EgoClipLayout | None = None,
    out_of_range: OutOfRange = "clamp",
    short: ShortPolicy = "pad",
) -> ClipPlan:
    """The frames a read would decode (see sampling.py for the rule). ``seed``: int, Generator
    or None."""
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    if sampling not in ("uniform", "rand"):
        raise ValueError(f"sampling must be 'uniform' or 'rand', got {sampling!r}")
    if layout is None:
        info = probe(path)
        return plan_file(info, start_sec, end_sec, int(num_frames), sampling, seed,
                         out_of_range, short)
    return plan_egoclip(
        path, start_sec, end_sec, int(num_frames), layout,
        lambda k: probe(layout.chunk_path(path, k)).num_frames,
        sampling, seed, out_of_range, short,
    )


def frame_indices(
    path: str | os.PathLike,
    start_sec: float | None = None,
    end_sec: float | None = None,
    num_frames: int = 4,
    sampling: Sampling = "uniform",
    seed: int | None = None,
    *,
    layout: EgoClipLayout | None = None,
    out_of_range: OutOfRange = "clamp",
    short: ShortPolicy = "pad",
) -> list[int]:
    """Frame indices ``read_clip`` decodes for the same arguments (any backend).

    Indices count frames in presentation order from 0; in the EgoClip layout they are global
    (chunk ``k`` starts at ``k * 18000``). With ``sampling='rand'`` the same ``seed`` gives the
    same indices here and in ``read_clip``.
    """
    rng, _ = _seeds(seed)
    plan = plan_clip(path, start_sec, end_sec, num_frames, sampling, rng, layout=layout,
                     out_of_range=out_of_range, short=short)
    return [int(i) for i in plan.indices]


def _decode_file(path: str, local: list[int], backend: str, threads: int):
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
    keys = list(zip(plan.files, plan.local.tolist()))
    ok = [k for k in keys if k in got]
    if not ok:
        raise CorruptVideoError(
            f"{path}: none of the frames {sorted(set(plan.local.tolist()))} could be decoded", path
        )
    if len(ok) < len(keys):
        missing = sorted({i for f, i in keys if (f, i) not in got})
        msg = (f"{path}: {len(keys) - len(ok)} of {len(keys)} frames could not be decoded "
               f"(frames {missing})")
        if short == "raise":
            raise InsufficientFramesError(msg, path, len(ok), len(keys))
        warnings.warn(msg + "; repeating the last decoded frame", FramePaddingWarning,
                      stacklevel=3)
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
    transform="eval",
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
    rng, gen = _seeds(seed)
    plan = plan_clip(path, start_sec, end_sec, num_frames, sampling, rng, layout=layout,
                     out_of_range=out_of_range, short=short)
    if backend in ("dali", "dali_cpu"):
        from .dali_backend import read_plans

        return read_plans([plan], device="gpu" if backend == "dali" else "cpu", transform=tf,
                          short=short, dtype=dtype, generator=gen)[0]
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    frames = decode_clip(plan, backend, short, threads, contiguous=tf is None)
    if tf is None:
        return frames
    if isinstance(tf, TrainTransform):
        return tf(frames, generator=gen, dtype=dtype)
    return tf(frames, dtype=dtype)


def describe_error(err: BaseException) -> str:
    """One line naming the error type and message (used in dataset reports)."""
    return f"{type(err).__name__}: {err}"
