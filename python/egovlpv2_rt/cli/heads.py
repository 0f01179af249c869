"""``egovlpv2 train-head`` and ``egovlpv2 eval-head``: the EgoNLQ span head (VSLNet) and the
EgoMQ detection head on feature folders written by ``egovlpv2 features``.
``add_subcommands(subparsers)`` registers them; each sets ``func(args) -> int``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..eval.metrics import detection_map, moment_recall, nlq_recall
from ..tasks.episodic.metadata import read_moments
from ..tasks.episodic.mq_head import MQClip, MQHeadConfig, load_mq_head
from ..tasks.episodic.mq_train import (
    evaluate_mq_head,
    ground_truth_records,
    random_detections,
    train_mq_head,
)
from ..tasks.episodic.nlq_data import load_nlq_features
from ..tasks.episodic.nlq_head import (
    NLQHeadConfig,
    evaluate_nlq_head,
    load_nlq_head,
    random_spans,
    read_nlq_head_config,
    train_nlq_head,
)
from ..train.distributed import init_distributed, shutdown_distributed
from .common import non_negative_int, positive_float, positive_int, print_json

__all__ = ["add_subcommands", "cmd_eval_head", "cmd_train_head", "mq_clips"]


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train-head`` and ``eval-head``."""
    p = subparsers.add_parser(
        "train-head",
        help="train the EgoNLQ span head or the EgoMQ detection head on extracted features",
        description="nlq: VSLNet (the original's EgoNLQ head) on a folder of feat_*.pt files, "
        "the original's recipe by default (AdamW 1e-3, batch 32, 50 epochs, linear decay); "
        "mq: the package's anchor-free detection head on {clip_uid}.pt files and the moments "
        "file of the same split. The weights after the last step are saved (no selection on "
        "any split). One process or torchrun.",
    )
    p.add_argument("--task", required=True, choices=("nlq", "mq"))
    p.add_argument("--features", required=True, help="feature folder of the training split")
    p.add_argument("--metadata", default=None, help="mq: moments_{split}.json of that split")
    p.add_argument("--out", required=True, help="folder for the head's weights and config")
    p.add_argument("--epochs", type=positive_int, default=None, help="(nlq 50, mq 30)")
    p.add_argument("--steps", type=positive_int, default=None, help="nlq: stop after N steps")
    p.add_argument("--batch-size", type=positive_int, default=None, help="(nlq 32, mq 8)")
    p.add_argument("--lr", type=positive_float, default=None, help="(1e-3)")
    p.add_argument("--seed", type=non_negative_int, default=None, help="(nlq 0, mq 21)")
    p.add_argument("--variant", default="full", choices=("full", "small"), help="nlq: VSLNet")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--threads", type=non_negative_int, default=1, help="CPU threads (0: torch's default)"
    )
    p.set_defaults(func=cmd_train_head)

    p = subparsers.add_parser(
        "eval-head",
        help="score a trained head on a feature folder, beside a random baseline",
        description="nlq: Recall@{1,3,5} at IoU {0.3,0.5} and mIoU (the Ego4D NLQ metric); "
        "mq: detection mAP at tIoU 0.1..0.5 and their average, Recall@{1,5}x at tIoU "
        "{0.3,0.5,0.7}. The same metric of a seeded random baseline (the mean of "
        "--baseline-draws draws) is reported beside.",
    )
    p.add_argument("--task", required=True, choices=("nlq", "mq"))
    p.add_argument("--checkpoint", required=True, help="the head's folder or .safetensors")
    p.add_argument("--features", required=True, help="feature folder of the evaluated split")
    p.add_argument("--metadata", default=None, help="mq: moments_{split}.json of that split")
    p.add_argument(
        "--baseline-seed", type=non_negative_int, default=0, help="first seed of the draws"
    )
    p.add_argument(
        "--baseline-draws",
        type=positive_int,
        default=50,
        help="random baselines averaged (seeds baseline-seed ...); one draw on a small split "
        "varies by several points",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval_head)


