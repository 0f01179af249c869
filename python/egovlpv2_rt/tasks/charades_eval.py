"""Charades-Ego evaluation (zero-shot and fine-tuned alike), one process, no distributed set-up.

As the original's ``Multi_Trainer_dist_Charades._valid_epoch``: the class names of
``Charades_v1_classes.txt`` (no prompt template) are tokenised to ``max_length=30`` and embedded
once; every test video is read whole (32 uniform frames, the eval transform) and embedded; the
score matrix is the cosine similarity ``[N_videos, num_classes]``; the targets are the multi-hot
labels of each video's ``actions``; mAP is ``eval.metrics.charades_map`` (classes without a
positive and videos without a label are left out there).

Two steps, so that a caller can keep the raw numbers: :func:`score_charades_ego` returns the
score matrix and targets (:class:`CharadesEgoScores`), :func:`evaluate_charades_ego` reads the
files, scores and applies the metric. The metric is a parameter (any
``(scores, targets) -> percent`` function; default ``eval.metrics.charades_map``), so the
plumbing can be checked against an independent computation of the same matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..eval.metrics import charades_map
from ..modeling.model import EgoVLPv2, sim_matrix
from ..video.reader import Backend
from ..video.transforms import EvalTransform
from .charades_clips import eval_transform, read_test_clip
from .charades_data import (
    CLASSES_FILE,
    SPLIT_FILES,
    CharadesClass,
    CharadesVideo,
    read_charades_classes,
    read_charades_csv,
)

__all__ = [
    "TEXT_MAX_LENGTH",
    "VIDEO_DIRS",
    "CharadesEgoFiles",
    "CharadesEgoResult",
    "CharadesEgoScores",
    "Metric",
    "embed_class_names",
    "evaluate_charades_ego",
    "multi_hot_targets",
    "score_charades_ego",
]

# (scores [N, C] float64, targets [N, C] 0/1) -> mAP in percent.
Metric = Callable[[np.ndarray, np.ndarray], float]
# The original tokenises the class names with padding='max_length', max_length=30.
TEXT_MAX_LENGTH = 30
# Video folders looked for under the data folder, in order: the original's name, then the
# synthetic dataset's.
VIDEO_DIRS: tuple[str, ...] = ("CharadesEgo_v1_480", "videos")


@dataclass(frozen=True)
class CharadesEgoFiles:
    """Where a Charades-Ego dataset lives.

    Layout of ``data_dir``: ``Charades_v1_classes.txt``, ``CharadesEgo_v1_train_only1st.csv``,
    ``CharadesEgo_v1_test_only1st.csv`` and a video folder ``CharadesEgo_v1_480/`` or
    ``videos/`` holding ``{id}.mp4`` (or pass ``video_root``).
    """

    classes: Path
    train: Path
    test: Path
    video_root: Path

    @classmethod
    def locate(cls, data_dir: str | Path, video_root: str | Path | None = None) -> CharadesEgoFiles:
        """The files under ``data_dir``; raises InputError naming what is missing."""
        d = Path(data_dir)
        if not d.is_dir():
            raise InputError(f"{d}: Charades-Ego data folder not found")
        if video_root is None:
            found = [d / n for n in VIDEO_DIRS if (d / n).is_dir()]
            if not found:
                raise InputError(
                    f"{d}: no video folder; expected one of {list(VIDEO_DIRS)} holding "
                    "{id}.mp4, or pass video_root"
                )
            root = found[0]
        else:
            root = Path(video_root)
            if not root.is_dir():
                raise InputError(f"{root}: video folder not found")
        return cls(d / CLASSES_FILE, d / SPLIT_FILES["train"], d / SPLIT_FILES["test"], root)


@dataclass
class CharadesEgoScores:
    """Raw evaluation numbers.

    Attributes:
        video_ids: the N videos scored, in file order.
        class_names: the C class texts.
        scores: float64 ``[N, C]`` cosine similarity of each video with each class name.
        targets: int64 ``[N, C]`` multi-hot labels (a row of zeros: a video without actions).
    """

    video_ids: list[str]
    class_names: list[str]
    scores: np.ndarray = field(repr=False)
    targets: np.ndarray = field(repr=False)


@dataclass
class CharadesEgoResult:
    """mAP (percent) and what it was computed over.

    Attributes:
        map: mean over classes with a positive of the AP over labelled videos, in percent.
        num_videos: videos with at least one label (those ranked).
        num_classes: classes with at least one positive (those averaged).
        raw: the score matrix and targets the metric saw.
    """

    map: float
    num_videos: int
    num_classes: int
    raw: CharadesEgoScores = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary: ``{"mAP", "num_videos", "num_classes", "num_videos_total",
        "num_classes_total"}``."""
        return {
            "mAP": self.map,
            "num_videos": self.num_videos,
            "num_classes": self.num_classes,
            "num_videos_total": len(self.raw.video_ids),
            "num_classes_total": len(self.raw.class_names),
        }


def multi_hot_targets(videos: Sequence[CharadesVideo], num_classes: int) -> np.ndarray:
    """int64 ``[N, num_classes]``: 1 where the video is labelled with the class."""
    out = np.zeros((len(videos), num_classes), dtype=np.int64)
    for i, v in enumerate(videos):
        for c in v.labels():
            out[i, c] = 1
    return out


