"""EgoTaskQA learning check on synthetic data (CPU): fine-tune the shipped default model with
``configs/finetune/egotaskqa_synthetic.yaml`` (encoder fusion or dual, a seed), then print one
JSON line per split (val, test) with the accuracy of the step chosen on val (best.safetensors)
and the majority-answer baseline.

    python -m egovlpv2_rt.cli synth --task egotaskqa --out /tmp/taskqa  # or synthesize_egotaskqa
    python bench/egotaskqa_synthetic.py /tmp/taskqa --encoder fusion --seed 0 --out runs/tq_f0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from importlib.resources import files
from pathlib import Path

from egovlpv2_rt.eval.taskqa import majority_baseline
from egovlpv2_rt.model_files import default_model_dir, load_tokenizer
from egovlpv2_rt.tasks.egotaskqa import evaluate_egotaskqa, load_taskqa_model
from egovlpv2_rt.tasks.egotaskqa_data import load_taskqa_split
from egovlpv2_rt.tasks.egotaskqa_job import finetune_egotaskqa, load_egotaskqa_config, read_best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data", help="a synthetic EgoTaskQA folder (synthesize_egotaskqa)")
    ap.add_argument("--encoder", choices=("fusion", "dual"), default="fusion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=0, help="0: the config's")
    ap.add_argument("--lr", type=float, default=0.0, help="0: the config's")
    ap.add_argument("--lr-mult-head", type=float, default=0.0, help="0: the config's")
    ap.add_argument("--lr-mult-cross-modal", type=float, default=0.0, help="0: the config's")
    ap.add_argument("--splits", default="val,test", help="splits to evaluate, comma-separated")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    path = files("egovlpv2_rt") / "configs" / "finetune" / "egotaskqa_synthetic.yaml"
    cfg = load_egotaskqa_config(str(path))
    cfg = dataclasses.replace(
        cfg,
        encoder=args.encoder,
        seed=args.seed,
        out_dir=args.out,
        progress=False,
        max_steps=args.max_steps or cfg.max_steps,
        data=dataclasses.replace(cfg.data, root=args.data),
        optim=dataclasses.replace(
            cfg.optim,
            lr=args.lr or cfg.optim.lr,
            lr_mult_head=args.lr_mult_head or cfg.optim.lr_mult_head,
            lr_mult_cross_modal=args.lr_mult_cross_modal or cfg.optim.lr_mult_cross_modal,
        ),
    )
    t0 = time.perf_counter()
    res = finetune_egotaskqa(cfg, device="cpu")
    seconds = time.perf_counter() - t0
    assert res.weights is not None
    best = read_best(args.out)  # the step chosen on val; test is scored with it, once
    assert best is not None
    model = load_taskqa_model(Path(args.out) / "best.safetensors")
    tok = load_tokenizer(default_model_dir(), cfg.data.max_text_length)
    train = load_taskqa_split(args.data, "train")
    for split in args.splits.split(","):
        sp = load_taskqa_split(args.data, split)
        acc = evaluate_egotaskqa(
            model, args.data, split, tok, max_text_length=cfg.data.max_text_length
        )
        base = majority_baseline(
            [it.answer for it in train.items],
            [it.answer for it in sp.items],
            sp.items,
            sp.reasoning_types,
        )
        line = {"encoder": args.encoder, "seed": args.seed, "split": split, "data": args.data}
        line |= {"lr": cfg.optim.lr, "lr_mult_head": cfg.optim.lr_mult_head}
        line |= {"lr_mult_cross_modal": cfg.optim.lr_mult_cross_modal}
        line |= {"max_steps": cfg.max_steps, "best_step": best["step"]}
        print(json.dumps({**line, "acc": acc, "majority": base, "train_seconds": seconds}))


if __name__ == "__main__":
    main()
