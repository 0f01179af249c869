"""CPU benchmark of EgoNLQ feature extraction: cached prefix against one pass per query.

For one clip of ``--windows`` 4-frame windows (pre-decoded pixels, as the original reads its
cached frames) and ``--queries`` queries, in the same run:

- ``one-pass``: the original's method, the whole fusion forward over every window once per
  query (``nlq_clip_features_one_pass``);
- ``cached-prefix``: ours, the unfused blocks/layers once per window and per query, then the
  fused blocks for every (window, query) pair, the last block for CLS only
  (``nlq_clip_features``).

Reported: window-query features per second (best of ``--reps``), the speedup, and GFLOP per
query from ``torch.utils.flop_counter`` (matmul-class operations of the PyTorch graph; the
fused C++ attention ops are not counted, so the FLOP numbers use ``--impl reference``-style
accounting: both paths are counted with the reference attention). Models: the shipped default
model (``default``) and/or a preset with a given image size.

    python bench/bench_features.py                       # default model, 5 queries
    python bench/bench_features.py --model base --image-size 112 --windows 8
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
try:
    import egovlpv2_rt
except ImportError:  # a source tree that is not installed
    sys.path.insert(0, str(REPO / "python"))
    import egovlpv2_rt

from egovlpv2_rt.checkpoint import load_model
from egovlpv2_rt.config import preset
from egovlpv2_rt.model_files import default_model_dir, load_tokenizer
from egovlpv2_rt.modeling.model import EgoVLPv2
from egovlpv2_rt.tasks.episodic.features import (
    FeatureSettings,
    nlq_clip_features,
    nlq_clip_features_one_pass,
)

QUERIES = [
    "when did I put down the red square?",
    "where was the blue circle before I picked it up?",
    "when did I rotate the green triangle?",
    "what did I pick up after moving the red circle?",
    "when did I move the yellow bar to the left?",
    "where did I put the purple square?",
    "when did I pick up the white circle?",
    "what did I rotate first?",
]


def _model(name: str, image_size: int) -> EgoVLPv2:
    if name == "default":
        return load_model(default_model_dir() / "model.safetensors").eval()
    cfg = preset(name)
    return EgoVLPv2(cfg.replace(video=dataclasses.replace(cfg.video, img_size=image_size))).eval()


def _best(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _gflop(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default", help="'default' or a preset name")
    ap.add_argument("--image-size", type=int, default=224, help="for a preset")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--queries", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--window-batch", type=int, default=32)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--amp", default="off", choices=("off", "bf16"), help="autocast dtype")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = _model(args.model, args.image_size).to(args.device)
    tok = load_tokenizer(default_model_dir() / "tokenizer.json", 30)
    cfg = model.config.video
    video = torch.randn(args.windows, 4, 3, cfg.img_size, cfg.img_size, device=args.device)
    queries = (QUERIES * 4)[: args.queries]
    settings = FeatureSettings(task="nlq", window_batch=args.window_batch, amp=args.amp)

    def ours() -> object:
        return nlq_clip_features(model, tok, video, None, queries, settings)

    def one_pass() -> object:
        return nlq_clip_features_one_pass(model, tok, video, None, queries, settings)

    a, b = ours(), one_pass()
    diff = (a.fused - b.fused).abs().max().item()  # type: ignore[attr-defined]
    t_one, t_ours = [], []
    for _ in range(args.reps):  # interleaved, so that load changes hit both paths alike
        t_one.append(_best(one_pass, 1))
        t_ours.append(_best(ours, 1))
    pairs = args.windows * args.queries
    model.set_attention_impl("reference")
    g_one, g_ours = _gflop(one_pass), _gflop(ours)
    print(
        f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), egovlpv2_rt {egovlpv2_rt.__version__}, device "
        f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, amp {args.amp}"
    )
    print(
        f"# model {args.model} (width {model.config.embed_dim}, {cfg.img_size} px, "
        f"{cfg.patches_per_frame} patches/frame), {args.windows} windows x {args.queries} "
        f"queries, max |diff| {diff:.2e}"
    )
    print("| path | window-query features/s | speedup | GFLOP per query |")
    print("|---|---|---|---|")
    print(f"| one-pass (original) | {pairs / min(t_one):.1f} | 1.00 | {g_one / args.queries:.3f} |")
    print(
        f"| cached-prefix (ours) | {pairs / min(t_ours):.1f} | "
        f"{min(t_one) / min(t_ours):.2f} | {g_ours / args.queries:.3f} |"
    )


if __name__ == "__main__":
    main()
