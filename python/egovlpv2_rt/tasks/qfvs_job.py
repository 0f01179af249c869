"""QFVS end to end: the backbone loaded for 5-frame shots, shot features of every video cached
on disk, a head trained on the training videos, and the leave-one-video-out evaluation.

Shot features are the expensive part (every shot x every prompt through the fused layers) and
depend only on the backbone, the video and the queries, so they are written once per video to
``{cache}/{video}.safetensors`` (no pickle) with the checkpoint's and the video's SHA-256 and the
query list in the metadata; a cache made from other inputs is recomputed, never reused.

.. code-block:: yaml

    task: qfvs
    model: {checkpoint: default, tokenizer: default}   # or a pre-trained EgoVLPv2 file
    data: {root: UTE_QFVS}            # Dense_per_shot_tags/, Oracle_Summaries/, videos/
    test_videos: [P04]                # held out from training (empty: train on every video)
    train: {epochs: 20, batch_size: 4, lr: 1.0e-4, weight_decay: 0.1, budget: 0.02,
            val_fraction: 0.25, seed: 0}
    out_dir: runs/qfvs                # head.safetensors, features/, result.json
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_model
from ..errors import InputError
from ..files import atomic_output, atomic_write_text
from ..model_files import default_model_path, load_tokenizer
from ..modeling.model import EgoVLPv2
from ..tokenizer import RobertaTokenizer
from ..train.config import build_config, read_config_mapping
from .episodic.feature_job import sha256_of
from .qfvs import FRAMES_PER_SHOT, QFVSShotFeatures, shot_features
from .qfvs_data import QFVSVideo, load_qfvs
from .qfvs_head import (
    QFVSExample,
    QFVSHead,
    QFVSTrainConfig,
    build_examples,
    evaluate_qfvs,
    query_swapped_f1,
    split_val_queries,
    summarise_videos,
    train_qfvs,
    video_scores,
)
from .qfvs_summarize import save_qfvs_head

__all__ = [
    "QFVSBackbone",
    "QFVSJobConfig",
    "QFVSJobData",
    "QFVSJobModel",
    "QFVSJobResult",
    "cached_shot_features",
    "evaluate_qfvs_dataset",
    "finetune_qfvs",
    "finetune_qfvs_from_file",
    "load_qfvs_backbone",
    "load_qfvs_config",
    "qfvs_examples",
]

_CACHE_FORMAT = "egovlpv2-qfvs-shot-features-v1"


@dataclass
class QFVSJobModel:
    """The backbone (``default``: the shipped model) and its tokenizer (``default``: beside it)."""

    checkpoint: str = "default"
    tokenizer: str = "default"


@dataclass
class QFVSJobData:
    """The QFVS folder (``Dense_per_shot_tags/``, ``Oracle_Summaries/``, ``videos/``), the
    video folder (empty: ``{root}/videos``), shots per backbone batch."""

    root: str = ""
    videos: str = ""
    shot_batch: int = 8


@dataclass
class QFVSJobConfig:
    """A QFVS head training run: ``test_videos`` are left out of training (the held-out
    video of the leave-one-video-out protocol); the epoch is chosen on ``train.val_fraction``
    of the training videos' queries."""

    task: str = "qfvs"
    model: QFVSJobModel = field(default_factory=QFVSJobModel)
    data: QFVSJobData = field(default_factory=QFVSJobData)
    train: QFVSTrainConfig = field(default_factory=QFVSTrainConfig)
    test_videos: list[str] = field(default_factory=list)
    out_dir: str = "runs/qfvs"

    def validate(self, where: str) -> None:
        if self.task != "qfvs":
            raise InputError(f"{where}: task is {self.task!r}, expected 'qfvs'")
        if not self.data.root:
            raise InputError(f"{where}: data.root is empty (the QFVS folder)")
        if self.data.shot_batch < 1:
            raise InputError(f"{where}: data.shot_batch must be >= 1, got {self.data.shot_batch}")
        t = self.train
        if t.epochs < 0 or t.batch_size < 1 or t.lr <= 0 or t.weight_decay < 0:
            raise InputError(
                f"{where}: train needs epochs >= 0, batch_size >= 1, lr > 0, weight_decay >= 0"
            )
        if not 0 < t.budget <= 1 or not 0 < t.val_fraction < 1:
            raise InputError(f"{where}: train.budget must be in (0, 1], val_fraction in (0, 1)")


