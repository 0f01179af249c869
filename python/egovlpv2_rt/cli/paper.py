"""The paper's own claims as commands: ``egovlpv2 flops`` (compute accounting against a
fusion-specific-layers baseline), ``egovlpv2 ablate`` (the objective ablation) and ``egovlpv2
explain`` (the cross-attention visualisation). ``add_subcommands(subparsers)`` registers
them."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..checkpoint import load_model
from ..config import PRESETS, preset
from ..eval.compute import compute_report
from ..train.ablation import (
    ABLATION_ROWS,
    AblationSettings,
    ablation_table,
    format_ablation_table,
    run_ablation,
)
from ..video import ClipSpec
from ..video.clip_list import parse_clip_arg
from .common import (
    add_model_options,
    at_least,
    clip_spec,
    non_negative_int,
    positive_int,
    print_json,
    runtime_from_args,
    text_arg,
)

__all__ = ["add_subcommands", "cmd_ablate", "cmd_explain", "cmd_flops"]


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``flops``."""
    p = subparsers.add_parser(
        "flops",
        help="GMACs of the dual towers and the fused passes, against fusion-specific layers",
        description="Count GMACs per clip / pair (FlopCounterMode on the meta device; the "
        "custom ops count as their reference path) of the dual video tower, the dual text "
        "tower, the fused VTM and MLM passes, and of a baseline with 6 extra co-attention "
        "layers per modality on top of the dual towers (METER style, the design the paper "
        "compares with); prints the savings per VTM pass and per pre-training pair.",
    )
    p.add_argument("--preset", default="base", choices=sorted(PRESETS))
    p.add_argument("--checkpoint", default=None, help="a model file instead of --preset")
    p.add_argument("--frames", type=positive_int, default=None, help="(default: the model's)")
    p.add_argument("--text-len", type=at_least(2, "room for <s> and </s>"), default=30)
    p.add_argument("--baseline-layers", type=positive_int, default=6)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_flops)

    p = subparsers.add_parser(
        "ablate",
        help="the paper's objective ablation on synthetic data (EgoMCQ per objective set)",
        description="Pre-train the five rows of the EgoVLPv2 ablation (EgoNCE; + MLM; + VTM-Hard; "
        "+ MLM + VTM with random negatives; + MLM + VTM-Hard) with one budget on the synthetic "
        "dataset (the default model's data and architecture), score each on EgoMCQ (dual, "
        "fusion, ensemble; inter, intra) on held-out datasets of other seeds, and print the "
        "table (mean +- sd over the seeds); <work>/ablation.json holds it. Resumable per row; "
        "several processes may run different --rows into one --work folder.",
    )
    p.add_argument("--work", required=True, help="folder for the data, the rows and the table")
    p.add_argument(
        "--rows",
        nargs="+",
        default=None,
        choices=[r.name for r in ABLATION_ROWS],
        help="rows to run here (default: all)",
    )
    p.add_argument("--steps", type=positive_int, default=AblationSettings.steps)
    p.add_argument("--train-clips", type=positive_int, default=AblationSettings.train_clips)
    p.add_argument(
        "--eval-seeds",
        type=non_negative_int,
        nargs="+",
        default=list(AblationSettings.eval_seeds),
    )
    p.add_argument("--eval-questions", type=positive_int, default=AblationSettings.eval_questions)
    p.add_argument("--eval-clips", type=positive_int, default=AblationSettings.eval_clips)
    p.add_argument("--seed", type=non_negative_int, default=0, help="training seed")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="(a GPU budget)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ablate)

    p = subparsers.add_parser(
        "explain",
        help="where each word of a caption attends in a clip (cross-attention heat maps)",
        description="Run the fusion encoder on one (clip, caption) pair and draw, for each "
        "chosen word, its t2i cross-attention over the patches of every frame (heads and the "
        "fused layers averaged, or --layer) as a heat map on the frame; --json prints each "
        "word's attention per frame and patch.",
    )
    p.add_argument("--clip", required=True, type=clip_spec, help="path or path@START:END")
    p.add_argument("--text", required=True, type=text_arg, help="the caption")
    p.add_argument("--words", nargs="+", default=None, help="words to show (default: all)")
    p.add_argument("--layer", type=non_negative_int, default=None, help="one fused layer")
    p.add_argument("--out", default=None, help="figure file (.png, .pdf, .svg)")
    add_model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_explain)


