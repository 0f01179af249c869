"""Train the shipped default model: ``python -m egovlpv2_rt.train.default_model``.

Generates the synthetic training set (seed 1) and a held-out EgoMCQ set (seed 2, other videos),
trains a byte-level BPE tokenizer on the training narrations, pre-trains a small EgoVLPv2 (the
full 12-layer architecture with 6 fused layers, narrow widths) with EgoNCE + MLM + VTM on the
CPU, evaluates EgoMCQ in dual, fusion and ensemble modes, and writes ``model.safetensors``,
``tokenizer.json``, ``config.json`` and ``results.json`` into the package's ``default_model/``
folder (or ``--out``). With ``--scene-steps N`` a second phase continues from those weights on a
set with still "what is on the table" clips (seed 3); ``--phase1-dir`` starts it from an
earlier first-phase run instead of training one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..data.egoclip import read_egoclip
from ..data.synthetic import SynthConfig, generate_dataset
from ..files import atomic_write_text, atomic_write_with
from ..model_files import default_model_dir
from ..modeling.model import EgoVLPv2
from .bpe import train_bpe_tokenizer
from .config import train_config_from_dict
from .launch import pretrain_command

__all__ = ["DEFAULT_DIR", "RECIPE", "Recipe", "default_train_config", "main"]

DEFAULT_DIR = default_model_dir()
TRAIN_SEED = 1
EVAL_SEED = 2
SCENE_SEED = 3
IMAGE_SIZE = 64
MAX_TEXT_LENGTH = 16
EVAL_CLIPS = 400
EVAL_QUESTIONS = 200


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The shipped model's recipe (the command's defaults). See default_model/README.md.

    Attributes:
        train_clips: synthetic training clips (seed 1).
        steps: optimiser steps (global batch ``batch``).
        vtm_start: first step with VTM (EgoNCE + MLM before it).
        mlm_stop: first step without MLM (0: MLM to the end).
        batch: global batch size.
        lr: peak learning rate (AdamW, 5% warm-up, cosine).
        time_reversal: each caption's clip played backwards is a negative
            (``loss.time_reversal``).
        scene_steps: steps of an optional second phase (0, the shipped model: none), which
            starts from the first phase's weights on its own set (seed 3): ``scene_clips``
            action clips with still clips between them (``SynthConfig.scene_share``), captioned
            by every object on the table (``scene_caption="inventory"``). The first phase sees
            action clips only: still clips with "glance" captions there taught nothing, and
            inventory captions from scratch collapsed the whole model. 1000 steps (~10 min)
            lift QFVS above the random summary but cost EgoMCQ (bench/RESULTS.md, QFVS), so the
            shipped model has no second phase.
        scene_clips: action clips of the second phase's set.
        scene_share: ``SynthConfig.scene_share`` of that set (0.7: 900 of its 2500 clips,
            36%, are still).
        scene_lr: the second phase's peak learning rate (warm-up ``scene_warmup`` steps,
            cosine); EgoNCE + MLM + VTM throughout, time-reversal negatives as in the first.
        scene_object_negatives: the second phase's ``loss.object_negatives`` (the share of
            its other VTM negatives that differ from a positive in the object only).
        scene_reversal_share: the second phase's ``loss.time_reversal_share`` (the share of
            its VTM negatives that are time reversals; the first phase's is 0.5).
    """

    train_clips: int = 4800
    steps: int = 6000
    vtm_start: int = 3000
    mlm_stop: int = 3000
    batch: int = 16
    lr: float = 5e-4
    time_reversal: bool = True
    scene_steps: int = 0
    scene_clips: int = 1600
    scene_share: float = 0.7
    scene_lr: float = 2e-4
    scene_warmup: int = 50
    scene_object_negatives: float = 0.0
    scene_reversal_share: float = 0.5


RECIPE = Recipe()