def load_qfvs_config(path: str | Path) -> QFVSJobConfig:
    """Read a JSON or YAML QFVS file (strict: unknown keys are errors naming the key)."""
    cfg = build_config(QFVSJobConfig, read_config_mapping(path), str(path))
    cfg.validate(str(path))
    return cfg


@dataclass(frozen=True)
class QFVSBackbone:
    """The frozen backbone at 5 frames, its tokenizer, the checkpoint file it came from and
    that file's SHA-256 (hashed once: the feature cache is keyed by it)."""

    model: EgoVLPv2
    tokenizer: RobertaTokenizer
    checkpoint: Path
    checkpoint_sha256: str


def load_qfvs_backbone(
    checkpoint: str | Path | None = None,
    tokenizer: str | Path | None = None,
    *,
    device: torch.device | str = "cpu",
) -> QFVSBackbone:
    """Load an EgoVLPv2 file (None or ``"default"``: the shipped model) for 5-frame shots (the
    temporal embedding resized), eval mode, and its tokenizer (None or ``"default"``:
    ``tokenizer.json`` beside the weights)."""
    ckpt = default_model_path() if checkpoint in (None, "", "default") else Path(checkpoint)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {ckpt}")
    tok_path = (
        ckpt.parent / "tokenizer.json" if tokenizer in (None, "", "default") else Path(tokenizer)
    )
    if not tok_path.exists():
        raise FileNotFoundError(f"tokenizer: no such file {tok_path}")
    model = load_model(ckpt, num_frames=FRAMES_PER_SHOT, device=device)
    tok = load_tokenizer(tok_path, model.config.text.max_text_length)
    return QFVSBackbone(model, tok, ckpt, sha256_of(ckpt))


def _cache_identity(
    backbone: QFVSBackbone, video_file: Path, queries: Sequence[tuple[str, str]]
) -> dict[str, str]:
    return {
        "format": _CACHE_FORMAT,
        "checkpoint_sha256": backbone.checkpoint_sha256,
        "video_sha256": sha256_of(video_file),
        "queries": json.dumps([list(q) for q in queries]),
        "image_size": str(backbone.model.config.video.img_size),
    }


def cached_shot_features(
    backbone: QFVSBackbone,
    video_file: str | Path,
    queries: Sequence[tuple[str, str]],
    cache_dir: str | Path | None,
    *,
    shot_batch: int = 8,
) -> QFVSShotFeatures:
    """:func:`~.qfvs.shot_features` of ``video_file`` for ``queries``, read from
    ``{cache_dir}/{video stem}.safetensors`` when it was made from the same checkpoint, video
    bytes and queries, else computed and written there (None: no cache)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    video_file = Path(video_file)
    if not video_file.is_file():
        raise FileNotFoundError(f"QFVS video not found: {video_file}")
    if cache_dir is None:
        return shot_features(
            backbone.model, backbone.tokenizer, video_file, queries, shot_batch=shot_batch
        )
    path = Path(cache_dir) / f"{video_file.stem}.safetensors"
    identity = _cache_identity(backbone, video_file, queries)
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}) == identity:
                    return QFVSShotFeatures(f.get_tensor("prefix_cls"), f.get_tensor("fused"))
        except Exception:  # noqa: BLE001 (a damaged cache file is recomputed)
            pass
    feats = shot_features(
        backbone.model, backbone.tokenizer, video_file, queries, shot_batch=shot_batch
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        tensors = {"prefix_cls": feats.prefix_cls.contiguous(), "fused": feats.fused.contiguous()}
        save_file(tensors, str(tmp), metadata=identity)
    return feats


def qfvs_examples(
    backbone: QFVSBackbone,
    root: str | Path,
    *,
    videos_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    shot_batch: int = 8,
    log: Any = None,
) -> tuple[dict[str, list[QFVSExample]], dict[str, np.ndarray]]:
    """Every video's examples (one per oracle query) and its ``[S, C]`` concept vectors."""
    videos, vocab = load_qfvs(root)
    vdir = Path(videos_dir) if videos_dir else Path(root) / "videos"
    examples: dict[str, list[QFVSExample]] = {}
    concepts: dict[str, np.ndarray] = {}
    for v in videos:
        feats = cached_shot_features(
            backbone, _video_file(vdir, v), _queries(v), cache_dir, shot_batch=shot_batch
        )
        examples[v.name] = build_examples(v, feats)
        concepts[v.name] = v.concept_matrix(vocab)
        if log is not None:
            log(f"{v.name}: {v.num_shots} shots, {len(v.queries)} queries")
    return examples, concepts


