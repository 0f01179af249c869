"""The shipped default model on fresh held-out EgoMCQ datasets: per seed (400 clips in 50 videos
the model never saw, 200 questions, half inter and half intra) the accuracy of the dual, fusion
and ensemble modes, then the mean and spread; and where the intra-video errors go: on the
questions whose distractors hold the query's temporal twin (the same object, the action
reversed: picks up / puts down, moves left / right), how often each mode picks the twin. A
model blind to frame order is at chance between the two. Seeds must not be the recipe's
development held-out seed (2) or its training seeds (1, 3). One JSON line.

    python bench/default_model_heldout.py --work /tmp/heldout --seeds 11 12 13 14 15
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from egovlpv2_rt.checkpoint import load_model
from egovlpv2_rt.data.egomcq import INTRA, read_egomcq
from egovlpv2_rt.data.synthetic import SynthConfig, is_temporal_twin
from egovlpv2_rt.eval.egomcq import MODES, evaluate_egomcq
from egovlpv2_rt.model_files import default_model_dir, default_model_path, load_tokenizer
from egovlpv2_rt.train.default_model import (
    EVAL_CLIPS,
    EVAL_QUESTIONS,
    EVAL_SEED,
    IMAGE_SIZE,
    MAX_TEXT_LENGTH,
    SCENE_SEED,
    TRAIN_SEED,
    synth_split,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", required=True, help="folder for the held-out datasets")
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", default=None, help="default: the shipped model")
    ap.add_argument("--tokenizer", default=None, help="default: the shipped model's")
    args = ap.parse_args()
    if {TRAIN_SEED, EVAL_SEED, SCENE_SEED} & set(args.seeds):
        raise SystemExit(
            f"--seeds: not the training ({TRAIN_SEED}, {SCENE_SEED}) or recipe ({EVAL_SEED}) seeds"
        )
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    model = load_model(args.checkpoint or default_model_path())
    tok = load_tokenizer(Path(args.tokenizer or default_model_dir()), MAX_TEXT_LENGTH)
    per_seed = {}
    twins: dict[str, dict[str, int]] = {m: {"questions": 0, "right": 0, "twin": 0} for m in MODES}
    for seed in args.seeds:
        d = Path(args.work) / f"seed{seed}"
        synth_split(
            d, seed, SynthConfig(num_clips=EVAL_CLIPS, size=IMAGE_SIZE, num_mcq=EVAL_QUESTIONS)
        )
        items = read_egomcq(d / "egomcq.json")
        res = evaluate_egomcq(
            model, items, d / "videos", tok, max_length=MAX_TEXT_LENGTH, batch_size=8
        )
        per_seed[seed] = {m: {k: res.accuracy[m][k] for k in ("inter", "intra")} for m in MODES}
        for m in MODES:
            picks = res.scores[m].argmax(-1).tolist()
            for it, pick in zip(items, picks, strict=True):
                twin = [
                    j
                    for j, c in enumerate(it.choices)
                    if j != it.answer and is_temporal_twin(it.query, c)
                ]
                if it.type != INTRA or not twin:
                    continue
                twins[m]["questions"] += 1
                twins[m]["right"] += int(pick == it.answer)
                twins[m]["twin"] += int(pick == twin[0])
    summary = {
        f"{m}/{k}": {
            "mean": statistics.fmean(v[m][k] for v in per_seed.values()),
            "sd": statistics.stdev(v[m][k] for v in per_seed.values()) if len(per_seed) > 1 else 0,
        }
        for m in MODES
        for k in ("inter", "intra")
    }
    print(
        json.dumps(
            {"seeds": args.seeds, "per_seed": per_seed, "summary": summary, "temporal_twins": twins}
        )
    )


if __name__ == "__main__":
    main()
