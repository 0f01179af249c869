"""Clip transforms, written once on torch tensors and shared by every CPU backend.

``eval`` is the original's ``val``/``test`` transform (torchvision ``Resize(256)``,
``CenterCrop(256)``, ``Resize(224)``, ``Normalize(ImageNet)`` on float frames in [0, 1]);
``train`` is its ``RandomResizedCropVideo(224, scale=(0.5, 1))`` + ``RandomHorizontalFlipVideo``
(colour jitter is (0, 0, 0) in every released config, so it is the identity and left out).
One crop and one flip are drawn per clip, shared by its frames, as the video transforms do.

The geometry (output sizes, crop boxes, flips) is computed by plain functions that the DALI
backend reuses, so that every backend crops exactly the same pixels; only the resampling
arithmetic differs there (docs/VIDEO.md gives the tolerance).

Interpolation is bilinear with ``align_corners=False``. ``antialias=True`` (the default) is
torchvision's default since 0.17 and matches PIL; torchvision releases before 0.17 resized
tensors without it, which ``antialias=False`` reproduces. The resampling is written as separable
weight matrices (see :func:`resample_matrix`) rather than ``F.interpolate``: same filter,
exact in float64, and it runs unchanged on CUDA tensors.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CropBox",
    "EvalTransform",
    "TrainTransform",
    "TransformArg",
    "resize_short_side",
    "scaled_eval_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CropBox:
    """A crop in pixel units of the image it applies to: rows [top, top+height), cols likewise."""

    top: int
    left: int
    height: int
    width: int


def resize_short_side(height: int, width: int, short: int) -> tuple[int, int]:
    """torchvision ``Resize(short)`` output size: short side to ``short``, long side truncated."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def center_crop_box(height: int, width: int, crop: int) -> CropBox:
    """torchvision ``CenterCrop(crop)`` box (Python ``round``, i.e. half to even)."""
    if crop > height or crop > width:
        raise ValueError(f"center crop {crop} larger than the image {height}x{width}")
    return CropBox(round((height - crop) / 2.0), round((width - crop) / 2.0), crop, crop)


@functools.lru_cache(maxsize=256)
def _matrix64(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    scale = n_in / n_out
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        if antialias:
            # PIL's triangle filter, widened by the scale when shrinking (what torchvision's
            # antialias implements); at scale <= 1 it is plain bilinear.
            support = max(scale, 1.0)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            j = np.arange(lo, hi, dtype=np.float64)
            w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) / support))
            m[i, lo:hi] = w / w.sum()
        else:
            x = max(center - 0.5, 0.0)  # align_corners=False, clamped at the border
            x0 = min(math.floor(x), n_in - 1)
            x1 = min(x0 + 1, n_in - 1)
            m[i, x0] += 1.0 - (x - x0)
            m[i, x1] += x - x0
    return m


@functools.lru_cache(maxsize=256)
def resample_matrix(n_in: int, n_out: int, antialias: bool, dtype: torch.dtype) -> Tensor:
    """[n_out, n_in] bilinear resampling weights along one axis (rows sum to 1).

    Weights are computed in float64, so the float64 path is exact to rounding;
    ``F.interpolate`` computes source coordinates in float32 and drifts by up to ~3e-5 (in
    [0, 1] pixel units) from the exact filter.
    """
    return torch.from_numpy(_matrix64(n_in, n_out, antialias)).to(dtype)


# Output positions resampled per matrix product: each block reads only the input window its
# filter taps touch, so the work is banded instead of a dense n_out x n_in product.
_BLOCK = 32


@functools.lru_cache(maxsize=256)
def _bands(
    n_in: int, n_out: int, antialias: bool, dtype: torch.dtype
) -> list[tuple[int, int, int, int, Tensor]]:
    m = resample_matrix(n_in, n_out, antialias, dtype)
    nz = m != 0
    bands = []
    for o0 in range(0, n_out, _BLOCK):
        o1 = min(o0 + _BLOCK, n_out)
        cols = nz[o0:o1].any(0).nonzero().flatten()
        i0, i1 = int(cols[0]), int(cols[-1]) + 1
        bands.append((o0, o1, i0, i1, m[o0:o1, i0:i1].T.contiguous()))
    return bands


def _resample_last(x: Tensor, n_out: int, antialias: bool) -> Tensor:
    out = x.new_empty((*x.shape[:-1], n_out))
    for o0, o1, i0, i1, w in _bands(x.shape[-1], n_out, antialias, x.dtype):
        out[..., o0:o1] = x[..., i0:i1] @ w.to(x.device)
    return out


