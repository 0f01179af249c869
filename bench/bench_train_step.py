"""CPU benchmark of one pre-training step's model work for the shipped default model's shape.

One rank's share of the default recipe (8 clips of 4 x 64 x 64 px, 16-token captions; width 64,
12 + 12 layers, top 6 fused): forward + backward of the dual towers (EgoNCE), the fusion
encoder on masked captions (MLM) and on pairs (VTM), the three calls a stage-2 step makes.
Paths, measured interleaved in the same run:

- ``reference``: the eager PyTorch attention (einsum + softmax, as the original builds it),
  float32;
- ``fused``: the C++ attention ops, float32 (what the default model trains with);
- ``fused+bf16``: the same under ``torch.autocast("cpu", torch.bfloat16)`` (the trainer's
  ``amp: bf16``; the attention kernels stay float32).

    python bench/bench_train_step.py               # 1 thread, as each training process uses
    python bench/bench_train_step.py --reps 20 --threads 2

"best" is the minimum over repetitions, "median" the median; speedup = reference / path.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
try:
    import egovlpv2_rt
except ImportError:  # a source tree that is not installed
    sys.path.insert(0, str(REPO / "python"))
    import egovlpv2_rt
from bench_ops_cpu import timed

from egovlpv2_rt.modeling.model import EgoVLPv2
from egovlpv2_rt.train.config import ModelSection
from egovlpv2_rt.train.default_model import IMAGE_SIZE, MAX_TEXT_LENGTH, default_model_overrides

VOCAB = 341  # the shipped tokenizer's size


def step_calls(model: EgoVLPv2, batch: int, bf16: bool) -> dict[str, Callable[[], None]]:
    """The three fwd+bwd passes of a stage-2 step on random inputs, and their sum."""
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(batch, 4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    ids = torch.randint(3, VOCAB, (batch, MAX_TEXT_LENGTH), generator=gen)
    mask = torch.ones(batch, MAX_TEXT_LENGTH, dtype=torch.long)

    def ctx():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def dual() -> None:
        with ctx():
            loss = (
                model.encode_video(video).float().sum() + model.encode_text(ids, mask).float().sum()
            )
        loss.backward()

    def mlm() -> None:
        with ctx():
            loss = model.mlm_logits(video, ids, mask).float().sum()
        loss.backward()

    def vtm() -> None:
        with ctx():
            loss = model.vtm_logits(video, ids, mask).float().sum()
        loss.backward()

    def step() -> None:
        dual()
        mlm()
        vtm()

    return {"dual (EgoNCE)": dual, "fusion MLM": mlm, "fusion VTM": vtm, "stage-2 step": step}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="clips per rank (default recipe: 8)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    cfg = ModelSection(preset="tiny", overrides=default_model_overrides(VOCAB, 64, 4)).build()
    paths = {
        "reference": ("reference", False),
        "fused": ("fused", False),
        "fused+bf16": ("fused", True),
    }
    models = {}
    for name, (impl, _) in paths.items():
        torch.manual_seed(0)
        models[name] = EgoVLPv2(cfg, attention_impl=impl).train()
    calls = {name: step_calls(models[name], args.batch, bf16) for name, (_, bf16) in paths.items()}
    parts = list(next(iter(calls.values())))
    flat = {(path, part): calls[path][part] for path in paths for part in parts}
    times = timed(flat, args.reps, args.warmup)

    print(
        f"# pre-training step, default model shape, batch {args.batch} per rank, "
        f"{args.threads} thread(s), torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, "
        f"cpu isa {egovlpv2_rt.build_info().get('cpu_isa')}"
    )
    print(
        "| part | "
        + " | ".join(f"{p} best ms | {p} med ms" for p in paths)
        + " | fused speedup (best / med) | fused+bf16 speedup (best / med) |"
    )
    print("|---" * (2 * len(paths) + 3) + "|")
    for part in parts:
        best = {p: min(times[(p, part)]) * 1e3 for p in paths}
        med = {p: statistics.median(times[(p, part)]) * 1e3 for p in paths}
        cells = " | ".join(f"{best[p]:.1f} | {med[p]:.1f}" for p in paths)
        ratios = " | ".join(
            f"{best['reference'] / best[p]:.2f}x / {med['reference'] / med[p]:.2f}x"
            for p in ("fused", "fused+bf16")
        )
        print(f"| {part} | {cells} | {ratios} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
