"""``egovlpv2 prepare``: turn a dataset's official release into the files the package reads
(today EgoTaskQA: the release's ``{train,val,test}_qas.json`` -> the baselines' preprocessed
files). ``add_subcommands(subparsers)`` registers it."""

from __future__ import annotations

import argparse

from ..tasks.egotaskqa_prepare import prepare_egotaskqa
from .common import positive_int, print_json

__all__ = ["add_subcommands", "cmd_prepare"]


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``prepare``."""
    p = subparsers.add_parser(
        "prepare",
        help="turn an official dataset release into the files the package reads (EgoTaskQA)",
        description="egotaskqa: from a split folder of the EgoTaskQA release "
        "(data/qa/direct or data/qa/indirect: train_qas.json, val_qas.json, test_qas.json) "
        "write answer_set.txt, formatted_{train,val,test}_qas_encode.json and "
        "all_reasoning_types.txt as the EgoTaskQA baselines' preprocess.sh does (without its "
        "GloVe and character vocabularies, which EgoVLPv2 does not use).",
    )
    p.add_argument("--task", required=True, choices=("egotaskqa",))
    p.add_argument("--release", required=True, help="the release's split folder")
    p.add_argument("--out", required=True, help="folder to write (egovlpv2 finetune's data.root)")
    p.add_argument(
        "--videos", default=None, help="clip folder ({interval}.mp4): report missing clips"
    )
    p.add_argument(
        "--answer-top",
        type=positive_int,
        default=4000,
        help="most frequent training answers kept (default 4000, the baselines')",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    res = prepare_egotaskqa(args.release, args.out, videos=args.videos, answer_top=args.answer_top)
    if args.json:
        print_json(
            {
                "task": args.task,
                "out": str(res.out),
                "questions": res.questions,
                "answers": res.answers,
                "reasoning_types": res.reasoning_types,
                "unknown_answers": res.unknown_answers,
                "missing_clips": res.missing_clips,
            }
        )
    else:
        print(res.summary())
    return 1 if res.missing_clips else 0
