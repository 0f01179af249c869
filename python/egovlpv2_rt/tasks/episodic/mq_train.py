"""Training, inference and evaluation of the MQ head (:mod:`.mq_head`).

Training is seeded and deterministic (the same seed gives bitwise the same weights on the
CPU). Under ``torchrun`` (a ``torch.distributed`` process group already initialised, e.g. by
:func:`egovlpv2_rt.train.distributed.init_distributed`), the model is wrapped in
``DistributedDataParallel`` and each step's clips are dealt to the ranks; every rank draws the
same seeded clip order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ...errors import InputError
from ...eval.detection import detection_map, moment_recall
from .mq_head import MQClip, MQHead, MQHeadConfig, load_clip_features, pad_features, save_mq_head
from .mq_targets import LevelTargets, build_targets, decode_clip, focal_loss, giou_loss

__all__ = [
    "evaluate_mq_head",
    "ground_truth_records",
    "predict_moments",
    "random_detections",
    "train_mq_head",
]

Features = Mapping[str, Tensor] | Path | str


class _Source:
    """Feature rows of each clip, from a mapping (checked once) or a folder (read on use)."""

    def __init__(self, features: Features, dim: int | None) -> None:
        self.folder = None if isinstance(features, Mapping) else Path(features)
        self.table = features if isinstance(features, Mapping) else None
        self.dim = dim

    def get(self, clip_uid: str) -> Tensor:
        if self.folder is not None:
            x = load_clip_features(self.folder, clip_uid, dim=self.dim)
        else:
            assert self.table is not None
            if clip_uid not in self.table:
                raise InputError(f"features: no entry for clip {clip_uid}")
            x = self.table[clip_uid]
            if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] < 1:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise InputError(f"features[{clip_uid!r}]: expected a [N, C] tensor, got {shape}")
            if self.dim is not None and x.shape[1] != self.dim:
                raise InputError(
                    f"features[{clip_uid!r}]: expected feature dim {self.dim}, got {x.shape[1]}"
                )
            x = x.detach().to("cpu", torch.float32)
            if not bool(torch.isfinite(x).all()):
                raise InputError(f"features[{clip_uid!r}]: NaN or infinite values")
        if self.dim is None:
            self.dim = int(x.shape[1])
        return x


def _window_moments(
    clip: MQClip, n: int, index: Mapping[str, int]
) -> list[tuple[int, float, float]]:
    scale = n / clip.duration
    out = []
    for label, s, e in clip.moments:
        if label not in index:
            raise InputError(f"clip {clip.clip_uid}: moment label {label!r} is not in labels")
        s, e = max(0.0, s), min(clip.duration, e)
        if e < s:  # entirely outside the clip
            continue
        out.append((index[label], s * scale, e * scale))
    return out


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _batch_loss(
    model: nn.Module,
    feats: Sequence[Tensor],
    targets: Sequence[list[LevelTargets]],
    config: MQHeadConfig,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:
    x, mask = pad_features(feats, config.pad_multiple)
    logits, dists, masks = model(x.to(device), mask.to(device))
    cls_sum = x.new_zeros((), device=device)
    # 0 * every output: each parameter gets a gradient even in a batch without positives, as
    # DistributedDataParallel requires of every step.
    reg_sum = sum((d.sum() for d in dists), x.new_zeros((), device=device)) * 0.0
    npos = 0
    for lvl in range(config.num_levels):
        t_l = logits[lvl].shape[1]
        cls_t = torch.zeros_like(logits[lvl])
        dist_t = torch.zeros_like(dists[lvl])
        pos = torch.zeros(logits[lvl].shape[:2], dtype=torch.bool, device=device)
        for b, tg in enumerate(targets):
            n = tg[lvl].cls.shape[0]
            assert n <= t_l
            cls_t[b, :n] = tg[lvl].cls.to(device)
            dist_t[b, :n] = tg[lvl].dist.to(device)
            pos[b, :n] = tg[lvl].pos.to(device)
        valid = masks[lvl] > 0
        cls_sum = cls_sum + focal_loss(
            logits[lvl][valid], cls_t[valid], config.focal_alpha, config.focal_gamma
        )
        if bool(pos.any()):
            reg_sum = reg_sum + giou_loss(dists[lvl][pos], dist_t[pos])
        npos += int(pos.sum())
    norm = float(max(npos, 1))
    cls_loss, reg_loss = cls_sum / norm, reg_sum / norm
    return cls_loss + config.reg_weight * reg_loss, cls_loss.detach(), reg_loss.detach()


def train_mq_head(
    clips: Sequence[MQClip],
    features: Features,
    labels: Sequence[str],
    config: MQHeadConfig,
    *,
    out_dir: Path | str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[MQHead, list[dict[str, float]]]:
    """Train the head on ``clips`` (each needs a feature entry / ``{clip_uid}.pt`` file).

    Args:
        clips: training clips with their moments (labels must be in ``labels``).
        features: ``{clip_uid: [N, C] tensor}`` or the feature folder.
        labels: class names in logit order.
        config: settings; ``config.seed`` fixes the initial weights and the clip order.
        out_dir: when given, rank 0 writes ``mq_head.safetensors`` and ``mq_head.json``
            (config, labels, log) there.
        device: where the model runs (features are moved per batch).

    Returns:
        ``(model, log)``: the trained head (eval mode, unwrapped) and one record per epoch:
        ``{"epoch", "steps", "loss", "cls_loss", "reg_loss", "seconds"}`` (this rank's mean).
    """
    if not clips:
        raise InputError("train_mq_head: no training clips")
    dev = torch.device(device)
    rank, world = _dist_info()
    index = {name: i for i, name in enumerate(labels)}
    source = _Source(features, None)
    first = source.get(clips[0].clip_uid)
    in_dim = int(first.shape[1])
    # Targets once per clip: they depend only on the moments and the feature count.
    lengths: dict[str, int] = {}
    targets: dict[str, list[LevelTargets]] = {}
    cached: dict[str, Tensor] = {}
    for clip in clips:
        x = first if clip is clips[0] else source.get(clip.clip_uid)
        n = int(x.shape[0])
        padded = -(-n // config.pad_multiple) * config.pad_multiple
        lengths[clip.clip_uid] = n
        targets[clip.clip_uid] = build_targets(
            _window_moments(clip, n, index), padded, len(labels), config
        )
        if isinstance(features, Mapping):
            cached[clip.clip_uid] = x  # already in memory; a folder is re-read per step
    torch.manual_seed(config.seed)
    model = MQHead(in_dim, labels, config).to(dev)
    runner: nn.Module = model
    if world > 1:
        runner = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None
        )
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    global_batch = config.batch_size * world
    steps_per_epoch = math.ceil(len(clips) / global_batch)
    total = steps_per_epoch * config.epochs
    # Cosine decay to 0 over the whole run.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    order_rng = torch.Generator().manual_seed(config.seed)
    log: list[dict[str, float]] = []
    runner.train()
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(clips), generator=order_rng).tolist()
        # Wrap around so every step gives every rank a full batch (as DistributedSampler).
        perm = (perm * math.ceil(steps_per_epoch * global_batch / len(perm)))[
            : steps_per_epoch * global_batch
        ]
        sums = np.zeros(3)
        for step in range(steps_per_epoch):
            chunk = perm[step * global_batch : (step + 1) * global_batch][rank::world]
            batch = [clips[i] for i in chunk]
            feats = [cached[c.clip_uid] if cached else source.get(c.clip_uid) for c in batch]
            loss, cls_l, reg_l = _batch_loss(
                runner, feats, [targets[c.clip_uid] for c in batch], config, dev
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            schedule.step()
            sums += (float(loss.detach()), float(cls_l), float(reg_l))
        mean = sums / steps_per_epoch
        log.append(
            {
                "epoch": float(epoch + 1),
                "steps": float((epoch + 1) * steps_per_epoch),
                "loss": float(mean[0]),
                "cls_loss": float(mean[1]),
                "reg_loss": float(mean[2]),
                "seconds": time.perf_counter() - t0,
            }
        )
    model.eval()
    if out_dir is not None and rank == 0:
        save_mq_head(model, out_dir, extra={"log": log, "train_clips": len(clips)})
    return model, log


@torch.no_grad()
def predict_moments(
    model: MQHead,
    clips: Sequence[MQClip],
    features: Features,
    labels: Sequence[str],
    config: MQHeadConfig | None = None,
) -> list[dict[str, object]]:
    """Detections of every clip: dicts ``video`` (clip_uid), ``label``, ``start``, ``end``
    (seconds, clip-relative) and ``score``, as :func:`~egovlpv2_rt.eval.detection.detection_map`
    takes them. ``config`` overrides the model's decoding settings (thresholds, NMS, number of
    detections); its architecture fields must match the model's."""
    if tuple(labels) != model.labels:
        raise InputError(
            f"labels {list(labels)[:5]}... differ from the head's {list(model.labels)[:5]}..."
        )
    cfg = config or model.config
    if cfg.num_levels != model.config.num_levels:
        raise InputError(
            f"config.num_levels {cfg.num_levels} differs from the model's {model.config.num_levels}"
        )
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    source = _Source(features, model.in_dim)
    out: list[dict[str, object]] = []
    for clip in clips:
        x = source.get(clip.clip_uid)
        feats, mask = pad_features([x], cfg.pad_multiple)
        logits, dists, masks = model(feats.to(dev), mask.to(dev))
        dets = decode_clip(
            [t[0].cpu() for t in logits],
            [t[0].cpu() for t in dists],
            [t[0].cpu() for t in masks],
            int(x.shape[0]),
            clip.duration,
            cfg,
        )
        out.extend(
            {"video": clip.clip_uid, "label": model.labels[k], "start": s, "end": e, "score": c}
            for k, s, e, c in dets
        )
    model.train(was_training)
    return out