def _device_dtype(model: EgoVLPv2) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@torch.no_grad()
def embed_class_names(
    model: EgoVLPv2,
    tokenizer: Any,
    names: Sequence[str],
    *,
    max_length: int | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Text embeddings ``[C, P]`` float32 (not normalised) of the class names, tokenised with
    ``padding='max_length'`` as the original. ``tokenizer``: a ``RobertaTokenizer``;
    ``max_length``: default :data:`TEXT_MAX_LENGTH` (30), or the model's position-table limit
    when that is smaller."""
    model.eval()
    if max_length is None:
        max_length = min(TEXT_MAX_LENGTH, model.config.text.max_text_length)
    dev, _ = _device_dtype(model)
    out = []
    for start in range(0, len(names), batch_size):
        tok = tokenizer(
            list(names[start : start + batch_size]),
            max_length=max_length,
            padding="max_length",
            truncation=True,
        )
        out.append(
            model.encode_text(tok["input_ids"].to(dev), tok["attention_mask"].to(dev)).float()
        )
    return torch.cat(out)


@torch.no_grad()
def score_charades_ego(
    model: EgoVLPv2,
    videos: Sequence[CharadesVideo],
    classes: Sequence[CharadesClass],
    video_root: str | Path,
    tokenizer: Any,
    *,
    num_frames: int | None = None,
    max_length: int | None = None,
    batch_size: int = 8,
    backend: Backend = "pyav",
    transform: EvalTransform | None = None,
    progress: bool = False,
) -> CharadesEgoScores:
    """Cosine scores of every video against every class name, and the targets.

    Args:
        model: the model (put in eval mode here); its dual encoders are used.
        videos: the test videos (``read_charades_csv``).
        classes: the classes (``read_charades_classes``).
        video_root: folder of ``{id}.mp4``.
        tokenizer: ``RobertaTokenizer``.
        num_frames: frames per video (default: the model's ``video.num_frames``; the
            Charades-Ego protocol uses 32).
        max_length: class-name token length (default 30 as the original, capped at the
            model's limit).
        batch_size: videos per forward pass.
        backend: ``read_clip`` backend ('pyav', 'torchcodec', 'dali', 'dali_cpu').
        transform: eval transform (default: :func:`eval_transform` at the model's image size).

    Raises:
        VideoError subclasses naming an unreadable video; InputError for an empty split.
    """
    if not videos:
        raise InputError("score_charades_ego: no test videos")
    if not classes:
        raise InputError("score_charades_ego: no classes")
    model.eval()
    dev, dtype = _device_dtype(model)
    vc = model.config.video
    tf = transform if transform is not None else eval_transform(vc.img_size)
    frames = num_frames or vc.num_frames
    if frames > vc.num_frames:
        raise InputError(
            f"num_frames={frames} is more than the model's video.num_frames={vc.num_frames}; "
            "load the checkpoint with a config of that many frames (the temporal embedding is "
            "resized on load)"
        )
    text = embed_class_names(model, tokenizer, [c.name for c in classes], max_length=max_length)
    starts: Sequence[int] = range(0, len(videos), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="charades_ego", unit="batch")
    rows = []
    for start in starts:
        chunk = videos[start : start + batch_size]
        clip = torch.stack(
            [
                read_test_clip(v, video_root, num_frames=frames, backend=backend, transform=tf)
                for v in chunk
            ]
        ).to(device=dev, dtype=dtype)
        emb = model.encode_video(clip).float()
        # The original's sim_matrix(text, video).T: rows are videos.
        rows.append(sim_matrix(text, emb).T.double().cpu())
    return CharadesEgoScores(
        video_ids=[v.id for v in videos],
        class_names=[c.name for c in classes],
        scores=torch.cat(rows).numpy(),
        targets=multi_hot_targets(videos, len(classes)),
    )


def evaluate_charades_ego(
    model: EgoVLPv2,
    data_dir: str | Path,
    tokenizer: Any,
    *,
    video_root: str | Path | None = None,
    split: str = "test",
    num_frames: int | None = None,
    max_length: int | None = None,
    batch_size: int = 8,
    backend: Backend = "pyav",
    transform: EvalTransform | None = None,
    metric: Metric | None = None,
    progress: bool = False,
) -> CharadesEgoResult:
    """mAP of ``model`` on a Charades-Ego split (``data_dir`` as :class:`CharadesEgoFiles`).

    Args:
        split: 'test' (the original's val == test) or 'train'.
        metric: ``(scores [N, C], targets [N, C]) -> percent``; default
            ``egovlpv2_rt.eval.metrics.charades_map``.
        The rest: as :func:`score_charades_ego`.

    Returns:
        :class:`CharadesEgoResult` (``.raw`` holds the score matrix and targets).
    """
    if split not in SPLIT_FILES:
        raise InputError(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    files = CharadesEgoFiles.locate(data_dir, video_root)
    classes = read_charades_classes(files.classes)
    videos = read_charades_csv(files.test if split == "test" else files.train, classes)
    raw = score_charades_ego(
        model,
        videos,
        classes,
        files.video_root,
        tokenizer,
        num_frames=num_frames,
        max_length=max_length,
        batch_size=batch_size,
        backend=backend,
        transform=transform,
        progress=progress,
    )
    fn = metric if metric is not None else charades_map
    labelled = raw.targets.sum(axis=1) > 0
    return CharadesEgoResult(
        map=float(fn(raw.scores, raw.targets)),
        num_videos=int(labelled.sum()),
        num_classes=int((raw.targets[labelled].sum(axis=0) > 0).sum()),
        raw=raw,
    )
