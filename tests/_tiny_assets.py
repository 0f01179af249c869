"""Tiny model, exported graphs and synthetic clips shared by the export, runtime and CLI tests.

Files are built once in the pytest session's base temp folder; whichever test module runs first
builds them and the others reuse them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from egovlpv2_rt.config import ModelConfig, preset
from egovlpv2_rt.modeling import EgoVLPv2


def tiny_config() -> ModelConfig:
    """The golden tiny configuration cut to 2 layers (1 fused) and a 300-token vocabulary."""
    cfg = preset("tiny")
    return cfg.replace(
        video=dataclasses.replace(cfg.video, depth=2),
        text=dataclasses.replace(cfg.text, num_hidden_layers=2, vocab_size=300),
        fusion=dataclasses.replace(cfg.fusion, num_layers=2, num_fuse_block=1, vocab_size=300),
    )


def tiny_model_dir(factory, name: str = "model", seed: int = 0) -> Path:
    """model.safetensors (config in metadata) + tokenizer.json of a tiny random EgoVLPv2."""
    d = factory.getbasetemp() / "egovlpv2-tiny" / name
    if (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file():
        return d
    from egovlpv2_rt.checkpoint import save_safetensors
    from egovlpv2_rt.data.synthetic import COLOURS, SHAPES, VERBS, narration_words
    from egovlpv2_rt.train.bpe import train_bpe_tokenizer

    d.mkdir(parents=True, exist_ok=True)
    texts = [
        narration_words(v, c, s, r)
        for v in VERBS
        for c in COLOURS
        for s in SHAPES
        for r in ("", "left", "right")
    ]
    train_bpe_tokenizer(texts, 300, d / "tokenizer.json")
    torch.manual_seed(seed)
    model = EgoVLPv2(tiny_config()).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            # Gates and time attention start at zero/identity; make them matter.
            if "alpha" in pname or "timeattn" in pname:
                p.normal_(0.0, 0.5)
    save_safetensors(model, d / "model.safetensors")
    return d


def tiny_export_dir(factory) -> Path:
    """``egovlpv2-export --mode all`` of the tiny model (fp32)."""
    d = factory.getbasetemp() / "egovlpv2-tiny" / "export"
    if (d / "export.json").is_file():
        return d
    from egovlpv2_rt.cli.export import main

    rc = main(
        ["--mode", "all", "--checkpoint", str(tiny_model_dir(factory)), "--out", str(d), "--json"]
    )
    assert rc == 0
    return d


def synthetic_clips(factory) -> tuple[Path, list]:
    """A small synthetic dataset (5 videos x 5 clips, 32 px); returns (folder, records)."""
    from egovlpv2_rt.data.egoclip import read_egoclip
    from egovlpv2_rt.data.synthetic import SynthConfig, generate_dataset

    d = factory.getbasetemp() / "egovlpv2-tiny" / "synth"
    if not (d / "egoclip.csv").is_file():
        generate_dataset(d, 7, SynthConfig(num_clips=25, clips_per_video=5, size=32, num_mcq=4))
    return d, read_egoclip(d / "egoclip.csv")


def tiny_episodic_dir(factory) -> dict[str, Path]:
    """A small synthetic Ego4D episodic-memory dataset (32 px, 6 fps, a few clips per split)."""
    from egovlpv2_rt.tasks.episodic.synth import EMSynthConfig, synthesize_episodic

    cfg = EMSynthConfig(
        train_videos=3,
        val_videos=1,
        test_videos=1,
        clips_per_video=(1, 2),
        actions_per_clip=(2, 3),
        colours=("red", "blue"),
        shapes=("square", "circle"),
        objects_per_video=2,
        size=32,
        fps=6,
        action_seconds=1.0,
        idle_seconds=(0.4, 0.8),
        gap_seconds=(0.5, 1.0),
    )
    d = factory.getbasetemp() / "egovlpv2-tiny" / "episodic"
    paths = {
        "root": d,
        "videos": d / "videos",
        **{f"{k}_{s}": d / f"{f}_{s}.json" for k, f in (("nlq", "nlq"), ("moments", "moments"))
           for s in ("train", "val", "test_unannotated")},
    }  # fmt: skip
    if not (d / "moments_test_unannotated.json").is_file():
        paths = synthesize_episodic(d, 5, config=cfg)
    return paths
