"""DALI backend: decode, resize, crop and normalise clips in one DALI pipeline.

``device='gpu'`` decodes with NVDEC (DALI's ``mixed`` video decoder) and runs every transform
on the GPU; the batch reaches PyTorch as CUDA tensors ``[B, F, 3, S, S]`` without a host copy.
``device='cpu'`` runs the *same pipeline code* on DALI's CPU operators (whose video decoder
reads VP8, VP9 and MJPEG only, not H.264); the tests use it to check that DALI and the PyAV
backend return the same frames for the same clip.

What is shared with the CPU backends, so that every backend returns the same clip:
- the frame indices (sampling.py, from the same probe), fed to ``fn.decoders.video(frames=...)``;
- the crop geometry (transforms.py): resize sizes and crop boxes are computed on the host with
  torchvision's rounding and fed per sample, so DALI crops exactly the pixels torch crops;
- rotation: the geometry is mapped into the coded orientation and the square output is rotated
  (and, for 'train', flipped) in torch afterwards, which commutes with the resizes.
What differs: DALI's YUV->RGB conversion and its resampling filters; docs/VIDEO.md gives the
measured tolerance.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .codecs import check_codec
from .errors import (
    BackendUnavailableError,
    CorruptVideoError,
    FramePaddingWarning,
    InsufficientFramesError,
    VideoError,
    describe_error,
)
from .planning import plan_clip, split_seed
from .probe import VideoInfo, probe
from .reader import PlanReader, register_plan_reader
from .sampling import (
    ClipPlan,
    ClipSpec,
    EgoClipLayout,
    OutOfRange,
    Sampling,
    ShortPolicy,
    as_specs,
)
from .transforms import (
    CropBox,
    EvalTransform,
    TrainParams,
    TrainTransform,
    TransformArg,
    make_transform,
)

__all__ = ["DaliClipLoader", "dali_available", "read_plans"]

log = logging.getLogger(__name__)

# A transform as make_transform returns it.
_Transform = EvalTransform | TrainTransform | None
# DALI's (fn, pipeline_def, types), imported on first use (DALI is an optional extra).
_DaliModules = tuple[Any, Any, Any]


@functools.cache
def _load() -> tuple[_DaliModules | None, str]:
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali import fn, pipeline_def, types
    except (ImportError, OSError, RuntimeError) as e:  # missing package or CUDA libraries
        return None, f"{type(e).__name__}: {e}".splitlines()[0][:300]
    return (fn, pipeline_def, types), ""


def dali_available(device: str = "cpu") -> tuple[bool, str]:
    """(True, '') when DALI can run on ``device`` ('cpu' or 'gpu') here, else (False, why)."""
    mods, why = _load()
    if mods is None:
        return False, f"nvidia-dali is not importable ({why})"
    if device == "gpu" and not torch.cuda.is_available():
        return False, "no CUDA device visible to torch"
    return True, ""


def _require(device: str, path: str = "") -> _DaliModules:
    ok, why = dali_available(device)
    mods = _load()[0]
    if not ok or mods is None:  # (dali_available is False whenever mods is None)
        name = "dali" if device == "gpu" else "dali_cpu"
        raise BackendUnavailableError(
            f"backend '{name}' is unavailable: {why}; install nvidia-dali-cuda130 "
            "(the 'dali' extra) or use backend='pyav'",
            path,
        )
    return mods


def _rot_box_ccw(box: CropBox, height: int, width: int) -> tuple[CropBox, int, int]:
    """The same box after rotating its (height x width) image 90 degrees counter-clockwise."""
    return CropBox(width - box.left - box.width, box.top, box.width, box.height), width, height


def to_coded(box: CropBox, disp_h: int, disp_w: int, rotation: int) -> CropBox:
    """Map a crop box from display orientation back to the coded (unrotated) frame."""
    k = (4 - (rotation // 90) % 4) % 4
    h, w = disp_h, disp_w
    for _ in range(k):
        box, h, w = _rot_box_ccw(box, h, w)
    return box


@dataclass(frozen=True)
class _Sample:
    """One file's share of a clip: decode ``frames`` (sorted, distinct) of ``info``."""

    info: VideoInfo
    frames: tuple[int, ...]
    resize_hw: tuple[int, int] | None  # coded orientation, eval only
    box: CropBox | None  # coded orientation, in the (resized) coded frame
    k: int  # quarter turns to apply to the output (display rotation)
    flip: bool

    @property
    def crop(self) -> CropBox:
        """``box``, which every sample of a transform has."""
        assert self.box is not None, "a sample without a transform has no crop box"
        return self.box