def _resize(x: Tensor, size: tuple[int, int], antialias: bool) -> Tensor:
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x  # torchvision returns the input untouched when the size already matches
    if x.shape[-1] != w:
        x = _resample_last(x, w, antialias)
    if x.shape[-2] != h:
        x = _resample_last(x.transpose(-1, -2), h, antialias).transpose(-1, -2)
    return x


def _normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def _check(frames: Tensor) -> None:
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be [F, 3, H, W], got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8 and not frames.is_floating_point():
        raise ValueError(f"frames must be uint8 or floating point, got {frames.dtype}")


def _to_float(frames: Tensor, dtype: torch.dtype) -> Tensor:
    if frames.dtype == torch.uint8:
        return frames.to(dtype).div_(255.0)
    return frames.to(dtype)


@dataclass(frozen=True)
class EvalTransform:
    """Resize short side, center crop, resize, normalise.

    Call with frames ``[F, 3, H, W]`` uint8 (0..255) or float (0..1); returns
    ``[F, 3, size, size]`` of ``dtype`` (computed in float32 unless dtype is float64).
    """

    resize: int = 256
    crop: int = 256
    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    antialias: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize or self.size <= 0:
            raise ValueError(
                f"need 0 < crop <= resize and size > 0, got resize={self.resize}, "
                f"crop={self.crop}, size={self.size}"
            )

    def geometry(self, height: int, width: int) -> tuple[tuple[int, int], CropBox]:
        """(resized (h, w), crop box in the resized image) for an input of height x width."""
        rh, rw = resize_short_side(height, width, self.resize)
        return (rh, rw), center_crop_box(rh, rw, self.crop)

    def __call__(self, frames: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        _check(frames)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        (rh, rw), box = self.geometry(frames.shape[-2], frames.shape[-1])
        crop = (..., slice(box.top, box.top + box.height), slice(box.left, box.left + box.width))
        if (rh, rw) == tuple(frames.shape[-2:]):
            x = _to_float(frames[crop], work)  # first resize is the identity: crop first
        else:
            x = _resize(_to_float(frames, work), (rh, rw), self.antialias)[crop]
        x = _resize(x, (self.size, self.size), self.antialias)
        return _normalize(x, self.mean, self.std).to(dtype).contiguous()


@dataclass(frozen=True)
class TrainParams:
    """One clip's random draw: the crop box in the input frame and whether to flip."""

    box: CropBox
    flip: bool


@dataclass(frozen=True)
class TrainTransform:
    """Random resized crop (torchvision's sampling rule) + horizontal flip, then normalise.

    Call with frames ``[F, 3, H, W]`` and an optional ``torch.Generator``; returns
    ``[F, 3, size, size]``.
    """

    size: int = 224
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    antialias: bool = True

    def sample(
        self, height: int, width: int, generator: torch.Generator | None = None
    ) -> TrainParams:
        """Draw the crop box and flip as torchvision ``RandomResizedCrop.get_params`` does."""
        g = generator
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        box = None
        for _ in range(10):
            u = torch.rand(2, generator=g, dtype=torch.float64).tolist()
            target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0])
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=g))
                left = int(torch.randint(0, width - w + 1, (1,), generator=g))
                box = CropBox(top, left, h, w)
                break
        if box is None:  # torchvision's fallback: the central crop of the clamped ratio
            in_ratio = width / height
            if in_ratio < min(self.ratio):
                w, h = width, round(width / min(self.ratio))
            elif in_ratio > max(self.ratio):
                h, w = height, round(height * max(self.ratio))
            else:
                w, h = width, height
            box = CropBox((height - h) // 2, (width - w) // 2, h, w)
        flip = bool(torch.rand(1, generator=g).item() < self.flip_p)
        return TrainParams(box, flip)

    def apply(
        self, frames: Tensor, params: TrainParams, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        _check(frames)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        b = params.box
        x = _to_float(frames[..., b.top : b.top + b.height, b.left : b.left + b.width], work)
        x = _resize(x, (self.size, self.size), self.antialias)
        if params.flip:
            x = x.flip(-1)
        return _normalize(x, self.mean, self.std).to(dtype).contiguous()

    def __call__(
        self,
        frames: Tensor,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        params = self.sample(frames.shape[-2], frames.shape[-1], generator)
        return self.apply(frames, params, dtype)


# A ``transform=`` argument: a name, a transform instance, or None (uint8 frames, no transform).
TransformArg = Literal["eval", "train"] | EvalTransform | TrainTransform | None


def scaled_eval_transform(size: int = 224) -> EvalTransform:
    """The original's test transform ``Resize(256) + CenterCrop(256) + Resize(224)`` with the
    sizes scaled by ``size / 224`` (for a model of input size ``size``)."""
    outer = size * 256 // 224
    return EvalTransform(resize=outer, crop=outer, size=size)


def make_transform(transform: TransformArg) -> EvalTransform | TrainTransform | None:
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
