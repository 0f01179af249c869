"""QFVS learning check on synthetic data (CPU): shot features of the shipped default model
(cached), then the leave-one-video-out protocol (per held-out video a head trained on the other
videos, its epoch chosen on a val split of their queries), F1 of the top-2% summaries beside a
seeded random summary of the same size. One JSON line.

    python -m egovlpv2_rt.cli synth --task qfvs --out /tmp/qfvs --seed 1
    python bench/qfvs_synthetic.py /tmp/qfvs --cache /tmp/qfvs_feats --lr 1e-4 --seed 0
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from egovlpv2_rt.tasks.qfvs_head import QFVSTrainConfig, evaluate_qfvs
from egovlpv2_rt.tasks.qfvs_job import load_qfvs_backbone, qfvs_examples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data", help="a QFVS folder (egovlpv2 synth --task qfvs)")
    ap.add_argument("--cache", required=True, help="shot-feature cache folder")
    ap.add_argument("--checkpoint", default=None, help="model file (default: the shipped one)")
    ap.add_argument("--lr", type=float, default=QFVSTrainConfig.lr)
    ap.add_argument("--epochs", type=int, default=QFVSTrainConfig.epochs)
    ap.add_argument("--seed", type=int, default=0, help="training / split / random-summary seed")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    backbone = load_qfvs_backbone(args.checkpoint)
    examples, concepts = qfvs_examples(backbone, args.data, cache_dir=args.cache)
    t1 = time.perf_counter()
    cfg = QFVSTrainConfig(lr=args.lr, epochs=args.epochs, seed=args.seed)
    res = evaluate_qfvs(examples, concepts, cfg)
    t2 = time.perf_counter()
    line = {"data": args.data, "checkpoint": str(backbone.checkpoint), "lr": args.lr}
    line |= {"epochs": args.epochs, "seed": args.seed}
    line |= {"features_seconds": round(t1 - t0, 1), "train_eval_seconds": round(t2 - t1, 1)}
    print(json.dumps({**line, **res}))


if __name__ == "__main__":
    main()
