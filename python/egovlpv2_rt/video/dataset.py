"""A clip dataset that never hangs or kills its DataLoader.

A bad sample (missing, corrupt, truncated, audio-only file, wrong clip range, ...) does not
raise inside the worker unless asked to: ``__getitem__`` returns a :class:`ClipFailure` naming
the index, path and error, :func:`collate_clips` moves failures out of the batch, and
:class:`RobustClipLoader` collects them and reports the count at the end of every epoch.
Decoders are opened per read inside the worker (nothing is shared with the parent), so the
dataset works with ``fork`` and ``spawn`` start methods.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .errors import VideoError, describe_error
from .reader import Backend, read_clip
from .sampling import EgoClipLayout, OutOfRange, Sampling, ShortPolicy, as_specs
from .transforms import TransformArg

__all__ = ["ClipFailure", "RobustClipLoader", "VideoClipDataset", "collate_clips"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipFailure:
    """A sample that could not be read: dataset index, path and 'ErrorType: message'."""

    index: int
    path: str
    error: str


class VideoClipDataset(Dataset):
    """Clips read with :func:`read_clip`.

    Args:
        clips: ClipSpecs, paths, or (path, start_sec, end_sec) tuples.
        num_frames, sampling, backend, transform, layout, out_of_range, short, dtype: as
            ``read_clip`` (CPU backends: 'pyav' or 'torchcodec').
        seed: base seed; sample i of epoch e uses a seed derived from (seed, e, i), so 'rand'
            sampling and 'train' crops are reproducible whatever the worker count.
        on_error: 'skip' (return a ClipFailure) or 'raise' (the VideoError propagates, naming the
            path). Unexpected exceptions from a decoder are treated like VideoErrors.

    Items: ``{'video': tensor, 'index': int}`` or a :class:`ClipFailure`.
    """

    def __init__(
        self,
        clips: Sequence,
        num_frames: int = 4,
        sampling: Sampling = "uniform",
        backend: Backend = "pyav",
        transform: TransformArg = "eval",
        seed: int | None = None,
        layout: EgoClipLayout | None = None,
        out_of_range: OutOfRange = "clamp",
        short: ShortPolicy = "pad",
        on_error: str = "skip",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if backend not in ("pyav", "torchcodec"):
            raise ValueError(
                f"VideoClipDataset reads on the CPU ('pyav' or 'torchcodec'), got {backend!r}; "
                "use DaliClipLoader for DALI"
            )
        self.specs = as_specs(clips)
        self.num_frames, self.sampling, self.backend = num_frames, sampling, backend
        self.transform, self.seed, self.layout = transform, seed, layout
        self.out_of_range, self.short, self.on_error = out_of_range, short, on_error
        self.dtype = dtype
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.specs)

    def _seed(self, i: int) -> int | None:
        if self.seed is None:
            return None
        return int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0])

    def __getitem__(self, i: int) -> dict[str, Any] | ClipFailure:
        spec = self.specs[i]
        try:
            video = read_clip(
                spec.path,
                spec.start_sec,
                spec.end_sec,
                num_frames=self.num_frames,
                sampling=self.sampling,
                backend=self.backend,
                transform=self.transform,
                seed=self._seed(i),
                layout=self.layout,
                out_of_range=self.out_of_range,
                short=self.short,
                dtype=self.dtype,
            )
        except Exception as e:
            if self.on_error == "raise":
                if isinstance(e, VideoError):
                    raise
                raise VideoError(
                    f"{os.fspath(spec.path)}: {describe_error(e)}", os.fspath(spec.path)
                ) from e
            return ClipFailure(i, os.fspath(spec.path), describe_error(e))
        return {"video": video, "index": i}


def collate_clips(batch: list) -> dict:
    """Stack good samples; keep failures aside.

    Returns ``{'video': [B, F, 3, H, W], 'index': int64 [B], 'failures': [ClipFailure]}``;
    B may be 0 when every sample of the batch failed (then 'video' is None).
    """
    good = [b for b in batch if not isinstance(b, ClipFailure)]
    bad = [b for b in batch if isinstance(b, ClipFailure)]
    video = torch.stack([b["video"] for b in good]) if good else None
    index = torch.tensor([b["index"] for b in good], dtype=torch.int64)
    return {"video": video, "index": index, "failures": bad}


class RobustClipLoader:
    """A DataLoader over a :class:`VideoClipDataset` that reports bad samples per epoch.

    Iterating yields the batches of :func:`collate_clips` that hold at least one clip. After an
    epoch, ``failures`` lists every :class:`ClipFailure` of that epoch and a warning with their
    count is logged. ``timeout`` (seconds) bounds the wait for one batch, so a worker stuck in
    a decoder raises instead of hanging the job.
    """

    def __init__(
        self,
        dataset: VideoClipDataset,
        batch_size: int = 8,
        num_workers: int = 2,
        shuffle: bool = False,
        timeout: float = 600.0,
        multiprocessing_context: str | BaseContext | None = None,
        **kwargs: Any,
    ) -> None:
        self.dataset = dataset
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            shuffle=shuffle,
            collate_fn=collate_clips,
            timeout=timeout if num_workers > 0 else 0,
            multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
            **kwargs,
        )
        self.failures: list[ClipFailure] = []
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        self.dataset.set_epoch(self.epoch)
        self.failures = []
        for batch in self.loader:
            self.failures.extend(batch["failures"])
            if batch["video"] is not None:
                yield batch
        if self.failures:
            log.warning(
                "epoch %d: %d bad sample(s) skipped: %s",
                self.epoch,
                len(self.failures),
                "; ".join(f"[{f.index}] {f.path} ({f.error})" for f in self.failures[:20]),
            )
        self.epoch += 1
