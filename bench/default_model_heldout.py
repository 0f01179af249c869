"""The shipped default model on fresh held-out EgoMCQ datasets: per seed (400 clips in 50 videos
the model never saw, 200 questions, half inter and half intra) the accuracy of the dual, fusion
and ensemble modes, then the mean and spread. Seeds must not be the recipe's development
held-out seed (2) or its training seed (1). One JSON line.

    python bench/default_model_heldout.py --work /tmp/heldout --seeds 11 12 13 14 15
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from egovlpv2_rt.checkpoint import load_model
from egovlpv2_rt.data.synthetic import SynthConfig
from egovlpv2_rt.eval.egomcq import MODES, evaluate_egomcq
from egovlpv2_rt.model_files import default_model_dir, default_model_path, load_tokenizer
from egovlpv2_rt.train.default_model import (
    EVAL_CLIPS,
    EVAL_QUESTIONS,
    EVAL_SEED,
    IMAGE_SIZE,
    MAX_TEXT_LENGTH,
    TRAIN_SEED,
    synth_split,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", required=True, help="folder for the held-out datasets")
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if {TRAIN_SEED, EVAL_SEED} & set(args.seeds):
        raise SystemExit(f"--seeds: not the training ({TRAIN_SEED}) or recipe ({EVAL_SEED}) seed")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    model = load_model(default_model_path())
    tok = load_tokenizer(default_model_dir(), MAX_TEXT_LENGTH)
    per_seed = {}
    for seed in args.seeds:
        d = Path(args.work) / f"seed{seed}"
        synth_split(
            d, seed, SynthConfig(num_clips=EVAL_CLIPS, size=IMAGE_SIZE, num_mcq=EVAL_QUESTIONS)
        )
        res = evaluate_egomcq(
            model, d / "egomcq.json", d / "videos", tok, max_length=MAX_TEXT_LENGTH, batch_size=8
        )
        per_seed[seed] = {m: {k: res.accuracy[m][k] for k in ("inter", "intra")} for m in MODES}
    summary = {
        f"{m}/{k}": {
            "mean": statistics.fmean(v[m][k] for v in per_seed.values()),
            "sd": statistics.stdev(v[m][k] for v in per_seed.values()) if len(per_seed) > 1 else 0,
        }
        for m in MODES
        for k in ("inter", "intra")
    }
    print(json.dumps({"seeds": args.seeds, "per_seed": per_seed, "summary": summary}))


if __name__ == "__main__":
    main()
