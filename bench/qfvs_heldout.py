"""QFVS on several synthetic datasets at once (CPU): per model and dataset the leave-one-video-out
F1 of ``bench/qfvs_synthetic.py`` beside the random 2% summary, then the table over datasets with
mean +- sd and the paired difference to random. The random baseline is the expected F1 of a
random summary of the same size (``random_f1_expected``: the mean over ``RANDOM_DRAWS`` seeded
draws per query); the single seeded draw is kept beside it. The same heads also score each query
with another query's prompts (``f1_query_swapped``): does the head read the query at all?

Datasets are ``DATA_ROOT/qfvs_seed{N}``, synthesised when missing (the same seed gives the same
bytes). Results are appended to ``--out`` one JSON line per (model, dataset) and a finished pair is
not computed again, so an interrupted run resumes; ``--report FILE ...`` prints the table of
earlier runs (several files: e.g. two models run side by side).

    python bench/qfvs_heldout.py --seeds 21 22 23 --data-root /tmp/qfvs --model shipped \
        --model scene=/path/model.safetensors --out /tmp/qfvs/results.jsonl --lr 1e-3
    python bench/qfvs_heldout.py --report /tmp/qfvs/a.jsonl /tmp/qfvs/b.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import ttest_rel

from egovlpv2_rt.eval.metrics import qfvs_f1
from egovlpv2_rt.tasks.qfvs_data import load_qfvs
from egovlpv2_rt.tasks.qfvs_head import (
    RANDOM_DRAWS,
    QFVSTrainConfig,
    evaluate_qfvs,
    summary_size,
)
from egovlpv2_rt.tasks.qfvs_job import QFVSBackbone, load_qfvs_backbone, qfvs_examples
from egovlpv2_rt.tasks.qfvs_synth import synthesize_qfvs


def dataset_dir(root: Path, seed: int) -> Path:
    path = root / f"qfvs_seed{seed}"
    if not (path / "Oracle_Summaries").is_dir():
        synthesize_qfvs(path, seed)
    return path


def most_tagged_prior_f1(data: Path, budget: float, draws: int = RANDOM_DRAWS) -> float:
    """A reference that knows the tags but not the query: the expected F1 of summaries drawn
    among each video's shots with the most tagged concepts (seeded draws, mean over videos of
    the mean over queries). How far a query-independent prior gets on this dataset."""
    videos, vocab = load_qfvs(data)
    per_video = []
    for v in videos:
        concepts = v.concept_matrix(vocab)
        counts = concepts.sum(1)
        crowded = np.flatnonzero(counts == counts.max()).tolist()
        k = min(summary_size(v.num_shots, budget), len(crowded))
        rng = random.Random(0)
        f1 = [
            qfvs_f1(rng.sample(crowded, k), q.oracle, concepts)[2]
            for q in v.queries
            for _ in range(draws)
        ]
        per_video.append(float(np.mean(f1)))
    return float(np.mean(per_video))


def run_one(
    name: str, backbone: QFVSBackbone, data: Path, seed: int, args: argparse.Namespace
) -> dict:
    t0 = time.perf_counter()
    cache = Path(args.data_root) / "features" / name / data.name
    examples, concepts = qfvs_examples(backbone, data, cache_dir=cache)
    t1 = time.perf_counter()
    cfg = QFVSTrainConfig(lr=args.lr, epochs=args.epochs, seed=args.seed)
    res = evaluate_qfvs(examples, concepts, cfg, query_swap_control=True)
    t2 = time.perf_counter()
    return {
        "model": name,
        "checkpoint": str(backbone.checkpoint),
        "data_seed": seed,
        "lr": args.lr,
        "epochs": args.epochs,
        "seed": args.seed,
        "f1": res["f1"],
        "f1_query_swapped": res["f1_query_swapped"],
        "random_f1_one_draw": res["random_f1"],
        "random_f1_expected": res["random_f1_expected"],
        "random_draws": RANDOM_DRAWS,
        "per_video_f1": {v: d["f1"] for v, d in res["per_video"].items()},  # type: ignore[union-attr]
        "features_seconds": round(t1 - t0, 1),
        "train_eval_seconds": round(t2 - t1, 1),
    }


def _mean_sd(xs: Sequence[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.2f} +- {sd:.2f}"


def report(rows: Sequence[dict], data_root: Path | None = None) -> str:
    """Markdown: one row per dataset seed (each model's F1, the expected random F1 and, with
    ``data_root``, the most-tagged prior), then the mean +- sd over seeds and, per model, the
    paired difference to random, how many datasets it is above random on, a one-sided paired
    t-test, and the query-swap control."""
    models = sorted({r["model"] for r in rows})
    seeds = sorted({r["data_seed"] for r in rows})
    by = {(r["model"], r["data_seed"]): r for r in rows}
    rand = {s: next(r for r in rows if r["data_seed"] == s)["random_f1_expected"] for s in seeds}
    prior = {}
    if data_root is not None:
        budget = QFVSTrainConfig.budget
        prior = {s: most_tagged_prior_f1(data_root / f"qfvs_seed{s}", budget) for s in seeds}
    refs = " | random 2% (expected) |" + (" most-tagged prior |" if prior else "")
    lines = ["| data seed | " + " | ".join(models) + refs]
    lines.append("|---" * (len(models) + 2 + bool(prior)) + "|")
    for s in seeds:
        cells = [f"{by[m, s]['f1']:.2f}" if (m, s) in by else "" for m in models]
        cells.append(f"{rand[s]:.2f}")
        cells += [f"{prior[s]:.2f}"] if prior else []
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    means = [_mean_sd([by[m, s]["f1"] for s in seeds if (m, s) in by]) for m in models]
    means.append(_mean_sd(list(rand.values())))
    means += [_mean_sd(list(prior.values()))] if prior else []
    lines.append("| mean +- sd | " + " | ".join(means) + " |")
    for m in models:
        mine = [s for s in seeds if (m, s) in by]
        diff = [by[m, s]["f1"] - rand[s] for s in mine]
        above = sum(d > 0 for d in diff)
        line = (
            f"\n{m}: F1 - random {_mean_sd(diff)} over {len(diff)} datasets, above random on "
            f"{above} of {len(diff)}"
        )
        if len(diff) > 1:
            f1s = [by[m, s]["f1"] for s in mine]
            test = ttest_rel(f1s, [rand[s] for s in mine], alternative="greater")
            line += f"; one-sided paired t-test p = {test.pvalue:.3f}"
        swapped = [by[m, s]["f1_query_swapped"] for s in mine if "f1_query_swapped" in by[m, s]]
        if swapped:
            line += (
                f"; with another query's prompts (same heads, {len(swapped)} datasets): "
                f"{_mean_sd(swapped)}"
            )
        lines.append(line)
    return "\n".join(lines)


def _read(paths: Sequence[str]) -> list[dict]:
    rows = []
    for p in paths:
        if Path(p).exists():
            rows += [json.loads(line) for line in Path(p).read_text().splitlines() if line.strip()]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--report", nargs="+", default=None, help="print the table of these files")
    ap.add_argument("--seeds", type=int, nargs="+", help="synthetic dataset seeds")
    ap.add_argument(
        "--data-root",
        help="datasets and feature caches live here (with --report: adds the most-tagged prior)",
    )
    ap.add_argument(
        "--model",
        action="append",
        default=None,
        help="NAME=PATH of a model file, or 'shipped' for the shipped default model (repeatable)",
    )
    ap.add_argument("--out", help="JSON lines, appended (resumes)")
    ap.add_argument("--lr", type=float, default=QFVSTrainConfig.lr)
    ap.add_argument("--epochs", type=int, default=QFVSTrainConfig.epochs)
    ap.add_argument("--seed", type=int, default=0, help="training / split / random-summary seed")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.report:
        print(report(_read(args.report), Path(args.data_root) if args.data_root else None))
        return
    if not (args.seeds and args.data_root and args.model and args.out):
        ap.error("--seeds, --data-root, --model and --out are required without --report")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {}
    for spec in args.model:
        name, _, path = spec.partition("=")
        models[name] = path or None
    done = {(r["model"], r["data_seed"]) for r in _read([args.out])}
    backbones: dict[str, QFVSBackbone] = {}
    for seed in args.seeds:
        data = dataset_dir(Path(args.data_root), seed)
        for name, ckpt in models.items():
            if (name, seed) in done:
                continue
            if name not in backbones:  # loaded (and hashed) once per model
                backbones[name] = load_qfvs_backbone(ckpt)
            row = run_one(name, backbones[name], data, seed, args)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(report(_read([args.out]), Path(args.data_root)))


if __name__ == "__main__":
    main()
