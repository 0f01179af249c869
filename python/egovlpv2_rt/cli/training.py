"""``egovlpv2 synth``, ``egovlpv2 train`` and ``egovlpv2 eval``: the training commands of the
``egovlpv2`` CLI. ``add_subcommands(subparsers)`` registers them; each sets
``func(args) -> int``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..checkpoint import load_model
from ..data.synthetic import SCENE_CAPTION_FORMS, SynthConfig, generate_dataset
from ..denormals import flushing_denormals
from ..errors import InputError
from ..eval.egomcq import MODES, evaluate_egomcq
from ..model_files import default_model_path, load_tokenizer
from ..tasks.charades_ego import evaluate_charades_ego, synthesize_charades_ego
from ..tasks.egotaskqa import evaluate_egotaskqa, load_taskqa_model
from ..tasks.egotaskqa_job import finetune_egotaskqa_from_file, read_best
from ..tasks.egotaskqa_synth import synthesize_egotaskqa
from ..tasks.ek100_mir import evaluate_ek100_mir
from ..tasks.ek100_synth import synthesize_ek100_mir
from ..tasks.episodic.synth import EMSynthConfig, synthesize_episodic
from ..tasks.finetune_tasks import FINETUNE_TASKS, finetune_task
from ..tasks.qfvs_synth import synthesize_qfvs
from ..train.finetune import FinetuneTask, finetune_from_file
from ..train.finetune_config import FinetuneConfig
from ..train.trainer import train_from_file
from .common import at_least, non_negative_int, positive_int, print_json, probability
from .qfvs import eval_qfvs_command, finetune_qfvs_command

__all__ = [
    "EVAL_TASKS",
    "SYNTH_TASKS",
    "add_subcommands",
    "cmd_eval",
    "cmd_finetune",
    "cmd_synth",
    "cmd_train",
]

EVAL_TASKS = ("egomcq", "ek100_mir", "charades_ego", "egotaskqa", "qfvs")
SYNTH_TASKS = ("egoclip", "ek100_mir", "charades_ego", "nlq", "mq", "egotaskqa", "qfvs")
FINETUNE_TASK_NAMES = (*FINETUNE_TASKS, "egotaskqa", "qfvs")
# The original's protocols: 16 frames for EK-100 MIR, 32 for Charades-Ego; captions and class
# names tokenised to 30 tokens at evaluation.
TASK_FRAMES = {"ek100_mir": 16, "charades_ego": 32}
TASK_TEXT_LENGTH = 30


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``synth``, ``train`` and ``eval`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic dataset (EgoClip/EgoMCQ, EK-100 MIR or Charades-Ego)",
        description="Write a synthetic dataset in the task's own file formats: egoclip "
        "(videos/, egoclip.csv, egomcq.json), ek100_mir (retrieval_annotations/ and "
        "videos/P../*.MP4 as EPIC-KITCHENS-100) or charades_ego (the official CSVs, "
        "Charades_v1_classes.txt and videos/), nlq / mq (one Ego4D episodic-memory dataset "
        "for both: videos/, nlq_{split}.json and moments_{split}.json), egotaskqa "
        "(formatted_{split}_qas_encode.json, answer_set.txt, all_reasoning_types.txt, videos/), "
        "qfvs (Dense_per_shot_tags/, Oracle_Summaries/, videos/ as UT Egocentric).",
    )
    p.add_argument("--task", default="egoclip", choices=SYNTH_TASKS)
    p.add_argument("--out", required=True, help="destination folder")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--clips", type=positive_int, default=None, help="egoclip: narrated clips (480)")
    p.add_argument(
        "--questions", type=non_negative_int, default=None, help="egoclip: EgoMCQ questions (100)"
    )
    p.add_argument(
        "--size",
        type=_frame_size,
        default=None,
        help="egoclip: frame size in pixels (a multiple of 16, >= 32; 64)",
    )
    p.add_argument(
        "--scene-share",
        type=probability,
        default=None,
        help="egoclip: chance of a still clip before an action, when nothing is held (0: none, "
        "the default)",
    )
    p.add_argument(
        "--scene-caption",
        choices=SCENE_CAPTION_FORMS,
        default=None,
        help="egoclip: the still clips' captions: glance (one or two objects, 'There is a red "
        "and a circle'; the default) or inventory (every object on the table, 'the red circle "
        "the blue square ...')",
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
        "finetune",
        help="fine-tune a pre-trained model on a downstream task (EK-100 MIR, Charades-Ego, "
        "EgoTaskQA, QFVS)",
        description="Fine-tune from a config file (the recipes are in the package's "
        "configs/finetune/: ek100_mir, charades_ego, egotaskqa fine-tune the backbone; qfvs "
        "trains the summary head on frozen fused shot features, cached under the run folder). "
        "For several processes: torchrun --nproc_per_node N -m egovlpv2_rt.cli finetune ...",
    )
    p.add_argument("--task", required=True, choices=FINETUNE_TASK_NAMES)
    p.add_argument("--config", required=True, help="fine-tune config (.yaml/.json)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from <out_dir>/checkpoints/last.json (qfvs: always reuses the cached "
        "shot features)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=cmd_finetune)

    p = subparsers.add_parser(
        "eval",
        help="evaluate a model (EgoMCQ, EK-100 MIR, Charades-Ego, EgoTaskQA, QFVS)",
        description="egomcq: accuracy (inter / intra) in dual, fusion and ensemble modes; "
        "ek100_mir: mAP and nDCG (V2T, T2V, average) on the test split; charades_ego: mAP "
        "over the classes on the test split; egotaskqa: accuracy (All, Open, Binary, per "
        "reasoning type) on the test split of a fine-tuned EgoTaskQA model; qfvs: F1 of "
        "the top-2%% summaries (leave-one-video-out, or a trained --head on every video) beside "
        "a random summary. Zero-shot or fine-tuned: any checkpoint.",
    )
    p.add_argument("--task", default="egomcq", choices=EVAL_TASKS)
    p.add_argument(
        "--data",
        required=True,
        help="egomcq: folder with egomcq.json and videos/; ek100_mir: folder with "
        "retrieval_annotations/ and videos/; charades_ego: folder with the CharadesEgo CSVs, "
        "Charades_v1_classes.txt and the videos; egotaskqa: the formatted_*_qas_encode.json "
        "folder; qfvs: Dense_per_shot_tags/, Oracle_Summaries/, videos/ (as written by synth "
        "--task)",
    )
    p.add_argument(
        "--frames",
        type=positive_int,
        default=None,
        help="frames per clip (default: ek100_mir 16, charades_ego 32, egomcq the model's)",
    )
    p.add_argument(
        "--checkpoint", default=None, help="model .safetensors (default: the shipped default model)"
    )
    p.add_argument(
        "--tokenizer", default=None, help="tokenizer.json (default: beside the checkpoint)"
    )
    p.add_argument(
        "--mode",
        default=None,
        choices=("dual", "fusion", "ensemble", "all"),
        help="egomcq only (default: all)",
    )
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument(
        "--max-length",
        type=at_least(2, "room for <s> and </s>"),
        default=None,
        help="caption tokens (default: egomcq 16, ek100_mir and charades_ego 30, at most "
        "the model's)",
    )
    p.add_argument("--head", default=None, help="qfvs: a trained head (default: leave-one-out)")
    p.add_argument(
        "--features-cache", default=None, help="qfvs: folder to keep the shot features in"
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=None, help="qfvs: training and random seed (0)"
    )
    p.add_argument(
        "--query-swap-control",
        action="store_const",
        const=True,
        default=None,
        help="qfvs: also score each query with another query's prompts (same heads): an F1 "
        "as high as the query's own means the summaries do not follow the query",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)


def _frame_size(text: str) -> int:
    size = at_least(32)(text)
    if size % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16 (>= 32), got {text!r}")
    return size


def _only_for(args: argparse.Namespace, task: str, options: dict[str, str]) -> None:
    """Refuse options of another task (given, but meaningless for ``args.task``)."""
    given = [flag for dest, flag in options.items() if getattr(args, dest) is not None]
    if args.task != task and given:
        raise InputError(f"{', '.join(given)}: only for --task {task}, not {args.task}")


SYNTH_FPS = EMSynthConfig().fps


def cmd_synth(args: argparse.Namespace) -> int:
    _only_for(
        args,
        "egoclip",
        {
            "clips": "--clips",
            "questions": "--questions",
            "size": "--size",
            "scene_share": "--scene-share",
            "scene_caption": "--scene-caption",
        },
    )
    if args.task == "ek100_mir":
        paths = synthesize_ek100_mir(args.out, args.seed)
        print(f"wrote a synthetic EK-100 MIR split under {args.out}")
        return 0
    if args.task == "charades_ego":
        paths = synthesize_charades_ego(args.out, args.seed)
        print(f"wrote a synthetic Charades-Ego dataset under {paths['root']}")
        return 0
    if args.task == "qfvs":
        paths = synthesize_qfvs(args.out, args.seed)
        print(f"wrote a synthetic QFVS dataset (UT Egocentric layout) under {paths['root']}")
        return 0
    if args.task == "egotaskqa":
        paths = synthesize_egotaskqa(args.out, args.seed)
        print(f"wrote a synthetic EgoTaskQA dataset under {paths['root']}")
        return 0
    if args.task in ("nlq", "mq"):
        # One dataset serves both: the same videos and clips, nlq_*.json and moments_*.json.
        paths = synthesize_episodic(args.out, args.seed)
        print(
            f"wrote a synthetic Ego4D episodic-memory dataset under {paths['root']}: "
            f"videos/ ({SYNTH_FPS} fps: extract features with --fps video), "
            "nlq_{train,val,test_unannotated}.json, moments_{train,val,test_unannotated}.json"
        )
        return 0
    cfg = SynthConfig(
        num_clips=480 if args.clips is None else args.clips,
        num_mcq=100 if args.questions is None else args.questions,
        size=64 if args.size is None else args.size,
        scene_share=0.0 if args.scene_share is None else args.scene_share,
        scene_caption="glance" if args.scene_caption is None else args.scene_caption,
    )
    paths = generate_dataset(args.out, args.seed, cfg)
    print(f"wrote {paths['egoclip']}, {paths['egomcq']} and {paths['videos']}/")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    result = train_from_file(args.config, resume=args.resume, device=args.device)
    print(result.summary(), file=sys.stderr)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    if args.task == "qfvs":  # a head on frozen features, no backbone training
        return finetune_qfvs_command(args)
    if args.task == "egotaskqa":  # its own job: a QA head on the fusion encoder
        qa = finetune_egotaskqa_from_file(args.config, resume=args.resume, device=args.device)
        print(qa.summary(), file=sys.stderr)
        if qa.weights is not None:
            best = read_best(qa.weights.parent)
            if best is not None:
                print(
                    f"model to test: {qa.weights.parent / 'best.safetensors'} (step "
                    f"{best['step']}, val All {best['val/All']:.2f})",
                    file=sys.stderr,
                )
        return 0

    def task_of(cfg: FinetuneConfig) -> FinetuneTask:
        if cfg.task != args.task:
            raise InputError(
                f"{args.config}: task is {cfg.task!r}, but --task {args.task} was given"
            )
        return finetune_task(cfg)

    result = finetune_from_file(args.config, task_of, resume=args.resume, device=args.device)
    print(result.summary(), file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _only_for(args, "egomcq", {"mode": "--mode"})
    qfvs_only = {
        "head": "--head",
        "features_cache": "--features-cache",
        "seed": "--seed",
        "query_swap_control": "--query-swap-control",
    }
    _only_for(args, "qfvs", qfvs_only)
    ckpt = Path(args.checkpoint) if args.checkpoint else default_model_path()
    if not ckpt.is_file():
        raise FileNotFoundError(f"--checkpoint: no such file {ckpt}")
    tok_path = Path(args.tokenizer) if args.tokenizer else ckpt.parent / "tokenizer.json"
    if not tok_path.exists():
        raise FileNotFoundError(f"--tokenizer: no such file {tok_path}")
    data = Path(args.data)
    if not data.is_dir():
        raise FileNotFoundError(f"--data: no such folder {data}")
    if args.task == "egomcq":
        return _eval_egomcq(args, ckpt, tok_path, data)
    if args.task == "egotaskqa":
        return _eval_egotaskqa(args, ckpt, tok_path, data)
    if args.task == "qfvs":
        return eval_qfvs_command(args, ckpt, tok_path)
    frames = args.frames or TASK_FRAMES[args.task]
    model = load_model(ckpt, num_frames=frames)
    limit = model.config.text.max_text_length
    max_length = min(args.max_length or TASK_TEXT_LENGTH, limit)
    tok = load_tokenizer(tok_path, max_length)
    with flushing_denormals():
        if args.task == "ek100_mir":
            scores: dict[str, Any] = evaluate_ek100_mir(
                model, tok, data, batch_size=args.batch_size, max_length=max_length
            ).as_dict()
        else:
            scores = evaluate_charades_ego(
                model, data, tok, batch_size=args.batch_size, max_length=max_length
            ).as_dict()
    if args.json:
        print_json(
            {"checkpoint": str(ckpt), "task": args.task, "frames": frames, "metrics": scores}
        )
    else:
        print(f"{args.task} on {data} ({ckpt.name}, {frames} frames)")
        for name, value in scores.items():
            text = f"{value:.2f}" if isinstance(value, float) else str(value)
            print(f"  {name:<18}{text:>10}")
    return 0


def _eval_egotaskqa(args: argparse.Namespace, ckpt: Path, tok_path: Path, data: Path) -> int:
    if args.frames is not None:
        raise InputError("--frames: egotaskqa runs at the frame count its model was trained with")
    model = load_taskqa_model(ckpt)
    max_length = min(
        args.max_length or TASK_TEXT_LENGTH, model.backbone.config.text.max_text_length
    )
    tok = load_tokenizer(tok_path, max_length)
    with flushing_denormals():
        scores = evaluate_egotaskqa(
            model, data, "test", tok, batch_size=args.batch_size, max_text_length=max_length
        )
    if args.json:
        print_json(
            {"checkpoint": str(ckpt), "task": "egotaskqa", "split": "test", "accuracy": scores}
        )
    else:
        print(f"egotaskqa on {data} test split ({ckpt.name})")
        for name, value in scores.items():
            print(f"  {name:<24}{value:>8.2f}")
    return 0


def _eval_egomcq(args: argparse.Namespace, ckpt: Path, tok_path: Path, data: Path) -> int:
    if not (data / "egomcq.json").is_file():
        raise FileNotFoundError(f"--data: {data / 'egomcq.json'} not found")
    mode = args.mode or "all"
    max_length = args.max_length or 16
    model = load_model(ckpt, num_frames=args.frames)
    tok = load_tokenizer(tok_path, max_length)
    modes = MODES if mode in ("all", "ensemble") else (mode,)
    with flushing_denormals():
        res = evaluate_egomcq(
            model,
            data / "egomcq.json",
            data / "videos",
            tok,
            max_length=max_length,
            batch_size=args.batch_size,
            modes=modes,
        )
    acc = {m: res.accuracy[m] for m in (MODES if mode == "all" else (mode,))}
    if args.json:
        print_json({"checkpoint": str(ckpt), "task": "egomcq", "accuracy": acc})
    else:
        print(f"EgoMCQ on {data} ({ckpt.name})")
        print(f"{'mode':<10}{'inter %':>10}{'intra %':>10}")
        for m, a in acc.items():
            print(f"{m:<10}{a['inter']:>10.1f}{a['intra']:>10.1f}")
    return 0
