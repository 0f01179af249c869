"""Clip pixels for metadata records, through ``egovlpv2_rt.video.read_clip``.

Videos live as ``<video_dir>/<video_uid>.mp4`` (one file per video, the synthetic layout), or,
with ``egoclip_chunks=True``, as the EgoClip chunk directories ``<video_dir>/<video_uid>/`` that
the video package's EgoClip layout reads.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from .egoclip import ClipRecord

if TYPE_CHECKING:
    from ..video.reader import Backend
    from ..video.sampling import Sampling

__all__ = ["ClipReader", "clip_seed"]


def clip_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers / strings, stable across processes and Python runs."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


@dataclass
class ClipReader:
    """Reads the frames of a :class:`ClipRecord`.

    Attributes:
        video_dir: folder of the videos.
        num_frames: F, frames per clip.
        image_size: output H = W.
        sampling: ``"uniform"`` or ``"rand"`` frame sampling.
        backend: ``read_clip`` backend.
        augment: random resized crop (scale 0.5..1) instead of the deterministic resize.
            No flip: flipping would swap "left" and "right" in the captions.
        cache_size: number of decoded clips kept in memory (0: none); only deterministic reads
            (uniform sampling, no augmentation) are cached.
        egoclip_chunks: read the EgoClip 600-second chunk layout.
    """

    video_dir: str | Path
    num_frames: int = 4
    image_size: int = 224
    sampling: Sampling = "uniform"
    backend: Backend = "pyav"
    augment: bool = False
    cache_size: int = 0
    egoclip_chunks: bool = False

    def __post_init__(self) -> None:
        if self.sampling not in ("uniform", "rand"):
            raise ValueError(f"sampling must be 'uniform' or 'rand', got {self.sampling!r}")
        if self.num_frames < 1 or self.image_size < 1:
            raise ValueError(
                f"num_frames and image_size must be >= 1, got {self.num_frames}, {self.image_size}"
            )
        self._cache: OrderedDict[tuple, Tensor] = OrderedDict()

    def path_of(self, record: ClipRecord) -> Path:
        base = Path(self.video_dir) / record.video_uid
        return base if self.egoclip_chunks else base.with_suffix(".mp4")

    def _transform(self):
        from ..video.transforms import EvalTransform, TrainTransform

        s = self.image_size
        if self.augment:
            return TrainTransform(size=s, flip_p=0.0)
        return EvalTransform(resize=s, crop=s, size=s)

    def read(self, record: ClipRecord, seed: int | None = None) -> Tensor:
        """``[F, 3, S, S]`` float32 normalised frames of ``record``.

        ``seed`` drives random frame sampling and augmentation; deterministic reads ignore it.
        Raises ``egovlpv2_rt.video.VideoError`` subclasses on unreadable files.
        """
        from ..video import read_clip

        deterministic = self.sampling == "uniform" and not self.augment
        key = (record.video_uid, record.clip_start, record.clip_end)
        if deterministic and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        layout = None
        if self.egoclip_chunks:
            from ..video import EgoClipLayout

            layout = EgoClipLayout()
        out = read_clip(
            str(self.path_of(record)),
            start_sec=record.clip_start,
            end_sec=record.clip_end,
            num_frames=self.num_frames,
            sampling=self.sampling,
            backend=self.backend,
            transform=self._transform(),
            seed=seed,
            layout=layout,
        )
        if deterministic and self.cache_size > 0:
            self._cache[key] = out
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out