def synth_split(root: Path, seed: int, cfg: SynthConfig) -> None:
    """Generate a synthetic split into ``root``, or reuse the one there if it was made with the
    same seed and settings (recorded in ``root/synth.json``); another split there is an error,
    never silently trained on."""
    marker = root / "synth.json"
    want = json.loads(json.dumps({"seed": seed, **dataclasses.asdict(cfg)}))
    if not (root / "egoclip.csv").is_file():
        generate_dataset(root, seed, cfg)
        atomic_write_text(marker, json.dumps(want, indent=1))
        return
    if marker.is_file():
        have = json.loads(marker.read_text())
        # A setting added after the marker was written had its default then.
        known = json.loads(json.dumps(dataclasses.asdict(SynthConfig())))
        diff = [
            f"{k}: {have.get(k, known.get(k))!r} there, {v!r} asked"
            for k, v in want.items()
            if have.get(k, known.get(k)) != v
        ]
    else:  # written before synth.json existed: the clip count is what can be checked
        n = len(read_egoclip(root / "egoclip.csv"))
        expect = cfg.num_videos * cfg.clips_per_video
        diff = [] if n == expect else [f"{n} clips there, {expect} asked"]
    if diff:
        raise ValueError(
            f"{root} already holds a synthetic dataset made with other settings "
            f"({'; '.join(diff)}); use another --work folder or delete {root}"
        )


def default_model_overrides(vocab_size: int, width: int, heads: int) -> dict:
    """The default model: EgoVLPv2's topology (12 + 12 layers, top 6 fused) at ``width``."""
    return {
        "video": {
            "img_size": IMAGE_SIZE,
            "patch_size": 16,
            "embed_dim": width,
            "depth": 12,
            "num_heads": heads,
            "num_frames": 4,
        },
        "text": {
            "vocab_size": vocab_size,
            "hidden_size": width,
            "num_hidden_layers": 12,
            "num_attention_heads": heads,
            "intermediate_size": 4 * width,
            "max_position_embeddings": MAX_TEXT_LENGTH + 4,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        },
        "fusion": {
            "vocab_size": vocab_size,
            "hidden_size": width,
            "num_heads": heads,
            "num_layers": 12,
            "num_fuse_block": 6,
            "input_image_embed_size": width,
            "input_text_embed_size": width,
            "drop_rate": 0.0,
        },
        "embed_dim": width,
        "projection_dim": 2 * width,
    }