def _saving(fraction: float) -> str:
    """1 - ours / theirs as words: '27.4% less' or '73.6% more'."""
    return f"{100 * abs(fraction):.1f}% {'less' if fraction >= 0 else 'more'}"


def cmd_flops(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        config, name = load_model(args.checkpoint).config, str(args.checkpoint)
    else:
        config, name = preset(args.preset), args.preset
    if args.frames is not None:
        config = config.replace(video=dataclasses.replace(config.video, num_frames=args.frames))
    rep = compute_report(
        config, preset=name, text_length=args.text_len, baseline_layers=args.baseline_layers
    )
    if args.json:
        print_json(rep.as_dict())
        return 0
    print(
        f"{name}: {rep.frames} frames at {rep.image_size} px ({rep.video_tokens} video tokens), "
        f"{rep.text_length} text tokens; GMACs per clip / pair"
    )
    rows = [
        ("dual video tower", rep.video_tower),
        ("dual text tower", rep.text_tower),
        ("fusion VTM pass", rep.fusion_vtm),
        ("fusion MLM pass", rep.fusion_mlm),
        ("  added by fusion in the backbone", rep.fusion_added),
        (
            f"baseline: {args.baseline_layers}+{args.baseline_layers} fusion layers",
            rep.baseline_layers,
        ),
        ("baseline VTM pass (towers + layers)", rep.baseline_vtm),
        (f"pre-training pair, ours ({rep.vtm_passes} VTM + 1 MLM)", rep.pretrain_ours),
        ("pre-training pair, baseline", rep.pretrain_baseline),
    ]
    for label, value in rows:
        print(f"  {label:<44}{value:>10.2f}")
    print(f"  VTM pass: {_saving(rep.vtm_saving)} than the baseline")
    print(f"  fusion itself: {_saving(rep.fusion_saving)} than the fusion layers")
    print(f"  pre-training pair: {_saving(rep.pretrain_saving)} than the baseline")
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    settings = AblationSettings(
        steps=args.steps,
        train_clips=args.train_clips,
        eval_seeds=tuple(args.eval_seeds),
        eval_questions=args.eval_questions,
        eval_clips=args.eval_clips,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )
    result = run_ablation(
        args.work, settings, rows=args.rows, log=lambda m: print(m, file=sys.stderr)
    )
    table = ablation_table(result)
    if args.json:
        print_json(table)
    else:
        print(format_ablation_table(table))
    return 0


def _caption_words(tokens: list[str]) -> list[str]:
    text = "".join(t for t in tokens if t not in ("<s>", "</s>", "<pad>"))
    return [w for w in text.split() if any(c.isalnum() for c in w)]


def cmd_explain(args: argparse.Namespace) -> int:
    from ..runtime.explain import draw_cross_attention, word_maps

    if args.out is None and not args.json:
        raise ValueError("--out: give a figure file (or --json for the numbers)")
    rt = runtime_from_args(args)
    path, start, end = parse_clip_arg(args.clip)
    res = rt.cross_attention(ClipSpec(path, start, end), args.text)
    if args.layer is not None and args.layer not in res.maps.layers:
        raise ValueError(f"--layer: {args.layer} is not a fused layer ({list(res.maps.layers)})")
    words = args.words or _caption_words(res.tokens)
    maps = word_maps(res, words, args.layer)
    figure = None
    if args.out is not None:
        p = rt.preprocessing
        figure = draw_cross_attention(
            res, words, args.out, mean=p.mean, std=p.std, layer=args.layer, title=args.text
        )
    if args.json:
        print_json(
            {
                "clip": args.clip,
                "text": args.text,
                "tokens": res.tokens,
                "layers": list(res.maps.layers) if args.layer is None else [args.layer],
                "words": [{"word": w, "attention": maps[i].tolist()} for i, w in enumerate(words)],
                "figure": None if figure is None else str(figure),
            }
        )
    else:
        print(f"wrote {figure}: {len(words)} words x {res.maps.num_frames} frames")
    return 0