def _samples(
    plan: ClipPlan, tf: _Transform, generator: torch.Generator | None
) -> tuple[list[_Sample], list[tuple[int, int]]]:
    """Split a plan by file; return samples and, per output frame, (sample, position)."""
    by_file: dict[str, list[int]] = {}
    for f, i in zip(plan.files, plan.local.tolist(), strict=True):
        by_file.setdefault(f, [])
        if i not in by_file[f]:
            by_file[f].append(i)
    infos = {f: probe(f) for f in by_file}
    first = infos[plan.files[0]]
    dh, dw = first.display_size
    params: TrainParams | None = None
    if isinstance(tf, TrainTransform):
        params = tf.sample(dh, dw, generator)
    samples: list[_Sample] = []
    where: dict[tuple[str, int], tuple[int, int]] = {}
    for f, frames in by_file.items():
        info = infos[f]
        frames = sorted(frames)
        rot = info.rotation
        resize_hw, box, flip = None, None, False
        ih, iw = info.display_size
        if isinstance(tf, EvalTransform):
            (rh, rw), dbox = tf.geometry(ih, iw)
            box = to_coded(dbox, rh, rw, rot)
            resize_hw = (rw, rh) if rot in (90, 270) else (rh, rw)
        elif params is not None:  # TrainTransform
            box = to_coded(params.box, ih, iw, rot)
            flip = params.flip
        for pos, i in enumerate(frames):
            where[(f, i)] = (len(samples), pos)
        samples.append(_Sample(info, tuple(frames), resize_hw, box, (rot // 90) % 4, flip))
    order = [where[(f, i)] for f, i in zip(plan.files, plan.local.tolist(), strict=True)]
    return samples, order


_PIPES: dict[tuple, Any] = {}
_PIPES_PID = os.getpid()
_PIPES_LOCK = threading.Lock()


def _kind(tf: _Transform) -> str:
    if tf is None:
        return "none"
    return "eval" if isinstance(tf, EvalTransform) else "train"


def _build(
    device: str, tf: _Transform, batch_size: int, num_threads: int, device_id: int | None
) -> Any:
    fn, pipeline_def, types = _require(device)
    kind = _kind(tf)
    decoder_device = "mixed" if device == "gpu" else "cpu"

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        prefetch_queue_depth=1,
        exec_dynamic=True,
    )
    def clip_pipeline() -> Any:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        video = fn.decoders.video(encoded, device=decoder_device, frames=frames)  # [f, H, W, 3]
        if tf is None:  # kind "none"
            return fn.transpose(video, perm=[0, 3, 1, 2])
        interp = {
            "interp_type": types.INTERP_LINEAR,
            "antialias": tf.antialias,
            "dtype": types.FLOAT,
        }
        if kind == "eval":
            size = fn.external_source(name="resize", dtype=types.FLOAT, ndim=1)  # [h, w]
            video = fn.resize(video, size=size, subpixel_scale=False, **interp)
        start = fn.external_source(name="crop_start", dtype=types.FLOAT, ndim=1)  # [top, left]
        shape = fn.external_source(name="crop_shape", dtype=types.FLOAT, ndim=1)  # [h, w]
        video = fn.slice(
            video,
            start,
            shape,
            axis_names="HW",
            normalized_anchor=False,
            normalized_shape=False,
            out_of_bounds_policy="error",
        )
        video = fn.resize(video, size=[tf.size, tf.size], subpixel_scale=False, **interp)
        return fn.crop_mirror_normalize(
            video,
            dtype=types.FLOAT,
            output_layout="FCHW",
            mean=[255.0 * m for m in tf.mean],
            std=[255.0 * s for s in tf.std],
        )

    pipe = clip_pipeline()
    pipe.build()
    return pipe


def _pipeline(
    device: str, tf: _Transform, batch_size: int, num_threads: int, device_id: int | None
) -> tuple[Any, tuple]:
    global _PIPES_PID
    key = (device, _kind(tf), tf, batch_size, num_threads, device_id)
    with _PIPES_LOCK:
        if os.getpid() != _PIPES_PID:  # a forked child must build its own
            _PIPES.clear()
            _PIPES_PID = os.getpid()
        pipe = _PIPES.get(key)
        if pipe is None:
            pipe = _PIPES[key] = _build(device, tf, batch_size, num_threads, device_id)
        return pipe, key


def _drop(key: tuple) -> None:
    with _PIPES_LOCK:
        _PIPES.pop(key, None)


def _feed(
    pipe: Any,
    tf: _Transform,
    samples: Sequence[_Sample],
    frames_override: list[np.ndarray] | None = None,
) -> None:
    kind = _kind(tf)
    enc = [np.fromfile(s.info.path, dtype=np.uint8) for s in samples]
    frames = frames_override or [np.asarray(s.frames, dtype=np.int32) for s in samples]
    pipe.feed_input("encoded", enc)
    pipe.feed_input("frames", frames)
    if kind == "eval":
        pipe.feed_input("resize", [np.asarray(s.resize_hw, np.float32) for s in samples])
    if kind != "none":
        pipe.feed_input(
            "crop_start", [np.asarray([s.crop.top, s.crop.left], np.float32) for s in samples]
        )
        pipe.feed_input(
            "crop_shape", [np.asarray([s.crop.height, s.crop.width], np.float32) for s in samples]
        )


def _to_torch(out: Any, i: int, device: str, raw: bool) -> Tensor:
    t = out[i]
    if device == "cpu":
        return torch.from_numpy(np.array(t))
    from nvidia.dali.plugin.pytorch import feed_ndarray

    # Device-to-device copy into a torch-owned CUDA tensor: no trip through host memory.
    dst = torch.empty(
        tuple(t.shape()),
        dtype=torch.uint8 if raw else torch.float32,
        device=torch.device("cuda", torch.cuda.current_device()),
    )
    feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream())
    return dst


def _run(
    samples: list[_Sample], device: str, tf: _Transform, num_threads: int
) -> list[Tensor | VideoError]:
    """Decode + transform every sample; a failing batch is retried sample by sample."""
    device_id = torch.cuda.current_device() if device == "gpu" else None
    # Pipelines take batches up to their batch_size: round up so that few get built.
    capacity = max(4, 1 << (len(samples) - 1).bit_length())
    pipe, key = _pipeline(device, tf, capacity, num_threads, device_id)
    try:
        _feed(pipe, tf, samples)
        (out,) = pipe.run()
        return [_to_torch(out, i, device, tf is None) for i in range(len(samples))]
    except (RuntimeError, ValueError, IndexError, OSError) as batch_err:
        _drop(key)  # a DALI error can leave the pipeline unusable
        if len(samples) == 1:
            s = samples[0]
            return [
                CorruptVideoError(
                    f"{s.info.path}: DALI failed to decode frames "
                    f"{list(s.frames)} ({_first_line(batch_err)})",
                    s.info.path,
                )
            ]
        res: list[Tensor | VideoError] = []
        for s in samples:
            res += _run([s], device, tf, num_threads)
        return res


def _first_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "rror" in ln and "Critical error in pipeline" not in ln:
            return ln.strip()[:300]
    return (lines[-1] if lines else type(e).__name__)[:300]


def _postprocess(x: Tensor, s: _Sample, tf: _Transform) -> Tensor:
    """Rotate to display orientation, then flip (train): [f, 3, h, w]."""
    if s.k:
        x = torch.rot90(x, k=s.k, dims=(2, 3))
    if s.flip:
        x = x.flip(-1)
    return x


def read_plans(
    plans: Sequence[ClipPlan],
    device: str = "gpu",
    transform: _Transform = None,
    short: ShortPolicy = "pad",
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
    num_threads: int = 2,
    return_errors: bool = False,
) -> list[Tensor | VideoError]:
    """Run clip plans through the DALI pipeline.

    Returns, per plan, ``[F, 3, S, S]`` (``dtype``, on CUDA for device 'gpu') or, for
    ``transform=None``, uint8 ``[F, 3, H, W]``. A failing clip raises its VideoError, or with
    ``return_errors=True`` is returned in its place.
    """
    backend = "dali" if device == "gpu" else "dali_cpu"
    _require(device, plans[0].files[0] if plans else "")
    flat: list[_Sample] = []
    layout: list[tuple[int, list[tuple[int, int]]]] = []
    results: dict[int, Tensor | VideoError] = {}  # plan number -> its clip or error
    for p, plan in enumerate(plans):
        try:
            samples, order = _samples(plan, transform, generator)
            for s in samples:
                check_codec(s.info, backend)
        except VideoError as e:
            results[p] = e
            continue
        layout.append((p, [(len(flat) + a, b) for a, b in order]))
        flat += samples
    outs = _run(flat, device, transform, num_threads) if flat else []
    for p, order in layout:
        got = [outs[a] for a, _ in order]
        failed = [o for o in got if isinstance(o, VideoError)]
        decoded = [o for o in got if isinstance(o, Tensor)]
        res: Tensor | VideoError
        if failed:
            res = _pad_or_fail(
                plans[p], outs, flat, order, device, transform, short, num_threads, failed[0]
            )
        else:  # every frame decoded
            frames = [
                _postprocess(o, flat[a], transform)[b]
                for o, (a, b) in zip(decoded, order, strict=True)
            ]
            res = torch.stack(frames)
        if transform is not None and isinstance(res, Tensor):
            res = res.to(dtype)
        results[p] = res
    if not return_errors:
        for r in results.values():
            if isinstance(r, VideoError):
                raise r
    return [results[p] for p in range(len(plans))]


def _pad_or_fail(
    plan: ClipPlan,
    outs: list[Tensor | VideoError],
    flat: list[_Sample],
    order: list[tuple[int, int]],
    device: str,
    tf: _Transform,
    short: ShortPolicy,
    num_threads: int,
    err: VideoError,
) -> Tensor | VideoError:
    """Lax loading for DALI: find which frames decode one by one, then pad or raise."""
    good: list[Tensor] = []
    for a, b in order:
        s = flat[a]
        out = outs[a]
        if not isinstance(out, VideoError):
            good.append(_postprocess(out, s, tf)[b])
            continue
        single = _Sample(s.info, (s.frames[b],), s.resize_hw, s.box, s.k, s.flip)
        (one,) = _run([single], device, tf, num_threads)
        if not isinstance(one, VideoError):
            good.append(_postprocess(one, single, tf)[0])
    path = plan.files[0]
    if not good:
        return err
    n = len(order)
    if len(good) < n:
        msg = f"{path}: {n - len(good)} of {n} frames could not be decoded by DALI"
        if short == "raise":
            return InsufficientFramesError(msg, path, len(good), n)
        warnings.warn(msg + "; repeating the last decoded frame", FramePaddingWarning, stacklevel=4)
        good += [good[-1]] * (n - len(good))
    return torch.stack(good)


class DaliClipLoader:
    """Batches of clips decoded and transformed by DALI, sharded for DDP.

    Args:
        clips: ClipSpecs (or paths, or (path, start, end) tuples).
        batch_size: clips per batch.
        num_frames, sampling, layout, out_of_range, short: as ``read_clip``.
        transform: 'eval', 'train' or a transform instance.
        device: 'gpu' (NVDEC + GPU ops) or 'cpu' (DALI's CPU operators).
        shard_id, num_shards: this rank's contiguous share of ``clips`` (DALI readers' rule).
        seed: seeds 'rand' sampling and 'train' crops; the epoch number is mixed in.
        on_error: 'skip' (report and drop bad clips) or 'raise'.

    Iterating yields ``{'video': [B, F, 3, S, S] tensor, 'index': int64 [B]}`` (B may be smaller
    than batch_size when clips are skipped); ``failures`` lists (index, path, error) of the
    last epoch.
    """

    def __init__(
        self,
        clips: Sequence,
        batch_size: int,
        num_frames: int = 4,
        sampling: Sampling = "uniform",
        transform: TransformArg = "eval",
        device: str = "gpu",
        shard_id: int = 0,
        num_shards: int = 1,
        seed: int | None = None,
        layout: EgoClipLayout | None = None,
        out_of_range: OutOfRange = "clamp",
        short: ShortPolicy = "pad",
        on_error: str = "skip",
        dtype: torch.dtype = torch.float32,
        num_threads: int = 2,
    ) -> None:
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"need 0 <= shard_id < num_shards, got {shard_id}, {num_shards}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        _require(device)
        specs = as_specs(clips)
        n = len(specs)
        lo, hi = n * shard_id // num_shards, n * (shard_id + 1) // num_shards
        self.indices = list(range(lo, hi))
        self.specs = specs
        self.batch_size = int(batch_size)
        self.num_frames, self.sampling, self.layout = num_frames, sampling, layout
        self.out_of_range, self.short, self.on_error = out_of_range, short, on_error
        self.transform = make_transform(transform)
        self.device, self.seed, self.dtype, self.num_threads = device, seed, dtype, num_threads
        self.epoch = 0
        self.failures: list[tuple[int, str, str]] = []

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[dict]:
        self.failures = []
        seed = None if self.seed is None else self.seed * 1_000_003 + self.epoch
        rng, gen = split_seed(seed)
        self.epoch += 1
        for b in range(0, len(self.indices), self.batch_size):
            idx = self.indices[b : b + self.batch_size]
            plans, keep = [], []
            for i in idx:
                spec: ClipSpec = self.specs[i]
                try:
                    plans.append(
                        plan_clip(
                            spec.path,
                            spec.start_sec,
                            spec.end_sec,
                            self.num_frames,
                            self.sampling,
                            rng,
                            layout=self.layout,
                            out_of_range=self.out_of_range,
                            short=self.short,
                        )
                    )
                    keep.append(i)
                except VideoError as e:
                    self._fail(i, spec, e)
            outs = (
                read_plans(
                    plans,
                    self.device,
                    self.transform,
                    self.short,
                    self.dtype,
                    gen,
                    self.num_threads,
                    return_errors=True,
                )
                if plans
                else []
            )
            videos, kept = [], []
            for i, o in zip(keep, outs, strict=True):
                if isinstance(o, VideoError):
                    self._fail(i, self.specs[i], o)
                else:
                    videos.append(o)
                    kept.append(i)
            if videos:
                yield {"video": torch.stack(videos), "index": torch.tensor(kept)}
        if self.failures:
            log.warning(
                "DaliClipLoader epoch %d: %d bad clip(s) skipped: %s",
                self.epoch - 1,
                len(self.failures),
                "; ".join(f"[{i}] {p} ({e})" for i, p, e in self.failures[:20]),
            )

    def _fail(self, i: int, spec: ClipSpec, err: VideoError) -> None:
        if self.on_error == "raise":
            raise err
        self.failures.append((i, os.fspath(spec.path), describe_error(err)))


def _plan_reader(device: str) -> PlanReader:
    """``read_plans`` on ``device`` as the reader's plan-reader interface."""

    def read(
        plans: Sequence[ClipPlan],
        transform: _Transform,
        short: ShortPolicy,
        dtype: torch.dtype,
        generator: torch.Generator | None,
    ) -> list[Tensor | VideoError]:
        return read_plans(plans, device, transform, short, dtype, generator, return_errors=True)

    return read


register_plan_reader("dali", _plan_reader("gpu"))
register_plan_reader("dali_cpu", _plan_reader("cpu"))
