"""Charades-Ego clips: which frames are read and how they are transformed.

Both samplers are the video package's one rule (``video/sampling.py``, the original's
``sample_frames_start_end``), so every backend (PyAV, torchcodec, DALI) reads the same frames:

- training: 32 frames within the action ``[t_start, t_end]``, ``sampling='rand'``: the range
  becomes frames ``[int(t_start * fps), int(t_end * fps))`` (clamped to the video), cut into 32
  equal segments by ``int(linspace)`` edges, one random frame per segment (never the segment's
  last frame, as the original's ``random.choice(range(a_k, a_{k+1} - 1))``);
- evaluation: 32 frames over the whole video, ``sampling='uniform'``: the midpoint
  ``(a_k + a_{k+1} - 1) // 2`` of each of 32 equal segments of ``[0, N)``.

Where the original differs on degenerate ranges (see sampling.py): an action shorter than one
frame is its single frame here (the original's ``random.choice`` of an empty range raises), a
range with fewer frames than 32 repeats frames, and an action ``0 0`` is that first frame (the
original's ``if not start_sec and not end_sec`` reads the whole video instead).

Transforms are the original's defaults for this task (``init_video_transform_dict``), ImageNet
mean/std on frames in [0, 1]: training ``RandomResizedCrop(224, scale=(0.5, 1))`` and a
horizontal flip; evaluation ``Resize(256) + CenterCrop(256) + Resize(224)``. For a model of
another input size S, the sizes scale with it (resize = crop = ``S * 256 // 224``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..video.dataset import ClipFailure, VideoClipDataset
from ..video.reader import Backend, read_clip
from ..video.sampling import ClipSpec, OutOfRange
from ..video.transforms import EvalTransform, TrainTransform, scaled_eval_transform
from .charades_data import CharadesVideo, Segment

__all__ = [
    "NUM_FRAMES",
    "CharadesTrainDataset",
    "eval_spec",
    "eval_transform",
    "read_test_clip",
    "read_training_clip",
    "segment_spec",
    "train_transform",
    "video_path",
]

NUM_FRAMES = 32


def train_transform(size: int = 224) -> TrainTransform:
    """The original's train transform for Charades-Ego at output size ``size``."""
    return TrainTransform(size=size, scale=(0.5, 1.0), flip_p=0.5)


def eval_transform(size: int = 224) -> EvalTransform:
    """``Resize(256) + CenterCrop(256) + Resize(224)`` (sizes scaled by ``size / 224``)."""
    return scaled_eval_transform(size)


def video_path(video_root: str | Path, video_id: str) -> Path:
    """``{video_root}/{video_id}.mp4``."""
    return Path(video_root) / f"{video_id}.mp4"


def segment_spec(segment: Segment, video_root: str | Path) -> ClipSpec:
    """The clip of a training segment (for ``read_clip``, ``VideoClipDataset`` or
    ``DaliClipLoader`` with ``sampling='rand'`` and :func:`train_transform`)."""
    return ClipSpec(str(video_path(video_root, segment.video_id)), segment.t_start, segment.t_end)


def eval_spec(video: CharadesVideo, video_root: str | Path) -> ClipSpec:
    """The whole test video (for ``sampling='uniform'`` and :func:`eval_transform`)."""
    return ClipSpec(str(video_path(video_root, video.id)))


def read_training_clip(
    segment: Segment,
    video_root: str | Path,
    *,
    num_frames: int = NUM_FRAMES,
    size: int = 224,
    backend: Backend = "pyav",
    seed: int | None = None,
    transform: TrainTransform | EvalTransform | None = None,
    out_of_range: OutOfRange = "clamp",
) -> Tensor:
    """One training clip: ``[F, 3, size, size]`` float32 (on the GPU for backend 'dali').

    ``seed`` drives the frame draw and the crop/flip; ``transform`` replaces
    :func:`train_transform` (e.g. an eval transform to test a sampler alone).
    """
    spec = segment_spec(segment, video_root)
    return read_clip(
        spec.path,
        spec.start_sec,
        spec.end_sec,
        num_frames=num_frames,
        sampling="rand",
        backend=backend,
        transform=transform if transform is not None else train_transform(size),
        seed=seed,
        out_of_range=out_of_range,
    )


def read_test_clip(
    video: CharadesVideo,
    video_root: str | Path,
    *,
    num_frames: int = NUM_FRAMES,
    size: int = 224,
    backend: Backend = "pyav",
    transform: EvalTransform | None = None,
) -> Tensor:
    """One evaluation clip (the whole video, uniform): ``[F, 3, size, size]`` float32."""
    return read_clip(
        str(video_path(video_root, video.id)),
        num_frames=num_frames,
        sampling="uniform",
        backend=backend,
        transform=transform if transform is not None else eval_transform(size),
    )


class CharadesTrainDataset(VideoClipDataset):
    """Training segments as a map-style dataset (CPU backends; for DALI feed
    ``[segment_spec(s, root) for s in segments]`` to ``DaliClipLoader`` with
    ``sampling='rand'`` and ``transform=train_transform(size)``).

    Items: ``{'video': [F, 3, S, S] float32, 'index': int, 'text': str, 'class_index': int}``,
    or a :class:`~egovlpv2_rt.video.dataset.ClipFailure` for an unreadable clip
    (``on_error='skip'``); batch with ``collate_clips`` and look texts up by ``index``, or use
    :meth:`collate`. Sample ``i`` of epoch ``e`` is seeded from ``(seed, e, i)``.
    """

    def __init__(
        self,
        segments: Sequence[Segment],
        video_root: str | Path,
        *,
        num_frames: int = NUM_FRAMES,
        size: int = 224,
        backend: Backend = "pyav",
        seed: int | None = None,
        on_error: str = "skip",
        out_of_range: OutOfRange = "clamp",
    ) -> None:
        self.segments = list(segments)
        super().__init__(
            [segment_spec(s, video_root) for s in self.segments],
            num_frames=num_frames,
            sampling="rand",
            backend=backend,
            transform=train_transform(size),
            seed=seed,
            out_of_range=out_of_range,
            on_error=on_error,
        )

    def __getitem__(self, i: int) -> dict[str, Any] | ClipFailure:
        item = super().__getitem__(i)
        if isinstance(item, ClipFailure):
            return item
        seg = self.segments[i]
        return {**item, "text": seg.text, "class_index": seg.class_index}

    @staticmethod
    def collate(batch: list) -> dict[str, Any]:
        """``{'video': [B, F, 3, S, S] | None, 'index': int64 [B], 'text': [B] str,
        'class_index': int64 [B], 'failures': [ClipFailure]}``."""
        good = [b for b in batch if not isinstance(b, ClipFailure)]
        return {
            "video": torch.stack([b["video"] for b in good]) if good else None,
            "index": torch.tensor([b["index"] for b in good], dtype=torch.int64),
            "text": [b["text"] for b in good],
            "class_index": torch.tensor([b["class_index"] for b in good], dtype=torch.int64),
            "failures": [b for b in batch if isinstance(b, ClipFailure)],
        }