def mq_clips(metadata: str | Path) -> tuple[list[MQClip], tuple[str, ...]]:
    """The clips of a moments file with their primary moments (as the original's VSGN data
    keeps), and the sorted labels of those moments."""
    meta = read_moments(metadata)
    moments: dict[str, list[tuple[str, float, float]]] = {c.clip_uid: [] for c in meta.clips}
    for m in meta.moments:
        if m.primary:
            moments[m.clip_uid].append((m.label, m.start_sec, m.end_sec))
    clips = [MQClip(c.clip_uid, c.duration, tuple(moments[c.clip_uid])) for c in meta.clips]
    labels = tuple(sorted({label for ms in moments.values() for label, _, _ in ms}))
    return clips, labels


def _need_metadata(args: argparse.Namespace) -> Path:
    if args.metadata is None:
        raise InputError("--metadata: the moments_{split}.json of the features is needed for mq")
    return Path(args.metadata)


def _overrides(args: argparse.Namespace, names: dict[str, str]) -> dict[str, Any]:
    return {
        field: getattr(args, dest)
        for dest, field in names.items()
        if getattr(args, dest) is not None
    }


def cmd_train_head(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    info = init_distributed(args.device)
    try:
        if args.task == "nlq":
            if args.metadata is not None:
                raise InputError("--metadata: only for --task mq (NLQ feature files hold it)")
            samples = load_nlq_features(args.features)
            fields = {"epochs": "epochs", "steps": "max_steps", "batch_size": "batch_size"}
            fields |= {"lr": "lr", "seed": "seed"}
            cfg = NLQHeadConfig(
                variant=args.variant,
                device=str(info.device.type),
                num_threads=args.threads,
                **_overrides(args, fields),
            )
            _, log = train_nlq_head(samples, cfg, out_dir=args.out)
            summary = {"queries": len(samples), "steps": log.get("steps")}
        else:
            if args.steps is not None or args.variant != "full":
                raise InputError("--steps and --variant: only for --task nlq")
            clips, labels = mq_clips(_need_metadata(args))
            fields = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "seed": "seed"}
            mq_cfg = MQHeadConfig(**_overrides(args, fields))
            _, epochs = train_mq_head(
                clips, Path(args.features), labels, mq_cfg, out_dir=args.out, device=info.device
            )
            summary = {"clips": len(clips), "labels": len(labels), "epochs": len(epochs)}
    finally:
        shutdown_distributed()
    if info.rank == 0:
        print(f"trained the {args.task} head ({summary}); saved under {args.out}", file=sys.stderr)
    return 0


def _mean(draws: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}


def cmd_eval_head(args: argparse.Namespace) -> int:
    if args.task == "nlq":
        if args.metadata is not None:
            raise InputError("--metadata: only for --task mq (NLQ feature files hold it)")
        model = load_nlq_head(args.checkpoint)
        max_pos_len = read_nlq_head_config(args.checkpoint).max_pos_len
        samples = load_nlq_features(args.features, max_pos_len=max_pos_len)
        scores = evaluate_nlq_head(model, samples)
        gt = np.array([[s.s_time, s.e_time] for s in samples], dtype=np.float64).reshape(-1, 2)
        draws = [
            nlq_recall(random_spans(samples, 5, args.baseline_seed + i), gt)
            for i in range(args.baseline_draws)
        ]
        baseline = _mean(draws)
        count = {"queries": len(samples)}
    else:
        head = load_mq_head(args.checkpoint)
        clips, _ = mq_clips(_need_metadata(args))
        features = Path(args.features)
        scores = evaluate_mq_head(head, clips, features, head.labels)
        gts = ground_truth_records(clips)
        per_clip = head.config.max_detections
        draws = []
        for i in range(args.baseline_draws):
            rand = random_detections(clips, head.labels, args.baseline_seed + i, per_clip)
            draws.append(detection_map(rand, gts) | moment_recall(rand, gts))
        baseline = _mean(draws)
        count = {"clips": len(clips), "moments": len(gts)}
    count["baseline_draws"] = args.baseline_draws
    if args.json:
        print_json({"task": args.task, **count, "metrics": scores, "random_baseline": baseline})
        return 0
    print(f"{args.task} head {args.checkpoint} on {args.features} ({count})")
    print(f"  {'metric':<16}{'head':>10}{'random':>10}")
    for name, value in scores.items():
        print(f"  {name:<16}{value:>10.2f}{baseline.get(name, float('nan')):>10.2f}")
    return 0