def _queries(video: QFVSVideo) -> list[tuple[str, str]]:
    return [(q.concept1, q.concept2) for q in video.queries]


def _video_file(videos_dir: Path, video: QFVSVideo) -> Path:
    for suffix in (".mp4", ".avi", ".mkv", ".webm", ".mov"):
        path = videos_dir / f"{video.name}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{videos_dir}: no video file for {video.name} ({video.name}.mp4)")


@dataclass
class QFVSJobResult:
    """Where the head was written, the epoch chosen on val (0 = untrained) and the val F1 per
    epoch, the training and val query counts."""

    head: Path
    best_epoch: int
    val_f1: list[float]
    train_queries: int
    val_queries: int

    def summary(self) -> str:
        return (
            f"QFVS head -> {self.head} (epoch {self.best_epoch} chosen on {self.val_queries} "
            f"val queries, F1 {self.val_f1[self.best_epoch]:.2f}; {self.train_queries} "
            "training queries)"
        )


def finetune_qfvs(cfg: QFVSJobConfig, *, device: str = "cpu", log: Any = None) -> QFVSJobResult:
    """Train a head on every video but ``cfg.test_videos`` (device ``auto``: CUDA when there is
    one); write ``{out_dir}/head.safetensors``
    and ``{out_dir}/result.json``; shot features cached under ``{out_dir}/features``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(cfg.out_dir)
    backbone = load_qfvs_backbone(cfg.model.checkpoint, cfg.model.tokenizer, device=device)
    examples, concepts = qfvs_examples(
        backbone,
        cfg.data.root,
        videos_dir=cfg.data.videos or None,
        cache_dir=out / "features",
        shot_batch=cfg.data.shot_batch,
        log=log,
    )
    unknown = sorted(set(cfg.test_videos) - set(examples))
    if unknown:
        raise InputError(f"test_videos: {unknown} not in {cfg.data.root} ({sorted(examples)})")
    pool = [e for v in sorted(examples) if v not in cfg.test_videos for e in examples[v]]
    if not pool:
        raise InputError("test_videos leaves no video to train on")
    train, val = split_val_queries(pool, cfg.train.val_fraction, cfg.train.seed)
    result = train_qfvs(train, val, concepts, cfg.train)
    head_path = out / "head.safetensors"
    meta = {
        "checkpoint_sha256": backbone.checkpoint_sha256,
        "trained_on": ",".join(v for v in sorted(examples) if v not in cfg.test_videos),
    }
    save_qfvs_head(head_path, result.head, meta)
    res = QFVSJobResult(head_path, result.best_epoch, result.val_f1, len(train), len(val))
    record = {"config": asdict(cfg), **asdict(res), "head": str(head_path)}
    atomic_write_text(out / "result.json", json.dumps(record, indent=2) + "\n")
    return res


def finetune_qfvs_from_file(
    path: str | Path, *, device: str = "cpu", log: Any = None
) -> QFVSJobResult:
    """:func:`finetune_qfvs` of a config file."""
    return finetune_qfvs(load_qfvs_config(path), device=device, log=log)


def evaluate_qfvs_dataset(
    examples: Mapping[str, Sequence[QFVSExample]],
    concepts: Mapping[str, np.ndarray],
    cfg: QFVSTrainConfig | None = None,
    *,
    head: QFVSHead | None = None,
    query_swap_control: bool = False,
) -> dict[str, object]:
    """With ``head`` None: the leave-one-video-out protocol (:func:`~.qfvs_head.evaluate_qfvs`).
    With a trained head: its mean precision / recall / F1 on every video's queries (a head
    trained on some of these videos scores them as training data: pass only held-out videos)
    beside the seeded random summary of the same size. ``query_swap_control``: also
    ``f1_query_swapped``, each query scored with another query's prompts (does the head read
    the query?)."""
    cfg = cfg or QFVSTrainConfig()
    if head is None:
        return evaluate_qfvs(examples, concepts, cfg, query_swap_control=query_swap_control)
    per_video = {}
    for name in sorted(examples):
        per_video[name] = video_scores(head, examples[name], concepts, cfg)
        if query_swap_control:
            per_video[name]["f1_query_swapped"] = query_swapped_f1(
                head, examples[name], concepts, cfg.budget
            )
    return summarise_videos(per_video)
