"""``egovlpv2 features``: Ego4D episodic-memory features (EgoMQ, EgoNLQ) of a metadata file's
clips. ``add_subcommands(subparsers)`` registers the commands; each sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from ..checkpoint import load_model
from ..denormals import flushing_denormals
from ..model_files import default_model_path, load_tokenizer
from ..progress import progress_bar
from ..tasks.episodic.feature_job import extract_features
from ..tasks.episodic.features import FeatureSettings
from ..train.distributed import init_distributed, shutdown_distributed
from ..video.reader import BACKENDS
from .common import (
    add_ray_options,
    at_least,
    positive_float,
    positive_int,
    print_json,
    ray_options_from_args,
)

__all__ = ["add_subcommands", "cmd_features"]


def add_subcommands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``features``."""
    p = subparsers.add_parser(
        "features",
        help="EgoMQ / EgoNLQ features of every clip of an Ego4D metadata file",
        description="mq: one [windows, P] tensor per clip ({clip_uid}.pt), 16-frame windows "
        "through the dual video tower and its projector; nlq: one file per query "
        "(feat_{sample_id}.pt) with the fused video CLS of every 4-frame window and the "
        "query's token features, as the original's EgoNLQ writes them. 1.87 windows per "
        "second. Resumable (finished clips are skipped), shards clips over torchrun ranks, "
        "reports bad videos in manifest.json without stopping.",
    )
    p.add_argument("--task", required=True, choices=("mq", "nlq"))
    p.add_argument("--metadata", required=True, help="moments_{split}.json or nlq_{split}.json")
    p.add_argument("--videos", required=True, help="folder of the canonical {video_uid}.mp4")
    p.add_argument("--out", required=True, help="output folder (one per split)")
    p.add_argument(
        "--checkpoint", default=None, help="model .safetensors/.pth (default: the shipped model)"
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: beside it)")
    p.add_argument(
        "--fps",
        type=_fps,
        default="30",
        help="frames per second assumed for the clip times: a number (the original: 30) or "
        "'video' (each video's own rate)",
    )
    p.add_argument("--query-length", type=at_least(2), default=30, help="NLQ query tokens (30)")
    p.add_argument("--max-pos-len", type=positive_int, default=256, help="NLQ head positions")
    p.add_argument("--window-batch", type=positive_int, default=32)
    p.add_argument("--pair-batch", type=positive_int, default=256, help="NLQ window-query pairs")
    p.add_argument("--backend", default="pyav", choices=BACKENDS)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"))
    add_ray_options(p, "the driver writing the files")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_features)


def _fps(text: str) -> float | None:
    """A positive number, or 'video' (None: each video's own frame rate)."""
    if text == "video":
        return None
    return positive_float(text)


def cmd_features(args: argparse.Namespace) -> int:
    settings = FeatureSettings(
        task=args.task,
        fps=args.fps,
        query_max_length=args.query_length,
        max_pos_len=args.max_pos_len,
        window_batch=args.window_batch,
        pair_batch=args.pair_batch,
        backend=args.backend,
        amp=args.amp,
    )
    ckpt = Path(args.checkpoint) if args.checkpoint else default_model_path()
    if not ckpt.is_file():
        raise FileNotFoundError(f"--checkpoint: no such file {ckpt}")
    if not Path(args.metadata).is_file():
        raise FileNotFoundError(f"--metadata: no such file {args.metadata}")
    if args.backend in ("dali", "dali_cpu"):
        import egovlpv2_rt.video.dali_backend  # noqa: F401  (registers the DALI plan reader)
    if args.engine == "ray":
        manifest = _features_ray(args, settings, ckpt)
        _report_features(args, manifest)
        return 0 if not manifest["failed"] else 1
    info = init_distributed(args.device)
    try:
        model = load_model(ckpt, num_frames=settings.window_frames, device=info.device).eval()
        tok = None
        tok_path = _tokenizer_path(args, ckpt)
        if tok_path is not None:
            tok = load_tokenizer(tok_path, model.config.text.max_text_length)
        barrier = torch.distributed.barrier if info.world_size > 1 else None
        quiet = _quiet(args)
        with flushing_denormals(info.device.type == "cpu"):
            manifest = extract_features(
                metadata=args.metadata,
                videos=args.videos,
                out=args.out,
                model=model,
                tokenizer=tok,
                checkpoint=ckpt,
                settings=settings,
                rank=info.rank,
                world=info.world_size,
                barrier=barrier,
                progress=None if quiet else lambda line: print(line, file=sys.stderr),
            )
    finally:
        shutdown_distributed()
    if info.rank != 0:
        return 0
    _report_features(args, manifest)
    return 0 if not manifest["failed"] else 1


def _quiet(args: argparse.Namespace) -> bool:
    """No per-clip progress: JSON output, stderr not a terminal, or EGOVLPV2_QUIET set."""
    return bool(args.json or not sys.stderr.isatty() or os.environ.get("EGOVLPV2_QUIET"))


def _tokenizer_path(args: argparse.Namespace, ckpt: Path) -> Path | None:
    """NLQ's tokenizer (``--tokenizer``, else beside the checkpoint); None for MQ."""
    if args.task != "nlq":
        return None
    tok_path = Path(args.tokenizer) if args.tokenizer else ckpt.parent / "tokenizer.json"
    if not tok_path.exists():
        raise FileNotFoundError(f"--tokenizer: no such file {tok_path}")
    return tok_path


def _features_ray(args: argparse.Namespace, settings: FeatureSettings, ckpt: Path) -> dict:
    """``features --engine ray``: plan here, compute on the cluster's actors, write here."""
    from ..runtime.ray_engine import import_ray
    from ..runtime.ray_features import features_with_ray
    from ..tasks.episodic.feature_job import plan_features

    import_ray()  # the one-line message before any work
    options = ray_options_from_args(args)
    # The driver reads the model's config (the NLQ query limit), on the CPU.
    config = load_model(ckpt, num_frames=settings.window_frames, device="cpu").config
    tok_path = _tokenizer_path(args, ckpt)
    plan = plan_features(
        metadata=args.metadata,
        videos=args.videos,
        out=args.out,
        model_config=config,
        checkpoint=ckpt,
        settings=settings,
    )
    quiet = _quiet(args)
    bar = progress_bar(len(plan.clips), f"{args.task} features (ray)", not quiet)
    try:
        return features_with_ray(
            plan,
            checkpoint=str(ckpt),
            tokenizer=None if tok_path is None else str(tok_path),
            settings=settings,
            device=None if args.device == "auto" else args.device,
            options=options,
            progress=bar,
        )
    finally:
        bar.close()


def _report_features(args: argparse.Namespace, manifest: dict) -> None:
    if args.json:
        print_json(manifest)
    else:
        print(
            f"{args.task} features of {manifest['clips']} clips in {args.out}: "
            f"{manifest['computed']} computed, {manifest['existing']} already there, "
            f"{manifest['files_written']} files written, {len(manifest['failed'])} failed"
        )
        for f in manifest["failed"]:
            print(f"  failed {f['clip_uid']}: {f['error']}")
        if manifest["other_fps"]:
            rates = sorted(set(manifest["other_fps"].values()))
            print(
                f"  note: {len(manifest['other_fps'])} video(s) run at {rates} fps, not the "
                f"assumed {args.fps:g}: their windows are not 1.87 per second of real time "
                "(as in the original); --fps video follows each video's own rate"
            )
