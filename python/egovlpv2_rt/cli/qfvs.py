"""QFVS on the command line: ``egovlpv2 summarize`` (registered by ``add_subcommands``) and the
QFVS branches of ``egovlpv2 finetune`` and ``egovlpv2 eval`` (:func:`finetune_qfvs_command`,
:func:`eval_qfvs_command`, called by :mod:`.training`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..denormals import flushing_denormals
from ..errors import InputError
from ..model_files import default_model_dir
from ..tasks.qfvs_head import QFVSTrainConfig
from ..tasks.qfvs_job import (
    evaluate_qfvs_dataset,
    finetune_qfvs_from_file,
    load_qfvs_backbone,
    qfvs_examples,
)
from ..tasks.qfvs_summarize import load_qfvs_head, summarize
from .common import positive_float, print_json

__all__ = [
    "DEFAULT_HEAD",
    "add_subcommands",
    "cmd_summarize",
    "eval_qfvs_command",
    "finetune_qfvs_command",
]

# The head trained for the shipped default model (configs/finetune/qfvs_synthetic.yaml).
DEFAULT_HEAD = "qfvs_head.safetensors"


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``summarize``."""
    p = subparsers.add_parser(
        "summarize",
        help="query-focused summary of a video: the shots that show two concepts",
        description="Cut the video into 5-second shots (frames at 1 fps), fuse each with the "
        "query's prompts ('There is a c1', 'There is a c2', 'There is a c1 and a c2'), score "
        "them with a QFVS head (egovlpv2 finetune --task qfvs) and print the top --budget "
        "share of shots in time order with their times.",
    )
    p.add_argument("--video", required=True, help="video file")
    p.add_argument("--query", required=True, help='two concepts, "c1,c2" (e.g. "Car,Street")')
    p.add_argument(
        "--budget",
        type=positive_float,
        default=0.02,
        help="share of the shots to keep (default 0.02, the QFVS protocol; at least one shot)",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="EgoVLPv2 weights the head was trained on (default: the shipped default model)",
    )
    p.add_argument(
        "--head",
        default=None,
        help="QFVS head .safetensors from egovlpv2 finetune --task qfvs (default: "
        "default_model/qfvs_head.safetensors if present; required with --checkpoint)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_summarize)


def _default_head(checkpoint: str | None, head: str | None) -> Path:
    if head is not None:
        return Path(head)
    if checkpoint is not None:
        raise InputError("--head: required with --checkpoint (a head is trained per backbone)")
    return default_model_dir() / DEFAULT_HEAD


def cmd_summarize(args: argparse.Namespace) -> int:
    if args.budget > 1:
        raise InputError(f"--budget: expected a fraction in (0, 1], got {args.budget}")
    head_path = _default_head(args.checkpoint, args.head)
    if not head_path.is_file():
        hint = "" if args.head else " (no head ships with the default model: train one with "
        hint += "" if args.head else "egovlpv2 finetune --task qfvs and pass --head)"
        raise FileNotFoundError(f"--head: no such file {head_path}{hint}")
    video = Path(args.video)
    if not video.is_file():
        raise FileNotFoundError(f"--video: no such file {video}")
    head = load_qfvs_head(head_path)
    backbone = load_qfvs_backbone(args.checkpoint, device=args.device)
    with flushing_denormals():
        shots = summarize(
            backbone.model, backbone.tokenizer, head, video, args.query, budget=args.budget
        )
    if args.json:
        print_json({"video": str(video), "query": args.query, "shots": [s.__dict__ for s in shots]})
        return 0
    print(f"{video}: {len(shots)} shot{'' if len(shots) == 1 else 's'} for {args.query!r}")
    print(f"{'shot':>6}{'start s':>10}{'end s':>10}{'score':>10}")
    for s in shots:
        print(f"{s.shot:>6}{s.start:>10.1f}{s.end:>10.1f}{s.score:>10.3f}")
    return 0


def finetune_qfvs_command(args: argparse.Namespace) -> int:
    """``egovlpv2 finetune --task qfvs``: shot features (cached under the run folder: a rerun
    computes only what is missing) and the head."""
    device = "cpu" if args.device == "auto" else args.device
    res = finetune_qfvs_from_file(
        args.config, device=device, log=lambda m: print(m, file=sys.stderr)
    )
    print(res.summary(), file=sys.stderr)
    return 0


def eval_qfvs_command(args: argparse.Namespace, checkpoint: Path, tokenizer: Path) -> int:
    """``egovlpv2 eval --task qfvs``: without --head the leave-one-video-out protocol (a head
    trained per held-out video, the epoch chosen on a val split of the other videos' queries);
    with --head that head on every video of --data. A random summary of the same size beside."""
    if args.frames is not None or args.max_length is not None:
        raise InputError(
            "--frames, --max-length: not for --task qfvs (5-frame shots, whole prompts)"
        )
    head = load_qfvs_head(args.head) if args.head else None
    backbone = load_qfvs_backbone(checkpoint, tokenizer)
    cfg = QFVSTrainConfig(seed=0 if args.seed is None else args.seed)
    with flushing_denormals():
        examples, concepts = qfvs_examples(
            backbone, args.data, cache_dir=args.features_cache, shot_batch=args.batch_size
        )
        scores: dict[str, Any] = evaluate_qfvs_dataset(
            examples, concepts, cfg, head=head, query_swap_control=bool(args.query_swap_control)
        )
    protocol = "head" if head is not None else "leave-one-video-out"
    if args.json:
        print_json(
            {
                "checkpoint": str(backbone.checkpoint),
                "task": "qfvs",
                "protocol": protocol,
                "head": args.head,
                "metrics": scores,
            }
        )
        return 0
    print(f"qfvs on {args.data} ({protocol}, {backbone.checkpoint.name})")
    # The random column is the expectation over draws: one draw's luck moves it by points.
    swapped = "f1_query_swapped" in scores
    extra = f"{'swapped F1':>12}" if swapped else ""
    print(f"{'video':<8}{'precision':>10}{'recall':>10}{'F1':>10}{'random F1':>11}{extra}")
    for name, row in scores["per_video"].items():
        extra = f"{row['f1_query_swapped']:>12.2f}" if swapped else ""
        print(
            f"{name:<8}{row['precision']:>10.2f}{row['recall']:>10.2f}{row['f1']:>10.2f}"
            f"{row['random_f1_expected']:>11.2f}{extra}"
        )
    extra = f"{scores['f1_query_swapped']:>12.2f}" if swapped else ""
    mean = f"{scores['f1']:>10.2f}{scores['random_f1_expected']:>11.2f}{extra}"
    print(f"{'mean':<8}{'':>20}{mean}")
    if swapped:
        print("swapped F1: the same heads, each query scored with another query's prompts")
    return 0