def default_train_config(
    data_root: Path,
    tokenizer: Path,
    out_dir: Path,
    vocab_size: int,
    *,
    steps: int,
    batch: int,
    lr: float,
    width: int,
    heads: int,
    eval_dir: Path | None,
    eval_every: int = 0,
    seed: int = 0,
    vtm_start_step: int = 0,
    mlm_stop_step: int = 0,
    warmup_steps: int | None = None,
    time_reversal: bool = False,
) -> dict:
    cfg = {
        "model": {"preset": "tiny", "overrides": default_model_overrides(vocab_size, width, heads)},
        "data": {
            "root": str(data_root),
            "tokenizer": str(tokenizer),
            "image_size": IMAGE_SIZE,
            "num_frames": 4,
            "sampling": "uniform",
            "cache_clips": True,
            "neg_seconds": 60.0,
            "max_text_length": MAX_TEXT_LENGTH,
        },
        "optim": {
            "lr": lr,
            "warmup_steps": (max(1, steps // 20) if warmup_steps is None else warmup_steps),
            "weight_decay": 0.01,
            "min_lr_ratio": 0.05,
            "grad_clip": 1.0,
        },
        "loss": {
            "preset": "original",
            "vtm_start_step": vtm_start_step,
            "mlm_stop_step": mlm_stop_step,
            "time_reversal": time_reversal,
        },
        "out_dir": str(out_dir),
        # The fused C++ attention ops: 1.44x faster training steps than the reference path
        # (bench/bench_train_step.py, bench/RESULTS.md); an error, not a silent fallback, when
        # the extension is not built.
        "attention_impl": "fused",
        "seed": seed,
        "global_batch_size": batch,
        "max_steps": steps,
        "checkpoint_every": max(50, steps // 10),
        "log_every": 10,
        # The original's init std 0.02 suits width 768 (and pretrained towers); trained from
        # scratch at width 64 it leaves the text CLS almost independent of the caption (cosine
        # 0.9999 between captions) for hundreds of steps. std = 1 / sqrt(width) (LeCun) instead.
        "init_scale": 1.0 / (0.02 * width**0.5),
    }
    if eval_dir is not None and eval_every > 0:
        cfg["eval"] = {
            "egomcq": str(eval_dir / "egomcq.json"),
            "video_dir": str(eval_dir / "videos"),
            "every_steps": eval_every,
        }
    return cfg


def scene_phase_config(
    phase1: dict,
    data_root: Path,
    out_dir: Path,
    init_checkpoint: Path,
    *,
    steps: int,
    lr: float,
    warmup_steps: int,
    object_negatives: float = 0.0,
    reversal_share: float = 0.5,
) -> dict:
    """The second phase's experiment config: the first phase's (``phase1``, as made by
    :func:`default_train_config`) on ``data_root``, starting from ``init_checkpoint``, with
    EgoNCE + MLM + VTM from its first step to its last (``object_negatives``,
    ``reversal_share``: its ``loss.object_negatives``, ``loss.time_reversal_share``)."""
    cfg = json.loads(json.dumps(phase1))
    cfg["model"]["init_checkpoint"] = str(init_checkpoint)
    cfg.pop("init_scale", None)  # shapes a random start only; refused beside init_checkpoint
    cfg.pop("eval", None)
    cfg["data"]["root"] = str(data_root)
    cfg["optim"].update(lr=lr, warmup_steps=warmup_steps)
    cfg["loss"].update(vtm_start_step=0, mlm_stop_step=0)
    if object_negatives:  # absent when 0, so the config reads as before the option
        cfg["loss"]["object_negatives"] = object_negatives
    if reversal_share != 0.5:
        cfg["loss"]["time_reversal_share"] = reversal_share
    cfg.update(out_dir=str(out_dir), max_steps=steps, checkpoint_every=max(50, steps // 10))
    return cfg


def _train(cfg_dict: dict, cfg_path: Path, nproc: int, resume: bool) -> tuple[int, float, float]:
    """Run one phase (``nproc`` gloo processes of one thread each, or in-process): its steps,
    final loss and seconds."""
    from .trainer import train

    cfg_dict["num_threads"] = 1
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg_path, json.dumps(cfg_dict, indent=1))
    cfg = train_config_from_dict(cfg_dict, str(cfg_path))
    t0 = time.perf_counter()
    if nproc > 1:
        cmd = pretrain_command(cfg_path, nproc, "cpu", *(["--resume"] if resume else []))
        env = dict(os.environ, OMP_NUM_THREADS="1")
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([pkg_root, env.get("PYTHONPATH", "")])
        subprocess.run(cmd, check=True, env=env)
        metrics = Path(cfg.out_dir) / "metrics.csv"
        steps, final_loss = cfg.max_steps, float(metrics.read_text().splitlines()[-1].split(",")[3])
    else:
        result = train(cfg, resume=resume, device="cpu")
        steps, final_loss = result.steps, result.final_loss
    return steps, final_loss, time.perf_counter() - t0


def _read_phase1_dir(folder: Path) -> dict:
    """The first phase's model, tokenizer and record from ``folder`` (``--phase1-dir``)."""
    need = ("model.safetensors", "tokenizer.json", "results.json")
    missing = [n for n in need if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--phase1-dir {folder}: no {', '.join(missing)} there (a first-phase run's "
            "model.safetensors, tokenizer.json and results.json)"
        )
    record = json.loads((folder / "results.json").read_text())
    if record.get("phase2"):
        raise ValueError(
            f"--phase1-dir {folder}: results.json records a two-phase model; give the folder "
            "of a first-phase run"
        )
    try:
        seconds = float(record["seconds"]["train"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"--phase1-dir {folder}/results.json: no seconds.train (the first phase's "
            "training time)"
        ) from None
    return {
        "from": str(folder),
        "command": record.get("command", ""),
        "steps": record.get("steps"),
        "final_loss": record.get("final_loss"),
        "egomcq_heldout": record.get("egomcq_heldout"),
        "seconds_train": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m egovlpv2_rt.train.default_model", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--work",
        default="build/default_model_work",
        help="folder for the synthetic data and the run",
    )
    p.add_argument("--out", default=str(DEFAULT_DIR), help="where the model files go")
    p.add_argument("--train-clips", type=int, default=RECIPE.train_clips)
    p.add_argument("--eval-questions", type=int, default=EVAL_QUESTIONS)
    p.add_argument("--steps", type=int, default=RECIPE.steps)
    p.add_argument("--batch", type=int, default=RECIPE.batch)
    p.add_argument("--lr", type=float, default=RECIPE.lr)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument(
        "--nproc",
        type=int,
        default=2,
        help="training processes (gloo DDP, one thread each: on the CPU this keeps "
        "denormal flushing effective, which is per thread)",
    )
    p.add_argument(
        "--vtm-start",
        type=int,
        default=RECIPE.vtm_start,
        help="EgoNCE + MLM steps before VTM joins (loss.vtm_start_step)",
    )
    p.add_argument(
        "--mlm-stop",
        type=int,
        default=RECIPE.mlm_stop,
        help="first step without MLM (loss.mlm_stop_step; 0: MLM to the end)",
    )
    p.add_argument(
        "--time-reversal",
        action=argparse.BooleanOptionalAction,
        default=RECIPE.time_reversal,
        help="each caption's clip played backwards is a negative (loss.time_reversal)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="learning-rate warm-up steps (default: 5%% of --steps)",
    )
    p.add_argument(
        "--scene-steps",
        type=int,
        default=RECIPE.scene_steps,
        help="steps of the second phase, with still clips (0: no second phase)",
    )
    p.add_argument("--scene-clips", type=int, default=RECIPE.scene_clips)
    p.add_argument(
        "--scene-share",
        type=float,
        default=RECIPE.scene_share,
        help="chance of a still clip between two actions in the second phase's set "
        "(SynthConfig.scene_share)",
    )
    p.add_argument("--scene-lr", type=float, default=RECIPE.scene_lr)
    p.add_argument("--scene-warmup", type=int, default=RECIPE.scene_warmup)
    p.add_argument(
        "--scene-object-negatives",
        type=float,
        default=RECIPE.scene_object_negatives,
        help="the second phase's loss.object_negatives: share of its VTM negatives (other "
        "than time reversals) that differ from a positive in the object only",
    )
    p.add_argument(
        "--scene-reversal-share",
        type=float,
        default=RECIPE.scene_reversal_share,
        help="the second phase's loss.time_reversal_share: share of its VTM negatives that "
        "are time reversals",
    )
    p.add_argument(
        "--phase1-dir",
        default=None,
        help="skip the first phase: start the second from the first-phase model in this "
        "folder (model.safetensors, tokenizer.json, results.json of an earlier run of this "
        "command with --scene-steps 0); its recorded training time counts in results.json",
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="EgoMCQ on the held-out set every N steps of the first phase (eval.jsonl in the run)",
    )
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-install", action="store_true", help="do not copy into --out")
    args = p.parse_args(argv)
    if args.phase1_dir is not None and args.scene_steps <= 0:
        p.error("--phase1-dir needs a second phase (--scene-steps > 0)")

    from ..checkpoint import load_model
    from ..eval.egomcq import evaluate_egomcq
    from ..tokenizer import RobertaTokenizer

    t_start = time.perf_counter()
    work = Path(args.work)
    train_dir, eval_dir, scene_dir = work / "train", work / "eval", work / "scenes"
    run_dir, scene_run_dir = work / "run", work / "run_scenes"
    phase1 = _read_phase1_dir(Path(args.phase1_dir)) if args.phase1_dir else None
    if phase1 is None:
        synth_split(
            train_dir,
            TRAIN_SEED,
            SynthConfig(num_clips=args.train_clips, size=IMAGE_SIZE, num_mcq=20),
        )
    # A fixed held-out set (50 videos) whatever the training set's size.
    synth_split(
        eval_dir,
        EVAL_SEED,
        SynthConfig(num_clips=EVAL_CLIPS, size=IMAGE_SIZE, num_mcq=args.eval_questions),
    )
    if args.scene_steps > 0:
        synth_split(
            scene_dir,
            SCENE_SEED,
            SynthConfig(
                num_clips=args.scene_clips,
                size=IMAGE_SIZE,
                num_mcq=0,
                scene_share=args.scene_share,
                scene_caption="inventory",
            ),
        )
    t_data = time.perf_counter() - t_start
    if phase1 is not None:
        tok_path = Path(args.phase1_dir) / "tokenizer.json"
    else:
        tok_path = work / "tokenizer.json"
        if not tok_path.is_file():
            texts = [r.clip_text for r in read_egoclip(train_dir / "egoclip.csv")]
            train_bpe_tokenizer(texts, 384, tok_path)
    tokenizer = RobertaTokenizer.from_tokenizer_json(tok_path, max_length=MAX_TEXT_LENGTH)
    cfg_dict = default_train_config(
        train_dir,
        tok_path,
        run_dir,
        tokenizer.vocab_size,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        width=args.width,
        heads=args.heads,
        eval_dir=eval_dir,
        eval_every=args.eval_every,
        vtm_start_step=args.vtm_start,
        mlm_stop_step=args.mlm_stop,
        warmup_steps=args.warmup,
        time_reversal=args.time_reversal,
    )
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)

    def egomcq(model_file: Path) -> tuple[EgoVLPv2, dict, float]:
        model = load_model(model_file)
        t0 = time.perf_counter()
        res = evaluate_egomcq(
            model,
            eval_dir / "egomcq.json",
            eval_dir / "videos",
            tokenizer,
            max_length=MAX_TEXT_LENGTH,
            batch_size=8,
        )
        return model, res.accuracy, time.perf_counter() - t0

    t_eval = 0.0
    if phase1 is None:
        steps, final_loss, t_train = _train(
            cfg_dict, work / "train_config.json", args.nproc, args.resume
        )
        model_file = run_dir / "model.safetensors"
        model, acc, dt = egomcq(model_file)
        t_eval += dt
        phase1 = {
            "steps": steps,
            "final_loss": final_loss,
            "egomcq_heldout": acc,
            "seconds_train": round(t_train, 1),
        }
        recipe_cfgs = {"train_config.json": cfg_dict}
    else:
        model_file = Path(args.phase1_dir) / "model.safetensors"
        # What the first phase ran with, where its folder says so.
        ran = Path(args.phase1_dir) / "train_config.json"
        recipe_cfgs = {
            "train_config.json": json.loads(ran.read_text()) if ran.is_file() else cfg_dict
        }
    if args.scene_steps > 0:
        scene_cfg = scene_phase_config(
            cfg_dict,
            scene_dir,
            scene_run_dir,
            model_file.resolve(),
            steps=args.scene_steps,
            lr=args.scene_lr,
            warmup_steps=args.scene_warmup,
            object_negatives=args.scene_object_negatives,
            reversal_share=args.scene_reversal_share,
        )
        steps, final_loss, t_scene = _train(
            scene_cfg, work / "train_config_scenes.json", args.nproc, args.resume
        )
        recipe_cfgs["train_config_scenes.json"] = scene_cfg
        model_file = scene_run_dir / "model.safetensors"
        model, acc, dt = egomcq(model_file)
        t_eval += dt
        phase2: dict | None = {
            "steps": steps,
            "final_loss": final_loss,
            "seconds_train": round(t_scene, 1),
            "scene_clips": args.scene_clips,
            "scene_share": args.scene_share,
            "object_negatives": args.scene_object_negatives,
            "reversal_share": args.scene_reversal_share,
        }
    else:
        phase2, t_scene = None, 0.0
    report = {
        "egomcq_heldout": acc,
        "eval_seed": EVAL_SEED,
        "train_seed": TRAIN_SEED,
        "scene_seed": SCENE_SEED if phase2 else None,
        "train_clips": args.train_clips,
        "steps": phase1["steps"] + (phase2["steps"] if phase2 else 0),
        "global_batch_size": args.batch,
        "final_loss": final_loss,
        "train_processes": args.nproc,
        "phase1": phase1,
        "phase2": phase2,
        "seconds": {
            "data": round(t_data, 1),
            "train": round(phase1["seconds_train"] + t_scene, 1),
            "eval": round(t_eval, 1),
            "total": round(time.perf_counter() - t_start, 1),
        },
        "command": "python -m egovlpv2_rt.train.default_model "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    run_out = scene_run_dir if phase2 else run_dir
    atomic_write_text(run_out / "results.json", json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    if not args.no_install:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        # Read above, so installing over --phase1-dir loses nothing.
        for src, name in ((model_file, "model.safetensors"), (tok_path, "tokenizer.json")):
            if src.resolve() != (out / name).resolve():
                atomic_write_with(out / name, functools.partial(shutil.copyfile, src))
        atomic_write_text(out / "config.json", json.dumps(model.config.to_dict(), indent=1))
        for name, c in recipe_cfgs.items():
            atomic_write_text(out / name, json.dumps(c, indent=1))
        if phase2 is None:  # an earlier two-phase model's second config would describe nothing
            (out / "train_config_scenes.json").unlink(missing_ok=True)
        atomic_write_text(out / "results.json", json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
