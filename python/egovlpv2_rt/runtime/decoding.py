"""Clips -> model-ready pixels, apart from the model: what :class:`~egovlpv2_rt.runtime.Runtime`
decodes with, and what a decode worker of another process (the Ray engine's CPU tasks) runs
with the same settings, so both give the same pixels.

A :class:`ClipDecoder` is a small picklable value (preprocessing, video backend, decode threads,
channel count, the finite-pixel switch): it holds no model and no open file.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..modeling.validation import nonfinite_rows
from ..preprocessing import Preprocessing
from ..progress import progress_bar
from ..video import EvalTransform, VideoError, read_clip
from ..video.pipeline import DecodedBatch
from ..video.reader import Backend
from .inputs import as_clip_spec, clip_label

__all__ = ["ClipDecoder"]


@dataclass(frozen=True)
class ClipDecoder:
    """Decodes clips the way the model expects them.

    Attributes:
        preprocessing: frames, sampling, image size, resize / crop, mean / std.
        in_chans: the model's input channels.
        video_backend: ``pyav``, ``torchcodec``, ``dali`` (see :mod:`egovlpv2_rt.video`).
        decode_workers: threads decoding the clips of one call in parallel.
        check_finite_pixels: refuse a clip with a NaN or Inf pixel after preprocessing.
    """

    preprocessing: Preprocessing
    in_chans: int
    video_backend: Backend
    decode_workers: int = 1
    check_finite_pixels: bool = True

    @property
    def transform(self) -> EvalTransform:
        p = self.preprocessing
        return EvalTransform(resize=p.resize, crop=p.crop, size=p.size, mean=p.mean, std=p.std)

    def check_pixels(self, x: Tensor, label: str) -> Tensor:
        """Pixels given by the caller: ``[F, C, S, S]`` float of this model's sizes."""
        p = self.preprocessing
        expected = (p.num_frames, self.in_chans, p.size, p.size)
        if x.ndim != 4 or tuple(x.shape) != expected:
            if x.ndim == 4 and x.shape[0] != p.num_frames and tuple(x.shape[1:]) == expected[1:]:
                raise ValueError(
                    f"{label}: {x.shape[0]} frames, but this model/export takes "
                    f"{p.num_frames} frames per clip (frame count mismatch)"
                )
            raise ValueError(
                f"{label}: expected pixels of shape [F, C, S, S] = "
                f"{list(expected)}, got {list(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{label}: expected normalised float pixels, got {x.dtype}")
        return x.float()

    def check_model_input(
        self, pixels: Tensor, items: list[Any], positions: Sequence[int]
    ) -> Tensor:
        """The engine's input: float, and finite unless the caller switched that off. One
        reduction per clip over the whole batch and one read of its [N] result (CPU tensor).
        ``positions``: the clips' numbers in the caller's list (for the messages)."""
        if not pixels.is_floating_point():
            raise InputError(
                f"clips {positions[0]}..{positions[-1]}: pixels after preprocessing have "
                f"dtype {pixels.dtype}; the model takes floating point pixels"
            )
        if self.check_finite_pixels:
            bad = nonfinite_rows(pixels)
            if bad:
                names = "; ".join(clip_label(positions[i], items[i]) for i in bad[:5])
                more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
                raise InputError(
                    f"{names}{more}: pixels contain NaN or Inf after preprocessing (a bad "
                    "input tensor or transform); the model would return NaN embeddings. "
                    "load(..., check_finite_pixels=False) lets them through"
                )
        return pixels

    def decode(
        self, items: list[Any], offset: int, *, progress: bool = False, skip_bad: bool = False
    ) -> tuple[DecodedBatch, int]:
        """Decode ``items`` (clips ``offset, offset + 1, ...`` of the caller's list) in parallel
        (``decode_workers`` threads). With ``skip_bad`` a clip whose file cannot be decoded
        (:class:`~egovlpv2_rt.video.VideoError`) is reported in ``failed`` and the others go on;
        without, the first such error is raised.

        Returns:
            the batch (pixels ``[n, F, 3, S, S]`` float32 CPU) and how many items were files.
        """
        specs = [as_clip_spec(item, offset + i) for i, item in enumerate(items)]
        p = self.preprocessing
        transform = self.transform

        def one(i: int) -> Tensor | VideoError:
            spec = specs[i]
            if spec is None:
                x = items[i]
                x = torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x
                return self.check_pixels(x.detach().cpu(), clip_label(offset + i, items[i]))
            try:
                return read_clip(
                    spec.path,
                    spec.start_sec,
                    spec.end_sec,
                    num_frames=p.num_frames,
                    sampling=p.sampling,
                    backend=self.video_backend,
                    transform=transform,
                )
            except VideoError as exc:
                if not skip_bad:
                    raise
                return exc

        paths = sum(s is not None for s in specs)
        bar = progress_bar(len(items), "decode", progress and paths > 0)
        out: list[Tensor | VideoError] = []  # in item order (pool.map keeps it)
        try:
            if paths > 1 and self.decode_workers > 1:
                with ThreadPoolExecutor(self.decode_workers) as pool:
                    for x in pool.map(one, range(len(items))):
                        out.append(x)
                        bar.update(1)
            else:
                for i in range(len(items)):
                    out.append(one(i))
                    bar.update(1)
        finally:
            bar.close()
        ok = [i for i, x in enumerate(out) if isinstance(x, Tensor)]
        failed: list[tuple[int, Exception]] = [
            (offset + i, x) for i, x in enumerate(out) if isinstance(x, VideoError)
        ]
        if not ok:
            return DecodedBatch([], None, failed), paths
        positions = [offset + i for i in ok]
        pixels = torch.stack([cast("Tensor", out[i]) for i in ok])
        pixels = self.check_model_input(pixels, [items[i] for i in ok], positions)
        return DecodedBatch(positions, pixels, failed), paths
