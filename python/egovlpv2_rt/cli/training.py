"""``egovlpv2 synth``, ``egovlpv2 train`` and ``egovlpv2 eval``: the training commands of the
``egovlpv2`` CLI. ``add_subcommands(subparsers)`` registers them; each sets
``func(args) -> int``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..checkpoint import load_model
from ..data.synthetic import SynthConfig, generate_dataset
from ..denormals import flushing_denormals
from ..eval.egomcq import MODES, evaluate_egomcq
from ..model_files import default_model_path, load_tokenizer
from ..train.trainer import train_from_file
from .common import at_least, non_negative_int, positive_int, print_json

__all__ = ["add_subcommands", "cmd_eval", "cmd_synth", "cmd_train"]


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``synth``, ``train`` and ``eval`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic EgoClip/EgoMCQ dataset",
        description="Write videos/, egoclip.csv and egomcq.json.",
    )
    p.add_argument("--out", required=True, help="destination folder")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--clips", type=positive_int, default=480, help="number of narrated clips")
    p.add_argument("--questions", type=non_negative_int, default=100, help="EgoMCQ questions")
    p.add_argument(
        "--size",
        type=_frame_size,
        default=64,
        help="frame size in pixels (a multiple of 16, >= 32)",
    )
    p.set_defaults(func=cmd_synth)

    p = subparsers.add_parser(
        "train",
        help="pre-train EgoVLPv2 (EgoNCE + MLM + VTM)",
        description="Pre-train from an experiment config. For several "
        "processes run it under torchrun: torchrun --nproc_per_node N "
        "-m egovlpv2_rt.train --config FILE",
    )
    p.add_argument("--config", required=True, help="experiment file (.json/.yaml)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <out_dir>/checkpoints/last.json (or a 0.1 run's last.pt)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "eval",
        help="evaluate a model (EgoMCQ)",
        description="EgoMCQ accuracy (inter / intra) in dual, fusion and ensemble modes.",
    )
    p.add_argument("--task", default="egomcq", choices=("egomcq",))
    p.add_argument(
        "--data", required=True, help="folder with egomcq.json and videos/ (as written by synth)"
    )
    p.add_argument(
        "--checkpoint", default=None, help="model .safetensors (default: the shipped default model)"
    )
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer.json (default: beside the checkpoint)"
    )
    p.add_argument("--mode", default="all", choices=("dual", "fusion", "ensemble", "all"))
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument(
        "--max-length",
        type=at_least(2, "room for <s> and </s>"),
        default=16,
        help="caption tokens",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)


def _frame_size(text: str) -> int:
    size = at_least(32)(text)
    if size % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16 (>= 32), got {text!r}")
    return size


def cmd_synth(args: argparse.Namespace) -> int:
    cfg = SynthConfig(num_clips=args.clips, num_mcq=args.questions, size=args.size)
    paths = generate_dataset(args.out, args.seed, cfg)
    print(f"wrote {paths['egoclip']}, {paths['egomcq']} and {paths['videos']}/")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    result = train_from_file(args.config, resume=args.resume, device=args.device)
    print(result.summary(), file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    ckpt = Path(args.checkpoint) if args.checkpoint else default_model_path()
    if not ckpt.is_file():
        raise FileNotFoundError(f"--checkpoint: no such file {ckpt}")
    tok_path = Path(args.tokenizer) if args.tokenizer else ckpt.parent / "tokenizer.json"
    if not tok_path.exists():
        raise FileNotFoundError(f"--tokenizer: no such file {tok_path}")
    data = Path(args.data)
    if not (data / "egomcq.json").is_file():
        raise FileNotFoundError(f"--data: {data / 'egomcq.json'} not found")
    model = load_model(ckpt)
    tok = load_tokenizer(tok_path, args.max_length)
    modes = MODES if args.mode == "all" else (args.mode,)
    if args.mode == "ensemble":
        modes = MODES
    with flushing_denormals():
        res = evaluate_egomcq(
            model,
            data / "egomcq.json",
            data / "videos",
            tok,
            max_length=args.max_length,
            batch_size=args.batch_size,
            modes=modes,
        )
    acc = {m: res.accuracy[m] for m in (MODES if args.mode == "all" else (args.mode,))}
    if args.json:
        print_json({"checkpoint": str(ckpt), "task": "egomcq", "accuracy": acc})
    else:
        print(f"EgoMCQ on {data} ({ckpt.name})")
        print(f"{'mode':<10}{'inter %':>10}{'intra %':>10}")
        for m, a in acc.items():
            print(f"{m:<10}{a['inter']:>10.1f}{a['intra']:>10.1f}")
    return 0