def random_detections(
    clips: Sequence[MQClip], labels: Sequence[str], seed: int, per_clip: int
) -> list[dict[str, object]]:
    """A chance baseline: per clip, ``per_clip`` segments with uniform random ends in
    ``[0, duration]``, uniform random labels and uniform random scores (numpy, seeded)."""
    if per_clip < 1 or not labels:
        raise InputError(f"random_detections needs per_clip >= 1 and labels, got {per_clip}")
    rng = np.random.default_rng(seed)
    out: list[dict[str, object]] = []
    for clip in clips:
        ends = np.sort(rng.uniform(0.0, clip.duration, size=(per_clip, 2)), axis=1)
        lab = rng.integers(0, len(labels), size=per_clip)
        score = rng.uniform(0.0, 1.0, size=per_clip)
        out.extend(
            {
                "video": clip.clip_uid,
                "label": labels[int(lab[i])],
                "start": float(ends[i, 0]),
                "end": float(ends[i, 1]),
                "score": float(score[i]),
            }
            for i in range(per_clip)
        )
    return out


def ground_truth_records(clips: Sequence[MQClip]) -> list[dict[str, object]]:
    """The clips' moments as ground-truth dicts (``video, label, start, end``)."""
    return [
        {"video": c.clip_uid, "label": label, "start": float(s), "end": float(e)}
        for c in clips
        for label, s, e in c.moments
    ]


def evaluate_mq_head(
    model: MQHead,
    clips: Sequence[MQClip],
    features: Features,
    labels: Sequence[str],
    config: MQHeadConfig | None = None,
    *,
    tious: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
    ks: Sequence[int] = (1, 5),
    recall_tious: Sequence[float] = (0.3, 0.5, 0.7),
) -> dict[str, float]:
    """``detection_map`` (``mAP@t`` and ``average``) and ``moment_recall`` (``R@kx_IoUt``) of
    the head's predictions on ``clips`` against their moments, in percent."""
    preds = predict_moments(model, clips, features, labels, config)
    gts = ground_truth_records(clips)
    return {**detection_map(preds, gts, tious), **moment_recall(preds, gts, ks, recall_tious)}
