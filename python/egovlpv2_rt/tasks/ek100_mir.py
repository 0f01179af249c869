"""EPIC-Kitchens-100 multi-instance retrieval: training pairs, datasets and evaluation.

Files and readers: :mod:`.ek100_data`; frame sampling and transform: :mod:`.ek100_video`;
a synthetic split in the same formats: :mod:`.ek100_synth`.

Training item (the original's ``_get_caption``): a caption drawn uniformly among those whose
relevancy to the clip is > 0.1, with that relevancy as the item's weight (the loss scales its
margin by it); a clip with none gets its own narration and weight 1.

Evaluation (the original's ``mir_metrics_vtc``): every test clip's video and its own narration
are embedded; a unique caption's embedding is the narration embedding of its representative
clip (the sentence CSV's narration_id); ``S[v, c] = (cos(video_v, caption_c) + 1) / 2`` (the
shift changes no ranking) is scored against the test relevancy with
:func:`~egovlpv2_rt.eval.metrics.ek100_mir_metrics`. Only the representative clips' narrations
are encoded: the other clips' text embeddings never enter ``S``. Runs in one process, no
``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..data.clips import clip_seed
from ..errors import InputError
from ..eval.metrics import ek100_mir_metrics
from ..modeling.model import EgoVLPv2, sim_matrix
from ..video.reader import Backend
from .ek100_data import EK100Layout, EK100Split, load_ek100_split
from .ek100_video import EK100_NUM_FRAMES, read_ek100_clip

__all__ = [
    "POSITIVE_THRESHOLD",
    "EK100Item",
    "EK100MIRDataset",
    "EK100MIRResult",
    "choose_training_caption",
    "ek100_caption_similarity",
    "embed_ek100_split",
    "evaluate_ek100_mir",
    "score_ek100_mir",
]

POSITIVE_THRESHOLD = 0.1


def choose_training_caption(
    relevancy_row: np.ndarray, rng: np.random.Generator, threshold: float = POSITIVE_THRESHOLD
) -> tuple[int, float]:
    """(caption index, weight) for one clip: a uniform draw among the captions whose relevancy
    is > ``threshold``, weighted by that relevancy; ``(-1, 1.0)`` when there is none (the
    caller then uses the clip's own narration).

    Args:
        relevancy_row: float ``[captions]``, the clip's row of the relevancy matrix.
        rng: the draw's generator.
    """
    positives = np.flatnonzero(np.asarray(relevancy_row) > threshold)
    if positives.size == 0:
        return -1, 1.0
    j = int(positives[int(rng.integers(positives.size))])
    return j, float(relevancy_row[j])


class EK100Item(NamedTuple):
    """One item (``default_collate`` batches it field by field).

    video: float32 ``[F, 3, S, S]`` (normalised); text: the caption; weight: its relevancy to
    the clip (1 for the clip's own narration); clip_index: row in the clip CSV; caption_index:
    row in the sentence CSV, -1 for the clip's own narration.
    """

    video: Tensor
    text: str
    weight: float
    clip_index: int
    caption_index: int


class EK100MIRDataset(Dataset[EK100Item]):
    """EK-100 MIR clips of one split as :class:`EK100Item`.

    ``train=True``: random frame per segment, random resized crop, a relevant caption drawn by
    :func:`choose_training_caption`; every draw is a function of ``(seed, epoch, index)`` (call
    :meth:`set_epoch` each epoch), so a run is reproducible whatever the worker count.
    ``train=False``: segment midpoints, centre crop, the clip's own narration, weight 1.

    Args:
        split: an :class:`EK100Split` (see :func:`~.ek100_data.load_ek100_split`).
        num_frames: frames per clip (16 in the original).
        size: output side (224 in the original; a smaller model's ``img_size`` otherwise).
        backend: video backend for :func:`~.ek100_video.read_ek100_clip`.
    """

    def __init__(
        self,
        split: EK100Split,
        *,
        train: bool,
        num_frames: int = EK100_NUM_FRAMES,
        size: int = 224,
        backend: Backend = "pyav",
        seed: int = 0,
    ) -> None:
        self.split = split
        self.train = train
        self.num_frames = int(num_frames)
        self.size = int(size)
        self.backend: Backend = backend
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.split.clips)

    def caption(self, index: int) -> tuple[str, float, int]:
        """(text, weight, caption index) of item ``index`` in the current epoch."""
        clip = self.split.clips[index]
        if not self.train:
            return clip.narration, 1.0, -1
        rng = np.random.default_rng(clip_seed(self.seed, self.epoch, index, "caption"))
        j, w = choose_training_caption(self.split.relevancy[index], rng)
        if j < 0:
            return clip.narration, w, -1
        return self.split.sentences[j].text, w, j

    def __getitem__(self, index: int) -> EK100Item:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        clip = self.split.clips[index]
        video = read_ek100_clip(
            self.split.video_path(index),
            clip.start_sec,
            clip.stop_sec,
            train=self.train,
            num_frames=self.num_frames,
            size=self.size,
            backend=self.backend,
            seed=clip_seed(self.seed, self.epoch, index, "video") if self.train else None,
        )
        text, weight, j = self.caption(index)
        return EK100Item(video, text, weight, index, j)


@dataclass(frozen=True)
class EK100MIRResult:
    """EK-100 MIR metrics in percent, plus ``sim`` ``[videos, captions]`` float64 and the
    relevancy matrix it was scored against."""

    mAP_V2T: float
    mAP_T2V: float
    mAP_AVG: float
    nDCG_V2T: float
    nDCG_T2V: float
    nDCG_AVG: float
    sim: np.ndarray = field(repr=False, compare=False)
    relevancy: np.ndarray = field(repr=False, compare=False)

    def as_dict(self) -> dict[str, float]:
        """The six metrics by name (JSON-ready)."""
        keys = ("mAP_V2T", "mAP_T2V", "mAP_AVG", "nDCG_V2T", "nDCG_T2V", "nDCG_AVG")
        return {k: float(getattr(self, k)) for k in keys}


def ek100_caption_similarity(
    video_emb: Tensor, caption_emb: Tensor, caption_clip: Sequence[int] | np.ndarray
) -> np.ndarray:
    """``S = (cos + 1) / 2``, float64 ``[videos, captions]``.

    Args:
        video_emb: ``[N, P]``, one row per clip in clip-CSV order.
        caption_emb: ``[M, P]`` text embeddings; caption j's is row ``caption_clip[j]``.
        caption_clip: int ``[C]``, each caption's representative clip (row of caption_emb).
    """
    idx = torch.as_tensor(np.asarray(caption_clip, dtype=np.int64))
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= caption_emb.shape[0]):
        raise InputError(
            f"caption_clip: indices must be in [0, {caption_emb.shape[0]}), got "
            f"[{int(idx.min())}, {int(idx.max())}]"
        )
    cos = sim_matrix(video_emb.double().cpu(), caption_emb.double().cpu()[idx])
    return ((cos + 1.0) / 2.0).numpy()


def score_ek100_mir(video_emb: Tensor, caption_emb: Tensor, split: EK100Split) -> EK100MIRResult:
    """Metrics from embeddings already computed (any encoder: the model, an exported engine).

    Args:
        video_emb: ``[clips, P]`` in the split's clip order.
        caption_emb: ``[captions, P]``: the narration embedding of each caption's
            representative clip, in sentence-CSV order.
    """
    n, c = split.relevancy.shape
    if video_emb.shape[0] != n or caption_emb.shape[0] != c:
        raise InputError(
            f"embeddings: {video_emb.shape[0]} videos and {caption_emb.shape[0]} captions; "
            f"expected {n} and {c} (the split's relevancy is {n} x {c})"
        )
    s = ek100_caption_similarity(video_emb, caption_emb, np.arange(c))
    m = ek100_mir_metrics(s, split.relevancy)
    return EK100MIRResult(**m, sim=s, relevancy=split.relevancy)


def _batches(n: int, size: int, desc: str, progress: bool) -> Any:
    rng = range(0, n, size)
    if progress:
        from tqdm.auto import tqdm

        return tqdm(rng, desc=desc, unit="batch")
    return rng


@torch.no_grad()
def embed_ek100_split(
    model: EgoVLPv2,
    tokenizer: Any,
    split: EK100Split,
    *,
    num_frames: int | None = None,
    size: int | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    backend: Backend = "pyav",
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """(video embeddings ``[clips, P]``, caption embeddings ``[captions, P]``), float32 on the
    CPU, not normalised. Videos are read with the evaluation sampling and transform, in
    batches of ``batch_size``; captions are the representative clips' narrations, tokenized
    with ``padding="longest"`` and truncation as the original's evaluation.

    Args:
        model: the model (evaluated in eval mode; its mode is restored after).
        tokenizer: a :class:`~egovlpv2_rt.tokenizer.RobertaTokenizer`.
        num_frames: frames per clip (default the model's ``video.num_frames``; the released
            protocol uses 16, loading the checkpoint with 16 frames).
        size: frame side (default the model's ``video.img_size``, 224 for the released model).
        max_length: caption token limit (default the model's ``text.max_text_length``).
    """
    if (split.caption_clip < 0).any():
        raise InputError(
            f"{split.layout.sentence_csv(split.split)}: some captions have no representative "
            f"clip in {split.layout.clip_csv(split.split)}; cannot embed them"
        )
    vc = model.config.video
    f = int(num_frames or vc.num_frames)
    s = int(size or vc.img_size)
    limit = int(max_length or model.config.text.max_text_length)
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        videos = []
        n = len(split.clips)
        for a in _batches(n, batch_size, "ek100 videos", progress):
            clips = [
                read_ek100_clip(
                    split.video_path(i),
                    split.clips[i].start_sec,
                    split.clips[i].stop_sec,
                    train=False,
                    num_frames=f,
                    size=s,
                    backend=backend,
                )
                for i in range(a, min(a + batch_size, n))
            ]
            batch = torch.stack([c.to(p.device) for c in clips]).to(dtype=p.dtype)
            videos.append(model.encode_video(batch).float().cpu())
        texts = [split.clips[int(i)].narration for i in split.caption_clip]
        captions = []
        for a in _batches(len(texts), batch_size, "ek100 captions", progress):
            tok = tokenizer(texts[a : a + batch_size], max_length=limit, truncation=True)
            ids = tok["input_ids"].to(p.device)
            am = tok["attention_mask"].to(p.device)
            captions.append(model.encode_text(ids, am).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(videos), torch.cat(captions)


def evaluate_ek100_mir(
    model: EgoVLPv2,
    tokenizer: Any,
    data: EK100Layout | EK100Split | str | os.PathLike,
    *,
    num_frames: int | None = None,
    size: int | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    backend: Backend = "pyav",
    progress: bool = False,
) -> EK100MIRResult:
    """Zero-shot or fine-tuned EK-100 MIR evaluation of ``model`` on the test split.

    Args:
        data: the test split already loaded, an :class:`EK100Layout`, or a folder for
            :meth:`EK100Layout.from_dir` (annotations and videos under it).
        The other arguments: as :func:`embed_ek100_split`.

    Returns:
        :class:`EK100MIRResult` (mAP and nDCG, V2T / T2V / AVG, percent).
    """
    split = data if isinstance(data, EK100Split) else load_ek100_split(data, "test")
    v, c = embed_ek100_split(
        model,
        tokenizer,
        split,
        num_frames=num_frames,
        size=size,
        batch_size=batch_size,
        max_length=max_length,
        backend=backend,
        progress=progress,
    )
    return score_ek100_mir(v, c, split)
