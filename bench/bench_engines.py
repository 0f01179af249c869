"""Files to embeddings on this machine: ``egovlpv2 embed`` in one process (the overlapped
pipeline) against ``embed --engine ray`` on a local Ray cluster started once beforehand, the
same clips, model and batch size, both as clips/s in one run (issue 22: the Ray path's overhead
at one node <= 15%). Each engine's time is its whole ``embed`` call (model load, pipeline
start, decode, encode, writes), the best of ``--reps``; the cluster's start is given apart.
With several job sizes, each engine's time is also fitted as ``startup + clips / rate``: the
one-time cost (Ray: the actors' processes, their imports and model loads) apart from the
steady rate, whose ratio is the overhead a long job sees.

    python bench/bench_engines.py --clips 192 --batch 16 --actors 2
    python bench/bench_engines.py --clips 768,1536,3072,4608 --actors 1 --cpus-per-actor 2 \
        --decode-in-actor --reps 1
    # a GPU node (scripts/gpu_check.sh, step ray-bench): one GPU actor, the machine's cores
    python bench/bench_engines.py --clips 768,2304 --reps 1 --device cuda --precision bf16 \
        --actors 1 --gpus-per-actor 1 --cpus-per-actor 4 --decode-in-actor
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from egovlpv2_rt import cli
from egovlpv2_rt.data.egoclip import read_egoclip
from egovlpv2_rt.data.synthetic import SynthConfig, generate_dataset
from egovlpv2_rt.runtime.store import load_embeddings


def _timed(argv: list[str], out: Path, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        t0 = time.perf_counter()
        if cli.main(argv) != 0:
            raise SystemExit(f"failed: {' '.join(argv)}")
        best = min(best, time.perf_counter() - t0)
    return best


def fit_startup_and_rate(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least-squares fit of ``seconds = startup + clips / rate`` over the job sizes: the
    one-time cost (s) and the steady rate (clips/s) of an engine."""
    a = np.stack([np.ones(len(sizes)), np.asarray(sizes, float)], axis=1)
    (startup, per_clip), *_ = np.linalg.lstsq(a, np.asarray(seconds, float), rcond=None)
    return float(startup), float(1.0 / per_clip)


def _clip_list(path: Path, recs: list) -> None:
    path.write_text(
        "path,start,end,id\n"
        + "".join(
            f"data/videos/{r.video_uid}.mp4,{r.clip_start},{r.clip_end},{k}\n"
            for k, r in enumerate(recs)
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--clips",
        default="192",
        help="job size, or comma-separated sizes (two or more: start-up and steady rate fitted)",
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--actors", type=int, default=2, help="Ray model actors (1 CPU each)")
    ap.add_argument("--cpus-per-actor", type=int, default=1)
    ap.add_argument(
        "--decode-in-actor", action="store_true", help="actors decode (overlapped) themselves"
    )
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="local cluster CPUs")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--checkpoint", default=None, help="default: the shipped model")
    ap.add_argument("--device", default="cpu", help="both engines' device (cuda: one GPU)")
    ap.add_argument("--precision", default=None, help="fp32, fp16 or bf16 (default: the CLI's)")
    ap.add_argument("--video-backend", default=None, help="pyav, torchcodec or dali")
    ap.add_argument("--gpus-per-actor", type=float, default=0.0, help="Ray actors' GPUs")
    ap.add_argument(
        "--batches-per-call",
        default="4",
        help="with --decode-in-actor: model batches per actor call; several (e.g. 1,4) are "
        "each timed in the same run",
    )
    args = ap.parse_args()
    sizes = sorted({int(v) for v in args.clips.split(",")})
    per_call = [int(v) for v in args.batches_per_call.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        n_videos = max(5, -(-sizes[-1] // 8))
        generate_dataset(tmp / "data", 0, SynthConfig(num_clips=n_videos * 8, num_mcq=2))
        recs = read_egoclip(tmp / "data" / "egoclip.csv")
        model = ["--device", args.device, "--batch-size", str(args.batch), "--no-progress"]
        if args.precision:
            model += ["--precision", args.precision]
        if args.video_backend:
            model += ["--video-backend", args.video_backend]
        if args.checkpoint:
            model += ["--checkpoint", args.checkpoint]
        t0 = time.perf_counter()
        gpus = {"num_gpus": 1} if args.gpus_per_actor else {}
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, **gpus)
        t_start = time.perf_counter() - t0
        try:
            for n in sizes:
                lst = tmp / f"clips{n}.csv"
                _clip_list(lst, recs[:n])
                local_out = tmp / f"local{n}.safetensors"
                argv = ["embed", "--videos", str(lst), "--out", str(local_out), *model]
                t_local = _timed(argv, local_out, args.reps)
                a = load_embeddings(local_out)
                row: dict = {
                    "clips": n,
                    "local_s": round(t_local, 2),
                    "local_clips_s": round(n / t_local, 2),
                }
                for b in per_call if args.decode_in_actor else [1]:
                    ray_out = tmp / f"ray_out{n}_{b}"
                    argv = [
                        "embed", "--engine", "ray", "--videos", str(lst), "--out", str(ray_out),
                        "--actors", str(args.actors), "--cpus-per-actor", str(args.cpus_per_actor),
                        "--gpus-per-actor", str(args.gpus_per_actor), "--batches-per-call", str(b),
                        *(["--decode-in-actor"] if args.decode_in_actor else []), *model,
                    ]  # fmt: skip
                    t_ray = _timed(argv, ray_out, args.reps)
                    e = load_embeddings(ray_out)
                    assert a.ids == e.ids
                    key = f"ray{b}" if args.decode_in_actor else "ray"
                    row |= {
                        f"{key}_s": round(t_ray, 2),
                        f"{key}_clips_s": round(n / t_ray, 2),
                        f"{key}_overhead": round(t_ray / t_local - 1, 3),
                        f"{key}_max_abs_diff": float(np.abs(a.embeddings - e.embeddings).max()),
                    }
                rows.append(row)
        finally:
            ray.shutdown()
    line: dict[str, object] = {
        "batch": args.batch,
        "ray_actors": args.actors,
        "cpus_per_actor": args.cpus_per_actor,
        "decode_in_actor": args.decode_in_actor,
        "batches_per_call": per_call if args.decode_in_actor else None,
        "cluster_cpus": args.cpus,
        "device": args.device,
        "precision": args.precision,
        "video_backend": args.video_backend,
        "gpus_per_actor": args.gpus_per_actor,
        "reps": args.reps,
        "ray_cluster_start_s": round(t_start, 2),
        "sizes": rows,
    }
    if len(sizes) > 1:
        s_local, r_local = fit_startup_and_rate(sizes, [r["local_s"] for r in rows])
        line |= {"local_startup_s": round(s_local, 2), "local_steady_clips_s": round(r_local, 2)}
        engines = [k for k in rows[0] if k.startswith("ray") and k.endswith("_s")]
        for key in [k[: -len("_s")] for k in engines if not k.endswith("_clips_s")]:
            s_ray, r_ray = fit_startup_and_rate(sizes, [r[f"{key}_s"] for r in rows])
            line |= {
                f"{key}_startup_s": round(s_ray, 2),
                f"{key}_steady_clips_s": round(r_ray, 2),
                f"{key}_steady_overhead": round(r_local / r_ray - 1, 3),
            }
    line |= {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        + (f", {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""),
        "ray": ray.__version__,
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
